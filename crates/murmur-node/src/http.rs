//! The HTTP API: documents as JSON, change events as Server-Sent Events,
//! status and Prometheus metrics.
//!
//! Every error is a 4xx or 5xx with a JSON body `{"error": "..."}` that
//! says what is wrong.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json as JsonBody, Router};
use futures_util::{Stream, StreamExt};
use murmur::automerge::ChangeHash;
use murmur::json::{self, ApplyError, OpError};
use murmur::view::{self, Conflict, ViewOptions};
use murmur::{Ack, DocHandle, DocumentId, Node, Origin, Status};
use murmur_core::ReplicaError;
use serde::Deserialize;
use serde_json::{json, Value as Json};
use subtle::ConstantTimeEq;
use tokio::sync::watch;
use tracing::Instrument;

use crate::access::{Access, TokenError, Tokens};
use crate::metrics;
use crate::sync::SyncHub;

/// The largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The routes, for the 404 message.
const ROUTES: &str =
    "GET /docs, POST /docs, GET /docs/{id}, DELETE /docs/{id}, POST /docs/{id}/changes, \
                      GET /docs/{id}/history, GET /docs/{id}/diff, \
                      GET /docs/{id}/events, GET /feed, GET /status, GET /peers, POST /peers, \
                      DELETE /peers/{id}, GET /metrics, GET /sync (WebSocket), \
                      GET /tokens, POST /tokens, DELETE /tokens/{id}";

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    node: Arc<Node>,
    token: Option<Arc<str>>,
    shutdown: watch::Receiver<bool>,
    started: Instant,
    tokens: Arc<std::sync::Mutex<Tokens>>,
    sync: Arc<SyncHub>,
}

impl AppState {
    /// State for serving `node`. With a `token`, every request must carry
    /// it; `tokens` are the sync clients' tokens; `shutdown` turning true
    /// ends the event streams.
    pub fn new(
        node: Arc<Node>,
        token: Option<String>,
        tokens: Tokens,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        AppState {
            sync: Arc::new(SyncHub::new(node.clone())),
            node,
            token: token.map(Arc::from),
            shutdown,
            started: Instant::now(),
            tokens: Arc::new(std::sync::Mutex::new(tokens)),
        }
    }

    /// The sessions of `GET /sync`.
    pub(crate) fn sync_hub(&self) -> Arc<SyncHub> {
        self.sync.clone()
    }

    /// What a sync client that `presented` a token (or none) may do: the
    /// operator's `http_token` gives everything, a client token its scope;
    /// no token is enough only when the API has no `http_token` (it is on
    /// loopback).
    pub(crate) fn access(&self, presented: Option<&str>) -> Result<Access, ApiError> {
        let unauthorized = |message: &str| ApiError::new(StatusCode::UNAUTHORIZED, message);
        match (presented, &self.token) {
            (Some(given), Some(expected)) if bool::from(given.as_bytes().ct_eq(expected.as_bytes())) => {
                Ok(Access::full())
            }
            (Some(given), _) => self
                .tokens
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .check(given)
                .ok_or_else(|| unauthorized("unknown or revoked token")),
            (None, Some(_)) => Err(unauthorized(
                "missing token: add `?token=<token>` to the URL (or send `Authorization: Bearer <token>`)",
            )),
            (None, None) => Ok(Access::full()),
        }
    }

    /// The node served.
    pub(crate) fn node(&self) -> &Node {
        &self.node
    }

    /// Turns true when the server shuts down.
    pub(crate) fn shutdown(&self) -> watch::Receiver<bool> {
        self.shutdown.clone()
    }
}

