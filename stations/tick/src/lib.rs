//! The tick station: counts the particle's stops ring-wide (in the slot) and
//! per node (in kv), and logs one info line per stop. See README.md.

pub mod logic;

use std::sync::Mutex;

use ringhost_station::{kv, Config, Station, StopContext, Visit};

static SETTINGS: Mutex<logic::Settings> = Mutex::new(logic::Settings { quiet: false });

struct Tick;

impl Station for Tick {
    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        let settings = logic::parse_config(&Config::from(config))?;
        *SETTINGS.lock().unwrap() = settings;
        Ok(())
    }

    fn on_particle(ctx: StopContext, slot: Vec<u8>) -> Result<Visit, String> {
        let settings = *SETTINGS.lock().unwrap();
        let stored = kv::get(logic::COUNT_KEY);
        let step = logic::step(&settings, &ctx, &slot, stored.as_deref())?;
        if let Some(warning) = &step.warning {
            ringhost_station::warn(warning);
        }
        if let Err(e) = kv::set(logic::COUNT_KEY, &step.count.to_le_bytes()) {
            // Keep the particle going; the count just does not persist.
            ringhost_station::warn(&format!("tick: kv set {:?}: {e}", logic::COUNT_KEY));
        }
        if let Some(line) = &step.line {
            ringhost_station::info(line);
        }
        Ok(Visit::pass(step.slot))
    }
}

ringhost_station::export!(Tick);
