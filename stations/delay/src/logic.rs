//! The delay station's logic, free of host calls so it runs in `cargo test`.

use std::collections::BTreeMap;

use ringhost_station::config::parse_value;
use ringhost_station::Config;

/// How long to hold the particle, per node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// `ms=N`: the hold on every node without an override.
    pub default_ms: u32,
    /// `ms@<node-index>=N`: per-node overrides.
    pub per_node: BTreeMap<u32, u32>,
}

impl Settings {
    /// The hold for the node at `node_index`.
    pub fn hold_ms(&self, node_index: u32) -> u32 {
        self.per_node
            .get(&node_index)
            .copied()
            .unwrap_or(self.default_ms)
    }

    /// A one-line summary for the log: `ms=0 ms@3=200 ms@4=10`.
    pub fn describe(&self) -> String {
        let mut s = format!("ms={}", self.default_ms);
        for (index, ms) in &self.per_node {
            s.push_str(&format!(" ms@{index}={ms}"));
        }
        s
    }
}

/// Reads `ms` (default 0) and `ms@<node-index>` overrides; values are
/// milliseconds, 0 to 4294967295. Any other key is an error.
pub fn parse_config(config: &Config) -> Result<Settings, String> {
    let err = |e: String| format!("delay: {e}");
    config.ensure_known(&["ms", "ms@*"]).map_err(err)?;
    let mut settings = Settings {
        default_ms: config.get_or("ms", 0).map_err(err)?,
        per_node: BTreeMap::new(),
    };
    // Later entries win, as for `Config::get`.
    for (key, raw) in config.iter() {
        if let Some(index) = key.strip_prefix("ms@") {
            let index: u32 = index.parse().map_err(|_| {
                format!(
                    "delay: config key {key:?}: {index:?} is not a node index \
                     (expected ms@<node-index>, e.g. ms@3=200)"
                )
            })?;
            settings
                .per_node
                .insert(index, parse_value(key, raw).map_err(err)?);
        }
    }
    Ok(settings)
}

/// The debug line logged at each stop.
pub fn log_line(hold_ms: u32, node_name: &str, node_index: u32) -> String {
    format!("delay hold_ms={hold_ms} node={node_name} index={node_index}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<Settings, String> {
        parse_config(&pairs.iter().copied().collect())
    }

    #[test]
    fn default_is_no_hold() {
        let s = parse(&[]).unwrap();
        assert_eq!(s, Settings::default());
        assert_eq!(s.hold_ms(0), 0);
        assert_eq!(s.hold_ms(7), 0);
    }

    #[test]
    fn global_ms() {
        let s = parse(&[("ms", "150")]).unwrap();
        assert_eq!(s.hold_ms(0), 150);
        assert_eq!(s.hold_ms(3), 150);
    }

    #[test]
    fn per_node_override() {
        let s = parse(&[("ms@3", "200")]).unwrap();
        assert_eq!(s.hold_ms(3), 200);
        assert_eq!(s.hold_ms(2), 0);
        assert_eq!(s.hold_ms(4), 0);

        let s = parse(&[("ms", "10"), ("ms@3", "200"), ("ms@0", "0")]).unwrap();
        assert_eq!(s.hold_ms(0), 0);
        assert_eq!(s.hold_ms(1), 10);
        assert_eq!(s.hold_ms(3), 200);
        assert_eq!(s.describe(), "ms=10 ms@0=0 ms@3=200");
    }

    #[test]
    fn later_entries_win() {
        let s = parse(&[("ms@1", "5"), ("ms", "1"), ("ms@1", "6"), ("ms", "2")]).unwrap();
        assert_eq!(s.hold_ms(1), 6);
        assert_eq!(s.hold_ms(0), 2);
    }

    #[test]
    fn limits() {
        assert_eq!(parse(&[("ms", "4294967295")]).unwrap().default_ms, u32::MAX);
        assert!(parse(&[("ms", "4294967296")]).is_err());
    }

    #[test]
    fn bad_values() {
        assert_eq!(
            parse(&[("ms", "abc")]),
            Err(
                r#"delay: config "ms": invalid value "abc" (invalid digit found in string)"#
                    .to_string()
            )
        );
        assert_eq!(
            parse(&[("ms", "-5")]),
            Err(
                r#"delay: config "ms": invalid value "-5" (invalid digit found in string)"#
                    .to_string()
            )
        );
        assert_eq!(
            parse(&[("ms@3", "1.5")]),
            Err(
                r#"delay: config "ms@3": invalid value "1.5" (invalid digit found in string)"#
                    .to_string()
            )
        );
        assert_eq!(
            parse(&[("ms", "")]),
            Err(
                r#"delay: config "ms": invalid value "" (cannot parse integer from empty string)"#
                    .to_string()
            )
        );
    }

    #[test]
    fn bad_node_index() {
        for key in ["ms@x", "ms@", "ms@-1", "ms@1.0"] {
            let e = parse(&[(key, "5")]).unwrap_err();
            assert!(
                e.starts_with(&format!("delay: config key {key:?}: ")),
                "{e}"
            );
            assert!(e.contains("is not a node index"), "{e}");
        }
    }

    #[test]
    fn unknown_key() {
        assert_eq!(
            parse(&[("ms", "1"), ("msec", "2")]),
            Err(r#"delay: unknown config key "msec" (known keys: ms, ms@*)"#.to_string())
        );
    }

    #[test]
    fn log_line_format() {
        assert_eq!(
            log_line(200, "dc1/prod/3", 3),
            "delay hold_ms=200 node=dc1/prod/3 index=3"
        );
    }
}
