//! Test station: `on-particle` never returns (a pure compute loop, no host
//! calls). See README.md.

pub mod logic;

use ringhost_station::{Config, Station, StopContext, Visit};

struct Spin;

impl Station for Spin {
    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        Config::from(config)
            .ensure_known(&[])
            .map_err(|e| format!("spin: {e}"))
    }

    fn on_particle(_ctx: StopContext, _slot: Vec<u8>) -> Result<Visit, String> {
        logic::spin(None);
        unreachable!("spin: the loop ended")
    }
}

ringhost_station::export!(Spin);
