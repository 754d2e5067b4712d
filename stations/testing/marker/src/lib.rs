//! Test station for hot deploys: logs its 16-byte marker at every stop and
//! passes the slot on unchanged. See README.md; the code is in `body.rs`,
//! shared with `marker2`.

mod body;

use ringhost_station::StopContext;

/// Logged as `logic=1`.
const LOGIC: u32 = 1;

/// The slot goes on unchanged.
fn next_slot(_ctx: &StopContext, slot: Vec<u8>) -> Vec<u8> {
    slot
}

#[cfg(test)]
mod tests {
    #[test]
    fn slot_unchanged() {
        let slot: Vec<u8> = (0..20).collect();
        assert_eq!(
            super::next_slot(&crate::body::tests::ctx(9), slot.clone()),
            slot
        );
        assert_eq!(super::LOGIC, 1);
    }
}
