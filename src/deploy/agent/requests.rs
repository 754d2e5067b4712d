//! Requests from tools and nodes (push, rollback, fetch, config) and
//! changed station files: what the agent makes of them.

use super::*;

impl Agent {
    /// Loads (compiles, runs `init`) a new version of `name` made here;
    /// once it loads it becomes a release and travels.
    pub(super) fn publish(
        &self,
        name: String,
        config: Vec<(String, String)>,
        bytes: Arc<Vec<u8>>,
        signer: Option<Hash>,
        signature: Option<String>,
        reply: Option<oneshot::Sender<(Reply, Bytes)>>,
    ) {
        let job = Job::Publish {
            name: name.clone(),
            config: config.clone(),
            bytes: Arc::clone(&bytes),
            signer,
            signature,
            reply,
        };
        self.spawn_load(name, config, bytes, job);
    }

    pub(super) fn on_request(
        &mut self,
        req: Request,
        blob: Bytes,
        reply: oneshot::Sender<(Reply, Bytes)>,
    ) {
        match req {
            Request::Push {
                name,
                config,
                signer,
                signature,
                local,
            } => {
                // A config is settings: stored sorted, last value per key.
                let config = settings(&config);
                let bytes = Arc::new(blob.to_vec());
                let fake = Release {
                    name: name.clone(),
                    version: 1,
                    origin: self.me(),
                    hash: Hash::of(&bytes),
                    size: bytes.len() as u64,
                    config: config.clone(),
                    signer,
                    signature: signature.clone(),
                    published_ms: 0,
                };
                let check = check_name(&name)
                    .and_then(|()| self.state.check_signature(&fake))
                    .map_err(|e| format!("push of {name} refused: {e:#}"));
                if let Err(e) = check {
                    warn!(station = %name, reason = %e, "push refused");
                    let _ = reply.send((Reply::error(e), Bytes::new()));
                    return;
                }
                // What runs here is what was pushed (a release, or the
                // module the node was started with, version 0): nothing to
                // publish.
                let current = self.current(&name).filter(|c| {
                    c.hash == fake.hash
                        && settings(&c.config) == config
                        && self.ids.get(&name).is_some_and(|id| {
                            // That release itself runs, not the same
                            // module as another one.
                            id.hash == c.hash
                                && id.config == c.config
                                && id.version.is_none_or(|v| v == c.version)
                        })
                        && !self.rolled_back.contains_key(&name)
                });
                if let (false, Some(c)) = (local, current) {
                    info!(release = %c.label(), "push of the module already current: nothing to do");
                    let answer = Reply {
                        release: Some(c.clone()),
                        unchanged: true,
                        ..Reply::default()
                    };
                    let _ = reply.send((answer, Bytes::new()));
                    return;
                }
                info!(station = %name, bytes = bytes.len(), local, "validating a pushed module");
                if local {
                    let job = Job::Local {
                        name: name.clone(),
                        reply: Some(reply),
                    };
                    self.spawn_load(name, config, bytes, job);
                    return;
                }
                self.publish(name, config, bytes, signer, signature, Some(reply));
            }
            Request::Rollback { name } => {
                let prev = self.store.record(&name).map(|r| r.previous().cloned());
                let prev = match prev {
                    None => Err(format!("this node runs no station named {name:?}")),
                    Some(None) => Err(format!("{name} has no previous version to roll back to")),
                    Some(Some(p)) => self
                        .store
                        .module(&p.hash)
                        .map(|b| (p, b))
                        .ok_or_else(|| format!("{name}: the previous module is not kept here")),
                };
                match prev {
                    Ok((p, bytes)) => {
                        info!(station = %name, to = %p.label(), "rolling back ring-wide");
                        self.publish(name, p.config, bytes, p.signer, p.signature, Some(reply));
                    }
                    Err(e) => {
                        let _ = reply.send((Reply::error(e), Bytes::new()));
                    }
                }
            }
            Request::Fetch { release, have, .. } => {
                let answer = Answer::new(move |served| {
                    let answer = match served {
                        Served::Whole(r, b) => (r, b),
                        Served::Stream(..) => (Reply::error("not streamed here"), Bytes::new()),
                    };
                    let _ = reply.send(answer);
                });
                self.on_fetch(release, have, false, answer);
            }
            Request::ConfigSet { key, value } => {
                let checked = crate::model::check_config_write(&key, value.as_deref());
                let answer = match self.inboxes.get(CONFIG_STATION) {
                    _ if checked.is_err() => Reply::error(checked.err().unwrap_or_default()),
                    None => Reply::error(format!(
                        "this node does not run the {CONFIG_STATION} station (start it with --station {CONFIG_STATION})"
                    )),
                    Some(inbox) => {
                        let msg = serde_json::json!({ "key": key, "value": value });
                        match inbox.push(msg.to_string().into_bytes()) {
                            Ok(()) => Reply::default(),
                            Err(e) => Reply::error(e),
                        }
                    }
                };
                let _ = reply.send((answer, Bytes::new()));
            }
            Request::ConfigGet { key } => {
                let answer = if self.inboxes.contains(CONFIG_STATION) {
                    Reply {
                        config: Some(self.config_entry(&key)),
                        ..Reply::default()
                    }
                } else {
                    Reply::error(format!(
                        "this node does not run the {CONFIG_STATION} station"
                    ))
                };
                let _ = reply.send((answer, Bytes::new()));
            }
        }
    }

