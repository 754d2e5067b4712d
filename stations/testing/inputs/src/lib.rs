//! Test station of the `input-station` world; see README.md.

use std::cell::Cell;

use ringhost_input_station::{host, inbox, kv, sets, InputStation, SetEntry, StopContext, Visit};

thread_local! {
    static COUNT: Cell<u64> = const { Cell::new(0) };
    static BATCHES: Cell<u64> = const { Cell::new(0) };
    static MAX_BATCH: Cell<u64> = const { Cell::new(0) };
    static OVERLAP: Cell<u64> = const { Cell::new(0) };
    static IN_VISIT: Cell<bool> = const { Cell::new(false) };
}

fn bump(cell: &'static std::thread::LocalKey<Cell<u64>>, by: u64) -> u64 {
    cell.with(|c| {
        c.set(c.get() + by);
        c.get()
    })
}

fn count(inputs: &[Vec<u8>]) -> Result<(), String> {
    let mut seen = Vec::new();
    for i in inputs {
        if i.as_slice() == b"trap" {
            panic!("inputs: asked to trap");
        }
        if let Some(key) = i.strip_prefix(b"set:") {
            seen.push(SetEntry {
                key: String::from_utf8_lossy(key).into_owned(),
                info: "on-input".into(),
                expires_unix_ms: 0,
            });
        }
    }
    if !seen.is_empty() {
        sets::put("seen", &seen)?;
    }
    bump(&COUNT, inputs.len() as u64);
    Ok(())
}

fn save() -> Result<(), String> {
    for (key, cell) in [
        ("count", &COUNT),
        ("batches", &BATCHES),
        ("max_batch", &MAX_BATCH),
        ("overlap", &OVERLAP),
    ] {
        kv::set(key, cell.with(Cell::get).to_string().as_bytes())?;
    }
    Ok(())
}

struct Inputs;

impl InputStation for Inputs {
    fn init(_config: Vec<(String, String)>) -> Result<(), String> {
        Ok(())
    }

    fn on_particle(_ctx: StopContext, slot: Vec<u8>) -> Result<Visit, String> {
        IN_VISIT.with(|v| v.set(true));
        let left = inbox::take(u32::MAX);
        let r = count(&left);
        let cfg: Vec<String> = host::ring_config("test.")
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        kv::set("cfg", cfg.join(";").as_bytes())?;
        save()?;
        IN_VISIT.with(|v| v.set(false));
        r.map(|()| Visit::pass(slot))
    }

    fn on_input(inputs: Vec<Vec<u8>>) -> Result<(), String> {
        if IN_VISIT.with(Cell::get) {
            bump(&OVERLAP, 1);
        }
        bump(&BATCHES, 1);
        MAX_BATCH.with(|m| m.set(m.get().max(inputs.len() as u64)));
        count(&inputs)?;
        save()
    }
}

ringhost_input_station::export!(Inputs);
