//! The soak's invariants over what the nodes logged, free of processes:
//! tick lines, failure declarations and regenerations in, violations out
//! (one line each). The soak (`super`) gathers the lines and the fault
//! spans; the unit tests below feed made-up ones.
//!
//! # Committed visits
//!
//! A tick line (`tick seq=S … hop=H`) is logged when the tick station
//! runs at a stop, before the node passes the particle on. By the custody
//! rule of `src/ring/mod.rs` ("Custody, and why a crash loses nothing")
//! a stop is *committed* when its particle went on from it; otherwise a
//! later stop redoes it:
//!
//! - *Resent*: node `a` logs `S` at hop `H`, then dies, freezes or is cut
//!   off before its successor takes the particle. `a`'s predecessor still
//!   holds the copy it sent (slot `S-1`) and resends it past `a`, its hop
//!   advanced by the members it skips: the next node logs `S` again, at a
//!   hop above `H`. So among ticks of one sequence number, the one with
//!   the highest hop is the committed one, and a lower one is a stop that
//!   was redone. A redone stop is explained when a fault touching its
//!   node, or the node that passed it the particle (the one that logged
//!   `S-1`), was active between shortly before it and the redo; otherwise
//!   it is a violation. Two ticks of one sequence number at the *same* hop
//!   are two particles (a resend always advances the hop): a violation.
//! - *Regenerated*: a node `r` that saw no particle for the token timeout
//!   makes a new one from the last copy it forwarded (its last tick's
//!   sequence number `Sr`), so every tick logged before the regeneration
//!   with a sequence number above `Sr` was the lost particle's, and is not
//!   committed. A regeneration with no fault active in the token timeout
//!   and the explain window before it is a violation, and so is one whose
//!   copy is more than two laps behind the highest number logged before
//!   it (a node that restarted, or was cut off for long, making a particle
//!   from a stale or empty copy: the ring's station slots roll back).
//!
//! Ticks are compared in the nodes' log timestamps (one machine, one
//! clock). Violations of one kind over nearby sequence numbers are
//! reported as one run (two particles side by side repeat a stretch).
//!
//! A tick whose station call then failed (the call passed its deadline
//! after the line was logged: "station call failed … station=tick") was
//! passed on with the slot unchanged; the soak leaves it out before these
//! rules apply.
//!
//! # Regenerated while cut off
//!
//! `src/ring/mod.rs` lets a node regenerate only while it "still has a
//! live predecessor (pings arriving: it is part of a ring, not cut off)".
//! A regeneration by a node whose view held only itself breaks that
//! promise (in a ring of one, its own pings keep it "not cut off"), and
//! is named as a violation of its own: its particle, of a higher
//! generation, replaces the ring's when it comes back.
//!
//! # False failures
//!
//! A `successor declared dead` line about member `m` by node `a` is
//! explained when a fault touching `a` or `m` was active within the
//! explain window before it (a fault's span runs from its injection to
//! its heal); anything else is a false failure.

use std::collections::BTreeMap;

use super::super::Line;

/// One fault as injected: the nodes it touches and when it was active
/// (epoch seconds; `end` is the heal, `f64::INFINITY` if never healed).
#[derive(Debug, Clone, PartialEq)]
pub struct FaultSpan {
    /// Its kind, as the report counts it (`SIGKILL`, `cut` …).
    pub kind: &'static str,
    /// Members it touches (a cut touches both ends).
    pub nodes: Vec<usize>,
    /// When it was injected.
    pub start: f64,
    /// When it was healed.
    pub end: f64,
}

impl FaultSpan {
    /// Whether it touches one of `nodes` and was active at some time in
    /// `[from, to]`.
    pub fn explains(&self, nodes: &[usize], from: f64, to: f64) -> bool {
        self.start <= to && self.end >= from && nodes.iter().any(|n| self.nodes.contains(n))
    }
}

