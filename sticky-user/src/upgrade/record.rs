//! The state record an upgrade hands to the new image: what the loader runs, as data, with the
//! numbers of the fds it inherits. JSON in a memfd; [`STATE_VERSION`] names its shape.

use std::{
    fs::File,
    io::{self, Seek as _, SeekFrom, Write as _},
    os::fd::{BorrowedFd, OwnedFd, RawFd},
    path::PathBuf,
};

use nix::sys::{
    memfd::{MFdFlags, memfd_create},
    uio::pread,
};
use serde::{Deserialize, Serialize};

use crate::{
    config::{Launch, Listen},
    endpoints::control::{LoaderInfo, ReloadOutcome},
    kernel::DispatcherFds,
    limits::StartedWith,
};

/// The shape of [`Record`] this binary writes and reads. A change of shape takes a new number.
///
/// 2: a notify socket per worker (`WorkerRecord::notify`, retiring workers as `WorkerRecord`s,
/// `EndpointFds::notify_dir`) instead of one for all.
/// 3: the trusted proxies' trie among a dispatcher's maps; the hand-over (`Record::handoff`);
/// listen addresses with their transport (`GroupRecord::listen`, `RunConfig::listen`).
/// 4: QUIC socket generations: their map among a dispatcher's (`DispatcherFds::generations`)
/// and the draining workers (`SupervisorRecord::draining`), which an image that reads only 3
/// would leave draining for ever, its workers minting the wrong generation.
pub const STATE_VERSION: u32 = 4;
/// The shapes this binary reads: its own, and 3 (whose new fields are optional).
pub const READ_VERSIONS: [u32; 2] = [3, STATE_VERSION];

/// Everything the new image needs to go on where the old one stopped.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Record {
    /// [`STATE_VERSION`] of the writer.
    pub(crate) version: u32,
    /// What `sticky run` was given: the configuration stays as it runs.
    pub(crate) launch: Launch,
    /// The hash seed.
    pub(crate) seed: u64,
    /// The listening sockets and attached programs, per listen address.
    pub(crate) groups: Vec<GroupRecord>,
    /// The control and metrics sockets, and the workers' notify directory.
    pub(crate) endpoints: EndpointFds,
    /// The supervisor's slots and workers.
    pub(crate) supervisor: SupervisorRecord,
    /// The old image, for the answer to `sticky upgrade`.
    pub(crate) previous: LoaderInfo,
    /// The `sticky upgrade` connection that waits for the new image's answer.
    pub(crate) reply: Option<RawFd>,
    /// The path upgrades take the binary from: the one the loader was started from.
    #[serde(default)]
    pub(crate) executable: Option<PathBuf>,
    /// The old image, open: what the new image executes again if it cannot take over.
    #[serde(default)]
    pub(crate) previous_image: Option<RawFd>,
    /// The open-files limit and umask the first image started with, which workers get back.
    #[serde(default)]
    pub(crate) started_with: Option<StartedWith>,
    /// The connections the loader passes on itself (userspace dispatch, trusted proxies).
    #[serde(default)]
    pub(crate) handoff: Option<HandoffRecord>,
}

/// The loader's hand-over to the workers.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct HandoffRecord {
    /// The sockets the loader accepts on, one per listen address.
    pub(crate) listeners: Vec<RawFd>,
    /// The listen address's index of each listener.
    pub(crate) listener_indexes: Vec<u8>,
    /// The loader's end of each slot's pair.
    pub(crate) loader_ends: Vec<RawFd>,
    /// The workers' end of each slot's pair.
    pub(crate) worker_ends: Vec<RawFd>,
}

/// What a hand-back needs of a record, read whatever else the record holds.
#[derive(Debug, Deserialize)]
pub(crate) struct HandBack {
    /// [`Record::executable`].
    #[serde(default)]
    pub(crate) executable: Option<PathBuf>,
    /// [`Record::previous_image`].
    #[serde(default)]
    pub(crate) previous_image: Option<RawFd>,
}

/// One listen address: its sockets (index = slot) and its program, if kernel dispatch.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct GroupRecord {
    pub(crate) listen: Listen,
    pub(crate) sockets: Vec<RawFd>,
    pub(crate) dispatcher: Option<DispatcherFds>,
}

/// The loader's endpoints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct EndpointFds {
    pub(crate) control: RawFd,
    pub(crate) control_path: PathBuf,
    pub(crate) metrics: Option<RawFd>,
    /// Where the workers' notify sockets are.
    pub(crate) notify_dir: PathBuf,
}

/// The supervisor's state.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SupervisorRecord {
    pub(crate) slots: Vec<SlotRecord>,
    /// Workers of removed slots that are still finishing.
    pub(crate) retiring: Vec<WorkerRecord>,
    pub(crate) next_slot_id: u64,
    pub(crate) last_reload: Option<ReloadOutcome>,
    pub(crate) upgrades: u32,
    /// With `--quic`: the slots' previous generations that drain (their workers are among
    /// `retiring`).
    #[serde(default)]
    pub(crate) draining: Vec<DrainingRecord>,
}

