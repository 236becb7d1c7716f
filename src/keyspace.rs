//! Every Redis key Sluice uses, in one place.
//!
//! A tenant lives in one of `P` partitions. Every key a request touches carries that partition's
//! hash tag (`{p07}`), so the admission script's keys always share one Redis Cluster slot and a
//! tenant's batch never spans shards.
//!
//! | key                                   | type   | holds                                            |
//! |---------------------------------------|--------|--------------------------------------------------|
//! | `sluice:{pNN}:reg:<tenant>`           | hash   | slug → packed signal (see [`PackedSignal`])      |
//! | `sluice:{pNN}:rl:<tenant>`            | hash   | slug → its window count (see [`WindowCount`])    |
//! | `sluice:{pNN}:idem:<tenant>:<key>`    | string | the answer to a request with that `Idempotency-Key` (see [`IdempotencyRecord`]), until its TTL |
//! | `sluice:{pNN}:events`                 | stream | admitted events, one entry per request (`stream::entry`) |
//! | `sluice:{pNN}:dead`                   | stream | events the worker could not store                |
//! | `sluice:keys`                         | hash   | sha256(api key) → [`KeyIndexEntry`]              |
//! | `sluice:partitions`                   | string | the partition count `P` the streams are laid out over (`redis_layout`) |
//!
//! The rate-limit windows are one hash per tenant with a field per slug, not a key per signal
//! and window as first sketched: the api knows only slugs before the script runs, the window
//! comes from Redis's clock inside the script, and every key a script touches must be passed in
//! `KEYS` (Cluster routes on them); one hash lets the script read and write every slug of a
//! request at once (`HMGET`, `HSET`). A slug is permanent within its tenant, so slug and signal
//! id name the same counter; keeping the window start in the value lets one field serve every
//! window (a stale window reads as empty).
//!
//! The values' formats are the types named in the table, each with its `Display` and `FromStr`;
//! the Lua scripts read and write them through the prelude `scripts` builds from those types.
//! `tests/api/formats.rs` checks this table against every key a working system leaves in Redis.
//!
//! One more key lives only between a large request's admission and its storage:
//! `sluice:{pNN}:staged:<id>`, a string holding the events of one request whose entry names it
//! (its `r` field, `stream::entry`) instead of carrying them. The api sets it with a short
//! expiry just before the admission script runs; the script keeps it for good when it enqueues
//! the entry, and deletes it otherwise; the worker deletes it once the entry is acknowledged.
//! So a working system that is idle has none.

use std::sync::Arc;

use crate::domain::SignalType;

/// The API-key index. Not partitioned: it is read outside the admission script, by key hash.
pub const API_KEYS: &str = "sluice:keys";

/// Beside each entry of a registry hash (a tenant's signals, the API-key index), the version of
/// the registry row it came from is kept under this prefix and the entry's field
/// (`lua/registry.lua`); slugs and key hashes never start with it.
pub const VERSION_PREFIX: char = '#';

/// A tenant's partition and the keys of its that every ingest request names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantKeys {
    pub partition: u16,
    /// [`Keyspace::registry`]
    pub registry: Arc<str>,
    /// [`Keyspace::rate_limits`]
    pub windows: Arc<str>,
}

/// Which of a tenant's own keys a name is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TenantKind {
    Registry,
    Windows,
    Idempotency,
}

impl TenantKind {
    fn segment(self) -> &'static str {
        match self {
            TenantKind::Registry => "reg",
            TenantKind::Windows => "rl",
            TenantKind::Idempotency => "idem",
        }
    }
}

/// A key of one tenant's own, read from its name ([`Keyspace::parse_tenant_key`]).
#[derive(Debug, PartialEq, Eq)]
pub struct TenantKey<'a> {
    /// The partition the name carries (of the count that made it).
    pub partition: u16,
    pub kind: TenantKind,
    pub tenant: &'a str,
    /// An idempotency record's `Idempotency-Key`.
    pub key: Option<&'a str>,
}

/// Maps tenants to partitions and names their keys.
#[derive(Clone, Copy, Debug)]
pub struct Keyspace {
    partitions: u16,
}

impl Keyspace {
    pub fn new(partitions: u16) -> Self {
        assert!(partitions > 0, "partition count is validated at start");
        Keyspace { partitions }
    }