/// The API's routes and middleware.
pub fn router(state: AppState) -> Router {
    // `/sync` checks its own tokens (a browser cannot send a header on a
    // WebSocket, so it may come in the query).
    let sync = Router::new()
        .route("/sync", get(crate::sync::get_sync))
        .layer(middleware::from_fn(trace))
        .with_state(state.clone());
    Router::new()
        .route("/docs", get(list_docs).post(create_doc))
        .route("/docs/{id}", get(get_doc).delete(delete_doc))
        .route("/docs/{id}/changes", post(post_changes))
        .route("/docs/{id}/history", get(get_history))
        .route("/docs/{id}/diff", get(get_diff))
        .route("/docs/{id}/events", get(doc_events))
        .route("/feed", get(crate::feed::get_feed))
        .route("/status", get(status))
        .route("/peers", get(peers).post(add_peer))
        .route("/peers/{id}", axum::routing::delete(remove_peer))
        .route("/metrics", get(metrics))
        .route("/tokens", get(list_tokens).post(create_token))
        .route("/tokens/{id}", axum::routing::delete(revoke_token))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(json_errors))
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .layer(middleware::from_fn(trace))
        .with_state(state)
        .merge(sync)
}

/// The body of `POST /tokens`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    /// The documents it may sync (absent: all).
    docs: Option<Vec<String>>,
    /// Whether its changes are refused.
    #[serde(default)]
    read_only: bool,
}

fn token_json(record: &crate::access::TokenRecord) -> Json {
    json!({"id": record.id, "docs": record.docs, "read_only": record.read_only, "created": record.created})
}

/// `POST /tokens`: a new sync-client token, shown once.
async fn create_token(State(state): State<AppState>, body: Bytes) -> ApiResult<Response> {
    let request: NewToken = if body.is_empty() {
        NewToken {
            docs: None,
            read_only: false,
        }
    } else {
        serde_json::from_slice(&body)
            .map_err(|error| ApiError::bad_request(format!("bad token request: {error}")))?
    };
    let docs = request
        .docs
        .map(|docs| {
            docs.iter()
                .map(|doc| {
                    doc.parse::<DocumentId>()
                        .map_err(|_| ApiError::bad_request(format!("bad document id {doc:?}")))
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    let tokens = state.tokens.clone();
    let read_only = request.read_only;
    // The file is written and synced: off the async threads.
    let created = tokio::task::spawn_blocking(move || {
        tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .create(docs, read_only)
    })
    .await
    .map_err(|error| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()))?
    .map_err(token_error)?;
    let (token, record) = created;
    let mut body = token_json(&record);
    body["token"] = json!(token);
    Ok((StatusCode::CREATED, JsonBody(body)).into_response())
}

/// `GET /tokens`: every client token, without secrets.
async fn list_tokens(State(state): State<AppState>) -> JsonBody<Json> {
    let tokens = state.tokens.lock().unwrap_or_else(|e| e.into_inner());
    JsonBody(json!({"tokens": tokens.list().map(token_json).collect::<Vec<_>>()}))
}

/// `DELETE /tokens/{id}`: revokes a token and closes the sessions using it.
async fn revoke_token(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let tokens = state.tokens.clone();
    let revoked = id.clone();
    tokio::task::spawn_blocking(move || {
        tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .revoke(&revoked)
    })
    .await
    .map_err(|error| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()))?
    .map_err(token_error)?;
    let closed = state.sync.revoke(&id);
    tracing::info!(token = %id, sessions_closed = closed, "token revoked");
    Ok(StatusCode::NO_CONTENT)
}

fn token_error(error: TokenError) -> ApiError {
    match error {
        TokenError::Unknown(_) => ApiError::new(StatusCode::NOT_FOUND, error.to_string()),
        TokenError::TooMany(_) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, error.to_string())
        }
        TokenError::File { .. } => {
            tracing::error!(%error, "cannot store tokens");
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
        }
    }
}

