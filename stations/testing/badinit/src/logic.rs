//! The badinit station's logic: refuse every start.

use ringhost_station::Visit;

/// The init error, exactly.
pub const INIT_ERROR: &str = "badinit: refusing to start";

/// What `init` returns, whatever the config.
pub fn init() -> Result<(), String> {
    Err(INIT_ERROR.to_string())
}

/// What `on-particle` returns (should the host call it anyway): the slot,
/// unchanged, no hold.
pub fn pass(slot: Vec<u8>) -> Visit {
    Visit::pass(slot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_fails_with_exact_message() {
        assert_eq!(init(), Err("badinit: refusing to start".to_string()));
    }

    #[test]
    fn passes_slot_through() {
        let v = pass(vec![1, 2, 3]);
        assert_eq!((v.slot, v.hold_ms), (vec![1, 2, 3], 0));
    }
}
