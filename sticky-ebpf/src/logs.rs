//! What the program logs, through aya-log: its exceptional paths, never the normal one.
//!
//! Each message is a function of its own (a BPF-to-BPF call), called only from an exceptional
//! branch, so the normal path's code stays as it was. The loader sets `AYA_LOG_LEVEL` at load
//! (`sticky run --log-level`); these are debug messages, and below debug the verifier, which
//! reads that constant from the frozen `.rodata` map, finds their bodies dead.

use aya_log_ebpf::debug;

/// A connection whose slot `from` has no socket went to slot `to` (the fallback).
#[inline(never)]
pub fn fallback(from: u32, to: u32) {
    debug!((), "slot {} has no socket: its client's connection goes to slot {}", from, to);
}

/// No slot was live: the kernel chooses the socket.
#[inline(never)]
pub fn no_live_slot() {
    debug!((), "no slot has a socket: the kernel chooses one for the connection");
}

/// A trusted proxy's connection found no loader socket: the kernel chooses one.
#[inline(never)]
pub fn no_loader_socket() {
    debug!((), "a trusted proxy's connection finds no loader socket: the kernel chooses one");
}

/// The client's address could not be read: the kernel chooses the socket.
#[inline(never)]
pub fn unreadable() {
    debug!((), "unreadable client address: the kernel chooses a socket for the connection");
}

/// With `--quic`: a datagram too short for a QUIC header, routed by address.
#[inline(never)]
pub fn quic_short() {
    debug!((), "datagram shorter than a QUIC header: unroutable, routed by address");
}

/// With `--quic`: a short header whose connection ID is not sticky's, routed by address.
#[inline(never)]
pub fn quic_foreign() {
    debug!((), "datagram whose connection ID is not sticky's: unroutable, routed by address");
}

/// With `--quic`: a connection ID that names socket-array `index` (its slot, or
/// `DRAINING_INDEX + slot` for a draining generation), which is empty; routed by address.
#[inline(never)]
pub fn quic_no_socket(index: u32) {
    debug!((), "connection ID names socket index {}, which is empty: routed by address", index);
}