/// An error response: a status and a message, sent as `{"error": ...}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub(crate) fn gone(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::GONE, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, JsonBody(json!({"error": self.message}))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<murmur::Error> for ApiError {
    fn from(error: murmur::Error) -> Self {
        match error {
            murmur::Error::Replica(ReplicaError::UnknownDocument(id)) => ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no document {id} on this node"),
            ),
            murmur::Error::View(error) => ApiError::new(StatusCode::NOT_FOUND, error.to_string()),
            murmur::Error::Replica(ReplicaError::Deleted(id)) => {
                ApiError::new(StatusCode::GONE, format!("document {id} was deleted"))
            }
            murmur::Error::Replica(error @ ReplicaError::ForeignData { .. }) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, error.to_string())
            }
            murmur::Error::NotReplicated(murmur::NotReplicated { wanted, reached }) => {
                ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "the change was made and reached {reached:?}, but not {wanted:?} in time; \
                     it stays and keeps replicating (do not send it again)"
                    ),
                )
            }
            murmur::Error::NotNetworked => ApiError::new(
                StatusCode::CONFLICT,
                "this node is not networked (it has no listen address)",
            ),
            murmur::Error::Closed => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the node is shutting down")
            }
            murmur::Error::Replica(error @ ReplicaError::DiskFull { .. }) => {
                ApiError::new(StatusCode::INSUFFICIENT_STORAGE, error.to_string())
            }
            murmur::Error::Replica(error @ ReplicaError::ChangeTooLarge { .. }) => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, error.to_string())
            }
            other => {
                tracing::error!(error = %other, "request failed");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string())
            }
        }
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// Most bytes of a plain-text error read to put it in a JSON body.
const MAX_PLAIN_ERROR_BYTES: usize = 4096;

/// Gives every error response the API's `{"error": ...}` body, including
/// those axum's extractors and layers write as plain text (an id that is
/// not valid UTF-8, a body over the limit): the text, or the status's
/// reason when there is none.
async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|kind| kind.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_PLAIN_ERROR_BYTES)
        .await
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text
    };
    let mut json = ApiError::new(status, message).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            json.headers_mut().insert(name.clone(), value.clone());
        }
    }
    json
}

async fn trace(request: Request, next: Next) -> Response {
    let span =
        tracing::info_span!("http", method = %request.method(), path = %request.uri().path());
    async move {
        let started = Instant::now();
        let response = next.run(request).await;
        let status = response.status().as_u16();
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        if response.status().is_server_error() {
            tracing::warn!(status, ms, "request");
        } else {
            tracing::debug!(status, ms, "request");
        }
        response
    }
    .instrument(span)
    .await
}

async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(expected) = &state.token {
        let refusal = match bearer_token(request.headers()) {
            None => Some("missing bearer token: send `Authorization: Bearer <token>`"),
            Some(given) if !bool::from(given.as_bytes().ct_eq(expected.as_bytes())) => {
                Some("wrong bearer token")
            }
            Some(_) => None,
        };
        if let Some(message) = refusal {
            return ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
        }
    }
    next.run(request).await
}

pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no route {method} {}; the routes are {ROUTES}", uri.path()),
    )
}

async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{method} is not allowed on {}; the routes are {ROUTES}",
            uri.path()
        ),
    )
}

fn parse_doc_id(text: &str) -> ApiResult<DocumentId> {
    text.parse()
        .map_err(|e| ApiError::bad_request(format!("`{text}` is not a document id: {e}")))
}

async fn doc_handle(state: &AppState, id: &str) -> ApiResult<DocHandle> {
    Ok(state.node.doc(parse_doc_id(id)?).await?)
}

async fn list_docs(State(state): State<AppState>) -> ApiResult<JsonBody<Json>> {
    let ids: Vec<String> = state
        .node
        .documents()
        .await?
        .iter()
        .map(ToString::to_string)
        .collect();
    Ok(JsonBody(json!({ "documents": ids })))
}

/// The media type of Automerge's bytes.
const OCTET_STREAM: &str = "application/octet-stream";

/// True if `headers` say the body (`content-type`) or the answer wanted
/// (`accept`) is Automerge bytes.
fn is_binary(headers: &HeaderMap, name: header::HeaderName) -> bool {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.contains(OCTET_STREAM))
}

