//! Automatic rollbacks on this node only: a station that keeps faulting
//! is replaced by the newest recorded release that has not faulted here.

use super::*;

impl Agent {
    /// A station faulted often enough here: what runs is marked as
    /// faulted, and the node rolls back to the newest recorded release that
    /// has not faulted here (whatever ran before, a rolled-back-to version
    /// included), or says once that it keeps faulting. A report about
    /// something no longer running (the same module as another release
    /// included) is ignored: it says nothing of what runs now.
    pub(super) fn on_faulty(&mut self, report: FaultReport) {
        let FaultReport { name, id, cause } = report;
        if self.rolling.contains(&name) {
            return; // a rollback is loading: what faulted is replaced soon
        }
        if self.ids.get(&name) != Some(&id) {
            let what = id.version.map_or_else(
                || format!("module {}", id.hash.short()),
                |v| format!("v{v} ({})", id.hash.short()),
            );
            info!(station = %name, faulted = %what, %cause,
                "fault report about a station no longer running; ignored");
            return;
        }
        let faulted = self.faulted.entry(name.clone()).or_default();
        let entry = (id.hash, Some(id.config));
        if !faulted.contains(&entry) {
            faulted.push(entry);
        }
        self.roll_back(name, cause);
    }

    /// Rolls station `name` (whose running module is marked as faulted)
    /// back to the newest recorded release that has not faulted here, or
    /// says once that it keeps faulting.
    fn roll_back(&mut self, name: String, cause: String) {
        let faulted = &self.faulted[&name];
        let has_faulted = |r: &Release| {
            faulted
                .iter()
                .any(|(h, c)| *h == r.hash && c.as_ref().is_none_or(|c| *c == r.config))
        };
        let candidates: Vec<Release> = self
            .store
            .record(&name)
            .map(|r| {
                r.history
                    .iter()
                    .rev()
                    .chain(std::iter::once(&r.current))
                    .filter(|p| !has_faulted(p))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let prev = candidates
            .into_iter()
            .find_map(|p| self.store.module(&p.hash).map(|bytes| (p, bytes)));
        let Some((prev, bytes)) = prev else {
            let what = format!("keeps faulting, nothing to roll back to: {cause}");
            if self
                .rolled_back
                .get(&name)
                .is_some_and(|r| r.starts_with("keeps faulting"))
            {
                return; // said once
            }
            warn!(station = %name, %cause, "station keeps faulting and has no version left to roll back to that has not faulted here");
            self.events.push(EventKind::RolledBack {
                station: name.clone(),
                cause: what.clone(),
            });
            self.rolled_back.insert(name, what);
            return;
        };
        self.rolling.push(name.clone());
        self.spawn_load(
            name,
            prev.config.clone(),
            bytes,
            Job::LocalRollback { to: prev, cause },
        );
    }

    /// An automatic rollback to `to` loaded (or not).
    pub(super) async fn on_rolled_back(
        &mut self,
        to: Release,
        cause: String,
        result: Result<Box<Station>, String>,
    ) {
        match result {
            Ok(station) => {
                let what = format!(
                    "rolled back to v{} ({}) after {cause}",
                    to.version,
                    to.hash.short()
                );
                warn!(station = %to.name, "{what}");
                self.events.push(EventKind::RolledBack {
                    station: to.name.clone(),
                    cause: what.clone(),
                });
                self.rolled_back.insert(to.name.clone(), what);
                self.swap(station, Some(to.version)).await;
            }
            Err(e) => {
                self.fail(
                    &to.name,
                    None,
                    format!("rollback to v{} failed: {e}", to.version),
                );
                // Not a place to return to: try the one before.
                self.faulted
                    .entry(to.name.clone())
                    .or_default()
                    .push((to.hash, Some(to.config.clone())));
                if self.running.contains_key(&to.name) {
                    self.roll_back(to.name, cause);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RingLayout, StationSpec};

    /// An agent of a one-node ring running the `trap` test station
    /// (`every=100000`: it never traps in these tests).
    async fn agent() -> Agent {
        let layout = RingLayout::from_addrs(["127.0.0.1:1"]).expect("layout");
        let mut config = NodeConfig::new(layout, 0);
        let trap = std::path::Path::new(env!("RINGHOST_STATIONS_DIR")).join("trap.wasm");
        config.stations = vec![StationSpec::file(trap).with("every", "100000")];
        let node = NodeInfo {
            name: "n0".into(),
            index: 0,
            ring_size: 1,
            ring_hash: "0".into(),
        };
        let limits = StationLimits {
            call_timeout: Duration::from_secs(1),
            fuel: None,
            memory_bytes: 16 << 20,
            rollback_after: 3,
            rollback_window: Duration::from_secs(10),
        };
        let host = StationHost::new().expect("station host");
        let started = start(
            Arc::new(config),
            host,
            node,
            KvStore::default(),
            Observer::none(),
            limits,
        )
        .await
        .expect("agent starts");
        started.agent
    }

    fn report(id: StationId) -> FaultReport {
        FaultReport {
            name: "trap".into(),
            id,
            cause: "3 faults within 10 s, the last: trap".into(),
        }
    }

    #[tokio::test]
    async fn a_fault_report_of_another_release_of_the_running_module_is_ignored() {
        let mut agent = agent().await;
        let running = agent.ids["trap"].clone();
        // The same module as release v1 with another config: what a v1
        // report still on its way names once v2 of that module runs.
        for stale in [
            StationId {
                version: Some(1),
                ..running.clone()
            },
            StationId {
                config: Vec::new(),
                ..running.clone()
            },
        ] {
            agent.on_faulty(report(stale));
            assert!(agent.faulted.is_empty(), "{:?}", agent.faulted);
            assert!(agent.rolled_back.is_empty(), "{:?}", agent.rolled_back);
        }
        // A report of what runs counts: nothing else to return to here.
        agent.on_faulty(report(running.clone()));
        assert_eq!(
            agent.faulted["trap"],
            vec![(running.hash, Some(running.config))]
        );
        let said = &agent.rolled_back["trap"];
        assert!(said.starts_with("keeps faulting"), "{said}");
    }
}
