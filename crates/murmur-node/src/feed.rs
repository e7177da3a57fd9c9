//! `GET /feed`: the node-wide change feed over HTTP, as Server-Sent Events
//! (each event's `id:` is its sequence number, so `Last-Event-ID` resumes)
//! or as NDJSON (`Accept: application/x-ndjson`).
//!
//! Query parameters:
//! - `since`: a sequence number (entries after it), or `now`; default 0,
//!   the beginning. An SSE client's `Last-Event-ID` header wins over it.
//! - `limit`: end the response after this many entries.
//! - `follow`: `true` (the default) waits for new entries; `false` ends
//!   the response once it has caught up.
//! - `doc`: only this document's entries.
//! - `heartbeat_ms`: how often an idle stream says it is alive (default
//!   10 s): an SSE comment, or an NDJSON line `{"heartbeat": true, ...}`.
//!
//! A malformed parameter is 400; a `since` whose entries retention removed
//! is 410 Gone, with a body saying to start again from a snapshot.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt};
use murmur::{Cursor, DocumentId, FeedEntry, FeedStream, Origin};
use serde::Deserialize;
use serde_json::{json, Value as Json};
use tokio::sync::watch;

use crate::http::{hex_heads, ApiError, ApiResult, AppState};

/// The NDJSON media type.
const NDJSON: &str = "application/x-ndjson";
/// How often an idle stream sends a heartbeat, unless asked otherwise.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);

/// `GET /feed`'s query, as text: each is parsed with its own error.
#[derive(Debug, Default, Deserialize)]
pub struct FeedQuery {
    since: Option<String>,
    limit: Option<String>,
    follow: Option<String>,
    doc: Option<String>,
    heartbeat_ms: Option<String>,
}

/// What a request asks of the feed, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedRequest {
    cursor: Cursor,
    limit: Option<u64>,
    follow: bool,
    doc: Option<DocumentId>,
    heartbeat: Duration,
}

impl FeedRequest {
    /// Checks `query`; `last_event_id` (an SSE client resuming) wins over
    /// `since`.
    pub fn parse(query: &FeedQuery, last_event_id: Option<&str>) -> Result<Self, ApiError> {
        let cursor = match last_event_id.or(query.since.as_deref()) {
            None => Cursor::Start,
            Some("now") => Cursor::Now,
            Some(text) => match text.trim().parse::<u64>() {
                Ok(0) => Cursor::Start,
                Ok(seq) => Cursor::After(seq),
                Err(_) => {
                    return Err(ApiError::bad_request(format!(
                        "bad feed cursor {text:?}: expected a sequence number or `now`"
                    )))
                }
            },
        };
        let limit = match query.limit.as_deref() {
            None => None,
            Some(text) => match text.parse::<u64>() {
                Ok(n) if n > 0 => Some(n),
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "bad limit {text:?}: expected a positive number of entries"
                    )))
                }
            },
        };
        let follow = match query.follow.as_deref() {
            None | Some("true") => true,
            Some("false") => false,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "bad follow {other:?}: expected true or false"
                )))
            }
        };
        let doc = query
            .doc
            .as_deref()
            .map(|text| {
                text.parse::<DocumentId>()
                    .map_err(|_| ApiError::bad_request(format!("bad document id {text:?}")))
            })
            .transpose()?;
        let heartbeat = match query.heartbeat_ms.as_deref() {
            None => DEFAULT_HEARTBEAT,
            Some(text) => match text.parse::<u64>() {
                Ok(ms) if (100..=600_000).contains(&ms) => Duration::from_millis(ms),
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "bad heartbeat_ms {text:?}: expected 100 to 600000"
                    )))
                }
            },
        };
        Ok(FeedRequest {
            cursor,
            limit,
            follow,
            doc,
            heartbeat,
        })
    }
}

