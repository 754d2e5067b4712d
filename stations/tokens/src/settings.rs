//! The station's settings: defaults, `init` config (`key=value` on the node's
//! command line) and the ring's config bus (`tokens.<key>`, read at every
//! stop, winning over `init`). Parsing only; no host calls.

/// Every setting. Counts are observations, times are in the unit their name
/// says. A rule set to 0 is off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// `total`: block a token whose window count (lower bound) is at least
    /// this, fleet-wide.
    pub total: u64,
    /// `spread_nodes`: block a token seen at at least this many distinct
    /// nodes in the window...
    pub spread_nodes: u32,
    /// `spread_min`: ...with a window count (lower bound) of at least this.
    pub spread_min: u64,
    /// `rate`: block a token that one node saw at least `rate` times a second
    /// over one bucket (that node's own count, at least `rate × bucket_s`).
    pub rate: u64,
    /// `block_ttl_s`: how long a rule block (and an unblock's immunity) lasts.
    pub block_ttl_s: u64,
    /// `redeem_ttl_s`: how long a redemption is remembered fleet-wide.
    pub redeem_ttl_s: u64,
    /// `bucket_s`: the width of one time bucket, 1..=3600 s.
    pub bucket_s: u32,
    /// `buckets`: buckets in the sliding window, 1..=32.
    pub buckets: u32,
    /// `capacity`: counters kept per bucket in the slot (k), 1..=65536; the
    /// slot byte budget may keep fewer.
    pub capacity: usize,
    /// `slot_max_bytes`: the slot never exceeds this, 4096..=1048576.
    pub slot_max_bytes: usize,
    /// `local_capacity`: counters per bucket in node-local summaries.
    pub local_capacity: usize,
    /// `top`: heavy hitters listed in the kv `status`.
    pub top: usize,
    /// `hold_ms`: how long to hold the particle at each stop.
    pub hold_ms: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            total: 100_000,
            spread_nodes: 0,
            spread_min: 1_000,
            rate: 0,
            block_ttl_s: 600,
            redeem_ttl_s: 3_600,
            bucket_s: 10,
            buckets: 6,
            capacity: 512,
            slot_max_bytes: 65_536,
            local_capacity: 4_096,
            top: 20,
            hold_ms: 0,
        }
    }
}

/// The keys, for `init` (bare) and the ring config (`tokens.` + key).
pub const KEYS: &[&str] = &[
    "total",
    "spread_nodes",
    "spread_min",
    "rate",
    "block_ttl_s",
    "redeem_ttl_s",
    "bucket_s",
    "buckets",
    "capacity",
    "slot_max_bytes",
    "local_capacity",
    "top",
    "hold_ms",
];

/// The ring config prefix this station reads.
pub const RING_PREFIX: &str = "tokens.";

impl Settings {
    /// Settings from `init`'s list (later values win).
    ///
    /// # Errors
    /// An unknown key or an invalid value, named:
    /// `tokens: config "rate": invalid value "x" (...)`.
    pub fn from_init(config: &[(String, String)]) -> Result<Self, String> {
        let mut s = Self::default();
        for (k, v) in config {
            s.set(k, v).map_err(|e| format!("tokens: config {e}"))?;
        }
        Ok(s)
    }

    /// These settings overridden by the ring's `tokens.*` keys. A bad or
    /// unknown key is skipped (the stop goes on) and named in the returned
    /// warnings.
    pub fn with_ring(&self, ring: &[(String, String)]) -> (Self, Vec<String>) {
        let mut s = self.clone();
        let mut warnings = Vec::new();
        for (k, v) in ring {
            let key = k.strip_prefix(RING_PREFIX).unwrap_or(k);
            if let Err(e) = s.set(key, v) {
                warnings.push(format!("tokens: ring config {RING_PREFIX}{e}; ignored"));
            }
        }
        (s, warnings)
    }

    fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        fn num<T>(key: &str, v: &str, lo: T, hi: T) -> Result<T, String>
        where
            T: std::str::FromStr + PartialOrd + std::fmt::Display,
            T::Err: std::fmt::Display,
        {
            let n: T = v
                .trim()
                .parse()
                .map_err(|e| format!("{key:?}: invalid value {v:?} ({e})"))?;
            if n < lo || n > hi {
                return Err(format!("{key:?}: {v} is outside {lo}..={hi}"));
            }
            Ok(n)
        }
        let max = u64::MAX / 4;
        match key {
            "total" => self.total = num(key, value, 0, max)?,
            "spread_nodes" => self.spread_nodes = num(key, value, 0, u32::MAX)?,
            "spread_min" => self.spread_min = num(key, value, 0, max)?,
            "rate" => self.rate = num(key, value, 0, max)?,
            "block_ttl_s" => self.block_ttl_s = num(key, value, 1, 365 * 86_400)?,
            "redeem_ttl_s" => self.redeem_ttl_s = num(key, value, 1, 365 * 86_400)?,
            "bucket_s" => self.bucket_s = num(key, value, 1, 3_600)?,
            "buckets" => self.buckets = num(key, value, 1, 32)?,
            "capacity" => self.capacity = num(key, value, 1, 65_536)?,
            "slot_max_bytes" => self.slot_max_bytes = num(key, value, 4_096, 1 << 20)?,
            "local_capacity" => self.local_capacity = num(key, value, 16, 1 << 20)?,
            "top" => self.top = num(key, value, 0, 1_000)?,
            "hold_ms" => self.hold_ms = num(key, value, 0, 60_000)?,
            _ => return Err(format!("{key:?}: unknown key (known: {})", KEYS.join(", "))),
        }
        Ok(())
    }

    /// One bucket's width in milliseconds.
    pub fn bucket_ms(&self) -> u64 {
        u64::from(self.bucket_s) * 1_000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn ring_config_overrides_init_and_skips_bad_keys() {
        let init = Settings::from_init(&pairs(&[("total", "50"), ("rate", "3")])).unwrap();
        let (s, w) = init.with_ring(&pairs(&[
            ("tokens.total", "70"),
            ("tokens.rate", "x"),
            ("tokens.nope", "1"),
        ]));
        assert_eq!((s.total, s.rate), (70, 3));
        assert_eq!(w.len(), 2, "{w:?}");
    }

    #[test]
    fn init_rejects_unknown_keys_and_out_of_range_values() {
        assert!(Settings::from_init(&pairs(&[("nope", "1")])).is_err());
        let e = Settings::from_init(&pairs(&[("buckets", "0")])).unwrap_err();
        assert!(e.contains("outside"), "{e}");
    }
}
