//! Each slot's current QUIC socket generation (`--quic`), as the program reads it from
//! `STICKY_GENERATIONS`: the generation the slot's connection IDs name while its socket is at the
//! slot's own index. The generation before it, while its worker drains, is at the slot's
//! draining index ([`sticky_common::DRAINING_INDEX`]).

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use aya::maps::{Array, MapData};
use sticky_common::{DRAINING_INDEX, GENERATIONS_MAP, MAX_SLOTS};

use super::{
    Dispatcher, counters,
    error::{DispatchError, map_error, write_error},
};

/// The generations map of one dispatcher, and what it holds.
pub(super) struct SlotGenerations {
    map: Array<MapData, u8>,
    /// A copy of the map's fd, for a handover.
    fd: OwnedFd,
    current: [u8; MAX_SLOTS as usize],
}

impl SlotGenerations {
    /// The generations in `map` (all 0 in a new one).
    pub(super) fn new(map: Array<MapData, u8>, fd: OwnedFd) -> Result<Self, DispatchError> {
        let mut current = [0; MAX_SLOTS as usize];
        for (slot, generation) in (0..).zip(&mut current) {
            *generation = map.get(&slot, 0).map_err(map_error("read", GENERATIONS_MAP))?;
        }
        Ok(Self { map, fd, current })
    }

    /// The map's fd, for the next image.
    pub(super) fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Slot `slot`'s current generation.
    pub(super) fn current(&self, slot: u32) -> u8 {
        self.current[slot as usize]
    }

    /// Makes `generation` slot `slot`'s current one.
    pub(super) fn set(&mut self, slot: u32, generation: u8) -> Result<(), DispatchError> {
        self.map.set(slot, generation, 0).map_err(write_error(GENERATIONS_MAP))?;
        self.current[slot as usize] = generation;
        Ok(())
    }
}

impl Dispatcher {
    /// With `--quic`, slot `slot`'s current socket generation, if the program has generations
    /// (one an image before them loaded has not).
    pub fn generation(&self, slot: u32) -> Option<u8> {
        self.quic_cid_len()?;
        Some(self.generations.as_ref()?.current(slot))
    }

    /// Makes `socket` slot `slot`'s socket of generation `generation`, and with `--quic` the
    /// socket the slot had its draining one: from then on the slot's connection IDs of the
    /// generation before `generation` reach `draining` ([`DRAINING_INDEX`]), its others and its
    /// clients' new connections `socket`. Without `--quic`, `draining` leaves the array.
    ///
    /// Both indexes are emptied before anything is written (an earlier generation still
    /// draining leaves first), so that no datagram of one generation reaches another
    /// generation's worker of the slot, whose stateless reset (the slot's key) its client would
    /// accept: a datagram that comes in between finds its socket missing and goes by its
    /// client's address, past the empty slot to another slot, whose reset (another key) its
    /// client ignores.
    pub fn set_generation(
        &mut self,
        slot: u32,
        generation: u8,
        socket: &impl AsRawFd,
        draining: &impl AsRawFd,
    ) -> Result<(), DispatchError> {
        if self.generation(slot).is_none() {
            return self.set_socket(slot, socket);
        }
        self.move_to_draining(slot, generation, draining)?;
        self.set_socket(slot, socket)
    }

    /// Puts slot `slot` back as it was before a [`Dispatcher::set_generation`] that failed:
    /// `socket` at its index, of `generation`, and nothing draining.
    pub fn restore_generation(
        &mut self,
        slot: u32,
        generation: u8,
        socket: &impl AsRawFd,
    ) -> Result<(), DispatchError> {
        if self.generation(slot).is_some() {
            self.clear_socket(DRAINING_INDEX + slot)?;
            self.write_generation(slot, generation)?;
        }
        self.set_socket(slot, socket)
    }

    /// Takes slot `slot`'s socket out of the array, to its draining index (a slot that leaves
    /// while its worker drains): the generation moves on, so that the slot's connection IDs
    /// reach that socket, and a later worker of the slot mints others. Emptied first, as in
    /// [`Dispatcher::set_generation`].
    pub fn drain_slot(&mut self, slot: u32, socket: &impl AsRawFd) -> Result<(), DispatchError> {
        let Some(current) = self.generation(slot) else { return self.clear_socket(slot) };
        self.move_to_draining(slot, current.wrapping_add(1), socket)
    }

    /// Empties slot `slot`'s index and its draining index, makes `generation` its current one
    /// and puts `draining` at its draining index, in that order (see
    /// [`Dispatcher::set_generation`]).
    fn move_to_draining(
        &mut self,
        slot: u32,
        generation: u8,
        draining: &impl AsRawFd,
    ) -> Result<(), DispatchError> {
        self.clear_socket(DRAINING_INDEX + slot)?;
        self.clear_socket(slot)?;
        self.write_generation(slot, generation)?;
        self.set_socket(DRAINING_INDEX + slot, draining)
    }

    /// Makes `generation` slot `slot`'s current one (with generations).
    fn write_generation(&mut self, slot: u32, generation: u8) -> Result<(), DispatchError> {
        self.generations.as_mut().map_or(Ok(()), |generations| generations.set(slot, generation))
    }

    /// Empties slot `slot`'s draining index (its drain has ended).
    pub fn clear_draining(&mut self, slot: u32) -> Result<(), DispatchError> {
        self.clear_socket(DRAINING_INDEX + slot)
    }

    /// Datagrams the program routed to slot `slot`'s draining socket so far.
    pub fn draining_datagrams(&self, slot: u32) -> Result<u64, DispatchError> {
        counters::draining(&self.counters, slot)
    }
}
