//! Builds the station components (a separate cargo workspace in
//! `stations/`) for `wasm32-wasip2`, so the built-in stations can be
//! embedded with `include_bytes!` and the test stations exist for the
//! integration tests. Their directory is exported as
//! `RINGHOST_STATIONS_DIR`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const STATIONS: &[&str] = &[
    "tick",
    "delay",
    "echo",
    "deploy_delta",
    "tokens",
    "trap",
    "spin",
    "hog",
    "badinit",
    "marker",
    "marker2",
    "escape",
    "v01",
    "inputs",
];

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let stations = manifest.join("stations");
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets it"));
    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out: keep the station
    // builds beside the host's, outside the source tree, shared by every
    // profile so they build once.
    let target_dir = out_dir
        .ancestors()
        .nth(4)
        .map_or_else(|| out_dir.join("stations"), |t| t.join("wasm-stations"));

    watch(&stations);
    println!("cargo:rerun-if-changed=wit");
    println!("cargo:rerun-if-changed=build.rs");

    // The stations pin their toolchain, with the wasm target
    // (stations/rust-toolchain.toml). A host build under another toolchain
    // (cargo-fuzz builds under nightly, which may have no wasm target to
    // install) must not build them with its own: with rustup, they are
    // built by `rustup run <their channel> cargo`, the outer build's
    // choice of compiler removed. Without rustup, the outer cargo builds
    // them.
    let pinned = pinned_channel(&stations.join("rust-toolchain.toml"));
    let rustup = Command::new("rustup")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let mut cmd = match pinned.filter(|_| rustup) {
        Some(channel) => {
            let mut c = Command::new("rustup");
            c.args(["run", &channel, "cargo"]);
            for var in ["RUSTUP_TOOLCHAIN", "RUSTC", "RUSTDOC", "CARGO"] {
                c.env_remove(var);
            }
            c
        }
        None => Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into())),
    };
    cmd.current_dir(&stations)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(&target_dir);
    // The outer build's settings are for the host, not for wasm guests.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
        "CARGO_PROFILE_RELEASE_DEBUG",
        "CARGO_INCREMENTAL",
        "PROFILE",
        "OPT_LEVEL",
        "DEBUG",
        "TARGET",
        "HOST",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("could not run cargo to build the stations: {e}"));
    if !status.success() {
        panic!(
            "building the stations in {} failed ({status}). Is the wasm target installed? \
             Run `rustup target add wasm32-wasip2` (for the toolchain of \
             stations/rust-toolchain.toml).",
            stations.display()
        );
    }
    let built = target_dir.join("wasm32-wasip2").join("release");
    for name in STATIONS {
        let path = built.join(format!("{name}.wasm"));
        assert!(path.is_file(), "station {} was not built", path.display());
    }
    println!("cargo:rustc-env=RINGHOST_STATIONS_DIR={}", built.display());
}

/// The `channel = "…"` of a rust-toolchain.toml, if it names one.
fn pinned_channel(file: &Path) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| {
        let value = l.trim().strip_prefix("channel")?.trim().strip_prefix('=')?;
        Some(value.trim().trim_matches('"').to_owned())
    })
}

/// Asks cargo to rerun this script when any station source changes. The
/// station build output and copied `.wasm` files are skipped, or every
/// build would look dirty.
fn watch(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name == "target" || name.ends_with(".wasm") || name.starts_with('.') {
            continue;
        }
        if path.is_dir() {
            watch(&path);
        } else {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}
