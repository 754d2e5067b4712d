//! The body shared by the `marker` and `marker2` test stations (marker2
//! includes this file with `#[path]`). The including crate root defines
//! `LOGIC: u32` (logged as `logic=<n>`) and
//! `fn next_slot(ctx: &StopContext, slot: Vec<u8>) -> Vec<u8>`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use ringhost_station::{Config, Station, StopContext, Visit};

/// The hot-deploy marker. These 16 bytes appear exactly once in the built
/// `.wasm` (in the data section); tests copy the file and overwrite them
/// (e.g. `RINGHOST-MARK-07`) to get a valid module that differs in one
/// constant. Read only through [`marker`], never folded by the compiler.
static MARKER: [u8; 16] = *b"RINGHOST-MARK-00";

/// The marker bytes as they are in memory now (a volatile read, so the
/// value comes from the data section, not from a compile-time copy).
pub fn marker() -> [u8; 16] {
    // SAFETY: MARKER is a valid, aligned, immutable static of this type.
    unsafe { core::ptr::read_volatile(core::ptr::addr_of!(MARKER)) }
}

/// Settings read from the config.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// Trap at every visit once this many visits were made in this instance.
    pub trap_after: Option<u64>,
}

/// The init error for `fail_init=1`, exactly.
pub const FAIL_INIT_ERROR: &str = "marker: told to fail init";

/// Reads `trap_after` (u64) and `fail_init` (`1`/`true` fails init,
/// `0`/`false` does not); any other key is an error.
pub fn parse_config(config: &Config) -> Result<Settings, String> {
    let err = |e: String| format!("marker: {e}");
    config
        .ensure_known(&["trap_after", "fail_init"])
        .map_err(err)?;
    let trap_after = config.get_parsed::<u64>("trap_after").map_err(err)?;
    let fail_init = match config.get("fail_init").map(str::trim) {
        None | Some("0") | Some("false") => false,
        Some("1") | Some("true") => true,
        Some(other) => {
            return Err(format!(
                "marker: config \"fail_init\": invalid value {other:?} (expected 1 or 0)"
            ))
        }
    };
    if fail_init {
        return Err(FAIL_INIT_ERROR.to_string());
    }
    Ok(Settings { trap_after })
}

/// Whether to trap, `done` visits having been made in this instance.
pub fn should_trap(settings: &Settings, done: u64) -> bool {
    settings.trap_after.is_some_and(|n| done >= n)
}

/// The info line, exactly
/// `marker=<marker> logic=<logic> node=<node-name> lap=<lap>`.
pub fn log_line(marker: &[u8; 16], logic: u32, ctx: &StopContext) -> String {
    format!(
        "marker={} logic={logic} node={} lap={}",
        String::from_utf8_lossy(marker),
        ctx.node_name,
        ctx.lap
    )
}

static SETTINGS: Mutex<Settings> = Mutex::new(Settings { trap_after: None });
/// Visits made by this instance (reset by every instantiation).
static VISITS: AtomicU64 = AtomicU64::new(0);

struct Marker;

impl Station for Marker {
    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        let settings = parse_config(&Config::from(config))?;
        *SETTINGS.lock().unwrap() = settings;
        VISITS.store(0, Ordering::Relaxed);
        Ok(())
    }

    fn on_particle(ctx: StopContext, slot: Vec<u8>) -> Result<Visit, String> {
        let settings = *SETTINGS.lock().unwrap();
        let done = VISITS.load(Ordering::Relaxed);
        let marker = marker();
        if should_trap(&settings, done) {
            panic!(
                "marker: deliberate trap (trap_after={}, visits={done}, build {})",
                settings.trap_after.unwrap_or_default(),
                String::from_utf8_lossy(&marker)
            );
        }
        ringhost_station::info(&log_line(&marker, crate::LOGIC, &ctx));
        VISITS.store(done + 1, Ordering::Relaxed);
        Ok(Visit::pass(crate::next_slot(&ctx, slot)))
    }
}

ringhost_station::export!(Marker);

#[cfg(test)]
pub mod tests {
    use super::*;

    pub fn ctx(lap: u64) -> StopContext {
        StopContext {
            node_name: "dc1/prod/2".to_string(),
            node_index: 2,
            ring_size: 3,
            generation: 1,
            lap,
            hop: 7,
            now_unix_ms: 0,
            last_lap_us: None,
        }
    }

    fn parse(pairs: &[(&str, &str)]) -> Result<Settings, String> {
        parse_config(&pairs.iter().copied().collect())
    }

    #[test]
    fn marker_is_read_at_runtime() {
        assert_eq!(&marker(), b"RINGHOST-MARK-00");
    }

    #[test]
    fn log_line_exact() {
        assert_eq!(
            log_line(b"RINGHOST-MARK-07", 1, &ctx(4)),
            "marker=RINGHOST-MARK-07 logic=1 node=dc1/prod/2 lap=4"
        );
        assert_eq!(
            log_line(&marker(), crate::LOGIC, &ctx(0)),
            format!(
                "marker=RINGHOST-MARK-00 logic={} node=dc1/prod/2 lap=0",
                crate::LOGIC
            )
        );
    }

    #[test]
    fn config() {
        assert_eq!(parse(&[]), Ok(Settings { trap_after: None }));
        assert_eq!(
            parse(&[("trap_after", "3"), ("fail_init", "0")]),
            Ok(Settings {
                trap_after: Some(3)
            })
        );
        assert_eq!(
            parse(&[("fail_init", "1")]),
            Err("marker: told to fail init".to_string())
        );
        assert_eq!(
            parse(&[("fail_init", "true")]),
            Err(FAIL_INIT_ERROR.to_string())
        );
        assert!(parse(&[("fail_init", "yes")]).is_err());
        assert!(parse(&[("trap_after", "-1")])
            .unwrap_err()
            .starts_with("marker: config \"trap_after\": invalid value"));
        assert_eq!(
            parse(&[("trap", "1")]),
            Err(
                r#"marker: unknown config key "trap" (known keys: trap_after, fail_init)"#
                    .to_string()
            )
        );
    }

    #[test]
    fn trap_after() {
        let never = Settings { trap_after: None };
        assert!(!should_trap(&never, 0) && !should_trap(&never, u64::MAX));
        let zero = Settings {
            trap_after: Some(0),
        };
        assert!(should_trap(&zero, 0) && should_trap(&zero, 5));
        let two = Settings {
            trap_after: Some(2),
        };
        assert!(!should_trap(&two, 0) && !should_trap(&two, 1));
        assert!(should_trap(&two, 2) && should_trap(&two, 3));
    }
}
