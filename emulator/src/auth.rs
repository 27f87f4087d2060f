//! OAuth client-credentials tokens and the bearer check every `/api` call
//! passes. Tokens are opaque random strings that expire after the configured
//! TTL; revoking a client kills its tokens and its ability to get new ones.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use axum::http::header::AUTHORIZATION;
use axum::http::HeaderMap;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use parking_lot::Mutex;
use rand::RngCore;

/// Why a token request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IssueError {
    /// Missing or wrong credentials, unknown or revoked client.
    InvalidClient,
}

/// Why a bearer token was refused; `client_id` is known when the token was
/// once valid (expired or revoked), for attributing the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejection {
    pub reason: RejectReason,
    pub client_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RejectReason {
    Missing,
    Invalid,
}

/// A request's authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Principal {
    pub client_id: String,
    pub token: String,
}

#[derive(Debug, Clone)]
struct TokenInfo {
    client_id: String,
    expires_at: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    tokens: HashMap<String, TokenInfo>,
    revoked: HashSet<String>,
}

/// Registered clients and issued tokens.
#[derive(Debug)]
pub(crate) struct TokenStore {
    clients: HashMap<String, String>,
    ttl: Duration,
    inner: Mutex<Inner>,
}

impl TokenStore {
    pub fn new(clients: &[(String, String)], ttl: Duration) -> Self {
        Self { clients: clients.iter().cloned().collect(), ttl, inner: Mutex::new(Inner::default()) }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Whether the credentials belong to a registered, non-revoked client.
    pub fn verify(&self, client_id: &str, secret: &str) -> bool {
        self.clients.get(client_id).map(String::as_str) == Some(secret)
            && !self.inner.lock().revoked.contains(client_id)
    }

    /// Issues a fresh token for valid, non-revoked credentials.
    pub fn issue(&self, client_id: &str, secret: &str) -> Result<String, IssueError> {
        if self.clients.get(client_id).map(String::as_str) != Some(secret) {
            return Err(IssueError::InvalidClient);
        }
        let mut inner = self.inner.lock();
        if inner.revoked.contains(client_id) {
            return Err(IssueError::InvalidClient);
        }
        let now = Instant::now();
        inner.tokens.retain(|_, t| t.expires_at > now);
        let mut bytes = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut bytes);
        let token = hex::encode(bytes);
        inner.tokens.insert(
            token.clone(),
            TokenInfo { client_id: client_id.to_string(), expires_at: now + self.ttl },
        );
        Ok(token)
    }

    /// Checks the `Authorization: Bearer` header.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, Rejection> {
        let Some(token) = bearer_token(headers) else {
            return Err(Rejection { reason: RejectReason::Missing, client_id: None });
        };
        let inner = self.inner.lock();
        let invalid = |client_id: Option<String>| Rejection { reason: RejectReason::Invalid, client_id };
        let Some(info) = inner.tokens.get(token) else {
            return Err(invalid(None));
        };
        if info.expires_at <= Instant::now() || inner.revoked.contains(&info.client_id) {
            return Err(invalid(Some(info.client_id.clone())));
        }
        Ok(Principal { client_id: info.client_id.clone(), token: token.to_string() })
    }

    /// From now on the client's tokens are refused and it gets no new ones.
    pub fn revoke_client(&self, client_id: &str) {
        self.inner.lock().revoked.insert(client_id.to_string());
    }
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// `(client_id, secret)` of an `Authorization: Basic` header.
pub(crate) fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(encoded.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((id.to_string(), secret.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn store(ttl: Duration) -> TokenStore {
        TokenStore::new(&[("c".into(), "s".into())], ttl)
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {token}")).unwrap());
        h
    }

    #[test]
    fn issue_and_check() {
        let s = store(Duration::from_secs(60));
        assert_eq!(s.issue("c", "bad"), Err(IssueError::InvalidClient));
        assert_eq!(s.issue("x", "s"), Err(IssueError::InvalidClient));
        assert!(s.verify("c", "s") && !s.verify("c", "x"));
        let t = s.issue("c", "s").unwrap();
        assert_eq!(s.authenticate(&bearer(&t)).unwrap().client_id, "c");
        assert_eq!(s.authenticate(&bearer("nope")).unwrap_err().client_id, None);
        assert_eq!(s.authenticate(&HeaderMap::new()).unwrap_err().reason, RejectReason::Missing);
        s.revoke_client("c");
        assert_eq!(s.authenticate(&bearer(&t)).unwrap_err().client_id.as_deref(), Some("c"));
        assert_eq!(s.issue("c", "s"), Err(IssueError::InvalidClient));
        assert!(!s.verify("c", "s"));
    }

    #[test]
    fn zero_ttl_expires_at_once() {
        let s = store(Duration::ZERO);
        let t = s.issue("c", "s").unwrap();
        assert!(s.authenticate(&bearer(&t)).is_err());
    }

    #[test]
    fn basic_header() {
        let mut h = HeaderMap::new();
        let v = format!("Basic {}", STANDARD.encode("id:se:cret"));
        h.insert(AUTHORIZATION, HeaderValue::from_str(&v).unwrap());
        assert_eq!(basic_credentials(&h), Some(("id".into(), "se:cret".into())));
        h.insert(AUTHORIZATION, HeaderValue::from_static("Basic !!!"));
        assert_eq!(basic_credentials(&h), None);
    }
}
