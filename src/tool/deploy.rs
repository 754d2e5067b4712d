//! The tools' side of deploys: `push`, `rollback`, `config`, `keygen`.
//! Each talks to one node's admin API (found from `--to`, an admin or a
//! ring address: see [`crate::admin::client::connect`]); `push` and
//! `rollback` then watch every member's status through that node's
//! `GET /v1/ring` until the release runs everywhere it can, and a few
//! visits more (a version that traps at every visit is rolled back by
//! each node within a few visits: that is a failed push, exit 1).
//!
//! Before sending a module, `push` checks what it can locally: the module
//! limit, the key file's kind, and that the address answers like a
//! ringhost node, so another server on that port is named as such
//! instead of timing out or failing on its bytes.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;

use crate::admin::api::{Liveness, RingView};
use crate::admin::client::{AdminClient, PushParams, connect};
use crate::deploy::agent::DeployView;
use crate::deploy::release::{ConfigEntry, Hash, MAX_AHEAD_MS, OrderKey, Release};
use crate::deploy::sign;
use crate::station::MAX_MODULE_BYTES;
use crate::status;

/// Bound on one `GET /v1/ring` while watching a release travel.
const RING_TIMEOUT: Duration = Duration::from_secs(5);

/// `ringhost push`, in plain parameters.
#[derive(Debug, Clone, Default)]
pub struct PushOptions {
    /// The component to push.
    pub file: std::path::PathBuf,
    /// A node (admin or ring address).
    pub to: String,
    /// Station name (default: the file name without `.wasm`).
    pub name: Option<String>,
    /// `init` config, `KEY=VALUE` each.
    pub config: Vec<String>,
    /// Secret key file to sign with.
    pub key: Option<std::path::PathBuf>,
    /// Give up waiting after this many seconds.
    pub timeout_s: u64,
    /// Return once the first node has accepted it.
    pub no_wait: bool,
    /// Bearer token for the admin API.
    pub token: Option<String>,
}

/// Visits each node makes with the new version before `push` calls it
/// settled: past the default `--rollback-after` (3 faults), and long
/// enough for a version that traps after a few good visits to show it.
/// Any fault of the pushed station on any node in that window fails the
/// push.
const SETTLE_VISITS: u64 = 8;

/// Bound on the settle window (a slow or stalled particle).
const SETTLE_MAX: Duration = Duration::from_secs(10);

/// `ringhost push`.
///
/// # Errors
/// When the module is refused, or some live node does not run it in time.
pub async fn push(args: &PushOptions) -> Result<()> {
    let size = std::fs::metadata(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?
        .len();
    check_module_size(&args.file, size)?;
    let bytes =
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    check_module_size(&args.file, bytes.len() as u64)?;
    let name = match &args.name {
        Some(n) => n.clone(),
        None => args
            .file
            .file_stem()
            .and_then(|s| s.to_str())
            .context("cannot take a station name from the file name; give --as NAME")?
            .to_string(),
    };
    let config = args
        .config
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("--config {kv:?}: expected KEY=VALUE"))
        })
        .collect::<Result<Vec<_>>>()?;
    let (signer, signature) = match &args.key {
        Some(path) => {
            let key = sign::read_key(path)?;
            let sig = sign::sign(&key, &Hash::of(&bytes).0);
            (
                Some(Hash(*key.verifying_key().as_bytes())),
                Some(crate::config::hex(&sig)),
            )
        }
        None => (None, None),
    };
    let node = connect(&args.to, args.token.clone()).await?;
    eprintln!(
        "pushing {} ({} bytes, sha256 {}) as {name} to {}",
        args.file.display(),
        bytes.len(),
        Hash::of(&bytes).short(),
        args.to
    );
    let params = PushParams {
        name: name.clone(),
        config,
        signer,
        signature,
        local: false,
    };
    // Only the wait after the push compares fault counts: with --no-wait
    // the ring-wide status (a round of every member, far ones too) is not
    // read before the upload.
    let before = if args.no_wait {
        BTreeMap::new()
    } else {
        faults_before(&node, &name).await
    };
    let answer = node
        .push(&params, Bytes::from(bytes))
        .await
        .with_context(|| format!("pushing to {}", args.to))?;
    let unchanged = answer.unchanged;
    let release = answer
        .release
        .with_context(|| format!("{} answered the push without a release", args.to))?;
    if unchanged {
        println!(
            "{} already has this module and config: nothing to push",
            release.label()
        );
        return Ok(());
    }
    eprintln!(
        "{} accepted by {}: validated, now travelling the ring",
        release.label(),
        args.to
    );
    if args.no_wait {
        println!("{}", release.label());
        return Ok(());
    }
    wait_ring(
        &node,
        &release,
        &before,
        Duration::from_secs(args.timeout_s),
    )
    .await
}

