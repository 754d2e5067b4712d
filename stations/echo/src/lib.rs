//! The echo station: returns the slot unchanged, no hold, no log. Used to
//! measure the cost of a station call. See README.md.

pub mod logic;

use ringhost_station::{Config, Station, StopContext, Visit};

struct Echo;

impl Station for Echo {
    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        Config::from(config)
            .ensure_known(&[])
            .map_err(|e| format!("echo: {e}"))
    }

    fn on_particle(_ctx: StopContext, slot: Vec<u8>) -> Result<Visit, String> {
        Ok(logic::echo(slot))
    }
}

ringhost_station::export!(Echo);