/// `POST /docs`: an empty body makes an empty document; Automerge bytes
/// (`Content-Type: application/octet-stream`: a saved document or changes)
/// import one with its history. Any other body is refused.
async fn create_doc(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let body = body_bytes(body)?;
    let doc = if is_binary(&headers, header::CONTENT_TYPE) {
        if body.is_empty() {
            return Err(ApiError::bad_request(
                "the body is empty: send a saved Automerge document or its changes",
            ));
        }
        let doc = state.node.import(body.to_vec()).await?;
        tracing::info!(doc = %doc.id(), bytes = body.len(), "imported document");
        doc
    } else if body.is_empty() {
        let doc = state.node.create_doc().await?;
        tracing::info!(doc = %doc.id(), "created document");
        doc
    } else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "POST /docs takes no body (an empty document), or Automerge bytes with \
             Content-Type: application/octet-stream (an import); this body was not used",
        ));
    };
    let location = format!("/docs/{}", doc.id());
    let mut response = (
        StatusCode::CREATED,
        JsonBody(json!({ "id": doc.id().to_string() })),
    )
        .into_response();
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// `DELETE /docs/{id}`: deletes the document on every node (a tombstone
/// that replicates and wins over every change); answers once it is
/// durable here. Deleting it again is answered 410.
async fn delete_doc(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<JsonBody<Json>> {
    let doc = parse_doc_id(&id)?;
    let handle = state.node.doc(doc).await?;
    handle.delete().await?;
    tracing::info!(doc = %doc, "deleted document");
    Ok(JsonBody(json!({"id": doc.to_string(), "deleted": true})))
}

/// `GET /docs/{id}`'s query.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadQuery {
    at: Option<String>,
    types: Option<String>,
    conflicts: Option<String>,
}

async fn get_doc(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    query: Result<Query<ReadQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if is_binary(&headers, header::ACCEPT) {
        if query.at.is_some() || query.types.is_some() || query.conflicts.is_some() {
            return Err(ApiError::bad_request(
                "Automerge bytes are the whole document: at, types and conflicts are for JSON",
            ));
        }
        let doc = doc_handle(&state, &id).await?;
        let bytes = doc.save().await?;
        let mut response = Response::new(axum::body::Body::from(bytes));
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(OCTET_STREAM));
        return Ok(response);
    }
    let options = ViewOptions {
        at: query.at.as_deref().map(parse_heads).transpose()?,
        types: parse_flag("types", query.types.as_deref())?,
        conflicts: parse_flag("conflicts", query.conflicts.as_deref())?,
    };
    let doc = doc_handle(&state, &id).await?;
    let conflicts = options.conflicts;
    let view = doc.view(options).await?;
    let mut body = json!({
        "id": doc.id().to_string(),
        "heads": hex_heads(&view.heads),
        "content": view.content,
    });
    if conflicts {
        body["conflicts"] = view.conflicts.iter().map(conflict_json).collect();
    }
    Ok(JsonBody(body).into_response())
}

fn conflict_json(conflict: &Conflict) -> Json {
    let values: Vec<Json> = conflict
        .values
        .iter()
        .map(|value| {
            json!({
                "value": value.value,
                "change": value.change.map(|hash| hash.to_string()),
                "actor": value.actor,
            })
        })
        .collect();
    json!({"path": conflict.path, "values": values})
}

/// Heads as a query parameter: change hashes in hex, comma-separated (an
/// empty text is the empty document's heads).
pub(crate) fn parse_heads(text: &str) -> ApiResult<Vec<ChangeHash>> {
    text.split(',')
        .map(str::trim)
        .filter(|hash| !hash.is_empty())
        .map(|hash| {
            hash.parse::<ChangeHash>().map_err(|_| {
                ApiError::bad_request(format!(
                    "`{hash}` is not a change hash (64 hex digits; heads are comma-separated)"
                ))
            })
        })
        .collect()
}

