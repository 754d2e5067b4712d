//! The tools' side of the admin API: a small HTTP/1 client (hyper-util's)
//! and how a tool finds a node's admin API.
//!
//! `--to` takes either address of a node. [`connect`] first asks it as a
//! ring port (the status request members answer), whose report names the
//! node's bound admin address; when that fails it asks it as an admin API
//! (`GET /v1/status`). Ring port first, because an HTTP request sent to a
//! ring port is bad input there (a warning in the node's log), while the
//! ring status request sent to an admin API is only a 400 answer. There is
//! no "ring port + 1000" guess: the report says where the admin API is, or
//! that it is off.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, StatusCode, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::api::{ConfigBody, DeployAnswer, ErrorBody, RingView, RollbackBody};
use crate::deploy::release::{ConfigEntry, Hash};
use crate::status::{self, Report};

/// The cluster keys a tool asks ring ports with (`--cluster-key-file`),
/// set once at start by [`use_cluster_keys`].
static TOOL_KEYS: std::sync::OnceLock<crate::secure::ClusterKeys> = std::sync::OnceLock::new();

/// Makes [`connect`] ask ring ports with `keys` (a tool process's
/// `--cluster-key-file`; the first call wins).
pub fn use_cluster_keys(keys: crate::secure::ClusterKeys) {
    let _ = TOOL_KEYS.set(keys);
}

/// Bound on each of the two probes [`connect`] makes.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Bound on an ordinary request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Bound on a push or rollback answer (the node compiles and runs `init`).
pub const DEPLOY_TIMEOUT: Duration = Duration::from_secs(90);

/// How long a kept-alive connection may sit idle in the client's pool:
/// under the server's idle deadline (10 s by default), so the client
/// drops it first.
pub const POOL_IDLE: Duration = Duration::from_secs(5);

/// A node's admin API.
#[derive(Clone)]
pub struct AdminClient {
    addr: String,
    token: Option<String>,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl std::fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AdminClient({})", self.addr)
    }
}

/// What a push sends besides the module.
#[derive(Debug, Clone, Default)]
pub struct PushParams {
    /// Station name.
    pub name: String,
    /// `init` config.
    pub config: Vec<(String, String)>,
    /// Signer's public key.
    pub signer: Option<Hash>,
    /// Signature over the module hash, hex.
    pub signature: Option<String>,
    /// Run it on the asked node only, without a release (what a deployer
    /// uploading to each node in turn does; the deploy benchmark's
    /// baseline).
    pub local: bool,
}

/// Times a request answered "every connection busy" (503 with
/// `Retry-After`) is sent again, within the request's deadline.
const BUSY_RETRIES: u32 = 2;

/// A node's admin API answered with an error of its own (a status and
/// its JSON `error` text).
#[derive(Debug)]
pub struct NodeAnswered {
    /// `ADDR METHOD PATH`.
    pub what: String,
    /// The HTTP status.
    pub status: StatusCode,
    /// The node's reason.
    pub error: String,
}

impl std::fmt::Display for NodeAnswered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.what, self.status, self.error)
    }
}

impl std::error::Error for NodeAnswered {}