/// One thing a feed response says.
pub enum Item {
    Entry(FeedEntry),
    /// Idle; the feed's end as published.
    Heartbeat(u64),
    /// The stream stops here, and why.
    Failed(String),
}

/// A feed entry as JSON.
pub fn entry_json(entry: &FeedEntry) -> Json {
    let mut data = json!({
        "seq": entry.seq,
        "doc": entry.doc.to_string(),
        "changes": hex_heads(&entry.changes),
        "heads": hex_heads(&entry.heads),
        "origin": "local",
        "time": entry.time.as_millis(),
    });
    if entry.deleted {
        data["deleted"] = json!(true);
    }
    if let Origin::Remote(peer) = entry.origin {
        data["origin"] = json!("remote");
        data["peer"] = json!(peer.to_string());
    }
    data
}

/// The entries of `doc` from the cursor `query` and `headers` name
/// (default: from now), with heartbeats, for its event stream; 410 if the
/// cursor was trimmed.
pub async fn doc_entries(
    state: &AppState,
    headers: &HeaderMap,
    mut query: FeedQuery,
    doc: DocumentId,
) -> ApiResult<std::pin::Pin<Box<dyn Stream<Item = Item> + Send>>> {
    if query.doc.is_some() || query.follow.is_some() || query.limit.is_some() {
        return Err(ApiError::bad_request(
            "a document's event stream takes since (or Last-Event-ID) and heartbeat_ms",
        ));
    }
    query.since = query.since.or(Some("now".to_owned()));
    let mut request = FeedRequest::parse(&query, last_event_id(headers)?)?;
    request.doc = Some(doc);
    let (feed, first) = open(state, &request).await?;
    Ok(Box::pin(items(feed, first, request, state.shutdown())))
}

/// The `Last-Event-ID` header, if any.
fn last_event_id(headers: &HeaderMap) -> ApiResult<Option<&str>> {
    headers
        .get("last-event-id")
        .map(|value| {
            value
                .to_str()
                .map_err(|_| ApiError::bad_request("Last-Event-ID is not text"))
        })
        .transpose()
}

/// A feed stream from `request`'s cursor, and its first entry: the first
/// read says at once whether the cursor is still held (410 if not).
async fn open(
    state: &AppState,
    request: &FeedRequest,
) -> ApiResult<(FeedStream, Option<FeedEntry>)> {
    let mut feed = state.node().feed(request.cursor);
    let first = match feed.try_next().await {
        Some(Err(murmur::Error::FeedTrimmed { from, first })) => {
            return Err(ApiError::gone(format!(
                "the feed no longer holds entry {from} (its oldest is {first}): \
                 read every document (GET /docs) as a snapshot, then follow the feed \
                 from since={} on",
                first.saturating_sub(1)
            )))
        }
        Some(Err(error)) => return Err(error.into()),
        Some(Ok(entry)) => Some(entry),
        None => None,
    };
    Ok((feed, first))
}

/// `GET /feed`.
pub async fn get_feed(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<FeedQuery>,
) -> ApiResult<Response> {
    let request = FeedRequest::parse(&query, last_event_id(&headers)?)?;
    let (feed, first) = open(&state, &request).await?;
    let ndjson = headers
        .get(header::ACCEPT)
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.contains(NDJSON));
    tracing::debug!(cursor = ?request.cursor, ndjson, "feed stream opened");
    let items = items(feed, first, request, state.shutdown());
    Ok(if ndjson {
        let lines = items.map(|item| Ok::<_, Infallible>(Bytes::from(ndjson_line(&item))));
        let mut response = Response::new(Body::from_stream(lines));
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
        response
    } else {
        Sse::new(items.map(|item| Ok::<_, Infallible>(sse_event(&item)))).into_response()
    })
}

