//! `ringhost tokens …`: the arguments of the token-correlation tools
//! (run by [`crate::tool::tokens`]).

use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};

use super::{TokenArg, node_addr};
use crate::tool::tokens::{DEFAULT_STATION, Observation, Target};

/// `ringhost tokens`.
#[derive(Debug, Clone, Subcommand)]
pub enum TokensCmd {
    /// The node's view of the fleet-wide catalog: rules, window and its
    /// error bound, slot size, blocklist counts, and the blocked tokens.
    Status {
        #[command(flatten)]
        at: At,
        /// Print the station's status document as JSON.
        #[arg(long)]
        json: bool,
        /// Most blocked tokens to list.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// The heavy hitters: each token's count over the window (a lower
    /// bound), the most it can be, and the nodes that saw it.
    Top {
        #[command(flatten)]
        at: At,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Most rows.
        #[arg(short = 'n', long, default_value_t = 20)]
        limit: usize,
    },
    /// Block TOKEN on every node (the block travels the ring); waits until
    /// every live member enforces it.
    Block {
        /// The token.
        token: String,
        #[command(flatten)]
        at: At,
        /// How long the block lasts, seconds (0: until unblocked).
        #[arg(long, value_name = "SECS", default_value_t = 0)]
        ttl_s: u64,
        /// Why (shown in `status` and the blocked set).
        #[arg(long, default_value = "manual")]
        reason: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Unblock TOKEN on every node (rules leave it alone for the block
    /// lifetime); waits until no live member blocks it.
    Unblock {
        /// The token.
        token: String,
        #[command(flatten)]
        at: At,
        #[command(flatten)]
        wait: Wait,
    },
    /// Report observations of tokens to the node, as an application server
    /// does (counted toward the rules).
    Observe {
        /// The tokens.
        #[arg(required = true)]
        tokens: Vec<String>,
        #[command(flatten)]
        at: At,
        /// Report each token this many times.
        #[arg(long, default_value_t = 1)]
        count: u64,
        /// One-time tokens issued here.
        #[arg(long, conflicts_with = "redeemed")]
        issued: bool,
        /// One-time tokens redeemed here (a second redemption anywhere in
        /// the fleet is flagged).
        #[arg(long)]
        redeemed: bool,
    },
    /// Whether TOKEN is blocked, redeemed or flagged at the node (answered
    /// from its memory). Exit code 0 when not blocked, 2 when blocked or
    /// flagged, 1 on error.
    Check {
        /// The token.
        token: String,
        #[command(flatten)]
        at: At,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// The node and station a `tokens` command speaks to.
#[derive(Debug, Clone, Args)]
pub struct At {
    /// A node of the ring: its admin or ring address (`host:port`).
    #[arg(long, value_parser = node_addr)]
    pub to: String,
    /// The station's name, if renamed.
    #[arg(long, default_value = DEFAULT_STATION)]
    pub station: String,
    #[command(flatten)]
    pub auth: TokenArg,
}

impl At {
    /// In plain parameters.
    ///
    /// # Errors
    /// When the token file cannot be read.
    pub fn target(&self) -> Result<Target> {
        Ok(Target {
            to: self.to.clone(),
            station: self.station.clone(),
            token: self.auth.token()?,
        })
    }
}

/// How long `block` and `unblock` wait for the ring to agree.
#[derive(Debug, Clone, Args)]
pub struct Wait {
    /// Give up waiting after this long (0: do not wait).
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub timeout_s: u64,
}

impl Wait {
    /// The wait.
    pub fn duration(&self) -> Duration {
        Duration::from_secs(self.timeout_s)
    }
}

impl TokensCmd {
    /// The kind of observation `observe` reports.
    pub fn observation(issued: bool, redeemed: bool) -> Observation {
        match (issued, redeemed) {
            (true, _) => Observation::Issued,
            (_, true) => Observation::Redeemed,
            _ => Observation::Seen,
        }
    }
}
