//! One worker process as the supervisor tracks it: when it started, whether it is ready, what
//! it last said, and how it ended.

use std::{
    fmt,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{sync::watch, time::timeout};

use crate::{
    endpoints::readiness::Inbox,
    handoff::node_ipc::Channel,
    sync::{lock, unix_now},
};

/// A worker process the supervisor started; clones share its state.
#[derive(Clone)]
pub(super) struct Worker {
    pub(super) pid: u32,
    pub(super) started: Instant,
    /// Its notify socket (`NOTIFY_SOCKET`), removed once no clone holds it.
    pub(super) inbox: Option<Arc<Inbox>>,
    /// A node worker's IPC channel, which gets the slot's connections once it is ready.
    channel: Option<Arc<Channel>>,
    shared: Arc<Shared>,
}

struct Shared {
    ready: watch::Sender<bool>,
    /// `None` while it runs; how it ended once reaped.
    exit: watch::Sender<Option<Exit>>,
    notes: Mutex<Notes>,
}

/// What the worker said through its notify socket.
struct Notes {
    status: Option<String>,
    /// The last `WATCHDOG=1`, or when it became ready.
    fed: Instant,
    /// When it became ready, in seconds since the Unix epoch (unknown for a worker adopted
    /// ready from before an upgrade).
    ready_at: Option<u64>,
}

/// How a worker ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Exit(String);

impl Exit {
    pub(super) fn new(description: String) -> Self {
        Self(description)
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a new worker did not become ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum NotReady {
    /// It exited first.
    Exited(Exit),
    /// The ready timeout passed.
    TimedOut(Duration),
}

impl fmt::Display for NotReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exited(exit) => write!(f, "the new worker {exit} before it was ready"),
            Self::TimedOut(limit) => {
                write!(f, "the new worker was not ready within {} s", limit.as_secs_f64())
            }
        }
    }
}

impl Worker {
    /// A worker just started as `pid`, with notify socket `inbox`.
    pub(super) fn new(pid: u32, inbox: Inbox) -> Self {
        Self::adopted(pid, Duration::ZERO, false, None, Some(inbox))
    }

    /// A worker that has run for `uptime` already (started before an upgrade), ready or not,
    /// with its last `STATUS=` and its notify socket.
    pub(super) fn adopted(
        pid: u32,
        uptime: Duration,
        ready: bool,
        status: Option<String>,
        inbox: Option<Inbox>,
    ) -> Self {
        let now = Instant::now();
        let shared = Shared {
            ready: watch::Sender::new(ready),
            exit: watch::Sender::new(None),
            notes: Mutex::new(Notes { status, fed: now, ready_at: None }),
        };
        let started = now.checked_sub(uptime).unwrap_or(now);
        Self { pid, started, inbox: inbox.map(Arc::new), channel: None, shared: Arc::new(shared) }
    }

    /// This worker, reached through node's IPC `channel`.
    pub(super) fn with_channel(self, channel: Option<Arc<Channel>>) -> Self {
        Self { channel, ..self }
    }

    /// Its node IPC channel, if it has one.
    pub(super) fn channel(&self) -> Option<&Arc<Channel>> {
        self.channel.as_ref()
    }

    /// Records how it ended (once reaped).
    pub(super) fn exited(&self, exit: Exit) {
        self.shared.exit.send_replace(Some(exit));
    }

    /// Waits until the process has exited and was reaped.
    pub(super) async fn wait(&self) {
        let _ = self.shared.exit.subscribe().wait_for(Option::is_some).await;
    }

    /// Marks it ready; returns whether it was not before.
    pub(super) fn mark_ready(&self) -> bool {
        self.feed();
        let newly = !self.shared.ready.send_replace(true);
        if newly {
            self.notes().ready_at = Some(unix_now());
        }
        newly
    }

    /// When it became ready, in seconds since the Unix epoch, if known.
    pub(super) fn ready_at(&self) -> Option<u64> {
        self.notes().ready_at
    }

    /// Whether it is ready.
    pub(super) fn is_ready(&self) -> bool {
        *self.shared.ready.borrow()
    }

    /// Waits until it is ready, it exits, or `limit` passes.
    pub(super) async fn wait_ready(&self, limit: Duration) -> Result<(), NotReady> {
        let mut ready = self.shared.ready.subscribe();
        let mut exit = self.shared.exit.subscribe();
        let outcome = timeout(limit, async {
            tokio::select! {
                Ok(_) = ready.wait_for(|ready| *ready) => Ok(()),
                Ok(exit) = exit.wait_for(Option::is_some) => {
                    Err(NotReady::Exited(exit.clone().expect("some")))
                }
                else => Err(NotReady::TimedOut(limit)),
            }
        });
        outcome.await.unwrap_or(Err(NotReady::TimedOut(limit)))
    }

    /// Records a `STATUS=` message, without its control characters (a worker must not drive
    /// the terminal of whoever reads `sticky status`) and at most [`MAX_STATUS`] characters.
    pub(super) fn set_status(&self, status: String) {
        self.notes().status = Some(printable(&status));
    }

    /// Its last `STATUS=` message.
    pub(super) fn status(&self) -> Option<String> {
        self.notes().status.clone()
    }

    /// Records a `WATCHDOG=1` message.
    pub(super) fn feed(&self) {
        self.notes().fed = Instant::now();
    }

    /// How long since its last `WATCHDOG=1` (or since it became ready).
    pub(super) fn hungry_for(&self) -> Duration {
        self.notes().fed.elapsed()
    }

    fn notes(&self) -> std::sync::MutexGuard<'_, Notes> {
        lock(&self.shared.notes)
    }
}

/// The longest `STATUS=` text kept, in characters.
const MAX_STATUS: usize = 256;

/// `text` without control characters, cut to [`MAX_STATUS`] characters.
fn printable(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(MAX_STATUS).collect()
}
