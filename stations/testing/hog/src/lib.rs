//! Test station: `on-particle` allocates 1 MiB buffers without bound until
//! memory cannot grow, then aborts (trap). See README.md.

pub mod logic;

use ringhost_station::{Config, Station, StopContext, Visit};

struct Hog;

impl Station for Hog {
    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        Config::from(config)
            .ensure_known(&[])
            .map_err(|e| format!("hog: {e}"))
    }

    fn on_particle(_ctx: StopContext, _slot: Vec<u8>) -> Result<Visit, String> {
        logic::hog(None);
        unreachable!("hog: allocation never failed")
    }
}

ringhost_station::export!(Hog);
