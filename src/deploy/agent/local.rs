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