/// `ringhost rollback`: station `name` through node `to`, waiting at most
/// `timeout_s` seconds.
///
/// # Errors
/// When the node has nothing to roll back to, or some live node does not
/// run the previous version in time.
pub async fn rollback(to: &str, name: &str, timeout_s: u64, token: Option<String>) -> Result<()> {
    let node = connect(to, token).await?;
    let before = faults_before(&node, name).await;
    let answer = node
        .rollback(name)
        .await
        .with_context(|| format!("rolling back {name} through {to}"))?;
    let release = answer
        .release
        .with_context(|| format!("{to} answered the rollback without a release"))?;
    eprintln!("rolling back: {} published by {to}", release.label());
    wait_ring(&node, &release, &before, Duration::from_secs(timeout_s)).await
}

/// Refuses a module over the nodes' module limit before sending it.
fn check_module_size(file: &std::path::Path, size: u64) -> Result<()> {
    if size > MAX_MODULE_BYTES as u64 {
        bail!(
            "{}: {size} bytes ({:.1} MiB) is over the module limit of {MAX_MODULE_BYTES} bytes \
             ({} MiB)",
            file.display(),
            size as f64 / f64::from(1 << 20),
            MAX_MODULE_BYTES >> 20
        );
    }
    Ok(())
}

/// Each member's fault count of station `name` before a push (members
/// that do not answer, or do not run it, are left out): what the settle
/// window compares against, so faults of the version being replaced are
/// not blamed on the new one.
async fn faults_before(node: &AdminClient, name: &str) -> BTreeMap<usize, u64> {
    let mut out = BTreeMap::new();
    let Ok(ring) = node.ring(RING_TIMEOUT).await else {
        return out;
    };
    for m in &ring.members {
        if let Some(f) = m.report.as_deref().and_then(|r| faults_of(r, name)) {
            out.insert(m.index, f);
        }
    }
    out
}

/// The fault count of station `name` in a member's status.
fn faults_of(report: &status::Report, name: &str) -> Option<u64> {
    report
        .stations
        .iter()
        .find(|s| s.name == name)
        .map(|s| s.faults)
}

/// The fault count of `release` in a member's status: `None` when the
/// instance running there is another release (the member's pipeline has
/// not swapped it in yet), so its faults are not blamed on `release`.
fn release_faults(report: &status::Report, release: &Release) -> Option<u64> {
    report
        .stations
        .iter()
        .find(|s| s.name == release.name)
        .filter(|s| s.version.is_none_or(|v| v == release.version))
        .map(|s| s.faults)
}

/// How long `push` waits, once a member running the release faulted, for
/// that member's automatic rollback to show (the default
/// `--rollback-window-ms`: past it, a fault no longer counts towards one).
const ROLLBACK_WAIT: Duration = Duration::from_secs(10);

/// Where one member stands with a release.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Standing {
    Waiting,
    Running,
    /// Faulted running it (`faults` since the station was loaded there);
    /// watched until `until` for the node's automatic rollback.
    Faulted {
        faults: u64,
        until: Instant,
    },
    Failed(String),
    /// The member rolled back from the release on its own.
    RolledBack {
        /// What the member reports (`rolled back to v1 (…) after 3 faults
        /// within 10 s, the last: …`).
        said: String,
        /// What it runs now (`v1 (e4aa3580bfd0)`).
        now: String,
    },
    Superseded(String),
    Unreachable(String),
}

impl Standing {
    /// Final: the member is not watched any more.
    fn is_final(&self) -> bool {
        matches!(
            self,
            Standing::Failed(_) | Standing::RolledBack { .. } | Standing::Superseded(_)
        )
    }

