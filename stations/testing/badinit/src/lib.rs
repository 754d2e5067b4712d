//! Test station: `init` always fails. See README.md.

pub mod logic;

use ringhost_station::{Station, StopContext, Visit};

struct BadInit;

impl Station for BadInit {
    fn init(_config: Vec<(String, String)>) -> Result<(), String> {
        logic::init()
    }

    fn on_particle(_ctx: StopContext, slot: Vec<u8>) -> Result<Visit, String> {
        Ok(logic::pass(slot))
    }
}

ringhost_station::export!(BadInit);
