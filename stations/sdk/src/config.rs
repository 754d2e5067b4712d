//! A station's `key=value` settings, as passed to `init`.

use std::fmt::Display;
use std::str::FromStr;

/// The `key=value` settings given to a station's `init`, in command-line
/// order. When a key is given more than once, the last value wins.
///
/// Error messages name the key and the bad value, e.g.
/// `config "ms": invalid value "abc" (invalid digit found in string)`;
/// stations usually prefix them with their own name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    entries: Vec<(String, String)>,
}

impl From<Vec<(String, String)>> for Config {
    fn from(entries: Vec<(String, String)>) -> Config {
        Config { entries }
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Config {
    /// Builds a config from pairs, e.g. in tests:
    /// `Config::from_iter([("ms", "200"), ("ms@3", "0")])`.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Config {
        Config {
            entries: iter
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }
}

impl Config {
    /// The value of `key` (the last one if given several times).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether `key` was given.
    pub fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// The value of `key` parsed as `T`: `Ok(None)` when absent, an error
    /// naming the key and the value when it does not parse.
    pub fn get_parsed<T>(&self, key: &str) -> Result<Option<T>, String>
    where
        T: FromStr,
        T::Err: Display,
    {
        match self.get(key) {
            None => Ok(None),
            Some(raw) => parse_value(key, raw).map(Some),
        }
    }

    /// The value of `key` parsed as `T`, or `default` when absent.
    pub fn get_or<T>(&self, key: &str, default: T) -> Result<T, String>
    where
        T: FromStr,
        T::Err: Display,
    {
        Ok(self.get_parsed(key)?.unwrap_or(default))
    }

    /// All entries in the order given (duplicates included).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Number of entries given (duplicates included).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entry was given.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Fails on the first key not in `known`. An entry of `known` ending in
    /// `*` matches every key with that prefix (`"ms@*"` matches `ms@3`).
    ///
    /// Error: `unknown config key "foo" (known keys: ms, ms@*)`, or
    /// `unknown config key "foo" (this station takes no config)`.
    pub fn ensure_known(&self, known: &[&str]) -> Result<(), String> {
        for (key, _) in self.iter() {
            let matches = |pattern: &&str| match pattern.strip_suffix('*') {
                Some(prefix) => key.starts_with(prefix),
                None => key == *pattern,
            };
            if !known.iter().any(matches) {
                return Err(if known.is_empty() {
                    format!("unknown config key {key:?} (this station takes no config)")
                } else {
                    format!(
                        "unknown config key {key:?} (known keys: {})",
                        known.join(", ")
                    )
                });
            }
        }
        Ok(())
    }
}

/// Parses one config value, with the error message [`Config`] uses:
/// `config "KEY": invalid value "RAW" (REASON)`.
pub fn parse_value<T>(key: &str, raw: &str) -> Result<T, String>
where
    T: FromStr,
    T::Err: Display,
{
    raw.trim()
        .parse::<T>()
        .map_err(|e| format!("config {key:?}: invalid value {raw:?} ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> Config {
        pairs.iter().copied().collect()
    }

    #[test]
    fn get_last_value_wins() {
        let c = cfg(&[("a", "1"), ("b", "x"), ("a", "2")]);
        assert_eq!(c.get("a"), Some("2"));
        assert_eq!(c.get("b"), Some("x"));
        assert_eq!(c.get("c"), None);
        assert!(c.contains("b"));
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn from_wit_list() {
        let c = Config::from(vec![("ms".to_string(), "5".to_string())]);
        assert_eq!(c.get_parsed::<u32>("ms"), Ok(Some(5)));
    }

    #[test]
    fn get_parsed_ok_absent_and_bad() {
        let c = cfg(&[("n", " 42 "), ("q", "true"), ("bad", "4x")]);
        assert_eq!(c.get_parsed::<u32>("n"), Ok(Some(42)));
        assert_eq!(c.get_parsed::<bool>("q"), Ok(Some(true)));
        assert_eq!(c.get_parsed::<u32>("missing"), Ok(None));
        assert_eq!(
            c.get_parsed::<u32>("bad"),
            Err(r#"config "bad": invalid value "4x" (invalid digit found in string)"#.to_string())
        );
        assert_eq!(
            c.get_parsed::<bool>("n"),
            Err(
                r#"config "n": invalid value " 42 " (provided string was not `true` or `false`)"#
                    .to_string()
            )
        );
    }

    #[test]
    fn get_or_default() {
        let c = cfg(&[("ms", "7")]);
        assert_eq!(c.get_or("ms", 0u32), Ok(7));
        assert_eq!(c.get_or("other", 3u32), Ok(3));
        assert!(cfg(&[("ms", "-1")]).get_or("ms", 0u32).is_err());
    }

    #[test]
    fn ensure_known_exact_and_prefix() {
        let known = ["ms", "ms@*"];
        assert_eq!(
            cfg(&[("ms", "1"), ("ms@3", "2")]).ensure_known(&known),
            Ok(())
        );
        assert_eq!(
            cfg(&[("ms", "1"), ("mss", "2")]).ensure_known(&known),
            Err(r#"unknown config key "mss" (known keys: ms, ms@*)"#.to_string())
        );
        assert_eq!(
            cfg(&[("x", "1")]).ensure_known(&[]),
            Err(r#"unknown config key "x" (this station takes no config)"#.to_string())
        );
        assert_eq!(Config::default().ensure_known(&[]), Ok(()));
    }
}