    /// Answers a member's fetch of `release`'s module: from the store, as
    /// a delta against the first of `have` kept here or whole; a module
    /// still on its way here is streamed as it arrives (`stream`), or
    /// sent whole once here; else it is not kept here.
    pub(super) fn on_fetch(
        &mut self,
        release: Release,
        have: Vec<Hash>,
        stream: bool,
        reply: Answer,
    ) {
        // A base the asker and this node share: a delta, once the whole
        // target is here.
        let base = have
            .iter()
            .filter(|h| **h != release.hash)
            .find_map(|h| self.store.module(h).map(|m| (*h, m)));
        let cache = self.deltas.clone();
        let Some(target) = self.store.module(&release.hash) else {
            let not_kept = Reply {
                missing: true,
                ..Reply::error(format!("{} is not kept here", release.label()))
            };
            let missing = move || Served::Whole(not_kept, Bytes::new());
            // Served on only when announced as on its way here: a module
            // this node lost and fetches back is not (two nodes fetching
            // it back from each other would wait on each other).
            let announced = self.state.coming().contains(&release);
            let coming = self
                .inflight
                .get(&release.hash)
                .filter(|m| announced && m.progress() != stream::Progress::Failed)
                .map(Arc::clone);
            let Some(module) = coming else {
                return reply.send(missing());
            };
            if stream && base.is_none() {
                let head = Reply {
                    payload: Some(Payload::Full),
                    stream: Some(module.size() as u64),
                    release: Some(release),
                    ..Reply::default()
                };
                return reply.send(Served::Stream(head, module));
            }
            // An asker with a base (or older than streaming) gets a delta
            // (or the whole module) once it is here.
            self.spawn_task(async move {
                match module.finished(FETCH_TIMEOUT).await {
                    Some(bytes) => {
                        let target = Arc::new(bytes.to_vec());
                        let answer = Whole {
                            release,
                            target,
                            base,
                            cache,
                            stream: false,
                        };
                        tokio::task::spawn_blocking(move || answer.send(reply));
                    }
                    None => reply.send(missing()),
                }
            });
            return;
        };
        let answer = Whole {
            release,
            target,
            base,
            cache,
            stream,
        };
        tokio::task::spawn_blocking(move || answer.send(reply));
    }

