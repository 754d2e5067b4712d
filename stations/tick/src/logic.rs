//! The tick station's logic, free of host calls so it runs in `cargo test`.

use ringhost_station::slot::{decode_u64, encode_u64};
use ringhost_station::{Config, StopContext};

/// The kv key holding this node's count of stops (u64 little-endian).
pub const COUNT_KEY: &str = "count";

/// Settings read from the config.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// `quiet=true`: count, but write no log line.
    pub quiet: bool,
}

/// Reads `quiet` (default false); any other key is an error.
pub fn parse_config(config: &Config) -> Result<Settings, String> {
    let err = |e: String| format!("tick: {e}");
    config.ensure_known(&["quiet"]).map_err(err)?;
    Ok(Settings {
        quiet: config.get_or("quiet", false).map_err(err)?,
    })
}

/// What one stop produces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// The new slot: the incremented sequence number, u64 little-endian.
    pub slot: Vec<u8>,
    /// The new sequence number.
    pub seq: u64,
    /// The node's new count, to store under [`COUNT_KEY`].
    pub count: u64,
    /// The info line to log, unless quiet.
    pub line: Option<String>,
    /// A warning to log, when the stored count was unreadable (it restarts).
    pub warning: Option<String>,
}

/// One stop: `slot` is the ring-wide sequence number (empty = 0) and
/// `stored_count` the node's kv value under [`COUNT_KEY`] (if any).
pub fn step(
    settings: &Settings,
    ctx: &StopContext,
    slot: &[u8],
    stored_count: Option<&[u8]>,
) -> Result<Step, String> {
    let seq = decode_u64("slot", slot)
        .map_err(|e| format!("tick: {e}"))?
        .wrapping_add(1);
    let (previous, warning) = match stored_count.map(|v| decode_u64("value", v)) {
        None => (0, None),
        Some(Ok(n)) => (n, None),
        Some(Err(e)) => (
            0,
            Some(format!("tick: kv {COUNT_KEY:?} {e}; restarting the count")),
        ),
    };
    let count = previous.wrapping_add(1);
    Ok(Step {
        slot: encode_u64(seq),
        seq,
        count,
        line: (!settings.quiet).then(|| log_line(seq, ctx, count)),
        warning,
    })
}

/// The info line, exactly:
/// `tick seq=<seq> node=<node-name> index=<node-index> generation=<generation> lap=<lap> hop=<hop> count=<count> last_lap_ms=<x.xxx or ->`
pub fn log_line(seq: u64, ctx: &StopContext, count: u64) -> String {
    format!(
        "tick seq={seq} node={} index={} generation={} lap={} hop={} count={count} last_lap_ms={}",
        ctx.node_name,
        ctx.node_index,
        ctx.generation,
        ctx.lap,
        ctx.hop,
        format_last_lap(ctx.last_lap_us)
    )
}

