//! The delay station: holds the particle `ms` milliseconds (per-node
//! overrides `ms@<node-index>`), passing the slot through. See README.md.

pub mod logic;

use std::sync::Mutex;

use ringhost_station::{Config, Station, StopContext, Visit};

static SETTINGS: Mutex<Option<logic::Settings>> = Mutex::new(None);

struct Delay;

impl Station for Delay {
    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        let settings = logic::parse_config(&Config::from(config))?;
        ringhost_station::debug(&format!("delay: {}", settings.describe()));
        *SETTINGS.lock().unwrap() = Some(settings);
        Ok(())
    }

    fn on_particle(ctx: StopContext, slot: Vec<u8>) -> Result<Visit, String> {
        let hold_ms = SETTINGS
            .lock()
            .unwrap()
            .as_ref()
            .map_or(0, |s| s.hold_ms(ctx.node_index));
        ringhost_station::debug(&logic::log_line(hold_ms, &ctx.node_name, ctx.node_index));
        Ok(Visit::hold(slot, hold_ms))
    }
}

ringhost_station::export!(Delay);
