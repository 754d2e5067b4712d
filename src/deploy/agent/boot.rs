//! Starting a node's deploy side: its stations (the latest release it
//! recorded for each name, else what it was configured with) and the
//! agent that owns them.

use super::*;

/// Loads a node's stations — the latest release it recorded for each name
/// (when it has a data dir), else what it was started with — and builds
/// its agent.
///
/// # Errors
/// When a configured station fails to load, or the data dir is unusable.
pub async fn start(
    config: Arc<NodeConfig>,
    host: Arc<StationHost>,
    node: NodeInfo,
    kv: KvStore,
    observer: Observer,
    limits: StationLimits,
) -> Result<Started> {
    let mut store = Store::open(config.deploy.data_dir.as_deref())?;
    let sign_key = match &config.deploy.sign_key {
        Some(p) => Some(sign::read_key(p)?),
        None => None,
    };
    let base = EnvBase {
        node,
        kv,
        observer,
        epoch: Instant::now(),
        sets: SetStore::default(),
    };
    let mut stations = Vec::new();
    let inboxes = Inboxes::default();
    let mut local = Vec::new();
    let mut files = Vec::new();
    let mut names: Vec<String> = config.stations.iter().map(|s| s.name.clone()).collect();
    // Stations added by pushes run after the configured ones, in the order
    // they were added.
    let mut added: Vec<(u64, &String)> = store
        .records()
        .iter()
        .filter(|(name, _)| !names.contains(name))
        .map(|(name, r)| (r.added_ms, name))
        .collect();
    added.sort();
    names.extend(added.into_iter().map(|(_, n)| n.clone()));
    for name in names {
        let inbox = Inbox::default();
        let spec = config.stations.iter().find(|s| s.name == name);
        // The configured module, recorded as version 0 if nothing newer.
        let mut configured = None;
        if let Some(spec) = spec {
            let bytes = Arc::new(read_source(&spec.source).await?);
            configured = Some((spec, Arc::clone(&bytes)));
            let hash = store.put_module(Arc::clone(&bytes))?;
            local.push(hash);
            if let StationSource::File(path) = &spec.source {
                files.push(crate::deploy::watch::WatchedFile {
                    name: name.clone(),
                    path: path.clone(),
                    loaded: hash,
                });
            }
            if store.record(&name).is_none() {
                store.set_current(Release {
                    name: name.clone(),
                    version: 0,
                    origin: config.index as u32,
                    hash,
                    size: bytes.len() as u64,
                    config: spec.config.clone(),
                    signer: None,
                    signature: None,
                    published_ms: 0,
                })?;
            }
        }
        let current = store.record(&name).map(|r| r.current.clone());
        let mut loaded = None;
        if let Some(rel) = current.filter(|r| r.version > 0) {
            match store.module(&rel.hash) {
                Some(bytes) => {
                    let env = base.env(&name, inbox.clone());
                    match host
                        .load_bytes(&name, &rel.config, bytes, env, limits)
                        .await
                    {
                        Ok(mut s) => {
                            info!(release = %rel.label(), "running the recorded release");
                            s.set_version(Some(rel.version));
                            loaded = Some(s);
                        }
                        Err(e) => {
                            warn!(release = %rel.label(), cause = %e, "recorded release does not load; running the configured one")
                        }
                    }
                }
                None => warn!(release = %rel.label(), "module of the recorded release missing"),
            }
            if loaded.is_none() {
                loaded = load_older(&mut store, &host, &base, &name, &inbox, limits).await;
            }
        }
        let station = match (loaded, configured) {
            (Some(s), _) => s,
            (None, Some((spec, bytes))) => {
                let env = base.env(&name, inbox.clone());
                host.load_bytes(&name, &spec.config, bytes, env, limits)
                    .await
                    .with_context(|| format!("loading station {name:?}"))?
            }
            (None, None) => continue,
        };
        inboxes.insert_if_absent(&name, &inbox);
        stations.push(station);
    }
    // Current modules the store lost: fetched back from a neighbour.
    let currents: Vec<Release> = store
        .records()
        .values()
        .map(|r| r.current.clone())
        .collect();
    let missing: Vec<Hash> = currents
        .iter()
        .filter(|r| r.version > 0 && store.module(&r.hash).is_none())
        .map(|r| r.hash)
        .collect();
    let running: HashMap<String, Hash> = stations
        .iter()
        .map(|s| (s.name().to_string(), s.hash()))
        .collect();
    let ids: HashMap<String, StationId> = stations
        .iter()
        .map(|s| (s.name().to_string(), s.id()))
        .collect();
    // What runs as a release (restarted with one recorded): its version
    // shows as what runs, as after a swap.
    let runs: HashMap<String, Release> = stations
        .iter()
        .filter_map(|s| {
            let v = s.version()?;
            let record = store.record(s.name())?;
            std::iter::once(&record.current)
                .chain(record.history.iter().rev())
                .find(|r| r.version == v && r.hash == s.hash())
                .map(|r| (s.name().to_string(), r.clone()))
        })
        .collect();
    let trust = Trust {
        keys: config.deploy.trust.clone(),
        local,
    };
    let state = DeployState::new(config.index, trust, currents, running.clone(), missing);
    let (tx, rx) = mpsc::channel(64);
    let (owner_tx, owner_rx) = mpsc::channel(16);
    let (view_tx, view_rx) = watch::channel(DeployView::default());
    let mut agent = Agent {
        config,
        host,
        store,
        base,
        limits,
        inboxes: inboxes.clone(),
        running,
        ids,
        errors: HashMap::new(),
        rolled_back: HashMap::new(),
        runs,
        faulted: HashMap::new(),
        rolling: Vec::new(),
        sign_key,
        state,
        deltas: delta::Cache::default(),
        inflight: HashMap::new(),
        pool: stream::Pool::default(),
        counters: ([0; 2], [0; 2]),
        events: Vec::new(),
        tx: tx.clone(),
        rx,
        owner: owner_tx,
        view: view_tx,
        tasks: tokio_util::task::TaskTracker::new(),
        stop: tokio_util::sync::CancellationToken::new(),
    };
    agent.publish_view();
    Ok(Started {
        stations,
        inboxes,
        sets: agent.base.sets.clone(),
        agent,
        handle: DeployHandle { tx, view: view_rx },
        owner_rx,
        files,
    })
}

/// The newest older release of `name` whose module is on disk (verified
/// by its hash) and loads, run while the recorded one is missing or
/// damaged; the neighbours bring that one back.
async fn load_older(
    store: &mut Store,
    host: &Arc<StationHost>,
    base: &EnvBase,
    name: &str,
    inbox: &Inbox,
    limits: StationLimits,
) -> Option<Station> {
    let record = store.record(name)?;
    let current = record.current.clone();
    let older: Vec<Release> = record
        .history
        .iter()
        .rev()
        .filter(|r| r.hash != current.hash)
        .cloned()
        .collect();
    for r in older {
        let Some(bytes) = store.module(&r.hash) else {
            continue;
        };
        let env = base.env(name, inbox.clone());
        if let Ok(mut s) = host.load_bytes(name, &r.config, bytes, env, limits).await {
            s.set_version(Some(r.version));
            warn!(
                release = %current.label(),
                meanwhile = %r.label(),
                "the recorded release cannot run here; running an older one until a neighbour brings it back"
            );
            return Some(s);
        }
    }
    None
}
