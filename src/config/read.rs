//! How one setting's text becomes its typed value: the `deserialize_with` functions the settings
//! structs name beside each field. Every value arrives as text from the environment (and may be a
//! number or a boolean in a TOML file); each reader trims it, checks it by its one rule, and
//! refuses it with a message that ends in what was given — except for values that may hold a
//! password. [`super::Settings::load_from`] puts the variable's name in front.

use std::fmt;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};

use super::Secret;
use crate::domain::PerMinute;

/// The longest an idempotency record may be kept: 7 days.
const MAX_IDEMPOTENCY_TTL_SECS: u64 = 7 * 24 * 3600;

/// The longest key-cache lifetime allowed: revocation must reach every replica within 5 s,
/// and a cache miss itself may take up to the Redis timeout.
const MAX_KEY_CACHE_TTL_MS: u64 = 4000;

/// The longest any timeout or interval may be: a year. Far longer means a mistake, and values
/// near `u64::MAX` overflow the clock arithmetic of the libraries they go to (actix-http's
/// keep-alive panicked on every connection).
const MAX_DURATION_SECS: u64 = 365 * 24 * 3600;

/// The most HTTP worker threads actix-server starts (it panics past that).
const MAX_API_WORKERS: usize = 512;

/// A setting as text, whatever scalar its source gave.
fn text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    struct Text;
    impl Visitor<'_> for Text {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string, a number or a boolean")
        }
        fn visit_str<E>(self, v: &str) -> Result<String, E> {
            Ok(v.to_owned())
        }
        fn visit_i64<E>(self, v: i64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_u64<E>(self, v: u64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_f64<E>(self, v: f64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_bool<E>(self, v: bool) -> Result<String, E> {
            Ok(v.to_string())
        }
    }
    d.deserialize_any(Text)
}

/// The setting as `parse` reads its trimmed text; a refusal repeats what was given.
fn read<'de, D: Deserializer<'de>, T>(
    d: D,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, D::Error> {
    let given = text(d)?;
    parse(given.trim()).map_err(|why| de::Error::custom(format!("{why}, got {given:?}")))
}

/// A whole number within `range`; anything else is refused with `rule`, which states the range.
fn whole_in<T: FromStr + PartialOrd>(
    v: &str,
    range: RangeInclusive<T>,
    rule: impl FnOnce() -> String,
) -> Result<T, String> {
    v.parse::<T>()
        .ok()
        .filter(|n| range.contains(n))
        .ok_or_else(rule)
}

/// Like [`read`], for a value that may hold a password: a refusal says what is wrong, never
/// what was given.
fn read_secret<'de, D: Deserializer<'de>, T>(
    d: D,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, D::Error> {
    let given = text(d)?;
    parse(given.trim()).map_err(de::Error::custom)
}

/// A whole number, 0 included.
pub fn whole<'de, D: Deserializer<'de>, T: FromStr>(d: D) -> Result<T, D::Error> {
    read(d, |v| {
        v.parse().map_err(|_| "must be a whole number".to_owned())
    })
}

/// A whole number above 0.
pub fn positive<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr + PartialOrd + Default,
{
    read(d, |v| match v.parse::<T>() {
        Ok(n) if n > T::default() => Ok(n),
        _ => Err("must be a positive whole number".to_owned()),
    })
}

/// A whole number from 1 to `MAX`: a count whose larger values can only be a mistake and
/// would fail later, as a panic at start-up (a pool's slots are allocated up front) or as a
/// batch that cannot fit in memory.
pub fn up_to<'de, D: Deserializer<'de>, const MAX: usize>(d: D) -> Result<usize, D::Error> {
    read(d, |v| {
        whole_in(v, 1..=MAX, || {
            format!("must be a whole number from 1 to {MAX}")
        })
    })
}

/// A signal's default per-minute limit: what a signal can carry itself (the admin API's and
/// `sluice-admin`'s bound, and the documents' `int32`).
pub fn per_minute<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    read(d, |v| {
        whole_in(v, 1..=PerMinute::MAX, || {
            format!(
                "must be a whole number of events per minute from 1 to {}",
                PerMinute::MAX
            )
        })
    })
}

/// A positive number of milliseconds, at most a year.
pub fn positive_ms<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    read(d, |v| {
        whole_in(v, 1..=MAX_DURATION_SECS * 1000, || {
            format!(
                "must be a whole number of milliseconds from 1 to {} (a year)",
                MAX_DURATION_SECS * 1000
            )
        })
        .map(Duration::from_millis)
    })
}

/// A whole number of seconds, 0 included, at most a year.
pub fn secs<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    read(d, |v| {
        whole_in(v, 0..=MAX_DURATION_SECS, || {
            format!("must be a whole number of seconds from 0 to {MAX_DURATION_SECS} (a year)")
        })
        .map(Duration::from_secs)
    })
}

/// `true` or `false`.
pub fn boolean<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    read(d, |v| {
        v.parse().map_err(|_| "must be true or false".to_owned())
    })
}

/// A value of a type whose `FromStr` says, in words, what it must be.
pub fn named<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr<Err = String>,
{
    read(d, T::from_str)
}

