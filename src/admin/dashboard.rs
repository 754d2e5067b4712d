//! The dashboard: a page every node's admin API serves at `/` (plain
//! HTML, JS and CSS from `dashboard/`, compiled into the binary; no build
//! step, no external URL), and the one header it needs from the API.
//!
//! The page reads `GET /v1/ring` every second and the event streams
//! (`GET /v1/events`) of every member whose admin address it can reach:
//! a node's own stream only tells what happens at that node (its visits,
//! its successor going down), so following the particle around the ring
//! takes every member's stream. Those are other origins (other ports), so
//! `GET /v1/events` answers `Access-Control-Allow-Origin` to a page served
//! from a ring member's host, and to no other origin ([`allow_ring_origins`]).
//!
//! What this module does not own: the API itself (`server.rs`).

use std::collections::HashSet;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::config::RingLayout;

/// The page (`GET /`).
pub const INDEX_HTML: &str = include_str!("dashboard/index.html");
/// Its script (`GET /dashboard.js`).
pub const DASHBOARD_JS: &str = include_str!("dashboard/dashboard.js");
/// Its style sheet (`GET /dashboard.css`).
pub const DASHBOARD_CSS: &str = include_str!("dashboard/dashboard.css");

/// One of the page's files with its content type, revalidated on every
/// load (`Cache-Control: no-cache`) so a node upgraded in place serves
/// its own page, not the browser's copy of an older one.
fn file(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

/// `GET /`.
pub(super) async fn index() -> Response {
    file("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /dashboard.js`.
pub(super) async fn script() -> Response {
    file("text/javascript; charset=utf-8", DASHBOARD_JS)
}

/// `GET /dashboard.css`.
pub(super) async fn style() -> Response {
    file("text/css; charset=utf-8", DASHBOARD_CSS)
}

/// The hosts whose pages may read this node's event stream: the hosts of
/// the ring's members and of this node's admin address.
#[derive(Debug, Clone)]
pub struct RingOrigins {
    hosts: HashSet<String>,
}

impl RingOrigins {
    /// The origins of `ring`'s members and of the admin address `admin`
    /// (`host:port`).
    pub fn new(ring: &RingLayout, admin: &str) -> Self {
        let hosts = ring
            .members()
            .iter()
            .map(|m| m.addr.as_str())
            .chain([admin])
            .map(|a| host_of(a).to_ascii_lowercase())
            .collect();
        Self { hosts }
    }

    /// Whether a page from `origin` (`scheme://host[:port]`, as a browser
    /// sends it) is served by a ring member's host.
    pub fn allows(&self, origin: &str) -> bool {
        let Some(rest) = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
        else {
            return false;
        };
        !rest.contains('/') && self.hosts.contains(&host_of(rest).to_ascii_lowercase())
    }
}

/// The host of `host[:port]` (`[v6]:port` gives `v6`).
fn host_of(addr: &str) -> &str {
    if let Some(v6) = addr.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.parse::<u16>().is_ok() => host,
        _ => addr,
    }
}

/// Adds `Access-Control-Allow-Origin` for an origin [`RingOrigins`]
/// allows (a read-only route: the event stream), so a dashboard served by
/// one member can follow every member's events.
pub(super) async fn allow_ring_origins(
    State(origins): State<Arc<RingOrigins>>,
    req: Request,
    next: Next,
) -> Response {
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .filter(|o| o.to_str().is_ok_and(|o| origins.allows(o)))
        .cloned();
    let mut response = next.run(req).await;
    let headers = response.headers_mut();
    headers.insert(header::VARY, HeaderValue::from_static("origin"));
    if let Some(origin) = origin {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_streams_are_open_to_pages_of_ring_hosts_only() {
        let ring = RingLayout::from_addrs(["127.0.0.1:3000", "10.0.0.7:3000"]).unwrap();
        let o = RingOrigins::new(&ring, "[::1]:4000");
        assert!(o.allows("http://127.0.0.1:4001"));
        assert!(o.allows("http://10.0.0.7:4000"));
        assert!(o.allows("https://10.0.0.7"));
        assert!(o.allows("http://[::1]:4005"));
        assert!(!o.allows("http://evil.example:4000"));
        assert!(!o.allows("http://10.0.0.8:4000"));
        assert!(!o.allows("null"));
        assert!(!o.allows("file://127.0.0.1"));
        assert!(!o.allows("http://127.0.0.1:4000/x"));
    }

    #[test]
    fn the_page_names_only_files_the_node_serves() {
        for url in ["/dashboard.js", "/dashboard.css"] {
            assert!(INDEX_HTML.contains(url), "index.html loads {url}");
        }
        // Offline: no file reaches for another host.
        for (name, text) in [
            ("index.html", INDEX_HTML),
            ("dashboard.js", DASHBOARD_JS),
            ("dashboard.css", DASHBOARD_CSS),
        ] {
            for bad in ["https://", "//cdn", "@import"] {
                assert!(!text.contains(bad), "{name} contains {bad:?}");
            }
        }
    }
}
