//! One WebSocket of a notification channel: connects, then forwards what
//! arrives (events, heartbeats, the closing warning, the end) to the
//! listener. Reconnecting is the listener's decision: it knows which topics
//! a lost socket leaves uncovered.

use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::{self, Message};

/// Heartbeat topic the platform sends periodically.
pub const HEARTBEAT_TOPIC: &str = "channel.metadata";
/// Warning that the socket closes in about a minute (maintenance).
pub const CLOSING_TOPIC: &str = "v2.system.socket_closing";

/// What a socket reports.
#[derive(Debug)]
pub enum Report {
    Event {
        topic: String,
        body: Value,
        raw: String,
    },
    Heartbeat,
    Closing,
    /// The socket ended; `clean` when the server closed it properly.
    Ended {
        clean: bool,
        why: String,
    },
}

/// Where reports go: `(slot, connection, report)`.
pub type Reports = mpsc::UnboundedSender<(u64, u64, Report)>;

/// Why a connection failed.
#[derive(Debug)]
pub enum ConnectError {
    /// The channel no longer exists (expired, evicted): make a new one.
    Gone(String),
    Failed(String),
}

/// A connected socket; dropping it closes the connection.
pub struct Socket {
    pub conn: u64,
    task: JoinHandle<()>,
}

impl Drop for Socket {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Connects to `uri` (bounded by `timeout`) and starts forwarding.
pub async fn connect(
    uri: &str,
    slot: u64,
    conn: u64,
    reports: Reports,
    timeout: Duration,
) -> Result<Socket, ConnectError> {
    let (mut ws, _) = match tokio::time::timeout(timeout, tokio_tungstenite::connect_async(uri)).await {
        Err(_) => return Err(ConnectError::Failed(format!("no WebSocket within {timeout:?}"))),
        Ok(Err(tungstenite::Error::Http(resp))) if matches!(resp.status().as_u16(), 404 | 410) => {
            return Err(ConnectError::Gone(format!("channel answered {}", resp.status())))
        }
        Ok(Err(e)) => return Err(ConnectError::Failed(e.to_string())),
        Ok(Ok(ws)) => ws,
    };
    let task = tokio::spawn(async move {
        let ended = loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    let raw = text.to_string();
                    let Ok(v) = serde_json::from_str::<Value>(&raw) else {
                        tracing::debug!("undecodable notification ignored");
                        continue;
                    };
                    let topic = v.get("topicName").and_then(Value::as_str).unwrap_or_default().to_string();
                    let report = match topic.as_str() {
                        HEARTBEAT_TOPIC => Report::Heartbeat,
                        CLOSING_TOPIC => Report::Closing,
                        "" => continue,
                        _ => {
                            let body = v.get("eventBody").cloned().unwrap_or(Value::Null);
                            Report::Event { topic, body, raw }
                        }
                    };
                    if reports.send((slot, conn, report)).is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    break Report::Ended {
                        clean: true,
                        why: frame.map(|f| f.reason.to_string()).unwrap_or_else(|| "closed".into()),
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => break Report::Ended { clean: false, why: e.to_string() },
                None => break Report::Ended { clean: false, why: "connection ended".into() },
            }
        };
        let _ = reports.send((slot, conn, ended));
    });
    Ok(Socket { conn, task })
}
