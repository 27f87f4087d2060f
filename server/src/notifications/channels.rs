//! Notification API channels through the upstream client: create a channel,
//! set its subscriptions. All calls use one credential (channels belong to
//! the client that created them).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::upstream::Upstream;

const CHANNELS: &str = "/api/v2/notifications/channels";

/// A channel the platform created.
#[derive(Debug, Clone)]
pub struct Created {
    pub id: String,
    pub connect_uri: String,
    /// When the platform drops it.
    pub expires: Instant,
}

#[derive(Clone)]
pub struct Api {
    upstream: Arc<Upstream>,
    client_id: Option<String>,
}

impl Api {
    pub fn new(upstream: Arc<Upstream>, client_id: Option<String>) -> Api {
        Api { upstream, client_id }
    }

    pub async fn create(&self) -> Result<Created> {
        let v = self.call(Method::POST, CHANNELS.to_string(), None).await?;
        let field = |name: &str| {
            v.get(name)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| Error::BadUpstream(format!("channel without {name}: {v}")))
        };
        let (id, connect_uri) = (field("id")?, field("connectUri")?);
        // Without a readable expiry, assume the platform's 24 hours.
        let left = field("expires")
            .ok()
            .and_then(|e| chrono::DateTime::parse_from_rfc3339(&e).ok())
            .map(|e| (e.with_timezone(&chrono::Utc) - chrono::Utc::now()).to_std().unwrap_or_default())
            .unwrap_or(Duration::from_secs(24 * 3600));
        Ok(Created { id, connect_uri, expires: Instant::now() + left })
    }

    /// Replaces the channel's subscriptions with exactly `topics`.
    pub async fn replace(&self, channel: &str, topics: &BTreeSet<String>) -> Result<()> {
        let body: Vec<Value> = topics.iter().map(|t| json!({ "id": t })).collect();
        self.call(Method::PUT, format!("{CHANNELS}/{channel}/subscriptions"), Some(Value::Array(body)))
            .await
            .map(|_| ())
    }

    /// Drops every subscription of a channel this instance no longer uses
    /// (the platform keeps channels until they expire; an unsubscribed one
    /// costs it nothing and delivers nothing).
    pub async fn clear(&self, channel: &str) -> Result<()> {
        self.call(Method::DELETE, format!("{CHANNELS}/{channel}/subscriptions"), None).await.map(|_| ())
    }

    async fn call(&self, method: Method, path: String, body: Option<Value>) -> Result<Value> {
        self.upstream.platform_json(self.client_id.as_deref(), method, &path, body.as_ref()).await
    }
}
