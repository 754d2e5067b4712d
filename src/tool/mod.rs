//! The command-line tools other than `up`: each takes plain parameters
//! (never clap types, so nothing here imports `cli`) and speaks to a
//! node's admin API through [`crate::admin::client`].
//!
//! - [`view`]: `ringhost status` (one node) and `ringhost members` (the
//!   ring), with `--json` and `--watch`, and their exit codes.
//! - [`deploy`]: `push`, `rollback`, `config`, `keygen`.
//! - [`tokens`]: `tokens status|top|block|unblock|observe|check`.

pub mod deploy;
pub mod tokens;
pub mod view;

/// Exit code: everything is as it should be.
pub const EXIT_OK: u8 = 0;

/// Exit code: the tool failed (unreachable node, bad answer, refused).
pub const EXIT_ERROR: u8 = 1;

/// Exit code of `status` and `members`: the ring is not whole (a member
/// not live, or members running different station versions), like
/// `corosync-quorumtool -s`.
pub const EXIT_DEGRADED: u8 = 2;
