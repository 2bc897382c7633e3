//! The contract between sticky's SK_REUSEPORT program and its loader.
//!
//! Both sides compile this crate: the eBPF program for `bpfel-unknown-none`, the loader for the
//! host. Everything that crosses the kernel/user boundary is defined here once: map names and
//! sizes, the layout of the configuration and counters, the client hash, and the way from a
//! client address to its slot.
#![no_std]
#![deny(missing_docs)]

pub mod client;
pub mod hash;
pub mod quic;

/// Name of the `REUSEPORT_SOCKARRAY` map: index = worker slot, value = that slot's listener.
pub const SOCKETS_MAP: &str = "STICKY_SOCKETS";
/// Name of the one-entry array that holds the [`Table`].
pub const TABLE_MAP: &str = "STICKY_TABLE";
/// Name of the one-entry array that holds the [`DispatchConfig`].
pub const CONFIG_MAP: &str = "STICKY_CONFIG";
/// Name of the per-CPU counter array, indexed by the `COUNTER_*` constants.
pub const COUNTERS_MAP: &str = "STICKY_COUNTERS";
/// Name of the LPM trie of trusted proxies (`--trusted-proxy`): key = prefix length and an
/// address as [`client::Client::trie_words`] lays it out, value unused. A connection from one
/// of them goes to the loader's socket, which reads the real client's address.
pub const PROXIES_MAP: &str = "STICKY_PROXIES";
/// Name of the array of each slot's current QUIC socket generation (`--quic`): index = slot,
/// value = the generation its connection IDs name while its socket is at the slot's own index.
/// The generation before it, while it drains, has its socket at [`DRAINING_INDEX`]` + slot`.
pub const GENERATIONS_MAP: &str = "STICKY_GENERATIONS";
/// Name of the program that selects new connections and migrates a closing listener's queue
/// (attach type `BPF_SK_REUSEPORT_SELECT_OR_MIGRATE`, Linux 5.14+).
pub const PROGRAM_MIGRATE: &str = "sticky_migrate";
/// Name of the select-only program, for kernels without migration.
pub const PROGRAM_SELECT: &str = "sticky_dispatch";

/// The most worker slots one listen address can have.
pub const MAX_SLOTS: u32 = 128;
/// The index of the loader's own socket in the socket array, after every worker slot: with
/// trusted proxies, the loader accepts their connections and reads the client's address.
pub const LOADER_INDEX: u32 = MAX_SLOTS;
/// The index of slot 0's draining socket (`--quic`): a slot's previous socket generation,
/// whose worker drains its connections, sits at `DRAINING_INDEX + slot`.
pub const DRAINING_INDEX: u32 = LOADER_INDEX + 1;
/// Entries in the socket array: the worker slots, the loader's socket and the draining sockets.
pub const SOCKET_ENTRIES: u32 = DRAINING_INDEX + MAX_SLOTS;
/// The most trusted-proxy prefixes.
pub const MAX_PROXIES: u32 = 1024;
/// Entries in the lookup table: a power of two, so the program indexes it with a mask.
/// At 32 slots every slot still owns about 512 entries.
pub const TABLE_SIZE: usize = 1 << 14;

/// The lookup table: entry `hash % TABLE_SIZE` holds the slot of the clients with that hash.
///
/// One byte per entry, all in one map value of 16 KiB. The kernel allocates a map this small
/// from the linear mapping (huge pages) rather than from vmalloc space, so reading it costs no
/// TLB miss. (An array map of `u32` entries pads each to 8 bytes: at 2^17 entries that was
/// 1 MiB of 4 KiB pages, and its one random read took most of the program's time.)
pub type Table = [u8; TABLE_SIZE];

const _: () = assert!(MAX_SLOTS <= u8::MAX as u32 + 1, "a slot must fit a table entry");