/// `true` or `false` (absent: false).
fn parse_flag(name: &str, text: Option<&str>) -> ApiResult<bool> {
    match text {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "{name}={other:?}: expected true or false"
        ))),
    }
}

/// `GET /docs/{id}/history`'s query.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    offset: Option<usize>,
    limit: Option<usize>,
}

/// Changes a history page holds at most (and by default).
const MAX_HISTORY_PAGE: usize = 1000;
const DEFAULT_HISTORY_PAGE: usize = 100;

async fn get_history(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> ApiResult<JsonBody<Json>> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = match query.limit {
        None => DEFAULT_HISTORY_PAGE,
        Some(n @ 1..=MAX_HISTORY_PAGE) => n,
        Some(n) => {
            return Err(ApiError::bad_request(format!(
                "limit={n}: expected 1 to {MAX_HISTORY_PAGE}"
            )))
        }
    };
    let offset = query.offset.unwrap_or(0);
    let doc = doc_handle(&state, &id).await?;
    let history = doc.history(offset, limit).await?;
    let changes: Vec<Json> = history
        .changes
        .iter()
        .map(|change| {
            let (node, incarnation) = match change.writer {
                Some((node, incarnation)) => (json!(node.to_string()), json!(incarnation)),
                None => (Json::Null, Json::Null),
            };
            json!({
                "hash": change.hash.to_string(),
                "actor": change.actor,
                "node": node,
                "incarnation": incarnation,
                "seq": change.seq,
                "timestamp": change.timestamp,
                "message": change.message,
                "deps": hex_heads(&change.deps),
                "ops": change.ops,
            })
        })
        .collect();
    let end = offset.saturating_add(changes.len());
    Ok(JsonBody(json!({
        "id": doc.id().to_string(),
        "total": history.total,
        "offset": offset,
        "changes": changes,
        "next_offset": (end < history.total).then_some(end),
    })))
}

/// `GET /docs/{id}/diff`'s query.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiffQuery {
    from: Option<String>,
    to: Option<String>,
}

async fn get_diff(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<DiffQuery>, QueryRejection>,
) -> ApiResult<JsonBody<Json>> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let from = parse_heads(query.from.as_deref().unwrap_or(""))?;
    let to = query.to.as_deref().map(parse_heads).transpose()?;
    let doc = doc_handle(&state, &id).await?;
    let (from, to, patches) = doc
        .read(move |d| {
            let to = to.unwrap_or_else(|| d.get_heads());
            view::diff(d, &from, &to).map(|patches| (from, to, patches))
        })
        .await?
        .map_err(murmur::Error::from)?;
    Ok(JsonBody(json!({
        "id": doc.id().to_string(),
        "from": hex_heads(&from),
        "to": hex_heads(&to),
        "patches": patches,
    })))
}

/// The body of `POST /docs/{id}/changes`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangeRequest {
    ops: Json,
    #[serde(default)]
    ack: Option<String>,
    /// A message the change carries (history shows it).
    #[serde(default)]
    message: Option<String>,
}

/// `POST /docs/{id}/changes`' query (for a body of Automerge bytes, which
/// has no room for the acknowledgement level).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangesQuery {
    ack: Option<String>,
}

