use std::time::Duration;

use base64::Engine;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

use super::*;
use crate::config::{CallerSettings, IssuerSettings, JwtIdentity, Secret};

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn routing_caller() -> CallerSettings {
    CallerSettings {
        name: "routing-svc".into(),
        api_keys: vec![hash_key("old-key"), hash_key("new-key")],
        jwt: vec![JwtIdentity { issuer: "https://idp.test".into(), subject: Some("routing-svc".into()) }],
        tls_san: vec!["routing-svc.prod.svc".into()],
        scopes: Scopes {
            get: vec!["routing.*".into()],
            invalidate_prefixes: vec!["prod:routing.".into()],
            invalidate_tags: vec!["queue:*".into()],
            watch: vec!["routing.*".into()],
            data_actions: vec!["routing.queue".into()],
            ..Scopes::default()
        },
        ..CallerSettings::default()
    }
}

fn settings() -> AuthSettings {
    AuthSettings {
        callers: vec![routing_caller()],
        issuers: vec![IssuerSettings {
            issuer: "https://idp.test".into(),
            audience: Some("cxcache".into()),
            secret: Some(Secret::new("0123456789abcdef0123456789abcdef")),
            leeway: Duration::ZERO,
            ..IssuerSettings::default()
        }],
        ..AuthSettings::default()
    }
}

fn hs256(claims: serde_json::Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
    )
    .unwrap()
}

#[test]
fn without_callers_everyone_is_anonymous_with_every_scope() {
    let t = AuthTable::build(&AuthSettings::default()).unwrap();
    let c = t.authenticate(None, &[]).unwrap();
    assert_eq!(c.name(), "anonymous");
    c.check_get(GetAsk { kind: "user", force_refresh: true, max_age: true }).unwrap();
    c.check_invalidate(&[], &["prod:".into()], &[]).unwrap();
}

#[test]
fn either_of_two_api_keys_works_so_keys_rotate() {
    let t = AuthTable::build(&settings()).unwrap();
    assert_eq!(t.authenticate(Some("old-key"), &[]).unwrap().name(), "routing-svc");
    assert_eq!(t.authenticate(Some("new-key"), &[]).unwrap().name(), "routing-svc");
    let e = t.authenticate(Some("guess"), &[]).unwrap_err();
    assert!(matches!(e, Error::NotAuthenticated(_)), "{e}");
    let e = t.authenticate(None, &[]).unwrap_err();
    assert!(e.to_string().contains("authorization: Bearer"), "{e}");
}

#[test]
fn hs256_jwts_are_checked_for_issuer_audience_expiry_and_not_before() {
    let t = AuthTable::build(&settings()).unwrap();
    let ok = hs256(
        serde_json::json!({"iss": "https://idp.test", "aud": "cxcache", "sub": "routing-svc", "exp": now() + 60}),
    );
    assert_eq!(t.authenticate(Some(&ok), &[]).unwrap().name(), "routing-svc");
    for (why, claims) in [
        (
            "expired",
            serde_json::json!({"iss": "https://idp.test", "aud": "cxcache", "sub": "routing-svc", "exp": now() - 60}),
        ),
        (
            "audience",
            serde_json::json!({"iss": "https://idp.test", "aud": "other", "sub": "routing-svc", "exp": now() + 60}),
        ),
        (
            "nbf",
            serde_json::json!({"iss": "https://idp.test", "aud": "cxcache", "sub": "routing-svc", "exp": now() + 600, "nbf": now() + 300}),
        ),
        (
            "issuer",
            serde_json::json!({"iss": "https://evil.test", "aud": "cxcache", "sub": "routing-svc", "exp": now() + 60}),
        ),
        (
            "subject",
            serde_json::json!({"iss": "https://idp.test", "aud": "cxcache", "sub": "someone", "exp": now() + 60}),
        ),
    ] {
        let e = t.authenticate(Some(&hs256(claims)), &[]).unwrap_err();
        assert!(matches!(e, Error::NotAuthenticated(_)), "{why}: {e}");
    }
    // Signed with another secret.
    let forged = encode(
        &Header::new(Algorithm::HS256),
        &serde_json::json!({"iss": "https://idp.test", "aud": "cxcache", "sub": "routing-svc", "exp": now() + 60}),
        &EncodingKey::from_secret(b"not-the-secret-not-the-secret!!"),
    )
    .unwrap();
    assert!(t.authenticate(Some(&forged), &[]).is_err());
}

