//! `sticky upgrade` (and SIGUSR2): the running loader re-executes the sticky binary at its path,
//! in place (same pid), and the new image goes on where the old one stopped.
//!
//! Nothing closes: the workers stay children of the same process, the listening sockets, the
//! program and its maps (counters included), the control, metrics and notify sockets are all
//! inherited, and a versioned [`record`] says what each fd is and what the supervisor knew
//! (slots, restart counters, in-table flags, workers' pids). The kernel keeps dispatching
//! throughout. Before anything is handed over, the new binary is asked whether it reads this
//! record's version ([`probe`]); if not, the upgrade is refused and nothing changes.

mod exec;
mod probe;
mod record;
mod resume;

use std::path::PathBuf;

use thiserror::Error;

pub(crate) use self::{
    exec::{exec, handled_signals},
    probe::probe,
    record::{
        EndpointFds, GroupRecord, NotifyRecord, Record, SlotRecord, SupervisorRecord, WorkerRecord,
    },
};
pub use self::{
    probe::ProbeAnswer,
    record::{RecordError, STATE_VERSION},
    resume::resume,
};

/// The hidden `sticky` subcommand the new image runs as (`--state-fd N`, or `--probe`).
pub const RESUME: &str = "resume";

/// Why an upgrade did not happen (the running loader goes on unchanged).
#[derive(Debug, Error)]
pub enum UpgradeError {
    /// The binary at sticky's path does not answer as sticky.
    #[error("upgrade refused: {} is not a sticky that can take over: {reason}", path.display())]
    NotSticky {
        /// The binary's path.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// It is sticky, but reads other state versions.
    #[error(
        "upgrade refused: {} (sticky {version}) reads state versions {reads:?}, this loader writes {STATE_VERSION}",
        path.display()
    )]
    Incompatible {
        /// The binary's path.
        path: PathBuf,
        /// Its version.
        version: String,
        /// The versions it reads.
        reads: Vec<u32>,
    },
    /// Userspace dispatch's loader holds connections in flight.
    #[error("upgrade refused: not supported with --dispatch userspace (use systemctl restart)")]
    Userspace,
    /// Another upgrade, reload or scale is under way, or the loader is stopping.
    #[error("upgrade refused: sticky is stopping")]
    Stopping,
    /// The exec failed; the running loader goes on.
    #[error("upgrade failed: cannot execute {}: {reason}", path.display())]
    Exec {
        /// The binary's path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}