async fn post_changes(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    query: Result<Query<ChangesQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<JsonBody<Json>> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let body = body_bytes(body)?;
    if is_binary(&headers, header::CONTENT_TYPE) {
        let ack = parse_ack(query.ack.as_deref().unwrap_or("durable"))?;
        let doc = doc_handle(&state, &id).await?;
        let span = tracing::info_span!("merge", doc = %doc.id(), bytes = body.len());
        let change = doc.merge(body.to_vec(), ack).instrument(span).await?;
        let heads = doc.read(|d| hex_heads(&d.get_heads())).await?;
        return Ok(JsonBody(json!({
            "change": change.map(|hash| hash.to_string()),
            "heads": heads,
        })));
    }
    if query.ack.is_some() {
        return Err(ApiError::bad_request(
            "ack= in the query is for Automerge bytes; a JSON change says \"ack\" in its body",
        ));
    }
    let request = parse_change_request(&body)?;
    let ack = parse_ack(request.ack.as_deref().unwrap_or("durable"))?;
    let ops = json::parse_ops(request.ops).map_err(op_error)?;
    if ops.is_empty() {
        return Err(ApiError::bad_request("ops is empty: send at least one op"));
    }
    let doc = doc_handle(&state, &id).await?;
    let span = tracing::info_span!("change", doc = %doc.id(), ops = ops.len());
    let receipt = json::apply(&doc, ops, ack, request.message)
        .instrument(span)
        .await
        .map_err(|error| match error {
            ApplyError::Op(error) => op_error(error),
            ApplyError::Node(error) => error.into(),
        })?;
    let heads = doc.read(|d| hex_heads(&d.get_heads())).await?;
    Ok(JsonBody(json!({
        "change": receipt.change.map(|hash| hash.to_string()),
        "heads": heads,
    })))
}

fn body_bytes(body: Result<Bytes, BytesRejection>) -> ApiResult<Bytes> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is larger than the limit of {MAX_BODY_BYTES} bytes"),
            )
        } else {
            ApiError::new(rejection.status(), rejection.body_text())
        }
    })
}

/// A change request is `{"ops": [...], "ack": "..."}` or just the array of
/// ops.
fn parse_change_request(body: &[u8]) -> ApiResult<ChangeRequest> {
    let value: Json = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
    match value {
        Json::Array(_) => Ok(ChangeRequest {
            ops: value,
            ack: None,
            message: None,
        }),
        Json::Object(_) => ChangeRequest::deserialize(value).map_err(|e| {
            ApiError::bad_request(format!(
                "expected {{\"ops\": [...], \"ack\": \"durable\"}}: {e}"
            ))
        }),
        _ => Err(ApiError::bad_request(
            "expected {\"ops\": [...], \"ack\": \"durable\"} or an array of ops",
        )),
    }
}

fn op_error(error: OpError) -> ApiError {
    let status = match error {
        OpError::Malformed { .. } => StatusCode::BAD_REQUEST,
        OpError::DoesNotApply { .. } | OpError::CounterOverflow { .. } => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        OpError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
    };
    ApiError::new(status, error.to_string())
}

/// Parses `applied`, `durable` or `replicated:K`.
pub fn parse_ack(text: &str) -> ApiResult<Ack> {
    match text {
        "applied" => Ok(Ack::Applied),
        "durable" => Ok(Ack::Durable),
        _ => match text.strip_prefix("replicated:").map(str::parse::<u32>) {
            Some(Ok(peers)) => Ok(Ack::Replicated(peers)),
            _ => Err(ApiError::bad_request(format!(
                "ack `{text}` is not one of applied, durable, replicated:K (K a number of peers)"
            ))),
        },
    }
}

pub(crate) fn hex_heads(heads: &[murmur::automerge::ChangeHash]) -> Vec<String> {
    heads.iter().map(ToString::to_string).collect()
}

/// `GET /docs/{id}/events`: a `ready` event with the document's heads,
/// then a `change` event for each feed entry of the document, with the
/// entry's sequence number as its SSE `id:` and the patches of its
/// changes. It starts at the current end of the feed; `Last-Event-ID`
/// (or `?since=SEQ`) resumes after an entry instead, so a client that
/// reconnects misses nothing. A client that reads slowly costs a page of
/// entries: the stream reads them from the store as it goes.
async fn doc_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    query: Result<Query<crate::feed::FeedQuery>, QueryRejection>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let doc = doc_handle(&state, &id).await?;
    let entries = crate::feed::doc_entries(&state, &headers, query, doc.id()).await?;
    let heads = doc.heads().await?;
    tracing::debug!(doc = %doc.id(), "event stream opened");
    let ready = event_json(
        "ready",
        json!({"event": "ready", "doc": doc.id().to_string(), "heads": hex_heads(&heads)}),
    );
    let changes = entries
        .then(move |item| {
            let doc = doc.clone();
            async move {
                match item {
                    crate::feed::Item::Entry(entry) => change_event(&doc, &entry).await,
                    other => Some(crate::feed::sse_event(&other)),
                }
            }
        })
        .take_while(|event| std::future::ready(event.is_some()))
        .filter_map(|event| std::future::ready(event.map(Ok)));
    let stream = futures_util::stream::once(std::future::ready(Ok(ready))).chain(changes);
    Ok(Sse::new(stream))
}

