//! The Notification API, as the platform runs it:
//!
//! - `POST /api/v2/notifications/channels` → `{id, connectUri, expires}`; at
//!   most [`MAX_CHANNELS`] channels per client: the 21st evicts the oldest
//!   (its sockets are closed);
//! - `GET/PUT/POST/DELETE /api/v2/notifications/channels/{id}/subscriptions`
//!   (`PUT` replaces, `POST` adds; body `[{"id": topic}]`; more than
//!   [`MAX_TOPICS`] topics → 400);
//! - the WebSocket at `connectUri` (`/ws/channels/{id}`, no auth: the id is
//!   the secret) pushes `{"topicName", "eventBody"}` for subscribed topics,
//!   a `channel.metadata` heartbeat every `heartbeat_interval`, and closes
//!   when the channel expires (`channel_ttl`).
//!
//! Events: a mutation through the admin API or the handle emits
//! `v2.audits.entitytype.{QUEUE|USER|SKILL}.entityid.{id}`; a routing status
//! change emits `v2.users.{id}.routingStatus`. A socket not connected when an
//! event is emitted misses it, as on the platform.
//!
//! Admin (tests): `GET /admin/notifications/channels`,
//! `POST /admin/notifications/channels/{id}/closing` (the
//! `v2.system.socket_closing` warning, then a close `closing_grace` later),
//! `POST /admin/notifications/channels/{id}/drop` (sockets cut without a
//! close frame: an unexpected disconnect).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::sync::broadcast;

use crate::data::{Entity, Kind, RoutingStatus};
use crate::error::ApiError;
use crate::extract::path_param;
use crate::state::SharedState;

/// Topics one channel may carry.
pub const MAX_TOPICS: usize = 1000;
/// Channels one client may hold; creating one more evicts the oldest.
pub const MAX_CHANNELS: usize = 20;

const CHANNELS: &str = "/api/v2/notifications/channels";

pub(super) fn router() -> Router<SharedState> {
    Router::new().route(CHANNELS, post(create).get(list_own)).route(
        &format!("{CHANNELS}/{{id}}/subscriptions"),
        get(subscriptions).put(replace).post(add).delete(clear),
    )
}

/// The WebSocket (outside the bearer gate) and the admin controls.
pub(super) fn socket_and_admin_router() -> Router<SharedState> {
    Router::new()
        .route("/ws/channels/{id}", get(socket))
        .route("/admin/notifications/channels", get(admin_list))
        .route("/admin/notifications/channels/{id}/closing", post(admin_closing))
        .route("/admin/notifications/channels/{id}/drop", post(admin_drop))
}

/// What a channel's sockets are told to do.
#[derive(Debug, Clone)]
enum Push {
    /// A message to send as is.
    Text(Arc<str>),
    /// Send `v2.system.socket_closing`, close `closing_grace` later.
    Closing,
    /// Cut the connection without a close frame.
    Drop,
    /// Close with this reason (evicted).
    Close(&'static str),
}

#[derive(Debug)]
struct Channel {
    owner: String,
    topics: BTreeSet<String>,
    expires: Instant,
    expires_at: DateTime<Utc>,
    tx: broadcast::Sender<Push>,
    sockets: Arc<AtomicUsize>,
}

#[derive(Debug, Default)]
struct Inner {
    channels: HashMap<String, Channel>,
    /// Owner → channel ids, oldest first.
    order: HashMap<String, VecDeque<String>>,
}

impl Inner {
    fn drop_expired(&mut self, now: Instant) {
        let expired: Vec<String> =
            self.channels.iter().filter(|(_, c)| c.expires <= now).map(|(id, _)| id.clone()).collect();
        for id in expired {
            self.remove(&id, None);
        }
    }

    fn remove(&mut self, id: &str, close: Option<&'static str>) {
        if let Some(c) = self.channels.remove(id) {
            if let Some(close) = close {
                let _ = c.tx.send(Push::Close(close));
            }
            if let Some(order) = self.order.get_mut(&c.owner) {
                order.retain(|x| x != id);
            }
        }
    }

