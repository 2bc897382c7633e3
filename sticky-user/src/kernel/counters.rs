//! The program's per-CPU counters, read and summed over CPUs.

use aya::maps::{MapData, PerCpuArray};
use sticky_common::{
    COUNTER_DRAINING, COUNTER_FALLBACK, COUNTER_PASSED, COUNTER_PROXIED, COUNTER_QUIC_ROUTED,
    COUNTER_QUIC_UNROUTABLE, COUNTER_UNREADABLE, COUNTERS_MAP,
};

use super::error::{DispatchError, map_error};

/// Connection counts read from the program's per-CPU counters, summed over CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Connections the program selected each slot for (index = slot).
    pub selected: Vec<u64>,
    /// Connections whose slot was empty and went to another live slot.
    pub fallback: u64,
    /// Connections left to the kernel's own choice.
    pub passed: u64,
    /// Packets whose source address could not be read.
    pub unreadable: u64,
    /// Connections from trusted proxies, sent to the loader's socket.
    pub proxied: u64,
    /// With `--quic`: datagrams routed by their connection ID.
    pub quic_routed: u64,
    /// With `--quic`: short-header datagrams whose connection ID was not sticky's or named no
    /// live slot, and datagrams too short to be QUIC, routed by address.
    pub quic_unroutable: u64,
}

impl Counters {
    /// Connections the program selected `slot` for, summed over `counters` (one per listen
    /// address).
    pub fn selected_total(counters: &[Counters], slot: usize) -> u64 {
        counters.iter().filter_map(|counters| counters.selected.get(slot)).sum()
    }

    /// The counters of a program with `slots` slots, and QUIC routing if `quic` (a program
    /// without it, an earlier image's, has no such counters).
    pub(super) fn read(
        map: &PerCpuArray<MapData, u64>,
        slots: u32,
        quic: bool,
    ) -> Result<Self, DispatchError> {
        let read = |index| read(map, index);
        Ok(Counters {
            selected: (0..slots).map(read).collect::<Result<_, _>>()?,
            fallback: read(COUNTER_FALLBACK)?,
            passed: read(COUNTER_PASSED)?,
            unreadable: read(COUNTER_UNREADABLE)?,
            proxied: read(COUNTER_PROXIED)?,
            quic_routed: if quic { read(COUNTER_QUIC_ROUTED)? } else { 0 },
            quic_unroutable: if quic { read(COUNTER_QUIC_UNROUTABLE)? } else { 0 },
        })
    }
}

/// Datagrams the program routed to slot `slot`'s draining socket.
pub(super) fn draining(map: &PerCpuArray<MapData, u64>, slot: u32) -> Result<u64, DispatchError> {
    read(map, COUNTER_DRAINING + slot)
}

/// Counter `index`, summed over CPUs.
fn read(map: &PerCpuArray<MapData, u64>, index: u32) -> Result<u64, DispatchError> {
    let per_cpu = map.get(&index, 0).map_err(map_error("read", COUNTERS_MAP))?;
    Ok(per_cpu.iter().sum())
}