/// A feed entry of `doc` as a `change` event, with the patches of its
/// changes; `None` if the document can no longer be read (the stream ends).
async fn change_event(doc: &DocHandle, entry: &murmur::FeedEntry) -> Option<Event> {
    if entry.deleted {
        let data = json!({"event": "deleted", "seq": entry.seq, "doc": entry.doc.to_string()});
        return Some(
            Event::default()
                .id(entry.seq.to_string())
                .event("deleted")
                .data(data.to_string()),
        );
    }
    let (changes, heads) = (entry.changes.clone(), entry.heads.clone());
    let patches = doc
        .read(move |d| view::entry_patches(d, &changes, &heads))
        .await
        .ok()?
        .ok()?;
    let mut data = json!({
        "event": "change",
        "seq": entry.seq,
        "doc": entry.doc.to_string(),
        "heads": hex_heads(&entry.heads),
        "origin": "local",
        "patches": patches,
    });
    if let Origin::Remote(peer) = entry.origin {
        data["origin"] = json!("remote");
        data["peer"] = json!(peer.to_string());
    }
    Some(
        Event::default()
            .id(entry.seq.to_string())
            .event("change")
            .data(data.to_string()),
    )
}

fn event_json(name: &str, data: Json) -> Event {
    Event::default().event(name).data(data.to_string())
}

/// How long `/status`, `/peers` and `/metrics` wait for the engine before
/// answering with the status it last published.
const STATUS_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

async fn status(State(state): State<AppState>) -> ApiResult<JsonBody<Json>> {
    let (status, fresh) = state.node.status_within(STATUS_WAIT).await?;
    let mut body = status_json(&status, state.started.elapsed().as_secs());
    body["stale"] = json!(!fresh);
    body["sync_clients"] = json!(state.sync.clients());
    Ok(JsonBody(body))
}

/// `POST /peers` with `{"id": NODE_ID, "addr": "HOST:PORT"}`: allows the
/// node and keeps a connection to it, until the node stops (the config
/// file is not changed).
async fn add_peer(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<JsonBody<Json>> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct AddPeer {
        id: String,
        addr: String,
    }
    let request: AddPeer = serde_json::from_slice(&body_bytes(body)?).map_err(|e| {
        ApiError::bad_request(format!(
            "expected {{\"id\": NODE_ID, \"addr\": \"HOST:PORT\"}}: {e}"
        ))
    })?;
    let id = crate::config::parse_node_id(&request.id).map_err(ApiError::bad_request)?;
    // Resolving a name may block: off the async workers.
    let text = request.addr.clone();
    let addr = tokio::task::spawn_blocking(move || crate::config::resolve(&text))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ApiError::bad_request(format!("addr: {e:#}")))?;
    state.node.add_peer(id, addr).await?;
    Ok(JsonBody(
        json!({ "id": id.to_string(), "addr": addr.to_string() }),
    ))
}

