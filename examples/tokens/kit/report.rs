//! The tokens demo's outcome and its side-by-side report (see
//! `scenario` for the story and how each figure is measured).

use std::time::Duration;

use super::scenario::{Params, WINDOW};

/// One node's side of the outcome.
#[derive(Debug, Clone)]
pub struct NodeRow {
    /// Abusive requests sent to each of its servers.
    pub abuse_sent: u32,
    /// Of those, refused by the per-node server.
    pub per_node_refused: u32,
    /// Of those, refused by the ring-guarded server.
    pub ring_refused: u32,
    /// When its ring-guarded server learnt of the block, from the
    /// crossing (`None`: never).
    pub blocked_after: Option<Duration>,
}

/// What a run showed.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The parameters.
    pub params: Params,
    /// The abusive token.
    pub abusive: String,
    /// Lap p50 over the nodes after the attack, ms.
    pub lap_ms: f64,
    /// The crossing request's number among the abusive ones (1-based).
    pub crossing_request: usize,
    /// From the start of the load to the crossing.
    pub crossing_at: Duration,
    /// The ring's block entry (its reason).
    pub block_info: Option<String>,
    /// From the crossing to the station making the block (its `since`),
    /// ms (negative: clock granularity).
    pub block_made_after_ms: Option<i64>,
    /// Per node.
    pub rows: Vec<NodeRow>,
    /// Legitimate requests sent (to each kind of server).
    pub legit_requests: u32,
    /// Legitimate requests refused by per-node servers.
    pub legit_refused_per_node: u32,
    /// Legitimate requests refused by ring-guarded servers.
    pub legit_refused_ring: u32,
    /// Legitimate tokens in any ring-guarded server's blocked set at the
    /// end.
    pub legit_blocked: Vec<String>,
    /// Observations in node 0's view of the ring's window at the end, and
    /// the number reported.
    pub observations: (u64, u64),
    /// Reports the servers could not send.
    pub reports_dropped: u64,
}

impl Outcome {
    /// Nodes whose ring-guarded server blocked the abusive token.
    pub fn ring_blocked_nodes(&self) -> usize {
        self.rows
            .iter()
            .filter(|r| r.blocked_after.is_some())
            .count()
    }
    /// Nodes whose per-node server refused the abusive token at least once.
    pub fn per_node_blocked_nodes(&self) -> usize {
        self.rows.iter().filter(|r| r.per_node_refused > 0).count()
    }
    /// From the crossing to the last node learning of the block.
    pub fn last_blocked(&self) -> Option<Duration> {
        self.rows.iter().map(|r| r.blocked_after).max().flatten()
    }

    fn laps(&self, ms: f64) -> String {
        if self.lap_ms > 0.0 {
            format!("{:.2} laps", ms / self.lap_ms)
        } else {
            "? laps".into()
        }
    }

    /// The side-by-side report.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let p = &self.params;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "tokens demo: {} nodes (lap p50 {:.1} ms), abusive token {:?} sent {} times to each \
             app server ({} in all, one every {} ms), {} legitimate tokens ({} requests, at most \
             {} each); every request goes to both servers beside its node",
            p.nodes,
            self.lap_ms,
            self.abusive,
            p.abuse_per_node(),
            p.abuse_total(),
            p.abuse_interval.as_millis(),
            p.legit_tokens,
            self.legit_requests,
            p.legit_max()
        );
        let _ = writeln!(
            s,
            "  per-node (fail2ban's model): a server refuses a token it saw {} times in {} s",
            p.per_node_threshold,
            WINDOW.as_secs()
        );
        let _ = writeln!(
            s,
            "  ring (tokens station):       blocked fleet-wide once seen >= {} times at >= {} \
             nodes in 60 s",
            p.spread_min(),
            p.spread_nodes()
        );
        let _ = writeln!(
            s,
            "fleet-wide crossing: abusive request #{} of {}, {} ms into the attack",
            self.crossing_request,
            p.abuse_total(),
            self.crossing_at.as_millis()
        );
        let _ = writeln!(
            s,
            "\nnode  abusive sent  per-node refused  ring refused  ring blocked after the crossing"
        );
        for (i, r) in self.rows.iter().enumerate() {
            let after = match r.blocked_after {
                Some(d) => {
                    let ms = d.as_secs_f64() * 1e3;
                    format!("{ms:7.1} ms  ({})", self.laps(ms))
                }
                None => "never".into(),
            };
            let _ = writeln!(
                s,
                "{i:>4}  {:>12}  {:>16}  {:>12}  {after}",
                r.abuse_sent, r.per_node_refused, r.ring_refused
            );
        }
        let _ = writeln!(s);
        if let (Some(info), Some(made)) = (&self.block_info, self.block_made_after_ms) {
            let last = self.last_blocked().map(|d| d.as_secs_f64() * 1e3);
            let _ = writeln!(
                s,
                "the ring's block: \"{info}\"\n  made by the station {made} ms ({}) after the \
                 crossing; on every node {} after the block",
                self.laps(made as f64),
                match last {
                    Some(l) if self.ring_blocked_nodes() == p.nodes => {
                        let d = l - made as f64;
                        format!("{d:.1} ms ({})", self.laps(d))
                    }
                    _ => "not yet".into(),
                }
            );
        } else {
            let _ = writeln!(s, "the ring did not block the abusive token");
        }
        let _ = writeln!(
            s,
            "legitimate: {} requests; refused per-node {}, ring {}; legitimate tokens in a \
             blocked set: {}",
            self.legit_requests,
            self.legit_refused_per_node,
            self.legit_refused_ring,
            if self.legit_blocked.is_empty() {
                "none".to_string()
            } else {
                self.legit_blocked.join(", ")
            }
        );
        let _ = writeln!(
            s,
            "reports: {} observations in the ring's window of {} reported ({} reports dropped)",
            self.observations.0, self.observations.1, self.reports_dropped
        );
        let abusive_ring: u32 = self.rows.iter().map(|r| r.ring_refused).sum();
        let abusive_per_node: u32 = self.rows.iter().map(|r| r.per_node_refused).sum();
        let _ = writeln!(
            s,
            "\nper-node counting: blocked the abusive token on {}/{} nodes, refused {} of its {} \
             requests",
            self.per_node_blocked_nodes(),
            p.nodes,
            abusive_per_node,
            p.abuse_total()
        );
        let _ = writeln!(
            s,
            "the ring:          blocked it on {}/{} nodes{}, refused {} of its {} requests; \
             legitimate tokens blocked: {}",
            self.ring_blocked_nodes(),
            p.nodes,
            match self.last_blocked() {
                Some(d) if self.ring_blocked_nodes() == p.nodes => {
                    let ms = d.as_secs_f64() * 1e3;
                    format!(" within {ms:.1} ms ({}) of the crossing", self.laps(ms))
                }
                _ => String::new(),
            },
            abusive_ring,
            p.abuse_total(),
            self.legit_blocked.len()
        );
        s
    }
}