    /// The channel `id` if `owner` holds it and it has not expired.
    fn owned(&mut self, owner: &str, id: &str) -> Result<&mut Channel, ApiError> {
        self.drop_expired(Instant::now());
        match self.channels.get_mut(id) {
            Some(c) if c.owner == owner => Ok(c),
            _ => Err(ApiError::not_found(format!("Channel '{id}' not found"))),
        }
    }
}

/// Every notification channel of the emulator.
#[derive(Debug, Default)]
pub(crate) struct Notifications {
    inner: Mutex<Inner>,
    /// Event messages handed to sockets (heartbeats excluded).
    delivered: AtomicU64,
}

impl Notifications {
    /// An entity changed: its audit topic.
    pub fn entity_changed(&self, kind: Kind, entity: &Entity) {
        let ty = match kind {
            Kind::Queue => "QUEUE",
            Kind::User => "USER",
            Kind::Skill => "SKILL",
        };
        let body = json!({
            "id": uuid::Uuid::new_v4().to_string(),
            "entityId": entity.id,
            "entityType": ty,
            "action": "Update",
            "serviceName": "emulator",
            "eventTime": Utc::now().to_rfc3339(),
            "entity": { "id": entity.id, "name": entity.name(), "version": entity.version },
        });
        self.emit(&format!("v2.audits.entitytype.{ty}.entityid.{}", entity.id), body);
    }

    /// A user's routing status changed.
    pub fn routing_status_changed(&self, status: &RoutingStatus) {
        let body = json!({ "routingStatus": status.to_json() });
        self.emit(&format!("v2.users.{}.routingStatus", status.user_id), body);
    }

    /// Pushes an event to every live channel subscribed to `topic`.
    pub fn emit(&self, topic: &str, body: Value) {
        let msg: Arc<str> = json!({
            "topicName": topic,
            "version": "2",
            "eventBody": body,
            "metadata": { "CorrelationId": uuid::Uuid::new_v4().to_string() },
        })
        .to_string()
        .into();
        let mut inner = self.inner.lock();
        inner.drop_expired(Instant::now());
        for c in inner.channels.values().filter(|c| c.topics.contains(topic)) {
            if c.tx.send(Push::Text(msg.clone())).is_ok() {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// `(id, topics, sockets, expires)` of every live channel.
    pub fn list(&self) -> Vec<ChannelInfo> {
        let mut inner = self.inner.lock();
        inner.drop_expired(Instant::now());
        let mut out: Vec<ChannelInfo> = inner
            .channels
            .iter()
            .map(|(id, c)| ChannelInfo {
                id: id.clone(),
                owner: c.owner.clone(),
                topics: c.topics.iter().cloned().collect(),
                sockets: c.sockets.load(Ordering::Relaxed),
                expires: c.expires_at,
            })
            .collect();
        out.sort_by(|a, b| a.expires.cmp(&b.expires).then(a.id.cmp(&b.id)));
        out
    }

    /// Sends the closing warning on the channel's sockets; false if unknown.
    pub fn warn_closing(&self, id: &str) -> bool {
        self.inner.lock().channels.get(id).is_some_and(|c| c.tx.send(Push::Closing).is_ok())
    }

    /// Cuts the channel's sockets without a close frame; false if unknown.
    pub fn drop_sockets(&self, id: &str) -> bool {
        self.inner.lock().channels.get(id).is_some_and(|c| c.tx.send(Push::Drop).is_ok())
    }

    fn create(&self, owner: &str, ttl: Duration) -> (String, DateTime<Utc>) {
        let mut inner = self.inner.lock();
        inner.drop_expired(Instant::now());
        let id = uuid::Uuid::new_v4().to_string();
        let held = inner.order.get(owner).map_or(0, VecDeque::len);
        if held >= MAX_CHANNELS {
            if let Some(oldest) = inner.order.get(owner).and_then(|o| o.front().cloned()) {
                tracing::info!(channel = %oldest, "channel limit reached: oldest channel evicted");
                inner.remove(&oldest, Some("channel evicted: too many channels"));
            }
        }
        let expires_at = Utc::now() + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::days(1));
        let (tx, _) = broadcast::channel(4096);
        inner.channels.insert(
            id.clone(),
            Channel {
                owner: owner.to_string(),
                topics: BTreeSet::new(),
                expires: Instant::now() + ttl,
                expires_at,
                tx,
                sockets: Arc::default(),
            },
        );
        inner.order.entry(owner.to_string()).or_default().push_back(id.clone());
        (id, expires_at)
    }
}

/// One channel, as the admin API and the handle show it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ChannelInfo {
    pub id: String,
    pub owner: String,
    pub topics: Vec<String>,
    /// Sockets connected right now.
    pub sockets: usize,
    pub expires: DateTime<Utc>,
}

type IdParam = Result<Path<String>, PathRejection>;

fn owner(state: &SharedState, headers: &HeaderMap) -> Result<String, ApiError> {
    // The gate already checked the token; this only names its client.
    state
        .tokens
        .authenticate(headers)
        .map(|p| p.client_id)
        .map_err(|_| ApiError::new(StatusCode::UNAUTHORIZED, "bad.credentials", "Invalid login credentials."))
}

async fn create(State(s): State<SharedState>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    let owner = owner(&s, &headers)?;
    let host = headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or("127.0.0.1").to_string();
    let (id, expires) = s.notifications.create(&owner, s.config.channel_ttl);
    Ok(Json(json!({
        "id": id,
        "connectUri": format!("ws://{host}/ws/channels/{id}"),
        "expires": expires.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    })))
}

async fn list_own(State(s): State<SharedState>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    let owner = owner(&s, &headers)?;
    let entities: Vec<Value> = s
        .notifications
        .list()
        .into_iter()
        .filter(|c| c.owner == owner)
        .map(|c| json!({ "connectUri": format!("/ws/channels/{}", c.id), "id": c.id, "expires": c.expires }))
        .collect();
    Ok(Json(json!({ "entities": entities })))
}

fn topics_json(topics: &BTreeSet<String>) -> Json<Value> {
    Json(json!({ "entities": topics.iter().map(|t| json!({ "id": t })).collect::<Vec<_>>() }))
}

/// `[{"id": topic}, …]` → topics; anything else is a 400.
fn parse_topics(body: &[u8]) -> Result<Vec<String>, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("Unable to parse the request body as JSON: {e}")))?;
    let items = value.as_array().ok_or_else(|| ApiError::bad_request("Expected an array of topics"))?;
    items
        .iter()
        .map(|t| {
            t.get("id")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty() && !s.contains(char::is_whitespace))
                .map(str::to_string)
                .ok_or_else(|| ApiError::bad_request(format!("Invalid topic {t}")))
        })
        .collect()
}