/// A tick line's fields.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tick {
    /// The node that logged it (the harness's index).
    pub node: usize,
    /// Its timestamp, epoch seconds.
    pub at: f64,
    /// The ring-wide sequence number.
    pub seq: u64,
    /// The particle's hop at this stop.
    pub hop: u64,
    /// The particle's generation (lines from before it was logged: 0).
    pub generation: u64,
}

/// `key=` value of a `key=value` word in `text`.
pub fn field<T: std::str::FromStr>(text: &str, key: &str) -> Option<T> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.trim_matches('"').parse().ok())
}

impl Tick {
    /// The tick `line` logs, if it is a tick line.
    pub fn of(line: &Line) -> Option<Tick> {
        if !line.text.contains(" tick seq=") {
            return None;
        }
        Some(Tick {
            node: line.node,
            at: line.at,
            seq: field(&line.text, "seq")?,
            hop: field(&line.text, "hop")?,
            generation: field(&line.text, "generation").unwrap_or(0),
        })
    }
}

/// What the tick analysis found.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct TickFindings {
    /// Tick lines seen.
    pub ticks: usize,
    /// Stops redone by a resend (explained or not).
    pub redone: usize,
    /// Ticks of a lost particle, redone after a regeneration.
    pub rolled_back: usize,
    /// Ticks of a particle logged after a newer generation had been: a
    /// superseded copy's stops (a node frozen with it, back).
    pub superseded: usize,
    /// Regenerations seen.
    pub regenerations: usize,
    /// One line per violation.
    pub violations: Vec<String>,
}

/// Checks that no tick sequence number was seen twice among committed
/// visits (module docs), and that a regeneration restarts from a copy
/// at most two laps (of `members` stops) behind. `ticks` in time order;
/// `regenerations` are `(node, at)`; `window` is the explain window in
/// seconds, `token_timeout` the nodes' in seconds.
pub fn committed_ticks(
    ticks: &[Tick],
    regenerations: &[(usize, f64)],
    faults: &[FaultSpan],
    window: f64,
    token_timeout: f64,
    members: usize,
) -> TickFindings {
    let mut f = TickFindings {
        ticks: ticks.len(),
        regenerations: regenerations.len(),
        ..TickFindings::default()
    };
    let mut live = vec![true; ticks.len()];
    for &(r, at) in regenerations {
        if !faults
            .iter()
            .any(|s| s.start <= at && s.end >= at - token_timeout - window)
        {
            f.violations.push(format!(
                "node {r} regenerated the particle at {} with no fault active in the {:.1} s before",
                clock(at),
                token_timeout + window
            ));
        }
        // The new particle's slots are those of the copy `r` kept: its
        // first stop, at once, logs that copy's number plus one.
        let Some(first) = ticks.iter().find(|t| t.node == r && t.at >= at) else {
            continue;
        };
        let last = first.seq - 1;
        let highest = ticks
            .iter()
            .filter(|t| t.at < at)
            .map(|t| t.seq)
            .max()
            .unwrap_or(0);
        if highest > last + 2 * members as u64 {
            f.violations.push(format!(
                "node {r} regenerated the particle at {} from a copy {} stops old (seq={} after seq={} was logged): the slots of those stops were lost",
                clock(at),
                highest - last,
                first.seq,
                highest
            ));
        }
        for (i, t) in ticks.iter().enumerate() {
            if live[i] && t.at < at && t.seq > last {
                live[i] = false;
                f.rolled_back += 1;
            }
        }
    }
    // A stop of an older generation than one already logged is a
    // superseded copy's (a node that was frozen or cut off with it, back):
    // the newer particle replaces it wherever they meet, so its slots
    // never go on. Not committed.
    let mut newest = 0;
    for (i, t) in ticks.iter().enumerate() {
        if t.generation < newest {
            if live[i] {
                live[i] = false;
                f.superseded += 1;
            }
        } else {
            newest = t.generation;
        }
    }
    let mut unexplained: Vec<(u64, Tick, Tick)> = Vec::new();
    let mut twice: Vec<(u64, Tick, Tick)> = Vec::new();
    let mut by_seq: BTreeMap<u64, Vec<Tick>> = BTreeMap::new();
    for (i, t) in ticks.iter().enumerate() {
        if live[i] {
            by_seq.entry(t.seq).or_default().push(*t);
        }
    }
    for (seq, group) in &by_seq {
        if group.len() < 2 {
            continue;
        }
        let mut group = group.clone();
        group.sort_by(|a, b| a.hop.cmp(&b.hop).then(a.at.total_cmp(&b.at)));
        for w in group.windows(2) {
            if w[0].hop == w[1].hop {
                twice.push((*seq, w[0], w[1]));
            }
        }
        let redo = *group.last().expect("two or more");
        // Who passed the particle to the redone stops: the nodes that
        // logged the previous sequence number.
        let senders: Vec<usize> = by_seq
            .get(&(seq - 1))
            .map(|g| g.iter().map(|t| t.node).collect())
            .unwrap_or_default();
        for t in &group[..group.len() - 1] {
            f.redone += 1;
            let mut touched = senders.clone();
            touched.push(t.node);
            if !faults
                .iter()
                .any(|s| s.explains(&touched, t.at - window, redo.at + 0.5))
            {
                unexplained.push((*seq, *t, redo));
            }
        }
    }
    runs(&twice, "at one hop (two particles)", &mut f.violations);
    runs(&unexplained, "with no fault near them", &mut f.violations);
    f
}