/// A socket address such as `0.0.0.0:8080`.
pub fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    read(d, parse_addr)
}

/// A socket address, or empty for none.
pub fn optional_socket_addr<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<SocketAddr>, D::Error> {
    read(d, |v| optional(v, parse_addr))
}

fn parse_addr(v: &str) -> Result<SocketAddr, String> {
    v.parse()
        .map_err(|_| "must be a socket address such as 127.0.0.1:8080".to_owned())
}

/// A file that must exist and be readable, or empty for none.
pub fn optional_file<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    read(d, |v| {
        optional(v, |v| {
            std::fs::File::open(v)
                .map(|_| PathBuf::from(v))
                .map_err(|e| format!("names a file that cannot be read ({e})"))
        })
    })
}

/// A connection string, checked where it is used together with other settings.
pub fn secret<'de, D: Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
    read_secret(d, |v| Ok(Secret(v.to_owned())))
}

/// A connection string, or empty for none.
pub fn optional_secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Secret>, D::Error> {
    read_secret(d, |v| optional(v, |v| Ok(Secret(v.to_owned()))))
}

/// One Redis URL, or a comma-separated list of cluster seeds, all with TLS (`rediss://`) or
/// all without. Certificate checks cannot be turned off (`#insecure`): a server whose
/// certificate the system does not trust is reached by naming its CA instead.
pub fn redis_urls<'de, D: Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
    read_secret(d, |v| {
        use redis::IntoConnectionInfo;
        let mut schemes = std::collections::BTreeSet::new();
        for url in v.split(',').map(str::trim) {
            let info = url
                .into_connection_info()
                .map_err(|e| format!("is not a Redis URL or list of them ({e})"))?;
            if let redis::ConnectionAddr::TcpTls { insecure: true, .. } = info.addr() {
                return Err(
                    "asks for #insecure: certificate checks cannot be turned off; \
                     give the server's CA in SLUICE__REDIS__TLS_CA_FILE instead"
                        .to_owned(),
                );
            }
            schemes.insert(url.starts_with("rediss://"));
        }
        if schemes.len() > 1 {
            return Err(
                "mixes rediss:// and redis:// seeds; a cluster is all TLS or none".to_owned(),
            );
        }
        Ok(Secret(v.to_owned()))
    })
}

/// How many partition streams: 1 to 1024.
pub fn partitions<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    read(d, |v| {
        whole_in(v, 1..=1024, || {
            "must be a whole number between 1 and 1024".to_owned()
        })
    })
}

/// HTTP worker threads: 0 (one per CPU) to 512, the most actix-server runs.
pub fn api_workers<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    read(d, |v| {
        whole_in(v, 0..=MAX_API_WORKERS, || {
            format!("must be a whole number from 0 (one per CPU) to {MAX_API_WORKERS}")
        })
    })
}

/// The api key cache's lifetime in milliseconds, short enough for the contract's revocation.
pub fn key_cache_ttl<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    read(d, |v| {
        whole_in(v, 0..=MAX_KEY_CACHE_TTL_MS, || {
            format!(
                "must be a whole number from 0 to {MAX_KEY_CACHE_TTL_MS} so that revoked keys \
                 stop within 5 s"
            )
        })
        .map(Duration::from_millis)
    })
}

/// How long idempotency records are kept, in seconds: 1 to 7 days' worth.
pub fn idempotency_ttl<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    read(d, |v| {
        whole_in(v, 1..=MAX_IDEMPOTENCY_TTL_SECS, || {
            format!(
                "must be a whole number of seconds from 1 to {MAX_IDEMPOTENCY_TTL_SECS} (7 days)"
            )
        })
        .map(Duration::from_secs)
    })
}

/// A share of Redis `maxmemory`: above 0, at most 1.
pub fn fraction<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    read(d, |v| match v.parse::<f64>() {
        Ok(f) if f > 0.0 && f <= 1.0 => Ok(f),
        _ => Err("must be a number above 0 and at most 1 (a share of Redis maxmemory)".to_owned()),
    })
}

/// The worker's consumer name; empty: `<host>-<pid>-<random>`, unique per process and
/// readable in `XINFO CONSUMERS`.
pub fn consumer<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    read(d, |v| {
        if v.len() > 200 || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
            Err("must be at most 200 characters with no spaces".to_owned())
        } else if v.is_empty() {
            Ok(default_consumer_name())
        } else {
            Ok(v.to_owned())
        }
    })
}

fn default_consumer_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && !h.contains(char::is_whitespace))
        .unwrap_or_else(|| "worker".to_owned());
    format!(
        "{host}-{}-{}",
        std::process::id(),
        crate::domain::random_base62(6)
    )
}

/// A `tracing` filter directive.
pub fn log_filter<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    read(d, |v| {
        tracing_subscriber::EnvFilter::try_new(v)
            .map(|_| v.to_owned())
            .map_err(|e| format!("is not a log filter ({e})"))
    })
}

/// `parse` of a value that may be empty for "none".
fn optional<T>(
    v: &str,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<Option<T>, String> {
    if v.is_empty() {
        Ok(None)
    } else {
        parse(v).map(Some)
    }
}