    pub fn partitions(&self) -> u16 {
        self.partitions
    }

    /// The tenant's partition: FNV-1a of its id, so every binary and version agrees.
    pub fn partition_of(&self, tenant: &str) -> u16 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for b in tenant.bytes() {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        (hash % u64::from(self.partitions)) as u16
    }

    /// The Cluster hash tag of a partition, e.g. `{p07}`.
    pub fn tag(partition: u16) -> String {
        format!("{{p{partition:02}}}")
    }

    /// What a tenant's requests name, made once per tenant (the api keeps it with the tenant's
    /// API key, `api::Principal`) rather than formatted for every request.
    pub fn tenant(&self, tenant: &str) -> TenantKeys {
        TenantKeys {
            partition: self.partition_of(tenant),
            registry: self.registry(tenant).into(),
            windows: self.rate_limits(tenant).into(),
        }
    }

    pub fn registry(&self, tenant: &str) -> String {
        self.of_tenant(TenantKind::Registry, tenant)
    }

    /// `sluice:{pNN}:<kind>:<tenant>`, the start of each key a tenant has of its own.
    fn of_tenant(&self, kind: TenantKind, tenant: &str) -> String {
        format!(
            "sluice:{}:{}:{tenant}",
            Self::tag(self.partition_of(tenant)),
            kind.segment()
        )
    }

    /// The keys of one tenant's own ([`Keyspace::registry`], [`Keyspace::rate_limits`],
    /// [`Keyspace::idempotency`]) read back from a name, whichever partition count made it.
    pub fn parse_tenant_key(name: &str) -> Option<TenantKey<'_>> {
        let rest = name.strip_prefix("sluice:{p")?;
        let (partition, rest) = rest.split_once("}:")?;
        if partition.len() < 2 || !partition.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let partition = partition.parse().ok()?;
        let (segment, rest) = rest.split_once(':')?;
        let kind = [
            TenantKind::Registry,
            TenantKind::Windows,
            TenantKind::Idempotency,
        ]
        .into_iter()
        .find(|kind| kind.segment() == segment)?;
        let (tenant, key) = match kind {
            TenantKind::Idempotency => {
                let (tenant, key) = rest.split_once(':')?;
                (tenant, Some(key))
            }
            _ => (rest, None),
        };
        if tenant.is_empty() || tenant.contains(':') {
            return None;
        }
        Some(TenantKey {
            partition,
            kind,
            tenant,
            key,
        })
    }

    /// The name of `key` in this keyspace.
    pub fn name_of(&self, key: &TenantKey) -> String {
        match key.kind {
            TenantKind::Idempotency => self.idempotency(key.tenant, key.key.unwrap_or_default()),
            kind => self.of_tenant(kind, key.tenant),
        }
    }

    /// The recorded answer to a tenant's request with an `Idempotency-Key`, beside the tenant's
    /// stream (same slot) so that the admission script writes both.
    pub fn idempotency(&self, tenant: &str, key: &str) -> String {
        let mut name = self.of_tenant(TenantKind::Idempotency, tenant);
        name.push(':');
        name.push_str(key);
        name
    }

    /// A tenant's rate-limit windows: a hash with one field per slug, `<window start>:<count>`.
    pub fn rate_limits(&self, tenant: &str) -> String {
        self.of_tenant(TenantKind::Windows, tenant)
    }

    pub fn stream(partition: u16) -> String {
        format!("sluice:{}:events", Self::tag(partition))
    }

    /// Where a large request's events wait for the worker (see the module's documentation):
    /// `id` is the request's own, random.
    pub fn staged(partition: u16, id: &uuid::Uuid) -> String {
        format!("sluice:{}:staged:{}", Self::tag(partition), id.simple())
    }

    pub fn dead_stream(partition: u16) -> String {
        format!("sluice:{}:dead", Self::tag(partition))
    }

    /// Every partition's stream, for consumers and operators.
    pub fn streams(&self) -> impl Iterator<Item = String> {
        (0..self.partitions).map(Self::stream)
    }
}