impl AdminClient {
    /// A client of the admin API at `addr` (`host:port`), sending `token`
    /// as a bearer token on mutating requests when given.
    pub fn new(addr: &str, token: Option<String>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(PROBE_TIMEOUT));
        Self {
            addr: addr.to_string(),
            token,
            // Idle connections are dropped before the server's own idle
            // deadline ([`crate::config::AdminLimits::header_timeout`],
            // 10 s by default) would close them under a request.
            http: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(POOL_IDLE)
                .build(connector),
        }
    }

    /// The admin address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// One request; the answer's JSON body as `T`.
    ///
    /// # Errors
    /// When the node cannot be reached, does not answer within `within`,
    /// or answers an error (its `error` text is the message).
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<(Bytes, &'static str)>,
        within: Duration,
    ) -> Result<T> {
        let deadline = tokio::time::Instant::now() + within;
        let mut tries = 0;
        let (status, bytes) = loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let (status, headers, bytes) = self
                .exchange_full(method.clone(), path, body.clone(), left)
                .await?;
            // A node with every admin connection busy answers 503 with
            // Retry-After before reading the request: safe to send again.
            let retry = (status == StatusCode::SERVICE_UNAVAILABLE)
                .then(|| headers.get(header::RETRY_AFTER))
                .flatten()
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .map(|s| Duration::from_secs(s.min(2)));
            match retry {
                Some(wait)
                    if tries < BUSY_RETRIES && tokio::time::Instant::now() + wait < deadline =>
                {
                    tries += 1;
                    tokio::time::sleep(wait).await;
                }
                _ => break (status, bytes),
            }
        };
        if !status.is_success() {
            let Ok(why) = serde_json::from_slice::<ErrorBody>(&bytes) else {
                bail!(
                    "{} {method} {path}: {status}, and not a ringhost admin API's answer \
                     (no JSON error): is {} a ringhost node's admin address?",
                    self.addr,
                    self.addr
                );
            };
            return Err(anyhow::Error::new(NodeAnswered {
                what: format!("{} {method} {path}", self.addr),
                status,
                error: why.error,
            }));
        }
        let bytes = if bytes.is_empty() {
            Bytes::from_static(b"null")
        } else {
            bytes
        };
        serde_json::from_slice(&bytes)
            .with_context(|| format!("{} {method} {path}: parsing the answer", self.addr))
    }

    /// One request; the status and the raw body.
    ///
    /// # Errors
    /// When the node cannot be reached or does not answer within `within`.
    pub async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<(Bytes, &'static str)>,
        within: Duration,
    ) -> Result<(StatusCode, Bytes)> {
        let (status, _, bytes) = self.exchange_full(method, path, body, within).await?;
        Ok((status, bytes))
    }

    /// [`Self::exchange`], with the answer's headers.
    ///
    /// # Errors
    /// As [`Self::exchange`].
    pub async fn exchange_full(
        &self,
        method: Method,
        path: &str,
        body: Option<(Bytes, &'static str)>,
        within: Duration,
    ) -> Result<(StatusCode, hyper::HeaderMap, Bytes)> {
        let uri = format!("http://{}{path}", self.addr);
        let (bytes, kind) = body.unwrap_or((Bytes::new(), "application/json"));
        let exchange = async {
            let mut retried = false;
            loop {
                let mut req = hyper::Request::builder()
                    .method(method.clone())
                    .uri(&uri)
                    .header(header::CONTENT_TYPE, kind);
                if let Some(t) = &self.token {
                    req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
                }
                let req = req
                    .body(Full::new(bytes.clone()))
                    .with_context(|| format!("building a request for {uri}"))?;
                let resp = match self.http.request(req).await {
                    Ok(resp) => resp,
                    // A kept-alive connection the server closed as this
                    // request went out (its idle deadline, or room made
                    // for another client): an idempotent request is sent
                    // once more, on a new connection (RFC 9110 §9.2.2).
                    Err(e) if !retried && method.is_idempotent() && closed_under_us(&e) => {
                        retried = true;
                        continue;
                    }
                    Err(e) => return Err(anyhow!("{uri}: {}", chain(&e))),
                };
                let status = resp.status();
                let headers = resp.headers().clone();
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .with_context(|| format!("{uri}: reading the answer"))?
                    .to_bytes();
                return Ok::<_, anyhow::Error>((status, headers, body));
            }
        };
        tokio::time::timeout(within, exchange)
            .await
            .map_err(|_| anyhow!("{uri}: no answer within {within:?}"))?
    }

    /// `GET /v1/status`.
    ///
    /// # Errors
    /// See [`AdminClient::call`].
    pub async fn status(&self, within: Duration) -> Result<Report> {
        self.call(Method::GET, "/v1/status", None, within).await
    }

    /// `GET /v1/ring`.
    ///
    /// # Errors
    /// See [`AdminClient::call`].
    pub async fn ring(&self, within: Duration) -> Result<RingView> {
        self.call(Method::GET, "/v1/ring", None, within).await
    }

    /// `POST /v1/push` with the module as the body.
    ///
    /// # Errors
    /// See [`AdminClient::call`]; a refused module is an error naming why.
    pub async fn push(&self, p: &PushParams, module: Bytes) -> Result<DeployAnswer> {
        let mut q: Vec<(&str, String)> = vec![("name", p.name.clone())];
        q.extend(p.config.iter().map(|(k, v)| ("config", format!("{k}={v}"))));
        if let Some(s) = &p.signer {
            q.push(("signer", s.to_string()));
        }
        if let Some(s) = &p.signature {
            q.push(("signature", s.clone()));
        }
        if p.local {
            q.push(("local", "true".into()));
        }
        let query = serde_urlencoded::to_string(&q).context("encoding the push query")?;
        let path = format!("/v1/push?{query}");
        let body = Some((module, "application/wasm"));
        self.call(Method::POST, &path, body, DEPLOY_TIMEOUT).await
    }

    /// `POST /v1/rollback`.
    ///
    /// # Errors
    /// See [`AdminClient::call`].
    pub async fn rollback(&self, name: &str) -> Result<DeployAnswer> {
        let body = json(&RollbackBody { name: name.into() })?;
        self.call(Method::POST, "/v1/rollback", body, DEPLOY_TIMEOUT)
            .await
    }

    /// `GET /v1/config/{key}`.
    ///
    /// # Errors
    /// See [`AdminClient::call`].
    pub async fn config_get(&self, key: &str) -> Result<ConfigEntry> {
        let path = format!("/v1/config/{}", path_segment(key));
        self.call(Method::GET, &path, None, REQUEST_TIMEOUT).await
    }

    /// `PUT /v1/config/{key}` (`Some`) or `DELETE` (`None`).
    ///
    /// # Errors
    /// See [`AdminClient::call`].
    pub async fn config_set(&self, key: &str, value: Option<String>) -> Result<()> {
        let path = format!("/v1/config/{}", path_segment(key));
        let _: serde_json::Value = match value {
            Some(value) => {
                let body = json(&ConfigBody { value })?;
                self.call(Method::PUT, &path, body, REQUEST_TIMEOUT).await?
            }
            None => {
                self.call(Method::DELETE, &path, None, REQUEST_TIMEOUT)
                    .await?
            }
        };
        Ok(())
    }
}

