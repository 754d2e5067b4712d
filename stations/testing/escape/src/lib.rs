//! Test station: at every stop, tries one thing a station must not be able
//! to do (read a file, open a socket, grow past its memory cap…), chosen by
//! `try=…`, and logs what it got. See README.md.

pub mod logic;

use std::cell::RefCell;

use logic::Outcome;
use ringhost_station::{kv, Config, Station, StopContext, Visit};

struct Escape;

thread_local! {
    static SETTINGS: RefCell<Option<logic::Settings>> = const { RefCell::new(None) };
}

/// What the host lets a station do, in the terms `logic` needs.
struct Host;

impl logic::Kv for Host {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        kv::get(key)
    }
    fn set(&self, key: &str, value: &[u8]) -> Result<(), String> {
        kv::set(key, value)
    }
    fn keys(&self) -> Vec<String> {
        kv::keys()
    }
}

impl Station for Escape {
    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        let config = Config::from(config);
        config
            .ensure_known(&["try", "port", "victim"])
            .map_err(|e| format!("escape: {e}"))?;
        let settings = logic::Settings::from_config(&config).map_err(|e| format!("escape: {e}"))?;
        SETTINGS.with(|s| *s.borrow_mut() = Some(settings));
        Ok(())
    }

    fn on_particle(_ctx: StopContext, slot: Vec<u8>) -> Result<Visit, String> {
        let settings = SETTINGS
            .with(|s| s.borrow().clone())
            .ok_or("escape: not initialised")?;
        let name = settings.attempt.name();
        match logic::attempt(&settings, &Host) {
            Outcome::Denied(why) => {
                ringhost_station::warn(&format!("try={name}: denied: {why}"));
                Ok(Visit::pass(slot))
            }
            Outcome::Allowed(what) => {
                ringhost_station::error(&format!("try={name}: ALLOWED: {what}"));
                Ok(Visit::pass(slot))
            }
            Outcome::Slot(big) => Ok(Visit::pass(big)),
            Outcome::Done => Ok(Visit::pass(slot)),
        }
    }
}

ringhost_station::export!(Escape);
