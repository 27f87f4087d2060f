//! POSTs over HTTP(S) with reqwest (rustls): 2xx is delivered, anything
//! else (or no answer within the endpoint's timeout) is retried.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::deliver::{Refused, Transport};
use super::wire::SIGNATURE_HEADER;
use crate::config::CallbackSettings;

pub struct Http {
    client: reqwest::Client,
    url: String,
}

impl Http {
    pub fn new(settings: &CallbackSettings) -> Result<Http, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .user_agent(concat!("cxcache/", env!("CARGO_PKG_VERSION")))
            // A redirect would re-send the signed body somewhere unconfigured.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Http { client, url: settings.url.clone() })
    }
}

#[async_trait]
impl Transport for Http {
    async fn post(&self, body: Bytes, signature: String) -> Result<(), Refused> {
        let answer = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature)
            .body(body)
            .send()
            .await
            .map_err(|e| Refused { reason: format!("no answer: {e}"), retry_after: None })?;
        let status = answer.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = answer
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        Err(Refused { reason: format!("answered {status}"), retry_after })
    }
}
