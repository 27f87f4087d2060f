//! OAuth client-credentials tokens, one per configured credential.
//!
//! The platform issues no refresh token for this grant, so a token is
//! replaced by a new one at about 80 % of its lifetime, before it can expire
//! under a request. A 401 on an API call drops the token so the next call
//! fetches a new one. Secrets never appear in logs or errors.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Deserialize;

use crate::config::Credential;
use crate::error::{Error, Result};

/// Share of a token's lifetime after which it is replaced.
const REFRESH_AT: f64 = 0.8;

#[derive(Clone)]
struct Token {
    value: String,
    refresh_at: Instant,
}

struct Slot {
    credential: Credential,
    current: Mutex<Option<Token>>,
    /// Serializes token fetches of one credential: one request refreshes,
    /// the others wait for it rather than stampeding the token endpoint.
    refreshing: tokio::sync::Mutex<()>,
}

/// A bearer token handed to a request, with the slot it came from.
#[derive(Clone)]
pub struct Lease {
    pub slot: usize,
    pub token: String,
}

pub struct TokenPool {
    slots: Vec<Slot>,
    token_url: String,
    http: reqwest::Client,
    next: AtomicUsize,
}

#[derive(Deserialize)]
struct TokenReply {
    access_token: String,
    expires_in: u64,
}

impl TokenPool {
    pub fn new(credentials: Vec<Credential>, token_url: String, http: reqwest::Client) -> Self {
        let slots = credentials
            .into_iter()
            .map(|credential| Slot { credential, current: Mutex::new(None), refreshing: Default::default() })
            .collect();
        TokenPool { slots, token_url, http, next: AtomicUsize::new(0) }
    }

    /// A token to use for the next call (credentials taken in turn).
    pub async fn lease(&self) -> Result<Lease> {
        if self.slots.is_empty() {
            return Err(Error::Unauthenticated("no upstream credentials configured".into()));
        }
        let slot = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        self.lease_slot(slot).await
    }

    async fn lease_slot(&self, slot: usize) -> Result<Lease> {
        let s = &self.slots[slot];
        if let Some(t) = s.current.lock().clone().filter(|t| Instant::now() < t.refresh_at) {
            return Ok(Lease { slot, token: t.value });
        }
        let _guard = s.refreshing.lock().await;
        // Another request may have refreshed while we waited.
        if let Some(t) = s.current.lock().clone().filter(|t| Instant::now() < t.refresh_at) {
            return Ok(Lease { slot, token: t.value });
        }
        let token = self.fetch_token(&s.credential).await?;
        *s.current.lock() = Some(token.clone());
        Ok(Lease { slot, token: token.value })
    }

    /// Forgets `lease`'s token after the API answered 401 with it, so the
    /// next lease fetches a fresh one.
    pub fn reject(&self, lease: &Lease) {
        let mut current = self.slots[lease.slot].current.lock();
        if current.as_ref().is_some_and(|t| t.value == lease.token) {
            *current = None;
        }
    }

    async fn fetch_token(&self, credential: &Credential) -> Result<Token> {
        let started = Instant::now();
        let reply = self
            .http
            .post(&self.token_url)
            .basic_auth(&credential.client_id, Some(credential.client_secret.expose()))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .map_err(|e| Error::Unavailable {
                message: format!("token endpoint unreachable: {}", without_url(&e)),
                retry_after: None,
            })?;
        let status = reply.status().as_u16();
        match status {
            200..=299 => {}
            400 | 401 | 403 => {
                tracing::warn!(client_id = %credential.client_id, status, "token endpoint rejected credential");
                return Err(Error::Unauthenticated(format!(
                    "token endpoint rejected client {} (HTTP {status})",
                    credential.client_id
                )));
            }
            _ => {
                return Err(Error::Unavailable {
                    message: format!("token endpoint answered HTTP {status}"),
                    retry_after: None,
                })
            }
        }
        let reply: TokenReply = reply
            .json()
            .await
            .map_err(|e| Error::BadUpstream(format!("token reply: {}", without_url(&e))))?;
        let lifetime = Duration::from_secs(reply.expires_in);
        tracing::debug!(client_id = %credential.client_id, ?lifetime, "fetched upstream token");
        Ok(Token { value: reply.access_token, refresh_at: started + lifetime.mul_f64(REFRESH_AT) })
    }
}

/// reqwest errors print the URL; ours carry no secrets, but keep messages short.
pub(crate) fn without_url(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    if let Some(url) = e.url() {
        msg = msg.replace(url.as_str(), url.path());
    }
    msg
}
