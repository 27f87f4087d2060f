//! Who is calling, and what it may do: pure logic, no I/O on the request
//! path. The edges (`grpc`, `http`) take the credentials a request carries
//! (a bearer API key or JWT, a client certificate's SANs) to
//! [`AuthTable::authenticate`], and check each operation against the
//! [`Caller`]'s scopes, which answer PERMISSION_DENIED naming the scope.
//!
//! API keys are stored as SHA-256 hashes and compared in constant time;
//! a caller may have several, so keys rotate without downtime. The table is
//! rebuilt from the config on reload and swapped in whole ([`Auth`]).

mod budget;
mod jwt;
mod scopes;

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{AuthSettings, Scopes};
use crate::error::Error;

pub use self::budget::{Budget, MissBudgets};
pub use self::scopes::{glob, GetAsk};

/// The authentication table in force; reloads swap it whole.
pub type Auth = Arc<ArcSwap<AuthTable>>;

/// An authenticated caller (or the anonymous one, when no callers are
/// configured), put in each request's extensions by the edge.
#[derive(Debug, Clone)]
pub struct Caller {
    name: Arc<str>,
    /// None: anonymous on a server without callers, every scope granted.
    scopes: Option<Arc<Scopes>>,
    /// Upstream calls it may cause (None: unlimited).
    budget: Option<Budget>,
}

impl Caller {
    /// The caller of a server that has no callers configured.
    pub fn anonymous() -> Caller {
        Caller { name: Arc::from("anonymous"), scopes: None, budget: None }
    }

    #[cfg(test)]
    pub(crate) fn with_budget(name: &str, budget: Budget) -> Caller {
        Caller { name: Arc::from(name), scopes: None, budget: Some(budget) }
    }

    /// Its miss budget, if it has one.
    pub fn budget(&self) -> Option<Budget> {
        self.budget
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Callers by credential, built from [`AuthSettings`].
#[derive(Debug, Default)]
pub struct AuthTable {
    callers: Vec<Caller>,
    /// SHA-256 of each API key → index into `callers`.
    keys: Vec<([u8; 32], usize)>,
    /// Client-certificate SAN → index into `callers`.
    sans: HashMap<String, usize>,
    issuers: Vec<jwt::Issuer>,
}

impl AuthTable {
    /// Builds the table (reading JWKS files). Expects a validated config.
    pub fn build(settings: &AuthSettings) -> Result<AuthTable, String> {
        let mut table = AuthTable::default();
        for (i, c) in settings.callers.iter().enumerate() {
            let budget = (c.misses_per_minute > 0).then(|| Budget {
                per_minute: c.misses_per_minute,
                burst: if c.miss_burst == 0 { c.misses_per_minute.div_ceil(4) } else { c.miss_burst },
            });
            table.callers.push(Caller {
                name: Arc::from(c.name.as_str()),
                scopes: Some(Arc::new(c.scopes.clone())),
                budget,
            });
            for k in &c.api_keys {
                let hex = k.strip_prefix("sha256:").unwrap_or(k);
                let bytes = hex::decode(hex).map_err(|e| format!("caller {}: api key hash: {e}", c.name))?;
                let hash: [u8; 32] = bytes
                    .try_into()
                    .map_err(|_| format!("caller {}: api key hash is not 32 bytes", c.name))?;
                table.keys.push((hash, i));
            }
            for san in &c.tls_san {
                table.sans.insert(san.clone(), i);
            }
        }
        for iss in &settings.issuers {
            let subjects = settings
                .callers
                .iter()
                .enumerate()
                .flat_map(|(i, c)| {
                    c.jwt.iter().filter(|j| j.issuer == iss.issuer).map(move |j| (j.subject.clone(), i))
                })
                .collect();
            table.issuers.push(jwt::Issuer::new(iss, subjects)?);
        }
        Ok(table)
    }

    /// Whether requests must authenticate (callers are configured).
    pub fn enabled(&self) -> bool {
        !self.callers.is_empty()
    }

    /// Names the caller presenting `bearer` (an API key or a JWT) and/or a
    /// client certificate with `sans`. The bearer wins when both are given.
    pub fn authenticate(&self, bearer: Option<&str>, sans: &[String]) -> Result<Caller, Error> {
        if !self.enabled() {
            return Ok(Caller::anonymous());
        }
        if let Some(token) = bearer.map(str::trim).filter(|t| !t.is_empty()) {
            if token.split('.').count() == 3 && !self.issuers.is_empty() {
                return jwt::verify(&self.issuers, token).map(|i| self.callers[i].clone());
            }
            let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
            // Every key is compared, in constant time: no timing tells how
            // close a guess came or which caller it belongs to.
            let mut found = None;
            for (k, i) in &self.keys {
                if bool::from(k.ct_eq(&hash)) {
                    found = Some(*i);
                }
            }
            return found
                .map(|i| self.callers[i].clone())
                .ok_or_else(|| Error::NotAuthenticated("unknown API key or token".into()));
        }
        if let Some(i) = sans.iter().find_map(|s| self.sans.get(s)) {
            return Ok(self.callers[*i].clone());
        }
        if !sans.is_empty() {
            return Err(Error::NotAuthenticated(format!(
                "client certificate ({}) names no configured caller",
                sans.join(", ")
            )));
        }
        Err(Error::NotAuthenticated(
            "no credentials: send `authorization: Bearer <API key or JWT>` (or a client certificate)".into(),
        ))
    }
}

/// The SHA-256 hash of an API key as written in the config (`sha256:<hex>`).
pub fn hash_key(key: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(key.as_bytes())))
}

/// The identities a client certificate (DER) carries: its DNS and URI
/// subject alternative names.
pub fn certificate_sans(der: &[u8]) -> Vec<String> {
    let der = rustls_pki_types::CertificateDer::from(der);
    let Ok(cert) = webpki::EndEntityCert::try_from(&der) else { return Vec::new() };
    cert.valid_dns_names().chain(cert.valid_uri_names()).map(str::to_string).collect()
}

/// The credential of an `authorization` header value (`Bearer <token>`).
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim())
}

#[cfg(test)]
mod tests;
