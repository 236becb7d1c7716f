//! Identifiers handed out by `sluice-admin`, and API keys.

use rand::Rng;
use rand::distr::Alphanumeric;
use sha2::{Digest, Sha256};
use utoipa::openapi::schema::ObjectBuilder;

use super::text::{Rule, string_schema, text_rule};

/// `n` characters of `[A-Za-z0-9]` from the operating system's generator.
pub fn random_base62(n: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(n)
        .map(char::from)
        .collect()
}

macro_rules! prefixed_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $prefix:literal, $len:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash)]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            pub fn generate() -> Self {
                $name(format!("{}{}", $prefix, random_base62($len)))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl Rule for $name {
            /// Accepts only ids of this kind's shape, so a typo is caught before any lookup.
            fn parse(s: &str) -> Result<Self, String> {
                let ok = s
                    .strip_prefix($prefix)
                    .is_some_and(|rest| rest.len() == $len && rest.bytes().all(|b| b.is_ascii_alphanumeric()));
                if ok {
                    Ok($name(s.to_owned()))
                } else {
                    Err(format!(
                        concat!("{:?} is not ", $kind, " id: ", $prefix, " and ", $len, " letters or digits"),
                        s
                    ))
                }
            }

            fn schema() -> ObjectBuilder {
                string_schema(concat!("^", $prefix, "[A-Za-z0-9]{", $len, "}$"), None, None)
            }
        }
        text_rule!($name);
    };
}

prefixed_id!(
    /// A tenant: the owner of signals and API keys.
    TenantId, "a tenant", "ten_", 16
);
prefixed_id!(
    /// A signal, as returned to clients: `sig_` and 8 base62 characters.
    SignalId, "a signal", "sig_", 8
);
prefixed_id!(
    /// An API key's public id, used to revoke it. Never the secret.
    KeyId, "an API key", "key_", 16
);

prefixed_id!(
    /// An admin token's public id, used to revoke it. Never the secret.
    AdminTokenId, "an admin token", "adm_", 16
);

/// A bearer secret: a prefix naming its kind (`sk_` for API keys, `sat_` for admin tokens)
/// followed by 32 random bytes in hex. Shown once at creation; only its SHA-256 is ever stored.
pub struct Secret(String);

/// API keys are secrets of this prefix.
pub type ApiKey = Secret;

impl Secret {
    pub const API_KEY_PREFIX: &'static str = "sk_";
    const HEX_LEN: usize = 64;

    /// A new API key.
    pub fn generate_api_key() -> Self {
        Self::generate(Self::API_KEY_PREFIX)
    }

    pub fn generate(prefix: &str) -> Self {
        let bytes: [u8; 32] = rand::rng().random();
        Secret(format!("{prefix}{}", hex(&bytes)))
    }

    /// The hash under which an API key is stored, or `None` when `presented` cannot be one.
    pub fn hash_presented_key(presented: &str) -> Option<String> {
        Self::hash_presented(Self::API_KEY_PREFIX, presented)
    }

    /// The hash under which the secret is stored, or `None` when `presented` cannot be a
    /// secret of this prefix (so malformed ones are refused without a lookup).
    pub fn hash_presented(prefix: &str, presented: &str) -> Option<String> {
        let hex = presented.strip_prefix(prefix)?;
        if hex.len() != Self::HEX_LEN
            || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return None;
        }
        Some(sha256_hex(presented))
    }

    pub fn hash(&self) -> String {
        sha256_hex(&self.0)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

fn sha256_hex(s: &str) -> String {
    hex(&Sha256::digest(s.as_bytes()))
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse_back() {
        let sig = SignalId::generate();
        assert_eq!(sig.as_str().len(), 12);
        assert_eq!(SignalId::parse(sig.as_str()).unwrap(), sig);
        assert!(TenantId::parse(sig.as_str()).is_err());
        assert!(SignalId::parse("sig_short").is_err());
    }

    #[test]
    fn keys_hash_only_when_well_formed() {
        let key = ApiKey::generate_api_key();
        assert_eq!(ApiKey::hash_presented_key(key.expose()), Some(key.hash()));
        assert_ne!(ApiKey::generate_api_key().expose(), key.expose());
        assert_eq!(ApiKey::hash_presented_key("sk_123"), None);
        assert_eq!(
            ApiKey::hash_presented_key(&key.expose().to_uppercase()),
            None
        );
        assert_eq!(ApiKey::hash_presented_key(&key.expose()[1..]), None);
        let token = Secret::generate("sat_");
        assert_eq!(
            Secret::hash_presented("sat_", token.expose()),
            Some(token.hash())
        );
        assert_eq!(ApiKey::hash_presented_key(token.expose()), None);
    }
}