fn json(body: &impl Serialize) -> Result<Option<(Bytes, &'static str)>> {
    Ok(Some((
        Bytes::from(serde_json::to_vec(body)?),
        "application/json",
    )))
}

/// `s` percent-encoded for one path segment.
fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An error and its sources on one line.
/// Whether a request failed because its kept-alive connection was closed
/// by the server before any answer came: hyper's "connection closed before
/// message completed", a cancel, or a reset/broken pipe underneath.
fn closed_under_us(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut src = Some(e);
    while let Some(c) = src {
        if let Some(h) = c.downcast_ref::<hyper::Error>()
            && (h.is_incomplete_message() || h.is_canceled())
        {
            return true;
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            )
        {
            return true;
        }
        src = c.source();
    }
    false
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// The admin API of the node at `to`, an admin address or a ring address
/// (see the module docs).
///
/// # Errors
/// When `to` answers as neither, or is a ring port of a node whose admin
/// API is off.
pub async fn connect(to: &str, token: Option<String>) -> Result<AdminClient> {
    let report = match status::query(to, TOOL_KEYS.get(), PROBE_TIMEOUT).await {
        Ok(r) => r,
        // Not a ring port that let us in: an admin API, or a ring port
        // for members only. Whatever the ring side said (an HTTP server
        // answers a cluster handshake with bytes that are no verdict),
        // the address is tried as an admin API before giving up.
        Err(ring_err) => {
            let direct = AdminClient::new(to, token);
            return match direct.status(PROBE_TIMEOUT * 2).await {
                Ok(_) => Ok(direct),
                // It is an admin API: it answered with its own error.
                Err(http_err) if http_err.is::<NodeAnswered>() => Err(http_err),
                Err(_) if format!("{ring_err:#}").contains("failed authentication") => bail!(
                    "{to} is a ring port that answers members only: pass the ring's \
                     --cluster-key-file, or give --to the node's admin address ({ring_err:#})"
                ),
                Err(http_err) => bail!(
                    "{to} answers neither as a ringhost admin API nor as a ring port: is it \
                     a ringhost node? (as admin API: {http_err:#}; as ring port: {ring_err:#})"
                ),
            };
        }
    };
    let Some(admin) = report.admin else {
        bail!(
            "{to} is the ring port of node {} ({}), whose admin API is off (started with \
             --admin off)",
            report.node.index,
            report.node.name
        );
    };
    let client = AdminClient::new(&reachable(&admin, to), token);
    client
        .status(PROBE_TIMEOUT)
        .await
        .with_context(|| format!("{to} says its admin API is at {admin}"))?;
    Ok(client)
}

/// `admin` as reachable from here: an admin API bound to every interface
/// (`0.0.0.0`, `[::]`) is asked at the host the tool reached.
fn reachable(admin: &str, to: &str) -> String {
    let host = |a: &str| a.rsplit_once(':').map(|(h, _)| h.to_string());
    match (host(admin), admin.rsplit_once(':'), host(to)) {
        (Some(h), Some((_, port)), Some(to_host)) if h == "0.0.0.0" || h == "[::]" => {
            format!("{to_host}:{port}")
        }
        _ => admin.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_admin_bound_everywhere_is_asked_where_the_tool_reached_the_node() {
        assert_eq!(reachable("0.0.0.0:4000", "10.0.0.5:3000"), "10.0.0.5:4000");
        assert_eq!(
            reachable("127.0.0.1:4000", "127.0.0.1:3000"),
            "127.0.0.1:4000"
        );
        assert_eq!(path_segment("a b/c"), "a%20b%2Fc");
    }
}
