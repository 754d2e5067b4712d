//! The trap station's logic, free of host calls so it runs in `cargo test`.

use ringhost_station::slot::{decode_u64, encode_u64};
use ringhost_station::Config;

/// The panic message, exactly.
pub const PANIC_MESSAGE: &str = "trap station: deliberate panic";

/// Reads `every` (default 1, at least 1); any other key is an error.
pub fn parse_config(config: &Config) -> Result<u64, String> {
    let err = |e: String| format!("trap: {e}");
    config.ensure_known(&["every"]).map_err(err)?;
    match config.get_or("every", 1u64).map_err(err)? {
        0 => Err("trap: config \"every\" must be at least 1".to_string()),
        every => Ok(every),
    }
}

/// What to do at one call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Return this slot (the incremented count of calls that succeeded).
    Return(Vec<u8>),
    /// Panic: this stop's `hop + 1` is a multiple of `every`.
    Panic { stop: u64 },
}

/// Decides from the particle's hop, so the choice survives traps: the stop
/// numbered `hop + 1` panics when it is a multiple of `every` (one stop in
/// `every`); any other stop returns the slot, a count of successful calls
/// (u64 LE, empty = 0), plus one.
pub fn decide(every: u64, hop: u64, slot: &[u8]) -> Result<Action, String> {
    let ok_calls = decode_u64("slot", slot).map_err(|e| format!("trap: {e}"))?;
    let stop = hop.wrapping_add(1);
    if stop.is_multiple_of(every.max(1)) {
        Ok(Action::Panic { stop })
    } else {
        Ok(Action::Return(encode_u64(ok_calls.wrapping_add(1))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn le(n: u64) -> Vec<u8> {
        n.to_le_bytes().to_vec()
    }

    fn parse(pairs: &[(&str, &str)]) -> Result<u64, String> {
        parse_config(&pairs.iter().copied().collect())
    }

    #[test]
    fn every_one_always_panics() {
        assert_eq!(decide(1, 0, &[]), Ok(Action::Panic { stop: 1 }));
        assert_eq!(decide(1, 41, &le(7)), Ok(Action::Panic { stop: 42 }));
    }

    #[test]
    fn every_three_panics_one_stop_in_three_and_counts_successes() {
        let mut slot = Vec::new();
        let mut panics = Vec::new();
        for hop in 0..9 {
            match decide(3, hop, &slot).unwrap() {
                Action::Return(next) => slot = next,
                Action::Panic { stop } => panics.push(stop),
            }
        }
        assert_eq!(panics, vec![3, 6, 9]);
        assert_eq!(slot, le(6));
    }

    #[test]
    fn bad_slot() {
        assert_eq!(
            decide(2, 0, &[0; 4]),
            Err("trap: slot is 4 bytes, expected 0 or 8".to_string())
        );
    }

    #[test]
    fn config() {
        assert_eq!(parse(&[]), Ok(1));
        assert_eq!(parse(&[("every", "5")]), Ok(5));
        assert_eq!(
            parse(&[("every", "0")]),
            Err("trap: config \"every\" must be at least 1".to_string())
        );
        assert!(parse(&[("every", "x")])
            .unwrap_err()
            .starts_with("trap: config \"every\": invalid value \"x\""));
        assert_eq!(
            parse(&[("evry", "2")]),
            Err(r#"trap: unknown config key "evry" (known keys: every)"#.to_string())
        );
    }
}