/// `DELETE /peers/{id}`: stops allowing the node and closes any connection
/// to it (until it is added again).
async fn remove_peer(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = crate::config::parse_node_id(&id).map_err(ApiError::bad_request)?;
    state.node.remove_peer(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn peers(State(state): State<AppState>) -> ApiResult<JsonBody<Json>> {
    let (status, _) = state.node.status_within(STATUS_WAIT).await?;
    Ok(JsonBody(json!({ "peers": peers_json(&status) })))
}

async fn metrics(State(state): State<AppState>) -> ApiResult<Response> {
    let (status, _) = state.node.status_within(STATUS_WAIT).await?;
    let body = metrics::render(&status, state.started.elapsed());
    Ok(([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], body).into_response())
}

fn peers_json(status: &Status) -> Vec<Json> {
    status
        .peers
        .iter()
        .map(|peer| {
            json!({
                "id": peer.id.to_string(),
                "addr": peer.addr.to_string(),
                "rtt_ms": peer.rtt.as_secs_f64() * 1000.0,
            })
        })
        .collect()
}

/// The node's status as JSON (`GET /status`): who it is, its peers, and
/// every figure of [`Status::figures`] by section (`node`, `traffic`,
/// `engine`), the same list `/metrics` serves.
pub fn status_json(status: &Status, uptime_secs: u64) -> Json {
    let mut json = json!({
        "node_id": status.node_id.to_string(),
        "listen": status.listen.map(|addr| addr.to_string()),
        "uptime_secs": uptime_secs,
        "documents": status.documents,
        "feed_end": status.feed_end,
        "peers": peers_json(status),
        "allowed": status.allowed.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "members": status
            .members
            .iter()
            .map(|(id, addr)| json!({"id": id.to_string(), "addr": addr}))
            .collect::<Vec<_>>(),
        "disk": {
            "free_bytes": status.metrics.disk_free_bytes,
            "full": status.metrics.disk_full == 1,
        },
    });
    for (section, figure) in status.figures() {
        json[section][figure.key] = json!(figure.value);
    }
    json
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_levels_parse_and_bad_ones_are_named() {
        assert!(matches!(parse_ack("applied"), Ok(Ack::Applied)));
        assert!(matches!(parse_ack("durable"), Ok(Ack::Durable)));
        assert!(matches!(parse_ack("replicated:2"), Ok(Ack::Replicated(2))));
        assert!(parse_ack("replicated:two").is_err());
        let bad = parse_ack("sometimes").unwrap_err();
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
        assert!(bad.message.contains("`sometimes` is not one of"));
    }

    #[test]
    fn a_change_too_big_is_413_whether_counted_here_or_by_the_engine() {
        let counted = op_error(OpError::TooLarge {
            ops: 520_001,
            max: 100_000,
        });
        assert_eq!(counted.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(counted.message.contains("split"), "{}", counted.message);
        let engine = ApiError::from(murmur::Error::Replica(ReplicaError::ChangeTooLarge {
            ops: 100_001,
            max_ops: 100_000,
        }));
        assert_eq!(engine.status, StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[test]
    fn a_full_disk_is_507_insufficient_storage() {
        let error = murmur::Error::Replica(ReplicaError::DiskFull {
            free_bytes: 1_000,
            min_free_bytes: 2_000,
        });
        let api = ApiError::from(error);
        assert_eq!(api.status, StatusCode::INSUFFICIENT_STORAGE);
        assert!(api.message.contains("nearly full"), "{}", api.message);
    }

    #[test]
    fn bearer_tokens_are_read_case_insensitively() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer abc"),
        );
        assert_eq!(bearer_token(&headers), Some("abc"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer_token(&headers), None);
    }

    #[test]
    fn a_change_request_may_be_a_bare_array() {
        let request = parse_change_request(br#"[{"op":"delete","path":["a"]}]"#).unwrap();
        assert!(request.ack.is_none());
        let bad = parse_change_request(b"{\"ops\": [], \"acks\": 1}")
            .err()
            .unwrap();
        assert!(
            bad.message.contains("unknown field `acks`"),
            "{}",
            bad.message
        );
        let bad = parse_change_request(b"{\"ops\": [").err().unwrap();
        assert!(
            bad.message.starts_with("the body is not valid JSON"),
            "{}",
            bad.message
        );
    }
}
