//! JWT callers: tokens signed by a configured issuer (HS256 with a shared
//! secret, or RS256 / ES256 with keys from a JWKS file), with `iss`, `aud`
//! (when configured), `exp` and `nbf` checked.

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::config::IssuerSettings;
use crate::error::Error;

/// One issuer's keys and the callers its subjects map to.
pub(super) struct Issuer {
    issuer: String,
    audience: Option<String>,
    leeway: u64,
    keys: Vec<Key>,
    /// (subject or any, caller index).
    subjects: Vec<(Option<String>, usize)>,
}

struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer").field("issuer", &self.issuer).field("keys", &self.keys.len()).finish()
    }
}

#[derive(Deserialize)]
struct Claims {
    iss: String,
    #[serde(default)]
    sub: Option<String>,
}

impl Issuer {
    pub(super) fn new(s: &IssuerSettings, subjects: Vec<(Option<String>, usize)>) -> Result<Issuer, String> {
        let mut keys = Vec::new();
        if let Some(secret) = &s.secret {
            keys.push(Key {
                kid: None,
                alg: Algorithm::HS256,
                key: DecodingKey::from_secret(secret.expose().as_bytes()),
            });
        }
        if let Some(path) = &s.jwks_file {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("jwks_file {}: {e}", path.display()))?;
            let set: JwkSet =
                serde_json::from_str(&text).map_err(|e| format!("jwks_file {}: {e}", path.display()))?;
            for jwk in &set.keys {
                let alg = match &jwk.algorithm {
                    jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
                    jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                    _ => continue,
                };
                let key =
                    DecodingKey::from_jwk(jwk).map_err(|e| format!("jwks_file {}: {e}", path.display()))?;
                keys.push(Key { kid: jwk.common.key_id.clone(), alg, key });
            }
            if keys.is_empty() {
                return Err(format!("jwks_file {}: no RSA or EC keys", path.display()));
            }
        }
        Ok(Issuer {
            issuer: s.issuer.clone(),
            audience: s.audience.clone(),
            leeway: s.leeway.as_secs(),
            keys,
            subjects,
        })
    }
}

/// The caller index a valid token names.
pub(super) fn verify(issuers: &[Issuer], token: &str) -> Result<usize, Error> {
    let bad = |why: &str| Error::NotAuthenticated(format!("JWT refused: {why}"));
    let header = jsonwebtoken::decode_header(token).map_err(|e| bad(&e.to_string()))?;
    // Which issuer: read `iss` unverified only to pick the keys.
    let iss = unverified_issuer(token).ok_or_else(|| bad("no iss claim"))?;
    let issuer =
        issuers.iter().find(|i| i.issuer == iss).ok_or_else(|| bad(&format!("unknown issuer {iss:?}")))?;
    let mut last = bad("no key of the issuer matches the token's algorithm and kid");
    for key in issuer.keys.iter().filter(|k| k.alg == header.alg) {
        if let (Some(want), Some(kid)) = (&header.kid, &key.kid) {
            if want != kid {
                continue;
            }
        }
        let mut v = Validation::new(key.alg);
        v.set_issuer(&[&issuer.issuer]);
        match &issuer.audience {
            Some(aud) => v.set_audience(&[aud]),
            None => v.validate_aud = false,
        }
        v.validate_nbf = true;
        v.leeway = issuer.leeway;
        v.set_required_spec_claims(&["exp", "iss"]);
        match jsonwebtoken::decode::<Claims>(token, &key.key, &v) {
            Ok(data) => {
                let sub = data.claims.sub;
                return issuer
                    .subjects
                    .iter()
                    .find(|(want, _)| want.is_none() || *want == sub)
                    .map(|(_, i)| *i)
                    .ok_or_else(|| {
                        bad(&format!(
                            "subject {:?} of {iss} is no configured caller",
                            sub.unwrap_or_default()
                        ))
                    });
            }
            Err(e) => last = bad(&e.to_string()),
        }
    }
    Err(last)
}

fn unverified_issuer(token: &str) -> Option<String> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    serde_json::from_slice::<Claims>(&bytes).ok().map(|c| c.iss)
}
