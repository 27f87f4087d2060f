//! Shared helpers: an in-process emulator plus a reqwest client.

use std::time::Duration;

use genesys_emulator::{start, EmulatorConfig, EmulatorHandle};
use reqwest::{Client, Response};
use serde_json::Value;

pub const CLIENT_ID: &str = "cxcache-demo";
pub const SECRET: &str = "demo-secret";

pub struct Emu {
    pub handle: EmulatorHandle,
    pub http: Client,
}

pub async fn emu(config: EmulatorConfig) -> Emu {
    let handle = start(config, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let http = Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    Emu { handle, http }
}

pub async fn emu_default() -> Emu {
    emu(EmulatorConfig::default()).await
}

impl Emu {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.handle.base_url(), path)
    }

    pub async fn token_response(&self, id: &str, secret: &str) -> Response {
        self.http
            .post(self.url("/oauth/token"))
            .basic_auth(id, Some(secret))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("grant_type=client_credentials")
            .send()
            .await
            .unwrap()
    }

    pub async fn token_for(&self, id: &str, secret: &str) -> String {
        let resp = self.token_response(id, secret).await;
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        body["access_token"].as_str().unwrap().to_string()
    }

    pub async fn token(&self) -> String {
        self.token_for(CLIENT_ID, SECRET).await
    }

    pub async fn get(&self, token: &str, path: &str) -> Response {
        self.http.get(self.url(path)).bearer_auth(token).send().await.unwrap()
    }

    pub async fn get_json(&self, token: &str, path: &str) -> Value {
        let resp = self.get(token, path).await;
        assert_eq!(resp.status(), 200, "GET {path}");
        resp.json().await.unwrap()
    }

    pub async fn post_json(&self, token: &str, path: &str, body: &str) -> Response {
        self.http
            .post(self.url(path))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap()
    }
}

/// `value` without the per-response fields.
pub fn stable(mut value: Value) -> Value {
    if let Some(map) = value.as_object_mut() {
        map.remove("_links");
        map.remove("retrievedAt");
    }
    value
}

pub fn header<'a>(resp: &'a Response, name: &str) -> &'a str {
    resp.headers().get(name).unwrap_or_else(|| panic!("missing header {name}")).to_str().unwrap()
}