/// Microseconds as milliseconds with exactly 3 decimals (`1234567` →
/// `1234.567`), computed in integers; `-` for none.
pub fn format_last_lap(last_lap_us: Option<u64>) -> String {
    match last_lap_us {
        Some(us) => format!("{}.{:03}", us / 1000, us % 1000),
        None => "-".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(last_lap_us: Option<u64>) -> StopContext {
        StopContext {
            node_name: "dc1/prod/2".to_string(),
            node_index: 2,
            ring_size: 5,
            generation: 1,
            lap: 7,
            hop: 37,
            now_unix_ms: 1_700_000_000_000,
            last_lap_us,
        }
    }

    fn loud() -> Settings {
        Settings { quiet: false }
    }

    #[test]
    fn empty_slot_starts_at_one() {
        let s = step(&loud(), &ctx(None), &[], None).unwrap();
        assert_eq!(s.seq, 1);
        assert_eq!(s.slot, 1u64.to_le_bytes().to_vec());
        assert_eq!(s.count, 1);
        assert_eq!(s.warning, None);
    }

    #[test]
    fn seq_and_count_increment() {
        let s = step(
            &loud(),
            &ctx(None),
            &41u64.to_le_bytes(),
            Some(&9u64.to_le_bytes()),
        )
        .unwrap();
        assert_eq!(s.seq, 42);
        assert_eq!(s.slot, 42u64.to_le_bytes().to_vec());
        assert_eq!(s.count, 10);
    }

    #[test]
    fn seq_wraps_instead_of_panicking() {
        let s = step(&loud(), &ctx(None), &u64::MAX.to_le_bytes(), None).unwrap();
        assert_eq!(s.seq, 0);
    }

    #[test]
    fn log_line_exact_format() {
        let s = step(
            &loud(),
            &ctx(Some(1_234_567)),
            &41u64.to_le_bytes(),
            Some(&9u64.to_le_bytes()),
        )
        .unwrap();
        assert_eq!(
            s.line.as_deref(),
            Some(
                "tick seq=42 node=dc1/prod/2 index=2 generation=1 lap=7 hop=37 count=10 last_lap_ms=1234.567"
            )
        );
        let first = step(&loud(), &ctx(None), &[], None).unwrap();
        assert_eq!(
            first.line.as_deref(),
            Some("tick seq=1 node=dc1/prod/2 index=2 generation=1 lap=7 hop=37 count=1 last_lap_ms=-")
        );
    }

    #[test]
    fn last_lap_formatting() {
        assert_eq!(format_last_lap(None), "-");
        assert_eq!(format_last_lap(Some(0)), "0.000");
        assert_eq!(format_last_lap(Some(5)), "0.005");
        assert_eq!(format_last_lap(Some(1_000)), "1.000");
        assert_eq!(format_last_lap(Some(12_340)), "12.340");
        assert_eq!(format_last_lap(Some(999_999_999)), "999999.999");
    }

    #[test]
    fn quiet_still_counts() {
        let s = step(
            &Settings { quiet: true },
            &ctx(None),
            &[],
            Some(&3u64.to_le_bytes()),
        )
        .unwrap();
        assert_eq!(s.line, None);
        assert_eq!(s.seq, 1);
        assert_eq!(s.count, 4);
    }

    #[test]
    fn wrong_slot_length_is_an_error() {
        assert_eq!(
            step(&loud(), &ctx(None), &[1, 2, 3], None),
            Err("tick: slot is 3 bytes, expected 0 or 8".to_string())
        );
        assert_eq!(
            step(&loud(), &ctx(None), &[0; 16], None),
            Err("tick: slot is 16 bytes, expected 0 or 8".to_string())
        );
    }

    #[test]
    fn corrupt_count_restarts_with_warning() {
        let s = step(&loud(), &ctx(None), &[], Some(&[1, 2])).unwrap();
        assert_eq!(s.count, 1);
        assert_eq!(
            s.warning.as_deref(),
            Some("tick: kv \"count\" value is 2 bytes, expected 0 or 8; restarting the count")
        );
    }

    #[test]
    fn config_quiet() {
        let c = |pairs: &[(&str, &str)]| parse_config(&pairs.iter().copied().collect());
        assert_eq!(c(&[]), Ok(Settings { quiet: false }));
        assert_eq!(c(&[("quiet", "true")]), Ok(Settings { quiet: true }));
        assert_eq!(c(&[("quiet", "false")]), Ok(Settings { quiet: false }));
    }

    #[test]
    fn config_errors_name_the_key() {
        let c = |pairs: &[(&str, &str)]| parse_config(&pairs.iter().copied().collect());
        assert_eq!(
            c(&[("quiet", "true"), ("loud", "1")]),
            Err(r#"tick: unknown config key "loud" (known keys: quiet)"#.to_string())
        );
        let bad = c(&[("quiet", "yes")]).unwrap_err();
        assert!(
            bad.starts_with(r#"tick: config "quiet": invalid value "yes""#),
            "{bad}"
        );
    }
}
