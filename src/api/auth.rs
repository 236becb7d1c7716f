//! `Authorization: Bearer sk_...` → the key's tenant.
//!
//! Keys are looked up by SHA-256 in the Redis hash `sluice:keys` and the answer, yes or no, is
//! cached in-process for a short TTL, so the hot path usually costs no Redis round trip for auth.
//! The TTL bounds how long a revoked key keeps working on a replica after the revocation reached
//! the Redis copy (the contract allows 5 s; the default TTL is 2 s). The registry copy never
//! brings a revoked key back (see `registry::copy`), so the bound holds through rebuilds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::HttpRequest;
use actix_web::http::header::AUTHORIZATION;

use super::error::ApiError;
use crate::domain::ApiKey;
use crate::keyspace::{API_KEYS, KeyIndexEntry, Keyspace, TenantKeys};
use crate::redis_pool::Redis;

/// Who is calling.
#[derive(Clone, Debug)]
pub struct Principal {
    pub tenant_id: Arc<str>,
    pub key_id: Arc<str>,
    /// The tenant's partition and keys.
    pub keys: Arc<TenantKeys>,
}

/// Cached key lookups. Bounded: when full, expired entries go first, then everything.
pub struct KeyCache {
    entries: Mutex<HashMap<String, (Instant, Option<Principal>)>>,
    ttl: Duration,
    keyspace: Keyspace,
}

/// Enough for every key of a large deployment; a flood of random keys only ever evicts.
const MAX_ENTRIES: usize = 50_000;

impl KeyCache {
    pub fn new(ttl: Duration, keyspace: Keyspace) -> Self {
        KeyCache {
            entries: Mutex::new(HashMap::new()),
            ttl,
            keyspace,
        }
    }

    /// Authenticates `req`, consulting Redis on a cache miss.
    pub async fn authenticate(
        &self,
        req: &HttpRequest,
        redis: &Redis,
    ) -> Result<Principal, ApiError> {
        let presented = match bearer_token(req) {
            Bearer::Token(token) => token,
            Bearer::Missing => return Err(ApiError::MissingKey),
            Bearer::Ambiguous => return Err(ApiError::InvalidKey),
        };
        let hash = ApiKey::hash_presented_key(presented).ok_or(ApiError::InvalidKey)?;
        if let Some(cached) = self.get(&hash) {
            return cached.ok_or(ApiError::InvalidKey);
        }
        // An answer ages from when its read began: a revocation written while the read was on
        // its way is then at most one TTL behind, whatever the read's latency.
        let asked_at = Instant::now();
        let stored: Option<String> = redis
            .query(redis::cmd("HGET").arg(API_KEYS).arg(&hash))
            .await?;
        let principal = stored
            .as_deref()
            .and_then(|v| v.parse::<KeyIndexEntry>().ok())
            .map(|entry| Principal {
                keys: Arc::new(self.keyspace.tenant(&entry.tenant_id)),
                tenant_id: entry.tenant_id.into(),
                key_id: entry.key_id.into(),
            });
        self.put(hash, asked_at, principal.clone());
        principal.ok_or(ApiError::InvalidKey)
    }

    fn get(&self, hash: &str) -> Option<Option<Principal>> {
        let entries = self.entries.lock().expect("key cache lock");
        let (at, principal) = entries.get(hash)?;
        (at.elapsed() < self.ttl).then(|| principal.clone())
    }

    fn put(&self, hash: String, asked_at: Instant, principal: Option<Principal>) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().expect("key cache lock");
        if entries.len() >= MAX_ENTRIES {
            let ttl = self.ttl;
            entries.retain(|_, (at, _)| at.elapsed() < ttl);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(hash, (asked_at, principal));
    }
}

/// What a request's `Authorization` header presents.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Bearer<'a> {
    /// The token of `Authorization: Bearer <token>` (scheme case-insensitive).
    Token(&'a str),
    /// No header, or none with a bearer token.
    Missing,
    /// More than one `Authorization` header: which one counts would depend on who reads it (a
    /// proxy in front may have checked another), so none does.
    Ambiguous,
}

/// The bearer token `req` presents.
pub(super) fn bearer_token(req: &HttpRequest) -> Bearer<'_> {
    let mut headers = req.headers().get_all(AUTHORIZATION);
    let Some(value) = headers.next() else {
        return Bearer::Missing;
    };
    if headers.next().is_some() {
        return Bearer::Ambiguous;
    }
    let token = value
        .to_str()
        .ok()
        .and_then(|value| value.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|token| !token.is_empty());
    token.map_or(Bearer::Missing, Bearer::Token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn bearer_tokens() {
        let req = |v: &str| {
            TestRequest::default()
                .insert_header((AUTHORIZATION, v))
                .to_http_request()
        };
        assert_eq!(bearer_token(&req("Bearer sk_abc")), Bearer::Token("sk_abc"));
        assert_eq!(
            bearer_token(&req("bearer  sk_abc ")),
            Bearer::Token("sk_abc")
        );
        assert_eq!(bearer_token(&req("Basic dXNlcg==")), Bearer::Missing);
        assert_eq!(bearer_token(&req("Bearer ")), Bearer::Missing);
        assert_eq!(
            bearer_token(&TestRequest::default().to_http_request()),
            Bearer::Missing
        );
        let twice = TestRequest::default()
            .append_header((AUTHORIZATION, "Bearer sk_abc"))
            .append_header((AUTHORIZATION, "Bearer sk_abc"))
            .to_http_request();
        assert_eq!(bearer_token(&twice), Bearer::Ambiguous);
    }
}