/// The items of a response: `first`, then the feed's entries, filtered and
/// limited, with heartbeats while idle; ends on shutdown.
fn items(
    feed: FeedStream,
    first: Option<FeedEntry>,
    request: FeedRequest,
    shutdown: watch::Receiver<bool>,
) -> impl Stream<Item = Item> + Send {
    let state = (feed, first, request.limit, false, shutdown);
    futures_util::stream::unfold(
        state,
        move |(mut feed, mut first, mut left, done, mut shutdown)| {
            let request = request.clone();
            async move {
                if done || left == Some(0) || *shutdown.borrow() {
                    return None;
                }
                loop {
                    let next = match first.take() {
                        Some(entry) => Some(Ok(entry)),
                        None if !request.follow => feed.try_next().await,
                        None => {
                            let waited = tokio::select! {
                                _ = shutdown.wait_for(|stop| *stop) => None,
                                next = tokio::time::timeout(request.heartbeat, feed.next()) => Some(next),
                            };
                            match waited {
                                None => return None,
                                Some(Ok(next)) => next,
                                Some(Err(_)) => {
                                    let end = feed.end();
                                    return Some((
                                        Item::Heartbeat(end),
                                        (feed, None, left, false, shutdown),
                                    ));
                                }
                            }
                        }
                    };
                    let item = match next {
                        None => return None,
                        Some(Err(error)) => {
                            return Some((
                                Item::Failed(error.to_string()),
                                (feed, None, left, true, shutdown),
                            ))
                        }
                        Some(Ok(entry)) => entry,
                    };
                    if request.doc.is_some_and(|doc| doc != item.doc) {
                        continue;
                    }
                    left = left.map(|n| n - 1);
                    return Some((Item::Entry(item), (feed, None, left, false, shutdown)));
                }
            }
        },
    )
}

pub fn sse_event(item: &Item) -> Event {
    match item {
        Item::Entry(entry) => Event::default()
            .id(entry.seq.to_string())
            .event("change")
            .data(entry_json(entry).to_string()),
        Item::Heartbeat(end) => Event::default().comment(format!("heartbeat end={end}")),
        Item::Failed(error) => Event::default()
            .event("error")
            .data(json!({"error": error}).to_string()),
    }
}

fn ndjson_line(item: &Item) -> String {
    let value = match item {
        Item::Entry(entry) => entry_json(entry),
        Item::Heartbeat(end) => json!({"heartbeat": true, "end": end}),
        Item::Failed(error) => json!({"error": error}),
    };
    format!("{value}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(query: FeedQuery) -> Result<FeedRequest, ApiError> {
        FeedRequest::parse(&query, None)
    }

    #[test]
    fn cursors_parse_and_bad_ones_are_refused() {
        let since = |s: &str| FeedQuery {
            since: Some(s.into()),
            ..FeedQuery::default()
        };
        assert_eq!(parse(FeedQuery::default()).unwrap().cursor, Cursor::Start);
        assert_eq!(parse(since("0")).unwrap().cursor, Cursor::Start);
        assert_eq!(parse(since("now")).unwrap().cursor, Cursor::Now);
        assert_eq!(parse(since("41")).unwrap().cursor, Cursor::After(41));
        for bad in ["-1", "x", "1.5", "", "now2"] {
            assert!(parse(since(bad)).is_err(), "{bad:?} accepted");
        }
        let resumed = FeedRequest::parse(&since("3"), Some("7")).unwrap();
        assert_eq!(resumed.cursor, Cursor::After(7), "Last-Event-ID wins");
        let limit = |s: &str| FeedQuery {
            limit: Some(s.into()),
            ..FeedQuery::default()
        };
        assert_eq!(parse(limit("5")).unwrap().limit, Some(5));
        assert!(parse(limit("0")).is_err());
        let follow = FeedQuery {
            follow: Some("maybe".into()),
            ..FeedQuery::default()
        };
        assert!(parse(follow).is_err());
        let doc = FeedQuery {
            doc: Some("not-an-id".into()),
            ..FeedQuery::default()
        };
        assert!(parse(doc).is_err());
    }
}