#[test]
fn es256_jwts_verify_against_a_jwks_file() {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = key.public_key_raw(); // 0x04 || x || y
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwks = serde_json::json!({"keys": [{
        "kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256", "use": "sig",
        "x": b64(&raw[1..33]), "y": b64(&raw[33..65]),
    }]});
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks.to_string()).unwrap();
    let mut s = settings();
    s.issuers[0].secret = None;
    s.issuers[0].jwks_file = Some(path);
    let t = AuthTable::build(&s).unwrap();
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("k1".into());
    let claims = serde_json::json!({"iss": "https://idp.test", "aud": "cxcache", "sub": "routing-svc", "exp": now() + 60});
    let token = encode(&header, &claims, &EncodingKey::from_ec_der(&key.serialize_der())).unwrap();
    assert_eq!(t.authenticate(Some(&token), &[]).unwrap().name(), "routing-svc");
    // An HS256 token is not accepted by an issuer with only EC keys.
    assert!(t.authenticate(Some(&hs256(claims)), &[]).is_err());
}

#[test]
fn a_client_certificate_san_names_its_caller() {
    let t = AuthTable::build(&settings()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["routing-svc.prod.svc".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let sans = certificate_sans(cert.der());
    assert_eq!(sans, vec!["routing-svc.prod.svc".to_string()]);
    assert_eq!(t.authenticate(None, &sans).unwrap().name(), "routing-svc");
    assert!(t.authenticate(None, &["other.svc".into()]).is_err());
}

#[test]
fn scopes_refuse_naming_the_scope() {
    let t = AuthTable::build(&settings()).unwrap();
    let c = t.authenticate(Some("new-key"), &[]).unwrap();
    c.check_get(GetAsk { kind: "routing.queue", ..GetAsk::default() }).unwrap();
    let e = c.check_get(GetAsk { kind: "user", ..GetAsk::default() }).unwrap_err();
    assert!(matches!(&e, Error::Forbidden { scope, .. } if scope == "get"), "{e}");
    assert!(e.to_string().contains("routing-svc") && e.to_string().contains("kind user"), "{e}");
    let e = c.check_get(GetAsk { kind: "routing.queue", force_refresh: true, max_age: false }).unwrap_err();
    assert!(e.to_string().contains("force_refresh"), "{e}");
    let e = c.check_get(GetAsk { kind: "routing.queue", force_refresh: false, max_age: true }).unwrap_err();
    assert!(e.to_string().contains("max_age"), "{e}");

    c.check_invalidate(
        &["prod:routing.queue:q1:full".into()],
        &["prod:routing.queue:".into()],
        &["queue:q1".into()],
    )
    .unwrap();
    let e = c.check_invalidate(&[], &["prod:u".into()], &[]).unwrap_err();
    assert!(e.to_string().contains("invalidate_prefixes") && e.to_string().contains("prod:u"), "{e}");
    assert!(c.check_invalidate(&[], &[], &["user:u1".into()]).is_err());

    c.check_watch(["routing.queue"], []).unwrap();
    assert!(c.check_watch(["user"], []).is_err());
    assert!(c.check_watch([], [Some("user")]).is_err());
    assert!(c.may_watch_kind("routing.queue") && !c.may_watch_kind("user"));

    c.check_data_action("routing.queue", "q1").unwrap();
    assert!(c.check_data_action("user", "").unwrap_err().to_string().contains("data_actions"));
    let mut s = settings();
    s.callers[0].scopes.data_actions = vec!["integrations.action.execute:custom_-_1".into()];
    let one = AuthTable::build(&s).unwrap().authenticate(Some("new-key"), &[]).unwrap();
    one.check_data_action("integrations.action.execute", "custom_-_1").unwrap();
    let e = one.check_data_action("integrations.action.execute", "custom_-_2").unwrap_err();
    assert!(e.to_string().contains("integrations.action.execute:custom_-_2"), "{e}");
}

#[test]
fn globs() {
    assert!(glob("routing.*", "routing.queue"));
    assert!(glob("*", "anything"));
    assert!(glob("a*c*e", "abcde"));
    assert!(!glob("routing.*", "user"));
    assert!(!glob("routing.queue", "routing.queues"));
    assert!(glob("queue:*", "queue:"));
}

#[test]
fn bearer_headers() {
    assert_eq!(bearer("Bearer abc"), Some("abc"));
    assert_eq!(bearer("bearer  abc "), Some("abc"));
    assert_eq!(bearer("Basic abc"), None);
}