/// One violation line per run of nearby sequence numbers in `found`
/// (`(seq, first tick, the other tick)`, ascending): two particles side
/// by side repeat a whole stretch.
fn runs(found: &[(u64, Tick, Tick)], what: &str, out: &mut Vec<String>) {
    let mut k = 0;
    while k < found.len() {
        let mut j = k;
        while j + 1 < found.len() && found[j + 1].0 <= found[j].0 + 3 {
            j += 1;
        }
        let (first, a, b) = found[k];
        out.push(format!(
            "seq={first}..{} ({} numbers) logged twice {what}; first: node {} hop={} at {}, again node {} hop={} at {}",
            found[j].0,
            j - k + 1,
            a.node,
            a.hop,
            clock(a.at),
            b.node,
            b.hop,
            clock(b.at)
        ));
        k = j + 1;
    }
}

/// `HH:MM:SS.mmm` (UTC) of epoch seconds, as the node logs show it.
pub fn clock(t: f64) -> String {
    let day = t.rem_euclid(86_400.0);
    let (h, m) = ((day / 3600.0) as u64, (day % 3600.0 / 60.0) as u64);
    format!("{h:02}:{m:02}:{:06.3}", day % 60.0)
}

/// False failures among `lines` (module docs): one line per unexplained
/// `successor declared dead`.
pub fn false_failures(lines: &[Line], faults: &[FaultSpan], window: f64) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.text.contains("successor declared dead"))
        .filter_map(|l| {
            let member: Option<usize> = field(&l.text, "member");
            let touched: Vec<usize> = std::iter::once(l.node).chain(member).collect();
            let explained = faults
                .iter()
                .any(|s| s.explains(&touched, l.at - window, l.at));
            (!explained).then(|| format!("false failure: node {}: {}", l.node, l.text))
        })
        .collect()
}

/// Regenerations by a node whose view, when it regenerated, held itself
/// alone (of `n` > 1 members): a node cut off from every other member
/// makes a particle of its own, whose higher generation then supersedes
/// the ring's when the cut heals. `lines` in time order; one line each.
pub fn isolated_regenerations(lines: &[Line], n: usize) -> Vec<String> {
    let mut view: BTreeMap<usize, String> = BTreeMap::new();
    let mut found = Vec::new();
    for l in lines {
        if let Some((_, live)) = l.text.split_once("membership view changed live=") {
            view.insert(l.node, live.trim().to_owned());
        } else if l.text.contains("regenerated one")
            && n > 1
            && view.get(&l.node) == Some(&format!("[{}]", l.node))
        {
            found.push(format!(
                "node {} regenerated the particle while its view held only itself (cut off from every other member), at {}",
                l.node,
                clock(l.at)
            ));
        }
    }
    found
}