fn too_many(n: usize) -> ApiError {
    ApiError::bad_request(format!("Channel may not have more than {MAX_TOPICS} topics (asked for {n})"))
}

async fn subscriptions(
    State(s): State<SharedState>,
    headers: HeaderMap,
    id: IdParam,
) -> Result<Json<Value>, ApiError> {
    let (owner, id) = (owner(&s, &headers)?, path_param(id)?);
    let mut inner = s.notifications.inner.lock();
    Ok(topics_json(&inner.owned(&owner, &id)?.topics))
}

async fn replace(
    State(s): State<SharedState>,
    headers: HeaderMap,
    id: IdParam,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let (owner, id) = (owner(&s, &headers)?, path_param(id)?);
    let topics: BTreeSet<String> = parse_topics(&body)?.into_iter().collect();
    if topics.len() > MAX_TOPICS {
        return Err(too_many(topics.len()));
    }
    let mut inner = s.notifications.inner.lock();
    let channel = inner.owned(&owner, &id)?;
    channel.topics = topics;
    Ok(topics_json(&channel.topics))
}

async fn add(
    State(s): State<SharedState>,
    headers: HeaderMap,
    id: IdParam,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let (owner, id) = (owner(&s, &headers)?, path_param(id)?);
    let topics = parse_topics(&body)?;
    let mut inner = s.notifications.inner.lock();
    let channel = inner.owned(&owner, &id)?;
    let mut merged = channel.topics.clone();
    merged.extend(topics);
    if merged.len() > MAX_TOPICS {
        return Err(too_many(merged.len()));
    }
    channel.topics = merged;
    Ok(topics_json(&channel.topics))
}

async fn clear(
    State(s): State<SharedState>,
    headers: HeaderMap,
    id: IdParam,
) -> Result<Json<Value>, ApiError> {
    let (owner, id) = (owner(&s, &headers)?, path_param(id)?);
    let mut inner = s.notifications.inner.lock();
    let channel = inner.owned(&owner, &id)?;
    channel.topics.clear();
    Ok(topics_json(&channel.topics))
}

async fn socket(State(s): State<SharedState>, id: IdParam, ws: WebSocketUpgrade) -> Response {
    let id = match path_param(id) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    let attached = {
        let mut inner = s.notifications.inner.lock();
        inner.drop_expired(Instant::now());
        inner.channels.get(&id).map(|c| (c.tx.subscribe(), c.expires, c.sockets.clone()))
    };
    let Some((rx, expires, sockets)) = attached else {
        return ApiError::not_found(format!("Channel '{id}' not found")).into_response();
    };
    let (heartbeat, grace) = (s.config.heartbeat_interval, s.config.closing_grace);
    ws.on_upgrade(move |socket| async move {
        sockets.fetch_add(1, Ordering::Relaxed);
        run_socket(socket, rx, expires, heartbeat, grace).await;
        sockets.fetch_sub(1, Ordering::Relaxed);
    })
}

