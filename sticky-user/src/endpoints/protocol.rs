//! The control socket's messages: one JSON request and one JSON response per connection.

use serde::{Deserialize, Serialize};

use crate::config::DispatchMode;

/// A request to the running loader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    /// Report workers and counters.
    Status,
    /// Replace every worker, one slot at a time.
    Reload,
    /// Change the number of worker slots.
    Scale {
        /// The new number of slots.
        workers: u32,
    },
    /// Stop the workers and exit.
    Stop,
    /// Re-execute the sticky binary at its path in place, handing it the running state. The
    /// answer comes from the new image once it runs (or from this one if it refused).
    Upgrade,
    /// Replace one slot's worker as a rolling restart does (`sticky top`'s `r`): the new one
    /// starts beside it, and the old one gets SIGTERM once the new one is ready.
    RestartSlot {
        /// The slot.
        slot: u32,
    },
}

/// The loader's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    /// The state of the loader.
    Status(Box<Status>),
    /// The request was carried out.
    Done {
        /// What was done.
        message: String,
    },
    /// The request failed.
    Error {
        /// Why.
        message: String,
    },
}

/// What `sticky status` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The loader's pid.
    pub pid: u32,
    /// The running binary: version, build id, when this image started.
    #[serde(default)]
    pub loader: LoaderInfo,
    /// Listen addresses.
    pub listen: Vec<String>,
    /// How connections are dispatched.
    pub dispatch: DispatchMode,
    /// Ids of the attached programs, one per listen address.
    pub program_ids: Vec<u32>,
    /// Whether a closing listener's queue is migrated (Linux 5.14+).
    pub migrates: bool,
    /// Connections sent to another live slot because theirs was empty.
    pub fallback: u64,
    /// Connections left to the kernel's choice.
    pub passed: u64,
    /// Packets whose source address could not be read.
    pub unreadable: u64,
    /// One entry per worker slot.
    pub slots: Vec<SlotStatus>,
    /// How the last rolling restart ended, if there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reload: Option<ReloadOutcome>,
    /// How the last upgrade ended, if there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_upgrade: Option<ReloadOutcome>,
    /// With trusted proxies: how their connections were routed, and why some were closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_address: Option<ClientAddressStatus>,
    /// With `--quic`: how datagrams were routed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quic: Option<QuicStatus>,
}

/// QUIC routing by connection ID in [`Status`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QuicStatus {
    /// The connection IDs' length in short headers.
    pub cid_len: u8,
    /// Datagrams routed by their connection ID.
    pub routed: u64,
    /// Short-header datagrams whose connection ID was not sticky's or named no live slot, and
    /// datagrams too short to be QUIC: routed by the client's address.
    pub unroutable: u64,
    /// The socket generations alive, by slot: each slot's current one, and its previous one
    /// while that drains (none from a program without generations).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub generations: Vec<QuicGeneration>,
}

/// One socket generation of a slot, in [`QuicStatus`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QuicGeneration {
    /// The slot (a removed one's, while its last worker drains).
    pub slot: u32,
    /// The generation its connection IDs name.
    pub generation: u8,
    /// Its worker's pid, if one runs.
    pub pid: Option<u32>,
    /// Seconds it has been draining (none for the slot's current generation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draining_secs: Option<f64>,
    /// Datagrams routed to it while it drains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draining_datagrams: Option<u64>,
}

/// Trusted proxies' connections in [`Status`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientAddressStatus {
    /// Connections the program sent to the loader's socket (kernel dispatch).
    pub proxied: u64,
    /// Connections routed by the client address their header named.
    pub by_header: u64,
    /// Connections routed by the proxy's own address (no client named).
    pub by_proxy: u64,
    /// Connections closed, by reason (malformed, oversized, timeout, closed, overloaded).
    pub errors: std::collections::BTreeMap<String, u64>,
}

/// The running loader's binary.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoaderInfo {
    /// The package version.
    pub version: String,
    /// The binary's GNU build id (hex), or `unknown`.
    pub build_id: String,
    /// When this image of the loader started (its exec), in seconds since the Unix epoch.
    pub started_at_unix_secs: u64,
    /// How many times this loader process was upgraded in place.
    pub upgrades: u32,
}

/// One worker slot in [`Status`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SlotStatus {
    /// The slot number.
    pub slot: u32,
    /// The current worker's pid, if one runs.
    pub pid: Option<u32>,
    /// Seconds the current worker has been running.
    pub uptime_secs: Option<f64>,
    /// How often the slot's worker exited and was restarted.
    pub restarts: u32,
    /// Whether the slot is in the lookup table (false while ejected for crash-looping).
    pub in_table: bool,
    /// Connections the program sent to this slot, over all listen addresses.
    pub connections: u64,
    /// Whether the current worker is ready.
    #[serde(default)]
    pub ready: bool,
    /// The current worker's last `STATUS=` message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Times the slot's worker was found hung and replaced.
    #[serde(default)]
    pub hangs: u32,
    /// The fraction of the lookup table's entries that name this slot (none with plain
    /// SO_REUSEPORT): its share of the clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_share: Option<f64>,
    /// Where the slot stands (none from a loader older than this field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<SlotState>,
    /// Connections waiting in the slot's accept queues, over every TCP listen address (none
    /// under userspace dispatch, where the slot has no listening socket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<u32>,
    /// When the current worker became ready, in seconds since the Unix epoch (none while it
    /// is not, or for a ready worker adopted from before an upgrade).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_at_unix_secs: Option<u64>,
    /// CPU time (user and system) the current worker has used, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_secs: Option<f64>,
    /// The current worker's resident memory, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<u64>,
}

/// Where a slot stands, in [`SlotStatus`]: its life's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SlotState {
    /// In the table; its worker is not ready yet (or is being restarted).
    Starting,
    /// In the table, its worker ready.
    Ready,
    /// Out of the table: its worker was found hung; back once a new worker is ready.
    Hung,
    /// Out of the table: its workers exited too often; back once one stays up.
    CrashLooping,
    /// Leaving (scale down).
    Stopping,
}

impl SlotState {
    /// Every state, in this order.
    pub const ALL: [SlotState; 5] =
        [Self::Starting, Self::Ready, Self::Hung, Self::CrashLooping, Self::Stopping];

    /// Its name, as in JSON and in the metrics' `state` label.
    pub fn name(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Ready => "ready",
            Self::Hung => "hung",
            Self::CrashLooping => "crash-looping",
            Self::Stopping => "stopping",
        }
    }
}

impl std::fmt::Display for SlotState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How the last rolling restart (or upgrade) ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadOutcome {
    /// When it ended, in seconds since the Unix epoch.
    pub at_unix_secs: u64,
    /// Whether it succeeded (a reload: every slot was replaced).
    pub ok: bool,
    /// What happened, as `sticky reload` (or `upgrade`) printed it.
    pub message: String,
}