/// Checks that `ticks` (in log order, consecutive) are one particle
/// walking the ring: each sequence number one above the previous, at the
/// member after the previous one (of `n`).
///
/// # Errors
/// The first pair that breaks it.
pub fn single_particle(ticks: &[Tick], n: usize) -> Result<(), String> {
    for w in ticks.windows(2) {
        let (a, b) = (w[0], w[1]);
        if b.seq != a.seq + 1 || b.node != (a.node + 1) % n {
            return Err(format!(
                "not one particle in ring order: node {} seq={} then node {} seq={}",
                a.node, a.seq, b.node, b.seq
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tick(node: usize, at: f64, seq: u64, hop: u64) -> Tick {
        Tick {
            node,
            at,
            seq,
            hop,
            generation: 1,
        }
    }

    fn span(kind: &'static str, nodes: &[usize], start: f64, end: f64) -> FaultSpan {
        FaultSpan {
            kind,
            nodes: nodes.to_vec(),
            start,
            end,
        }
    }

    #[test]
    fn a_stop_redone_after_its_node_was_killed_is_not_committed() {
        // 0 -> 1 (killed after logging 2) ; 0 resends past 1 to 2.
        let ticks = [
            tick(0, 1.0, 1, 0),
            tick(1, 1.1, 2, 1),
            tick(2, 1.7, 2, 2),
            tick(3, 1.8, 3, 3),
        ];
        let kill = [span("SIGKILL", &[1], 1.15, 2.5)];
        let f = committed_ticks(&ticks, &[], &kill, 2.0, 1.0, 11);
        assert_eq!(f.violations, Vec::<String>::new());
        assert_eq!(f.redone, 1);
        // The same without the fault is a violation.
        let f = committed_ticks(&ticks, &[], &[], 2.0, 1.0, 11);
        assert_eq!(f.violations.len(), 1, "{:?}", f.violations);
    }

    #[test]
    fn a_regeneration_from_an_empty_copy_is_named() {
        // Node 6 restarts and makes a particle from nothing: seq starts at 1.
        let mut ticks: Vec<Tick> = (0..40)
            .map(|k| tick(k % 11, k as f64 * 0.01, 100 + k as u64, 100 + k as u64))
            .collect();
        ticks.push(tick(6, 1.0, 1, 0));
        ticks.push(tick(7, 1.1, 2, 1));
        let faults = [span("restart", &[6], 0.0, 0.9)];
        let f = committed_ticks(&ticks, &[(6, 1.0)], &faults, 2.0, 1.0, 11);
        assert_eq!(f.violations.len(), 1, "{:?}", f.violations);
        assert!(f.violations[0].contains("stops old"), "{:?}", f.violations);
    }

    #[test]
    fn one_sequence_number_at_one_hop_twice_is_two_particles() {
        let ticks = [tick(1, 1.0, 5, 4), tick(6, 1.0, 5, 4)];
        let everything = [span("SIGSTOP", &[0, 1, 6], 0.0, 9.0)];
        let f = committed_ticks(&ticks, &[], &everything, 2.0, 1.0, 11);
        assert!(f.violations[0].contains("two particles"), "{f:?}");
    }

    /// Seed 32810: node 4 was frozen with generation 1 in its socket while
    /// node 0 regenerated generation 2; on waking it made a stop of the
    /// old copy (seq 193, as node 3 had of the new one), which node 5
    /// then dropped. Not two particles: a superseded copy's stop.
    #[test]
    fn a_stop_of_a_superseded_generation_is_not_committed() {
        let new = |node, at, seq, hop| Tick {
            generation: 2,
            ..tick(node, at, seq, hop)
        };
        let ticks = [
            tick(3, 0.9, 192, 201),
            new(0, 1.0, 190, 198),
            new(3, 1.1, 193, 201),
            tick(4, 2.0, 193, 202),
            new(5, 2.1, 194, 203),
        ];
        let faults = [span("SIGSTOP", &[4], 0.0, 1.9)];
        let f = committed_ticks(&ticks, &[(0, 1.0)], &faults, 2.0, 1.0, 11);
        assert!(f.violations.is_empty(), "{:?}", f.violations);
        assert_eq!(f.superseded, 1);
        // Without generations (older logs) the same lines are a redo.
        let old: Vec<Tick> = ticks
            .iter()
            .map(|t| Tick {
                generation: 0,
                ..*t
            })
            .collect();
        let f = committed_ticks(&old, &[(0, 1.0)], &[], 2.0, 1.0, 11);
        assert_eq!(f.superseded, 0);
        assert!(!f.violations.is_empty());
    }

    #[test]
    fn ticks_of_a_lost_particle_are_rolled_back_by_a_regeneration() {
        // Node 2 forwarded seq 7; the particle got to 3 and 4 and was lost;
        // node 2 regenerates from its copy: 8 and 9 are logged again.
        let ticks = [
            tick(2, 1.0, 7, 6),
            tick(3, 1.1, 8, 7),
            tick(4, 1.2, 9, 8),
            tick(2, 3.0, 8, 7),
            tick(3, 3.1, 9, 8),
        ];
        let faults = [span("SIGKILL", &[4], 1.25, 4.0)];
        let f = committed_ticks(&ticks, &[(2, 2.9)], &faults, 2.0, 1.0, 11);
        assert_eq!(f.violations, Vec::<String>::new());
        assert_eq!(f.rolled_back, 2);
        // With no fault, the regeneration itself is the violation.
        let f = committed_ticks(&ticks, &[(2, 2.9)], &[], 2.0, 1.0, 11);
        assert_eq!(f.violations.len(), 1, "{:?}", f.violations);
    }

    #[test]
    fn a_failure_declared_away_from_every_fault_is_false() {
        let line = |node, at, member| Line {
            node,
            at,
            text: format!(
                "2026-12-01T00:00:00Z WARN node: successor declared dead; skipping it member={member}"
            ),
        };
        let faults = [span("cut", &[3, 4], 10.0, 11.0)];
        let lines = [line(3, 10.5, 4), line(2, 12.5, 3), line(5, 20.0, 6)];
        let found = false_failures(&lines, &faults, 2.0);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("node 5"), "{found:?}");
    }

    #[test]
    fn a_regeneration_by_a_node_alone_in_its_view_is_named() {
        let line = |node, at: f64, text: &str| Line {
            node,
            at,
            text: text.to_owned(),
        };
        let lines = [
            line(3, 1.0, "INFO node{idx=3}: membership view changed live=[3]"),
            line(
                3,
                2.0,
                "WARN node{idx=3}: no particle within the token timeout: regenerated one particle=2@3",
            ),
            line(
                5,
                3.0,
                "INFO node{idx=5}: membership view changed live=[4, 5]",
            ),
            line(
                5,
                4.0,
                "WARN node{idx=5}: no particle within the token timeout: regenerated one particle=3@5",
            ),
        ];
        let found = isolated_regenerations(&lines, 11);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("node 3 "), "{found:?}");
    }

    #[test]
    fn ring_order_and_consecutive_numbers_make_one_particle() {
        let walk: Vec<Tick> = (0..8)
            .map(|k| tick(k % 3, k as f64, 10 + k as u64, k as u64))
            .collect();
        assert_eq!(single_particle(&walk, 3), Ok(()));
        let mut two = walk.clone();
        two[4].seq = 99;
        assert!(single_particle(&two, 3).is_err());
    }
}
