//! Network profiles: what the links between test hosts look like.

use std::time::Duration;

/// One-way delay of a frame crossing the switch: `mean` ± `jitter`,
/// uniformly distributed, never below zero. Frames between one pair of
/// hosts keep their order (a frame never overtakes an earlier one), as on
/// one physical path.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Delay {
    /// Mean one-way delay.
    pub mean: Duration,
    /// Half-width of the uniform jitter around `mean`.
    pub jitter: Duration,
}

impl Delay {
    /// No added delay.
    pub const ZERO: Delay = Delay {
        mean: Duration::ZERO,
        jitter: Duration::ZERO,
    };

    /// `mean_us` ± `jitter_us` microseconds.
    pub const fn micros(mean_us: u64, jitter_us: u64) -> Delay {
        Delay {
            mean: Duration::from_micros(mean_us),
            jitter: Duration::from_micros(jitter_us),
        }
    }
}

/// How the links of a fleet are shaped. Delays are one-way (a round trip
/// crosses the switch twice); loss is per packet at the sender's output
/// (nftables `numgen random mod 1000 < loss drop`, so TCP retransmits for
/// real); bandwidth is a `tbf` qdisc on every host's egress.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// The name used on command lines (`lan`, `dc`, `wan`, `bad`, `none`).
    pub name: &'static str,
    /// Delay between hosts in the same datacentre.
    pub local: Delay,
    /// Delay between hosts in different datacentres.
    pub remote: Delay,
    /// Packets dropped per 1000 sent, at every host's output.
    pub loss_per_mille: u32,
    /// Egress rate of every host, in Mbit/s (`None`: unshaped).
    pub rate_mbit: Option<u32>,
    /// Datacentres the hosts are spread over (round-robin by index: host
    /// `i` is in datacentre `i % dcs`, named `dc{d+1}/prod/{k}`).
    pub dcs: usize,
}

impl Profile {
    /// No shaping at all: what the switch adds by itself.
    pub fn none() -> Profile {
        Profile {
            name: "none",
            local: Delay::ZERO,
            remote: Delay::ZERO,
            loss_per_mille: 0,
            rate_mbit: None,
            dcs: 1,
        }
    }

    /// One LAN: 0.2 ms ± 0.05, no loss.
    pub fn lan() -> Profile {
        Profile {
            name: "lan",
            local: Delay::micros(200, 50),
            remote: Delay::micros(200, 50),
            ..Profile::none()
        }
    }

    /// One datacentre: 1 ms ± 0.3, 0.5 % loss.
    pub fn dc() -> Profile {
        Profile {
            name: "dc",
            local: Delay::micros(1000, 300),
            remote: Delay::micros(1000, 300),
            loss_per_mille: 5,
            ..Profile::none()
        }
    }

    /// Three datacentres: 20 ms ± 5 between them (0.2 ms ± 0.05 inside
    /// one), 2 % loss, 100 Mbit/s.
    pub fn wan() -> Profile {
        Profile {
            name: "wan",
            local: Delay::micros(200, 50),
            remote: Delay::micros(20_000, 5_000),
            loss_per_mille: 20,
            rate_mbit: Some(100),
            dcs: 3,
        }
    }

    /// A bad network: the `dc` delays with 5 % loss.
    pub fn bad() -> Profile {
        Profile {
            name: "bad",
            loss_per_mille: 50,
            ..Profile::dc()
        }
    }

    /// The profile called `name`.
    ///
    /// # Errors
    /// When no profile has that name.
    pub fn by_name(name: &str) -> anyhow::Result<Profile> {
        Ok(match name {
            "none" => Profile::none(),
            "lan" => Profile::lan(),
            "dc" => Profile::dc(),
            "wan" => Profile::wan(),
            "bad" => Profile::bad(),
            other => anyhow::bail!("no profile {other:?} (none, lan, dc, wan, bad)"),
        })
    }

    /// The datacentre of host `i` (0-based).
    pub fn dc_of(&self, i: usize) -> usize {
        i % self.dcs.max(1)
    }
}