/// A signal as the registry copy holds it: `<id>|<type>|<active 1/0>|<limit or empty>|<schema versions>`.
///
/// Small and flat so the Lua script reads it with one pattern match. An empty limit means "the
/// default for the type", which each api replica passes in from its configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackedSignal {
    pub id: String,
    pub signal_type: SignalType,
    pub active: bool,
    pub limit: Option<u32>,
    /// Versions are numbered 1..=n, so the count is also the latest version (0: no schema).
    pub schema_versions: u32,
}

impl PackedSignal {
    /// Between the fields.
    pub const SEP: char = '|';

    pub fn pack(&self) -> String {
        self.to_string()
    }
}

impl std::fmt::Display for PackedSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sep = Self::SEP;
        write!(
            f,
            "{}{sep}{}{sep}{}{sep}",
            self.id,
            self.signal_type,
            u8::from(self.active)
        )?;
        if let Some(limit) = self.limit {
            write!(f, "{limit}")?;
        }
        write!(f, "{sep}{}", self.schema_versions)
    }
}

impl std::str::FromStr for PackedSignal {
    type Err = String;

    /// Reads what [`PackedSignal::pack`] wrote.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("not a packed signal: {s:?}");
        let mut parts = s.split(Self::SEP);
        let mut next = || parts.next().ok_or_else(bad);
        let (id, kind, active, limit, versions) = (next()?, next()?, next()?, next()?, next()?);
        if parts.next().is_some() || id.is_empty() {
            return Err(bad());
        }
        Ok(PackedSignal {
            id: id.to_owned(),
            signal_type: kind.parse().map_err(|_| bad())?,
            active: match active {
                "1" => true,
                "0" => false,
                _ => return Err(bad()),
            },
            limit: match limit {
                "" => None,
                l => Some(l.parse().map_err(|_| bad())?),
            },
            schema_versions: versions.parse().map_err(|_| bad())?,
        })
    }
}

/// A slug's rate-limit window as the tenant's window hash holds it: `<window start>:<admitted>`,
/// the start in Unix seconds (a multiple of 60, from Redis's clock), and how many events of the
/// slug were admitted in it. A value of an earlier window counts as nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowCount {
    pub start: i64,
    pub admitted: u32,
}

impl WindowCount {
    /// Between the two numbers.
    pub const SEP: char = ':';

    /// What the value `text` says was admitted in the window starting at `window`.
    pub fn used_in(text: &str, window: i64) -> u32 {
        text.parse::<WindowCount>()
            .ok()
            .filter(|w| w.start == window)
            .map_or(0, |w| w.admitted)
    }
}

impl std::fmt::Display for WindowCount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}{}", self.start, Self::SEP, self.admitted)
    }
}

impl std::str::FromStr for WindowCount {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("not a window count: {s:?}");
        let (start, admitted) = s.split_once(Self::SEP).ok_or_else(bad)?;
        let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        if !digits(start) || !digits(admitted) {
            return Err(bad());
        }
        Ok(WindowCount {
            start: start.parse().map_err(|_| bad())?,
            admitted: admitted.parse().map_err(|_| bad())?,
        })
    }
}

/// The recorded answer to a request with an `Idempotency-Key`:
/// `<fingerprint>|<received, µs since the epoch>|<the entry's s field>`. Written and read by
/// `lua/admit.lua` alone (a retry is answered from it inside the script); under 200 bytes for a
/// request of one signal, whatever its size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyRecord {
    pub fingerprint: String,
    pub received_us: i64,
    /// The signals and admitted counts, as the entry's `s` field (`stream::entry::EntrySignal`).
    pub signals: String,
}

impl IdempotencyRecord {
    /// Between the three parts (the fingerprint is hex, the time digits: neither holds it).
    pub const SEP: char = '|';
}

impl std::fmt::Display for IdempotencyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sep = Self::SEP;
        write!(
            f,
            "{}{sep}{}{sep}{}",
            self.fingerprint, self.received_us, self.signals
        )
    }
}

impl std::str::FromStr for IdempotencyRecord {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("not an idempotency record: {s:?}");
        let mut parts = s.splitn(3, Self::SEP);
        let (Some(fingerprint), Some(received), Some(signals)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        Ok(IdempotencyRecord {
            fingerprint: fingerprint.to_owned(),
            received_us: received.parse().map_err(|_| bad())?,
            signals: signals.to_owned(),
        })
    }
}

