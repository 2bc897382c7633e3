//! `sticky upgrade` (and SIGUSR2): the running loader re-executes the sticky binary at its path,
//! in place (same pid), and the new image goes on where the old one stopped.
//!
//! Nothing closes: the workers stay children of the same process, the listening sockets, the
//! program and its maps (counters included), the control and metrics sockets and each worker's
//! notify socket are all inherited, and a versioned [`record`] says what each fd is and what
//! the supervisor knew (slots, restart counters, in-table flags, workers' pids). The kernel
//! keeps dispatching throughout.
//!
//! The new binary is opened once and checked on that open file ([`image`]: owner, mode, its
//! directories); it is asked whether it can take a record like this one ([`probe`]) and then
//! executed, both through that same open file. Any refusal leaves the loader unchanged. The
//! old image stays open across the exec: a new image that cannot take over executes it again
//! ([`rollback`]), and the loader goes on as it was.

mod exec;
mod image;
mod probe;
mod record;
mod resume;
mod rollback;

use std::path::PathBuf;

use thiserror::Error;

pub(crate) use self::{
    exec::{exec, handled_signals},
    image::{Image, open_running},
    probe::probe,
    record::{
        DrainingRecord, EndpointFds, GroupRecord, HandoffRecord, NotifyRecord, Record, SlotRecord,
        SupervisorRecord, WorkerRecord,
    },
    resume::Carried,
};
pub use self::{
    probe::{ProbeAnswer, check_record},
    record::{RecordError, STATE_VERSION},
    resume::{ResumeError, Takeover, resume},
    rollback::HandBackError,
};

/// The hidden `sticky` subcommand the new image runs as (`--state-fd N`, or `--probe`).
pub const RESUME: &str = "resume";

/// Why an upgrade did not happen (the running loader goes on unchanged).
#[derive(Debug, Error)]
pub enum UpgradeError {
    /// The binary at sticky's path could have been written by someone else.
    #[error("upgrade refused: {} {reason}", path.display())]
    Unsafe {
        /// The binary's path.
        path: PathBuf,
        /// Why (e.g. "is writable by its group").
        reason: String,
    },
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
    /// Node workers take connections over their IPC channels, which are not handed over.
    #[error(
        "upgrade refused: node workers' IPC channels (--handoff node, with --trusted-proxy or \
         --dispatch userspace) are not handed over to a new image: use systemctl restart"
    )]
    NodeChannels,
    /// The running image cannot be kept open for a way back.
    #[error("upgrade refused: cannot keep the running image open for a way back: {0}")]
    Running(nix::Error),
    /// The loader is stopping.
    #[error("upgrade refused: sticky is stopping")]
    Stopping,
    /// Another upgrade is about to exec.
    #[error("upgrade refused: another upgrade is under way")]
    UnderWay,
    /// The exec failed; the running loader goes on.
    #[error("upgrade failed: cannot execute {}: {reason}", path.display())]
    Exec {
        /// The binary's path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}