/// A slot's previous generation that drains.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct DrainingRecord {
    pub(crate) slot: usize,
    pub(crate) generation: u8,
    /// Its worker's pid.
    pub(crate) pid: u32,
    /// How long it has drained, in seconds.
    pub(crate) secs: f64,
}

/// One slot.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SlotRecord {
    pub(crate) id: u64,
    pub(crate) worker: Option<WorkerRecord>,
    pub(crate) restarts: u32,
    /// How long ago each exit within the crash window was, in seconds.
    pub(crate) exit_ages_secs: Vec<f64>,
    pub(crate) in_table: bool,
    pub(crate) backoff_ms: u64,
    pub(crate) hangs: u32,
    pub(crate) hung: bool,
    pub(crate) was_ready: bool,
}

/// One running worker.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct WorkerRecord {
    pub(crate) pid: u32,
    pub(crate) uptime_secs: f64,
    pub(crate) ready: bool,
    pub(crate) status: Option<String>,
    /// Its notify socket.
    pub(crate) notify: Option<NotifyRecord>,
}

/// A worker's notify socket: the fd and the path it is bound at (its `NOTIFY_SOCKET`).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct NotifyRecord {
    pub(crate) fd: RawFd,
    pub(crate) path: PathBuf,
}

impl SupervisorRecord {
    /// Every worker: the slots' and the retiring ones.
    pub(crate) fn workers(&self) -> impl Iterator<Item = &WorkerRecord> {
        self.slots.iter().flat_map(|slot| &slot.worker).chain(&self.retiring)
    }
}

impl Record {
    /// Every fd the record names: what must survive the exec.
    pub(crate) fn fds(&self) -> Vec<RawFd> {
        let EndpointFds { control, metrics, .. } = self.endpoints;
        let mut fds = vec![control];
        fds.extend(metrics);
        fds.extend(self.reply);
        fds.extend(self.previous_image);
        fds.extend(self.supervisor.workers().flat_map(|worker| &worker.notify).map(|n| n.fd));
        for group in &self.groups {
            fds.extend(&group.sockets);
            if let Some(handover) = &group.dispatcher {
                fds.extend(handover.fds());
            }
        }
        if let Some(handoff) = &self.handoff {
            fds.extend(&handoff.listeners);
            fds.extend(&handoff.loader_ends);
            fds.extend(&handoff.worker_ends);
        }
        fds
    }

    /// Writes the record to a new memfd (close-on-exec; the caller clears that).
    pub(crate) fn to_memfd(&self) -> io::Result<OwnedFd> {
        let fd = memfd_create("sticky-state", MFdFlags::MFD_CLOEXEC)?;
        let mut file = File::from(fd);
        file.write_all(&serde_json::to_vec(self).map_err(io::Error::other)?)?;
        file.seek(SeekFrom::Start(0))?;
        Ok(file.into())
    }

    /// Reads the record in `fd` from its start (leaving the fd open, for a hand-back).
    pub(crate) fn read(fd: BorrowedFd<'_>) -> Result<Self, RecordError> {
        Self::parse(&read_text(fd)?)
    }

    /// Parses a whole record, checking its version first.
    pub(crate) fn parse(text: &str) -> Result<Self, RecordError> {
        #[derive(Deserialize)]
        struct Versioned {
            version: u32,
        }
        let Versioned { version } = serde_json::from_str(text).map_err(RecordError::Parse)?;
        if !READ_VERSIONS.contains(&version) {
            return Err(RecordError::Version(version));
        }
        serde_json::from_str(text).map_err(RecordError::Parse)
    }
}

impl HandBack {
    /// Reads what a hand-back needs from the record in `fd`.
    pub(crate) fn read(fd: BorrowedFd<'_>) -> Result<Self, RecordError> {
        serde_json::from_str(&read_text(fd)?).map_err(RecordError::Parse)
    }
}

/// The text of the record in `fd`, from its start. Reads with pread(2): no fd is opened (a
/// hand-back must work when none is free) and the fd's offset stays where it is.
fn read_text(fd: BorrowedFd<'_>) -> Result<String, RecordError> {
    let mut bytes = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let offset = bytes.len() as libc::off_t;
        let read = pread(fd, &mut chunk, offset).map_err(|err| RecordError::Read(err.into()))?;
        if read == 0 {
            break;
        }
        bytes.extend_from_slice(&chunk[..read]);
    }
    String::from_utf8(bytes)
        .map_err(|err| RecordError::Read(io::Error::new(io::ErrorKind::InvalidData, err)))
}

/// Why the state record could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The fd could not be read.
    #[error("cannot read the state record")]
    Read(#[source] io::Error),
    /// It is not a record this binary understands.
    #[error("invalid state record")]
    Parse(#[source] serde_json::Error),
    /// Its version is not [`STATE_VERSION`].
    #[error("state record version {0} is not one this binary reads ({READ_VERSIONS:?})")]
    Version(u32),
}
