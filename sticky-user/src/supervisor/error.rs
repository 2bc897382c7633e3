//! Why the supervisor could not do what it was asked.

use sticky_common::MAX_SLOTS;
use thiserror::Error;

use crate::{kernel::DispatchError, limits::LimitError, listeners::ListenError};

/// Why the supervisor could not change the slots.
#[derive(Debug, Error)]
pub enum SupervisorError {
    /// A dispatch map could not be updated.
    #[error(transparent)]
    Dispatch(#[from] DispatchError),
    /// A listening socket for a new slot could not be opened.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// The open-files limit cannot hold this many workers.
    #[error(transparent)]
    Limits(#[from] LimitError),
    /// A worker count out of range.
    #[error("workers must be between 1 and {MAX_SLOTS}, got {0}")]
    Workers(u32),
    /// An upgrade is about to exec: what it would answer is lost to the exec.
    #[error("sticky is upgrading in place: ask again once the upgrade has ended")]
    Upgrading,
    /// The loader is stopping.
    #[error("sticky is stopping")]
    Stopping,
    /// Userspace dispatch keeps its slots fixed.
    #[error(
        "{0} is not supported with --dispatch userspace, whose slots are fixed: restart sticky \
         with the --workers you need"
    )]
    Unsupported(&'static str),
    /// The configuration could not be read again on reload.
    #[error("the configuration cannot be reloaded: {0}")]
    Reconfigure(String),
    /// A rolling restart stopped at a slot whose new worker did not become ready.
    #[error("reload stopped at slot {slot}: {reason}; the old workers keep serving")]
    ReloadStopped {
        /// The slot.
        slot: usize,
        /// Why its new worker was not taken.
        reason: String,
    },
    /// A slot that does not exist.
    #[error("there is no slot {slot} (slots 0 to {})", .slots.saturating_sub(1))]
    NoSuchSlot {
        /// The slot asked for.
        slot: usize,
        /// How many slots there are.
        slots: usize,
    },
    /// At start, no worker became ready.
    #[error("no worker became ready: {0}")]
    NoWorkerReady(String),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers")]
    Signals(#[source] std::io::Error),
    /// An endpoint or listener could not be handed to the async runtime.
    #[error("cannot register a socket with the async runtime")]
    Io(#[source] std::io::Error),
}