/// A valid key as the API-key index (`sluice:keys`) holds it: `<tenant id> <key id>`, under the
/// key's SHA-256. Written by the registry copy, read by the api's key lookup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyIndexEntry {
    pub tenant_id: String,
    pub key_id: String,
}

impl std::fmt::Display for KeyIndexEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.tenant_id, self.key_id)
    }
}

impl std::str::FromStr for KeyIndexEntry {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (tenant, key) = s
            .split_once(' ')
            .filter(|(t, k)| !t.is_empty() && !k.is_empty() && !k.contains(' '))
            .ok_or_else(|| format!("not a key index entry: {s:?}"))?;
        Ok(KeyIndexEntry {
            tenant_id: tenant.to_owned(),
            key_id: key.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenants_keys_are_its_partition_and_the_names_of_its_hashes() {
        let keyspace = Keyspace::new(16);
        let keys = keyspace.tenant("ten_AbCdEfGh12345678");
        assert_eq!(
            keys.partition,
            keyspace.partition_of("ten_AbCdEfGh12345678")
        );
        let tag = Keyspace::tag(keys.partition);
        assert_eq!(
            &*keys.registry,
            format!("sluice:{tag}:reg:ten_AbCdEfGh12345678")
        );
        assert_eq!(
            &*keys.windows,
            format!("sluice:{tag}:rl:ten_AbCdEfGh12345678")
        );
    }

    #[test]
    fn a_tenants_own_keys_read_back_from_their_names_and_move_to_another_count() {
        let (sixteen, eight) = (Keyspace::new(16), Keyspace::new(8));
        let tenant = "ten_AbCdEfGh12345678";
        for name in [
            sixteen.registry(tenant),
            sixteen.rate_limits(tenant),
            sixteen.idempotency(tenant, "order:42:retry"),
        ] {
            let key = Keyspace::parse_tenant_key(&name).unwrap();
            assert_eq!(
                (key.partition, key.tenant),
                (sixteen.partition_of(tenant), tenant)
            );
            assert_eq!(sixteen.name_of(&key), name);
            let moved = eight.name_of(&key);
            assert_eq!(
                Keyspace::parse_tenant_key(&moved).unwrap().partition,
                eight.partition_of(tenant)
            );
        }
        let name = sixteen.idempotency(tenant, "a:b");
        let record = Keyspace::parse_tenant_key(&name).unwrap();
        assert_eq!(
            (record.kind, record.key),
            (TenantKind::Idempotency, Some("a:b"))
        );
        for other in [
            Keyspace::stream(3),
            Keyspace::dead_stream(3),
            Keyspace::staged(3, &uuid::Uuid::nil()),
            API_KEYS.to_owned(),
            "sluice:{p3}:reg:ten_x".to_owned(),
            "sluice:{p03}:reg:".to_owned(),
            "sluice:{p03}:rl:ten_x:y".to_owned(),
            "sluice:{p03}:idem:ten_x".to_owned(),
        ] {
            assert_eq!(Keyspace::parse_tenant_key(&other), None, "{other}");
        }
    }

    #[test]
    fn key_index_entries_read_back_as_written() {
        let entry = KeyIndexEntry {
            tenant_id: "ten_AbCdEfGh12345678".into(),
            key_id: "key_0123456789abcdef".into(),
        };
        assert_eq!(
            entry.to_string(),
            "ten_AbCdEfGh12345678 key_0123456789abcdef"
        );
        assert_eq!(entry.to_string().parse::<KeyIndexEntry>(), Ok(entry));
        for bad in ["", "ten_x", " key_x", "ten_x ", "ten_x key_y z"] {
            assert!(bad.parse::<KeyIndexEntry>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn window_counts_and_records_read_back_as_written() {
        let w = WindowCount {
            start: 1_764_000_000,
            admitted: 7,
        };
        assert_eq!(w.to_string(), "1764000000:7");
        assert_eq!(w.to_string().parse(), Ok(w));
        assert_eq!(WindowCount::used_in("1764000000:7", 1_764_000_000), 7);
        assert_eq!(WindowCount::used_in("1763999940:7", 1_764_000_000), 0);
        for bad in ["", ":", "1:", ":1", "1:2:3", "-1:2", "1:x"] {
            assert!(bad.parse::<WindowCount>().is_err(), "{bad:?}");
            assert_eq!(WindowCount::used_in(bad, 1), 0);
        }
        let r = IdempotencyRecord {
            fingerprint: "ab12".into(),
            received_us: 1_764_000_000_123_456,
            signals: "sig_a,event,0,1;sig_b,state,2,3".into(),
        };
        assert_eq!(
            r.to_string(),
            "ab12|1764000000123456|sig_a,event,0,1;sig_b,state,2,3"
        );
        assert_eq!(r.to_string().parse(), Ok(r));
        assert!("ab12|x|s".parse::<IdempotencyRecord>().is_err());
        assert!("ab12|1".parse::<IdempotencyRecord>().is_err());
    }

    #[test]
    fn keys_of_a_tenant_share_one_hash_tag() {
        let ks = Keyspace::new(16);
        let p = ks.partition_of("ten_abc");
        let tag = Keyspace::tag(p);
        assert!(ks.registry("ten_abc").contains(&tag));
        assert!(ks.rate_limits("ten_abc").contains(&tag));
        assert!(Keyspace::stream(p).contains(&tag));
        assert_eq!(Keyspace::tag(7), "{p07}");
    }

    #[test]
    fn partitions_are_stable_and_spread() {
        let ks = Keyspace::new(16);
        // Pinned (FNV-1a computed independently): changing the hash would move every tenant to
        // another stream and rate-limit counter.
        assert_eq!(ks.partition_of("ten_abc"), 15);
        assert_eq!(Keyspace::new(64).partition_of("ten_abc"), 15);
        assert_eq!(ks.partition_of("ten_x"), 11);
        let used: std::collections::HashSet<u16> = (0..200)
            .map(|i| ks.partition_of(&format!("ten_{i:016}")))
            .collect();
        assert_eq!(used.len(), 16);
        assert_eq!(Keyspace::new(1).partition_of("anything"), 0);
    }

    #[test]
    fn packed_signals_read_as_the_script_expects() {
        let s = PackedSignal {
            id: "sig_AbCd1234".into(),
            signal_type: SignalType::Metric,
            active: true,
            limit: Some(5),
            schema_versions: 2,
        };
        assert_eq!(s.pack(), "sig_AbCd1234|metric|1|5|2");
        // An inactive signal with the type's default limit: an empty limit field.
        let default_limit = PackedSignal {
            limit: None,
            active: false,
            ..s.clone()
        };
        assert_eq!(default_limit.pack(), "sig_AbCd1234|metric|0||2");
        assert_eq!(default_limit.pack().parse(), Ok(default_limit.clone()));
        assert_eq!(s.pack().parse(), Ok(s));
        for bad in [
            "",
            "sig_x|metric|1|5",
            "sig_x|metric|2||0",
            "sig_x|nope|1||0",
            "|event|1||0",
        ] {
            assert!(bad.parse::<PackedSignal>().is_err(), "{bad:?}");
        }
    }
}

/// The Redis Cluster hash slot of `key` (CRC16/XMODEM of its hash tag, or of the whole key,
/// modulo 16384), as Redis computes it.
pub fn cluster_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = bytes.iter().position(|&b| b == b'{').and_then(|open| {
        let close = bytes[open + 1..].iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &bytes[open + 1..open + 1 + close])
    });
    let mut crc: u16 = 0;
    for &b in tagged.unwrap_or(bytes) {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

#[cfg(test)]
mod slot_tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.
        assert_eq!(cluster_slot("foo"), 12182);
        assert_eq!(
            cluster_slot("{user1000}.following"),
            cluster_slot("user1000")
        );
        // An empty tag hashes the whole key: CRC16("{}x"), not CRC16("") = 0.
        assert_eq!(cluster_slot("{}x"), 10595);
        let ks = Keyspace::new(16);
        let tag_slot = cluster_slot(&Keyspace::stream(3));
        assert_eq!(
            cluster_slot(&ks.registry("ten_x")),
            cluster_slot(&Keyspace::stream(ks.partition_of("ten_x")))
        );
        assert_eq!(cluster_slot(&Keyspace::dead_stream(3)), tag_slot);
        assert_eq!(tag_slot, 7085, "CLUSTER KEYSLOT {{p03}}x");
    }
}