    fn config_entry(&self, key: &str) -> ConfigEntry {
        let kv = &self.base.kv;
        #[derive(Deserialize)]
        struct Meta {
            ver: u64,
            node: u32,
        }
        let meta: Option<Meta> = kv
            .get(CONFIG_STATION, &format!("meta/{key}"))
            .and_then(|m| serde_json::from_slice(&m).ok());
        ConfigEntry {
            value: kv
                .get(CONFIG_STATION, &format!("cfg/{key}"))
                .map(|v| String::from_utf8_lossy(&v).into_owned()),
            ver: meta.as_ref().map(|m| m.ver),
            node: meta.as_ref().map(|m| m.node),
            config_version: kv
                .get(CONFIG_STATION, "version")
                .and_then(|v| String::from_utf8(v).ok())
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0),
            pending: self
                .inboxes
                .get(CONFIG_STATION)
                .map_or(0, |i| i.len() as u64),
        }
    }

    pub(super) fn on_file(&mut self, name: String, bytes: Vec<u8>) {
        let hash = Hash::of(&bytes);
        if self.running.get(&name) == Some(&hash) {
            return;
        }
        let config = self
            .current(&name)
            .map(|c| c.config.clone())
            .unwrap_or_default();
        if !self.config.deploy.push_on_change {
            let job = Job::Local {
                name: name.clone(),
                reply: None,
            };
            self.spawn_load(name, config, Arc::new(bytes), job);
            return;
        }
        let (signer, signature) = match &self.sign_key {
            Some(k) => (
                Some(Hash(*k.verifying_key().as_bytes())),
                Some(crate::config::hex(&sign::sign(k, &hash.0))),
            ),
            None => (None, None),
        };
        let bytes = Arc::new(bytes);
        let probe = Release {
            name: name.clone(),
            version: 1,
            origin: self.me(),
            hash,
            size: bytes.len() as u64,
            config: config.clone(),
            signer,
            signature: signature.clone(),
            published_ms: 0,
        };
        if let Err(e) = self.state.check_signature(&probe) {
            self.fail(
                &name,
                None,
                format!("changed file refused: {e:#} (give the node --key to sign its own files)"),
            );
            return;
        }
        info!(station = %name, bytes = bytes.len(), "station file changed; validating");
        self.publish(name, config, bytes, signer, signature, None);
    }
}

/// A fetch answered from a module held here: a delta against `base` when
/// that is smaller, else the whole module (streamed in chunks when the
/// asker takes a stream, so it passes them on as they come).
struct Whole {
    release: Release,
    target: Arc<Vec<u8>>,
    base: Option<(Hash, Arc<Vec<u8>>)>,
    cache: delta::Cache,
    stream: bool,
}

impl Whole {
    /// Makes the answer (a delta takes CPU: call on a blocking thread)
    /// and sends it.
    fn send(self, reply: Answer) {
        let Whole {
            release,
            target,
            base,
            cache,
            stream,
        } = self;
        if stream && base.is_none() {
            let head = Reply {
                payload: Some(Payload::Full),
                stream: Some(target.len() as u64),
                release: Some(release),
                ..Reply::default()
            };
            return reply.send(Served::Stream(head, stream::Inflight::complete(&target)));
        }
        let mut answer = (Payload::Full, Bytes::from(target.to_vec()));
        if let Some((base, base_bytes)) = base {
            let d = cache.get(&base, &release.hash).or_else(|| {
                let d = Bytes::from(delta::make(&base_bytes, &target).ok()?);
                cache.put(base, release.hash, d.clone());
                Some(d)
            });
            if let Some(d) = d.filter(|d| d.len() < target.len()) {
                answer = (Payload::Delta { base }, d);
            }
        }
        let (payload, blob) = answer;
        let head = Reply {
            release: Some(release),
            payload: Some(payload),
            ..Reply::default()
        };
        reply.send(Served::Whole(head, blob));
    }
}

/// Where the answer to a fetch goes (a ring-port connection, or a
/// request's reply).
pub(super) struct Answer(Box<dyn FnOnce(Served) + Send>);

impl Answer {
    pub(super) fn new(f: impl FnOnce(Served) + Send + 'static) -> Self {
        Self(Box::new(f))
    }

    fn send(self, served: Served) {
        (self.0)(served);
    }
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(anyhow!(
            "station name {name:?}: use 1-64 letters, digits, '-' or '_'"
        ))
    }
}
