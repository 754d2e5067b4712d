//! Command-line options of the fleet benches: `--name value` pairs after
//! the bench's own arguments.

use anyhow::{Context, Result};

/// The value after `name` on the command line, parsed; `default` when
/// `name` is absent.
///
/// # Errors
/// `name` is last (no value follows it), or its value does not parse.
pub fn arg<T: std::str::FromStr>(name: &str, default: T) -> Result<T> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .with_context(|| format!("{name} needs a value"))?
            .parse()
            .map_err(|_| anyhow::anyhow!("{name}: bad value")),
        None => Ok(default),
    }
}