    /// What the member line says after the member's name and address.
    fn describe(&self) -> String {
        match self {
            Standing::Running => "runs it".to_string(),
            Standing::Waiting => "still waiting (timed out)".to_string(),
            Standing::Faulted { faults, .. } => {
                format!("FAILED: the station faulted running it ({faults} fault(s))")
            }
            Standing::Failed(e) => format!("FAILED: {e}"),
            // A node rolls back on its own only after faults (traps,
            // timeouts, a failing `init`) of what it ran.
            Standing::RolledBack { said, now } => format!(
                "FAILED, ROLLED BACK: the station faulted running it, and the node {said}; it \
                 runs {now} now"
            ),
            Standing::Superseded(by) => format!("superseded by {by}"),
            Standing::Unreachable(e) => format!("unreachable (down?): {e}"),
        }
    }
}

/// Polls every member's status until each live one runs `release`, failed
/// it, or runs something newer; then keeps watching while the release
/// settles (until each member running it has made [`SETTLE_VISITS`] visits
/// with it, at most [`SETTLE_MAX`]), so a version every node rolls back
/// after a few traps is reported as failed, and so is any fault of the
/// station on a node running the release (`before`: each member's fault
/// count before the push, see [`faults_before`]).
async fn wait_ring(
    node: &AdminClient,
    release: &Release,
    before: &BTreeMap<usize, u64>,
    limit: Duration,
) -> Result<()> {
    let deadline = Instant::now() + limit;
    let first = node.ring(RING_TIMEOUT).await?;
    let members: Vec<(usize, String, String)> = first
        .members
        .iter()
        .map(|m| (m.index, m.name.clone(), m.addr.clone()))
        .collect();
    let mut standing: BTreeMap<usize, Standing> = BTreeMap::new();
    let mut misses: BTreeMap<usize, u32> = BTreeMap::new();
    // A member's visit count when first seen running the release, and the
    // latest one.
    let mut visits: BTreeMap<usize, (u64, u64)> = BTreeMap::new();
    // A member's fault count of the station when last seen running the
    // release.
    let mut faults: BTreeMap<usize, u64> = BTreeMap::new();
    let mut notes: Vec<String> = Vec::new();
    let mut settle_until: Option<Instant> = None;
    let mut last_line = String::new();
    loop {
        let round = node.ring(RING_TIMEOUT).await;
        for (index, _, _) in &members {
            let was = standing.get(index).cloned().unwrap_or(Standing::Waiting);
            if was.is_final() {
                continue;
            }
            let was_running = matches!(was, Standing::Running | Standing::Faulted { .. });
            let now = match member_report(&round, *index) {
                Ok(r) => {
                    misses.remove(index);
                    for c in conflicts_about(&r.deploy, release) {
                        let note = format!("node {index}: {c}");
                        if !notes.contains(&note) {
                            notes.push(note);
                        }
                    }
                    let mut now = standing_of(r, release);
                    let counted = release_faults(r, release);
                    if now == Standing::Running && counted.is_none() {
                        // The agent swapped it in, the pipeline not yet.
                        now = Standing::Waiting;
                    }
                    if now == Standing::Running {
                        let v = visits.entry(*index).or_insert((r.visits, r.visits));
                        v.1 = r.visits;
                        let count = counted.unwrap_or(0);
                        let new = match faults.insert(*index, count) {
                            // First seen running it: faults that are not
                            // the old version's count are the new one's.
                            None => count > 0 && before.get(index) != Some(&count),
                            // A smaller count is a fresh instance.
                            Some(last) => count > last || (count < last && count > 0),
                        };
                        // Faulted: watched (bounded) until the node's
                        // rollback shows, so the line can say what the
                        // ring did.
                        now = match was {
                            Standing::Faulted { faults, until } => Standing::Faulted {
                                faults: faults.max(count),
                                until,
                            },
                            _ if new => Standing::Faulted {
                                faults: count,
                                until: (Instant::now() + ROLLBACK_WAIT).min(deadline),
                            },
                            _ => now,
                        };
                    }
                    now
                }
                // Seen running: a missed poll while it settles is no news.
                Err(_) if was_running => was,
                Err(e) => {
                    let n = misses.entry(*index).or_default();
                    *n += 1;
                    // Twice in a row: a node restarting is not skipped.
                    if *n >= 2 {
                        Standing::Unreachable(format!("{e:#}"))
                    } else {
                        Standing::Waiting
                    }
                }
            };
            let now = match now {
                Standing::Faulted { faults, until } if Instant::now() >= until => {
                    Standing::Failed(format!(
                        "the station faulted running it ({faults} fault(s) since it was \
                         loaded; the node's log has the trap), and the node did not roll it \
                         back while push waited (up to {} s)",
                        ROLLBACK_WAIT.as_secs()
                    ))
                }
                now => now,
            };
            standing.insert(*index, now);
        }
        let running = count(&standing, |s| *s == Standing::Running);
        let faulted = count(&standing, |s| matches!(s, Standing::Faulted { .. }));
        let waiting = count(&standing, |s| *s == Standing::Waiting);
        let down = count(&standing, |s| matches!(s, Standing::Unreachable(_)));
        let line = format!(
            "{}: {running}/{} nodes run it, {waiting} waiting, {down} unreachable",
            release.label(),
            members.len()
        );
        if line != last_line {
            eprintln!("{line}");
            last_line = line;
        }
        let now = Instant::now();
        if waiting == 0 {
            let until = *settle_until.get_or_insert(now + SETTLE_MAX);
            let settled = visits
                .iter()
                .filter(|(i, _)| standing.get(i) == Some(&Standing::Running))
                .all(|(_, (at, last))| last.saturating_sub(*at) >= SETTLE_VISITS);
            // A member that faulted is waited for (bounded by its own
            // deadline) whatever the others do.
            if ((settled || now >= until) && faulted == 0) || now >= deadline {
                break;
            }
        } else if now >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for note in &notes {
        eprintln!("note: {note}");
    }
    let mut problems = Vec::new();
    let mut out = std::io::stdout().lock();
    for (index, name, addr) in &members {
        let s = standing.get(index).cloned().unwrap_or(Standing::Waiting);
        let text = s.describe();
        let _ = writeln!(out, "  {index:>3} {name:<24} {addr:<22} {text}");
        if !matches!(s, Standing::Running | Standing::Unreachable(_)) {
            problems.push(format!("{name}: {text}"));
        }
    }
    drop(out);
    if problems.is_empty() {
        println!("{} runs on every live node", release.label());
        Ok(())
    } else {
        Err(anyhow!(
            "{} is not running everywhere{}:\n  {}",
            release.label(),
            rollback_summary(&standing, members.len()),
            problems.join("\n  ")
        ))
    }
}

/// The rollbacks among `standing`, for the summary line: empty when there
/// are none, else `"; 3/3 nodes rolled back from it (they run v1 (…) now)"`.
fn rollback_summary(standing: &BTreeMap<usize, Standing>, members: usize) -> String {
    let mut now: BTreeMap<&str, usize> = BTreeMap::new();
    for s in standing.values() {
        if let Standing::RolledBack { now: n, .. } = s {
            *now.entry(n.as_str()).or_default() += 1;
        }
    }
    let rolled: usize = now.values().sum();
    if rolled == 0 {
        return String::new();
    }
    let runs = match now.len() {
        1 => format!("they run {} now", now.keys().next().expect("one entry")),
        _ => {
            "now running: ".to_string()
                + &now
                    .iter()
                    .map(|(v, n)| format!("{v} on {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
        }
    };
    format!("; {rolled}/{members} nodes rolled back from it ({runs})")
}

/// Member `index`'s report in a `GET /v1/ring` answer, or why there is
/// none.
fn member_report(round: &Result<RingView>, index: usize) -> Result<&status::Report> {
    let ring = round.as_ref().map_err(|e| anyhow!("{e:#}"))?;
    let m = ring
        .members
        .iter()
        .find(|m| m.index == index)
        .with_context(|| format!("member {index} is not in the ring view"))?;
    match (&m.report, m.liveness) {
        (Some(r), Liveness::Live) => Ok(r),
        _ => Err(anyhow!(
            "{}: {}",
            m.liveness.word(),
            m.error.as_deref().unwrap_or("no report")
        )),
    }
}

fn count(m: &BTreeMap<usize, Standing>, f: impl Fn(&Standing) -> bool) -> usize {
    m.values().filter(|s| f(s)).count()
}

/// The release conflicts in a member's deploy view that involve
/// `release` (kept or set aside), in words.
fn conflicts_about(view: &DeployView, release: &Release) -> Vec<String> {
    view.conflicts
        .iter()
        .filter(|c| c.involves(release))
        .map(|c| c.message())
        .collect()
}

fn standing_of(report: &status::Report, release: &Release) -> Standing {
    let Some(d) = report
        .deploy
        .stations
        .iter()
        .find(|d| d.name == release.name)
    else {
        return Standing::Waiting;
    };
    let current: OrderKey = (d.published_ms, d.version, d.origin, d.hash);
    if current == release.key() {
        return if d.runs(release) {
            // Running it, but it keeps faulting with nothing to roll back
            // to: a failure all the same.
            match &d.rolled_back {
                Some(r) => Standing::Failed(r.clone()),
                None => Standing::Running,
            }
        } else if let Some(e) = d
            .error
            .as_ref()
            .filter(|_| d.failed_version == Some(release.version))
        {
            Standing::Failed(e.clone())
        } else if let Some(r) = &d.rolled_back {
            // The release is still the member's current one, but it rolled
            // back from it to something older.
            Standing::RolledBack {
                said: r.clone(),
                now: d.running_label(),
            }
        } else {
            Standing::Waiting
        };
    }
    // A record the member set aside as a conflict, or one published in
    // the future (by the member's clock or ours), supersedes nothing: the
    // member replaces it with the release, or reports the conflict.
    let set_aside = report
        .deploy
        .conflicts
        .iter()
        .any(|c| c.name == release.name && c.stale.key() == current);
    let future = d.published_ms.saturating_sub(crate::station::unix_ms()) > MAX_AHEAD_MS;
    if set_aside || future {
        if d.runs(release) {
            return Standing::Running;
        }
    } else if current > release.key() {
        return Standing::Superseded(format!(
            "v{} ({}), which that node records (first published on node {})",
            d.version,
            d.hash.short(),
            d.origin
        ));
    }
    match &d.error {
        Some(e) if d.failed_version == Some(release.version) => Standing::Failed(e.clone()),
        _ => Standing::Waiting,
    }
}

/// Writes a config entry through node `to` (admin or ring address) and
/// waits until it has reached the next live node (see `config`).
///
/// # Errors
/// When the node refuses, or the write does not get on within 10 s.
pub async fn set(to: &str, key: &str, value: Option<String>) -> Result<()> {
    set_through(&connect(to, None).await?, key, value).await
}

/// Reads one config entry from node `to` (admin or ring address).
///
/// # Errors
/// When the node cannot be asked or does not run the config station.
pub async fn get(to: &str, key: &str) -> Result<ConfigEntry> {
    connect(to, None).await?.config_get(key).await
}

/// What `ringhost config` does.
#[derive(Debug, Clone)]
pub enum ConfigAction {
    /// Set the key to the value.
    Set(String),
    /// Delete the key.
    Delete,
    /// Print the key's value (`json`: the whole entry).
    Get {
        /// Print the entry as JSON.
        json: bool,
    },
}

/// `ringhost config`: `action` on `key` through node `to`.
///
/// # Errors
/// When the node does not run the config station, a write is not carried
/// on within its deadline, or (get, with or without `--json`) the key is
/// unset.
pub async fn config(
    to: &str,
    key: &str,
    action: &ConfigAction,
    token: Option<String>,
) -> Result<()> {
    let node = connect(to, token).await?;
    match action {
        ConfigAction::Set(value) => set_through(&node, key, Some(value.clone())).await,
        ConfigAction::Delete => set_through(&node, key, None).await,
        ConfigAction::Get { json } => {
            let entry = node.config_get(key).await?;
            // Both forms exit 1 for an unset key; --json still prints the
            // entry (its config version says what the node has seen).
            if *json {
                println!("{}", serde_json::to_string(&entry)?);
            } else if let Some(v) = &entry.value {
                println!("{v}");
            }
            match entry.value {
                Some(_) => Ok(()),
                None => bail!("{key} is not set (config version {})", entry.config_version),
            }
        }
    }
}

/// Writes a config entry through `node` and waits until the write (or a
/// later write of the key) has reached the next live node, so a crash of
/// that node does not lose it.
///
/// # Errors
/// When the node refuses, or the write does not get on within 10 s.
async fn set_through(node: &AdminClient, key: &str, value: Option<String>) -> Result<()> {
    let to = node.addr().to_string();
    let me = node.status(RING_TIMEOUT).await?;
    let before: u64 = node.config_get(key).await?.ver.unwrap_or(0);
    node.config_set(key, value).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    // Taken by the station here (the inbox is first in, first out) and the
    // key's entry newer than before: the write is in the particle's slot,
    // as this entry or a later one.
    let ver = loop {
        let e: ConfigEntry = node.config_get(key).await?;
        let ver = e.ver.unwrap_or(0);
        if e.pending == 0 && ver > before {
            break ver;
        }
        if Instant::now() >= deadline {
            bail!("{to} has not applied the write within 10 s (is the particle moving?)");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // And carried on: the successor's config version (the highest entry
    // version it applied) has reached this entry's.
    if let Some(next) = me
        .successor
        .filter(|s| *s != me.node.index && me.successor_up)
    {
        loop {
            let ring = node.ring(RING_TIMEOUT).await?;
            let there = ring
                .members
                .iter()
                .find(|m| m.index == next)
                .and_then(|m| m.config_version)
                .unwrap_or(0);
            if there >= ver {
                break;
            }
            if Instant::now() >= deadline {
                bail!("the write has not reached member {next} within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    eprintln!("{key}: config entry version {ver} on the ring");
    Ok(())
}

/// `ringhost keygen`: the secret key in `out`, the public key beside it.
///
/// # Errors
/// When the key files cannot be written (or already exist).
pub fn keygen(out: &std::path::Path) -> Result<()> {
    let key = sign::generate();
    let public = sign::write_key(out, &key)?;
    eprintln!(
        "secret key: {} (keep it private); public key: {}",
        out.display(),
        sign::public_path(out).display()
    );
    println!("{public}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::release::Conflict;

    fn rel(version: u64, h: u8, published_ms: u64) -> Release {
        Release::sample("marker", version, 0, Hash([h; 32]), published_ms)
    }

    #[test]
    fn push_reports_the_conflicts_its_release_is_part_of() {
        let (stale, pushed, other) = (rel(3, 6, 1_000), rel(1, 1, 9_000), rel(5, 7, 20_000));
        let view = DeployView {
            conflicts: vec![Conflict::of(&stale, &pushed, Some(2))],
            ..DeployView::default()
        };
        let notes = conflicts_about(&view, &pushed);
        assert_eq!(notes.len(), 1);
        assert!(
            notes[0].contains("kept v1") && notes[0].contains("node 2"),
            "{notes:?}"
        );
        assert!(conflicts_about(&view, &other).is_empty());
    }

    #[test]
    fn rollbacks_are_named_per_member_and_counted_in_the_summary() {
        let back = |now: &str| Standing::RolledBack {
            said: "rolled back to v1 (aaaaaaaaaaaa) after 3 faults within 10 s, the last: trap"
                .into(),
            now: now.into(),
        };
        let line = back("v1 (aaaaaaaaaaaa)").describe();
        assert!(
            line.starts_with(
                "FAILED, ROLLED BACK: the station faulted running it, and the node \
                              rolled back to v1"
            ) && line.ends_with("; it runs v1 (aaaaaaaaaaaa) now"),
            "{line}"
        );
        let mut standing = BTreeMap::from([(0, back("v1 (a)")), (1, Standing::Running)]);
        assert_eq!(
            rollback_summary(&standing, 3),
            "; 1/3 nodes rolled back from it (they run v1 (a) now)"
        );
        standing.insert(2, back("v0 (b)"));
        assert_eq!(
            rollback_summary(&standing, 3),
            "; 2/3 nodes rolled back from it (now running: v0 (b) on 1, v1 (a) on 1)"
        );
        assert_eq!(rollback_summary(&BTreeMap::new(), 3), "");
    }

    #[test]
    fn module_size_is_checked_against_the_module_limit() {
        let f = std::path::Path::new("big.wasm");
        assert!(check_module_size(f, MAX_MODULE_BYTES as u64).is_ok());
        let e = check_module_size(f, 20_000_000).unwrap_err().to_string();
        assert!(e.contains("20000000") && e.contains("module limit"), "{e}");
    }
}
