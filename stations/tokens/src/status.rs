//! The kv `status` document (read by `ringhost tokens status|top`): JSON,
//! shape documented in the README ("kv").

use serde_json::json;

use crate::catalog::{BlockKind, Catalog};
use crate::local::Local;
use crate::settings::Settings;
use crate::stop::Stop;

/// The document after a stop that wrote a slot of `slot_bytes`.
pub fn render(cat: &Catalog, local: &Local, s: &Settings, st: &Stop, slot_bytes: usize) -> String {
    let error = cat.error();
    let mut rows: Vec<_> = cat.rows().into_iter().collect();
    rows.sort_by(|a, b| b.1.lo.cmp(&a.1.lo).then(a.0.cmp(b.0)));
    let top: Vec<_> = rows
        .iter()
        .take(s.top)
        .map(|(t, r)| {
            json!({
                "token": t,
                "count": r.lo,
                "upper": r.lo + error,
                "error": error,
                "nodes": r.nodes.len(),
            })
        })
        .collect();
    let kinds = |k: BlockKind| cat.blocklist.values().filter(|b| b.kind == k).count();
    let blocked = cat.blocklist.len() - kinds(BlockKind::Allow);
    let flagged = cat
        .redemptions
        .values()
        .filter(|r| r.second.is_some())
        .count();
    let window_s = u64::from(s.bucket_s) * u64::from(s.buckets);
    let doc = json!({
        "node": st.node,
        "at_ms": st.now_ms,
        "rules": {
            "total": s.total,
            "spread_nodes": s.spread_nodes,
            "spread_min": s.spread_min,
            "rate_per_s": s.rate,
            "block_ttl_s": s.block_ttl_s,
            "redeem_ttl_s": s.redeem_ttl_s,
        },
        "window": {
            "bucket_s": s.bucket_s,
            "buckets": s.buckets,
            "seconds": window_s,
            "head_bucket": cat.head,
            "observations": cat.observations(),
            "error_bound": error,
            "capacity": cat.capacity,
            "tokens": rows.len(),
        },
        "slot_bytes": slot_bytes,
        "slot_max_bytes": s.slot_max_bytes,
        "blocklist": {
            "blocked": blocked,
            "manual": kinds(BlockKind::Manual),
            "total": kinds(BlockKind::Total),
            "spread": kinds(BlockKind::Spread),
            "rate": kinds(BlockKind::Rate),
            "allowed": kinds(BlockKind::Allow),
        },
        "redeemed": cat.redemptions.len(),
        "flagged": flagged,
        "top": top,
        "local": {
            "seen": local.stats.seen,
            "issued": local.stats.issued,
            "redeemed": local.stats.redeemed,
            "manual": local.stats.manual,
            "bad_lines": local.stats.bad_lines,
            "seq": local.last_seq(),
            "chunks": local.chunks().count(),
            "ambiguous_chunks": local.stats.ambiguous_chunks,
        },
    });
    doc.to_string()
}