fn system_message(topic: &str, message: &str) -> Message {
    Message::Text(json!({ "topicName": topic, "eventBody": { "message": message } }).to_string().into())
}

fn close(reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame { code: 1000, reason: reason.into() }))
}

async fn run_socket(
    mut socket: WebSocket,
    mut rx: broadcast::Receiver<Push>,
    expires: Instant,
    heartbeat: Duration,
    grace: Duration,
) {
    let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    let expiry = tokio::time::sleep_until(expires.into());
    tokio::pin!(expiry);
    // Far away until a closing warning sets it.
    let closing = tokio::time::sleep(Duration::from_secs(365 * 24 * 3600));
    tokio::pin!(closing);
    loop {
        tokio::select! {
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
            _ = beat.tick() => {
                if socket.send(system_message("channel.metadata", "WebSocket Heartbeat")).await.is_err() {
                    return;
                }
            }
            _ = &mut expiry => {
                let _ = socket.send(close("channel expired")).await;
                return;
            }
            _ = &mut closing => {
                let _ = socket.send(close("closing for maintenance")).await;
                return;
            }
            push = rx.recv() => match push {
                Ok(Push::Text(text)) => {
                    if socket.send(Message::Text(text.as_ref().into())).await.is_err() {
                        return;
                    }
                }
                Ok(Push::Closing) => {
                    let warn = system_message("v2.system.socket_closing", "Notification socket closing soon");
                    if socket.send(warn).await.is_err() {
                        return;
                    }
                    closing.as_mut().reset(tokio::time::Instant::now() + grace);
                }
                // Dropping the socket cuts the TCP connection: no close frame.
                Ok(Push::Drop) => return,
                Ok(Push::Close(reason)) => {
                    let _ = socket.send(close(reason)).await;
                    return;
                }
                // A socket this far behind is cut, as a slow consumer would be.
                Err(broadcast::error::RecvError::Lagged(_)) => return,
                Err(broadcast::error::RecvError::Closed) => {
                    let _ = socket.send(close("channel removed")).await;
                    return;
                }
            },
        }
    }
}

async fn admin_list(State(s): State<SharedState>) -> Json<Value> {
    let delivered = s.notifications.delivered.load(Ordering::Relaxed);
    let channels: Vec<Value> = s
        .notifications
        .list()
        .into_iter()
        .map(|c| {
            json!({
                "id": c.id, "owner": c.owner, "topics": c.topics.len(), "sockets": c.sockets,
                "expires": c.expires,
            })
        })
        .collect();
    Json(json!({ "channels": channels, "delivered": delivered }))
}

async fn admin_closing(State(s): State<SharedState>, id: IdParam) -> Result<Json<Value>, ApiError> {
    let id = path_param(id)?;
    if !s.notifications.warn_closing(&id) {
        return Err(ApiError::not_found(format!("Channel '{id}' not found or no socket")));
    }
    Ok(Json(json!({ "closing": id })))
}

async fn admin_drop(State(s): State<SharedState>, id: IdParam) -> Result<Json<Value>, ApiError> {
    let id = path_param(id)?;
    if !s.notifications.drop_sockets(&id) {
        return Err(ApiError::not_found(format!("Channel '{id}' not found or no socket")));
    }
    Ok(Json(json!({ "dropped": id })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_parse_and_limits() {
        assert_eq!(parse_topics(br#"[{"id":"a.b"},{"id":"c"}]"#).unwrap(), vec!["a.b", "c"]);
        assert!(parse_topics(br#"{"id":"a"}"#).is_err());
        assert!(parse_topics(br#"[{"id":""}]"#).is_err());
        assert!(parse_topics(b"[").is_err());
    }

    #[test]
    fn the_21st_channel_evicts_the_oldest() {
        let n = Notifications::default();
        let ids: Vec<String> = (0..=MAX_CHANNELS).map(|_| n.create("c", Duration::from_secs(60)).0).collect();
        let live: Vec<String> = n.list().into_iter().map(|c| c.id).collect();
        assert_eq!(live.len(), MAX_CHANNELS);
        assert!(!live.contains(&ids[0]));
        assert!(live.contains(&ids[MAX_CHANNELS]));
        n.create("other", Duration::from_secs(60));
        assert_eq!(n.list().len(), MAX_CHANNELS + 1, "limits are per client");
    }
}
