//! Entity reads: `GET /{collection}/{id}` with conditional-request support and
//! paged `GET /{collection}` lists, for queues, users and skills alike.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::conditional::{self, Validators};
use crate::data::Kind;
use crate::error::ApiError;
use crate::extract::path_param;
use crate::paging::{Page, PageQuery};
use crate::state::SharedState;
use crate::volatile::decorate;

pub(super) fn router() -> Router<SharedState> {
    Router::new()
        .route("/api/v2/routing/queues", get(list_queues))
        .route("/api/v2/routing/queues/{id}", get(get_queue))
        .route("/api/v2/routing/skills", get(list_skills))
        .route("/api/v2/routing/skills/{id}", get(get_skill))
        .route("/api/v2/users", get(list_users))
        .route("/api/v2/users/{id}", get(get_user))
}

fn get_one(state: &SharedState, kind: Kind, id: &str, headers: &HeaderMap) -> Response {
    let store = state.store.read();
    let Some(entity) = store.collection(kind).get(id) else {
        return ApiError::not_found(format!("Unable to find a {} with id '{id}'", kind.label()))
            .into_response();
    };
    let validators = Validators { etag: entity.etag(), modified: entity.modified };
    conditional::respond(headers, &validators, || decorate(&entity.doc, entity.self_uri()))
}

fn list(state: &SharedState, kind: Kind, raw_query: Option<&str>) -> Result<Response, ApiError> {
    let query = PageQuery::parse(raw_query)?;
    let store = state.store.read();
    let matching = store.collection(kind).filter_by_name(query.name.as_deref());
    let page = Page::new(kind.collection_path(), &query, matching.len());
    let entities = matching[page.range()].iter().map(|e| decorate(&e.doc, e.self_uri())).collect();
    Ok(Json(page.envelope(entities)).into_response())
}

type IdParam = Result<Path<String>, PathRejection>;

async fn get_queue(State(s): State<SharedState>, id: IdParam, headers: HeaderMap) -> Response {
    match path_param(id) {
        Ok(id) => get_one(&s, Kind::Queue, &id, &headers),
        Err(e) => e.into_response(),
    }
}

async fn get_user(State(s): State<SharedState>, id: IdParam, headers: HeaderMap) -> Response {
    match path_param(id) {
        Ok(id) => get_one(&s, Kind::User, &id, &headers),
        Err(e) => e.into_response(),
    }
}

async fn get_skill(State(s): State<SharedState>, id: IdParam, headers: HeaderMap) -> Response {
    match path_param(id) {
        Ok(id) => get_one(&s, Kind::Skill, &id, &headers),
        Err(e) => e.into_response(),
    }
}

async fn list_queues(State(s): State<SharedState>, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    list(&s, Kind::Queue, q.as_deref())
}

async fn list_users(State(s): State<SharedState>, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    list(&s, Kind::User, q.as_deref())
}

async fn list_skills(State(s): State<SharedState>, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    list(&s, Kind::Skill, q.as_deref())
}