/// Counter index: connections whose hashed slot was empty and went to another live slot.
/// Counters `0..MAX_SLOTS` count the connections each slot was selected for.
pub const COUNTER_FALLBACK: u32 = MAX_SLOTS;
/// Counter index: connections left to the kernel's own choice because no slot was live.
pub const COUNTER_PASSED: u32 = MAX_SLOTS + 1;
/// Counter index: packets whose source address could not be read.
pub const COUNTER_UNREADABLE: u32 = MAX_SLOTS + 2;
/// Counter index: connections from a trusted proxy, sent to the loader's socket.
pub const COUNTER_PROXIED: u32 = MAX_SLOTS + 3;
/// Counter index: QUIC datagrams routed by their connection ID (`--quic`).
pub const COUNTER_QUIC_ROUTED: u32 = MAX_SLOTS + 4;
/// Counter index: QUIC short-header datagrams whose connection ID is not sticky's or names no
/// live slot, and datagrams too short to be QUIC: routed by address.
pub const COUNTER_QUIC_UNROUTABLE: u32 = MAX_SLOTS + 5;
/// Counter index of slot 0's draining socket: datagrams routed to `DRAINING_INDEX + slot` count
/// at `COUNTER_DRAINING + slot`.
pub const COUNTER_DRAINING: u32 = MAX_SLOTS + 6;
/// Entries in the counter array.
pub const COUNTERS: u32 = COUNTER_DRAINING + MAX_SLOTS;

/// How the program turns a client address into a table index; written once by the loader.
///
/// The masks are in network byte order, as the address words are read from the packet, so the
/// program applies them with a plain AND.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DispatchConfig {
    /// Seed of the client hash; persisted by the loader so the mapping survives restarts.
    pub seed: u64,
    /// Mask applied to an IPv4 source address (e.g. `/24` keeps the last octet out).
    pub v4_mask: u32,
    /// Number of slots in use; the fallback scan stays below it.
    pub slots: u32,
    /// Mask applied to the four words of an IPv6 source address.
    pub v6_mask: [u32; 4],
    /// How many trusted proxies' networks `STICKY_PROXIES` holds: with none, the program does
    /// not look there (a lookup costs about 150 ns per connection).
    pub proxies: u32,
    /// With `--quic`: the length of the connection IDs in short headers
    /// ([`quic::MIN_CID_LEN`] to [`quic::MAX_CID_LEN`]); 0 routes by address only.
    pub quic_cid_len: u16,
    /// With `--quic`: the key of sticky's CIDs' check ([`quic::key`]).
    pub quic_key: u16,
}

#[cfg(feature = "user")]
// SAFETY: `DispatchConfig` is `repr(C)`, made of plain integers and has no padding.
unsafe impl aya::Pod for DispatchConfig {}

impl DispatchConfig {
    /// The configuration for `seed`, prefix lengths and a slot count.
    ///
    /// Prefix lengths above 32 (IPv4) or 128 (IPv6) are clamped; validating them is the caller's
    /// job.
    pub fn new(seed: u64, prefix_v4: u8, prefix_v6: u8, slots: u32) -> Self {
        let mut v6_mask = [0; 4];
        for (i, word) in v6_mask.iter_mut().enumerate() {
            *word = prefix_mask(prefix_v6.saturating_sub(32 * i as u8));
        }
        Self {
            seed,
            v4_mask: prefix_mask(prefix_v4),
            slots,
            v6_mask,
            proxies: 0,
            quic_cid_len: 0,
            quic_key: 0,
        }
    }
}

/// The network-byte-order mask of one 32-bit address word keeping its first `bits` bits.
fn prefix_mask(bits: u8) -> u32 {
    let host_order = match bits {
        0 => 0,
        1..=31 => u32::MAX << (32 - bits),
        _ => u32::MAX,
    };
    host_order.to_be()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_keep_the_prefix() {
        let config = DispatchConfig::new(7, 24, 64, 4);
        assert_eq!(config.v4_mask.to_ne_bytes(), [255, 255, 255, 0]);
        assert_eq!(config.v6_mask, [u32::MAX, u32::MAX, 0, 0]);
        let config = DispatchConfig::new(7, 0, 72, 4);
        assert_eq!(config.v4_mask, 0);
        assert_eq!(config.v6_mask[2].to_ne_bytes(), [255, 0, 0, 0]);
        assert_eq!(config.v6_mask[3], 0);
        assert_eq!(DispatchConfig::new(7, 32, 128, 4).v6_mask, [u32::MAX; 4]);
    }
}
