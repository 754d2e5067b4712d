//! `GET /v1/stations/{name}/sets/{set}/{key}` and
//! `GET /v1/stations/{name}/sets/{set}`: the sets stations publish
//! (`crate::station::sets`), answered from node memory without calling
//! the station. The lookup is the hot path of an application server that
//! asks before serving each request: one short lock, the JSON body
//! written straight from the entry (one allocation), no other state read
//! (an unknown station or set is simply a 404). The event stream of a set
//! is served by `server` (it shares `/v1/events`' way with slow readers).
//!
//! A key spelt `events` cannot be asked for with the lookup route (that
//! path is the set's event stream): `GET /v1/stations/{name}/sets/{set}?key=K`
//! answers the same lookup for any key, with no path encoding.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::server::ApiError;
use crate::station::sets::{SetEntry, check_name};
use crate::station::{SetStore, unix_ms};

/// Entries a listing returns when `?limit=` is not given.
pub const LIST_DEFAULT: usize = 1000;
/// Most entries one listing returns.
pub const LIST_MAX: usize = 100_000;

/// The body of a set lookup, borrowed from the store.
#[derive(Serialize)]
struct EntryRef<'a> {
    key: &'a str,
    info: &'a str,
    expires_unix_ms: u64,
}

/// `GET /v1/stations/{name}/sets/{set}/{key}`: 200 with
/// `{"key","info","expires_unix_ms"}`, or 404 when the key is not in the
/// set (or has expired, or there is no such set or station).
pub async fn lookup(
    State(sets): State<SetStore>,
    Path((name, set, key)): Path<(String, String, String)>,
) -> Response {
    entry(&sets, &name, &set, &key)
}

/// The lookup's answer for `key` (see [`lookup`]).
fn entry(sets: &SetStore, name: &str, set: &str, key: &str) -> Response {
    let body = sets.with_entry(name, set, key, unix_ms(), |key, info, expires_unix_ms| {
        serde_json::to_vec(&EntryRef {
            key,
            info,
            expires_unix_ms,
        })
    });
    match body {
        Some(Ok(body)) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response(),
        Some(Err(e)) => {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
        }
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            format!("{key:?} is not in set {set:?} of station {name:?}"),
        )
        .into_response(),
    }
}

/// The query of a listing.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Most entries to return (default [`LIST_DEFAULT`], at most
    /// [`LIST_MAX`]).
    pub limit: Option<usize>,
    /// Look this key up instead of listing: the answer of
    /// [`lookup`] (for keys the path cannot carry, such as `events`).
    pub key: Option<String>,
}

/// A listing's body.
#[derive(Debug, Serialize, Deserialize)]
pub struct SetListing {
    /// Station name.
    pub station: String,
    /// Set name.
    pub set: String,
    /// Live entries in the set.
    pub total: usize,
    /// Up to `limit` of them, in no particular order.
    pub entries: Vec<SetEntry>,
}

/// `GET /v1/stations/{name}/sets/{set}?limit=N`: up to N live entries and
/// the total (none for a set nothing was published to). With `?key=K`:
/// the lookup of K (200 with the entry, 404 when absent), as [`lookup`].
///
/// # Errors
/// 400 for a bad set name or query.
pub async fn list(
    State(sets): State<SetStore>,
    Path((name, set)): Path<(String, String)>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    match listing(&sets, name, set, query) {
        Ok(Listed::Entry(r)) => r,
        Ok(Listed::All(l)) => Json(l).into_response(),
        Err(e) => e.into_response(),
    }
}

/// What a listing request answers.
enum Listed {
    /// `?key=`: the lookup's answer.
    Entry(Response),
    /// The listing.
    All(SetListing),
}

fn listing(
    sets: &SetStore,
    name: String,
    set: String,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Listed, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    check_name(&set).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    if let Some(key) = &q.key {
        return Ok(Listed::Entry(entry(sets, &name, &set, key)));
    }
    let limit = q.limit.unwrap_or(LIST_DEFAULT).min(LIST_MAX);
    // A set nothing was published to (yet) is empty, as a subscription
    // to it is: a node whose station has blocked nothing lists no entry.
    let (entries, total) = sets.list(&name, &set, limit, unix_ms()).unwrap_or_default();
    Ok(Listed::All(SetListing {
        station: name,
        set,
        total,
        entries,
    }))
}
