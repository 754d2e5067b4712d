//! Test station: panics at one stop in `every` (default: every stop).
//! See README.md.

pub mod logic;

use std::sync::atomic::{AtomicU64, Ordering};

use ringhost_station::{Config, Station, StopContext, Visit};

static EVERY: AtomicU64 = AtomicU64::new(1);
/// Calls made to this instance (reset by every instantiation, so after each
/// trap); only reported in the log, the decision uses the slot.
static INSTANCE_CALLS: AtomicU64 = AtomicU64::new(0);

struct Trap;

impl Station for Trap {
    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        EVERY.store(
            logic::parse_config(&Config::from(config))?,
            Ordering::Relaxed,
        );
        Ok(())
    }

    fn on_particle(ctx: StopContext, slot: Vec<u8>) -> Result<Visit, String> {
        let instance_calls = INSTANCE_CALLS.fetch_add(1, Ordering::Relaxed) + 1;
        let every = EVERY.load(Ordering::Relaxed);
        match logic::decide(every, ctx.hop, &slot)? {
            logic::Action::Return(slot) => Ok(Visit::pass(slot)),
            logic::Action::Panic { stop } => {
                ringhost_station::debug(&format!(
                    "trap: panicking at stop {stop} (every={every}, calls to this instance={instance_calls})"
                ));
                panic!("{}", logic::PANIC_MESSAGE);
            }
        }
    }
}

ringhost_station::export!(Trap);
