//! The echo station's logic: nothing but passing the slot back.

use ringhost_station::Visit;

/// The slot, unchanged, with no hold.
pub fn echo(slot: Vec<u8>) -> Visit {
    Visit::pass(slot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_slot_unchanged() {
        let slot: Vec<u8> = (0..1024).map(|i| i as u8).collect();
        let visit = echo(slot.clone());
        assert_eq!(visit.slot, slot);
        assert_eq!(visit.hold_ms, 0);
        assert_eq!(echo(Vec::new()).slot, Vec::<u8>::new());
    }
}
