//! The `quic-kernel` mode's load: QUIC short-header datagrams whose destination connection ID
//! names a slot in sticky's layout (keyed from the server's seed), each from a new socket as in
//! the UDP load. A datagram counts only if the slot its ID names answers it.

use std::{
    fs,
    net::{SocketAddr, UdpSocket},
    path::Path,
};

use sticky_common::quic::{self, DEFAULT_CID_LEN, ServerId};

use super::load::{LoadResult, client, drive};

/// Runs the load against `server`, whose state directory (for its seed) is `state_dir`, with
/// `workers` slots, for `duration`.
pub fn run(
    server: SocketAddr,
    state_dir: &Path,
    workers: u32,
    duration: std::time::Duration,
) -> LoadResult {
    let seed = fs::read_to_string(state_dir.join("seed")).ok();
    let key = seed.and_then(|seed| u64::from_str_radix(seed.trim(), 16).ok()).map(quic::key);
    drive(duration, move |index| {
        let slot = (index % workers) as u8;
        let datagram = short_header(key?, slot, index);
        let answered = ask(SocketAddr::new(client(index), 0), server, &datagram)?;
        (answered == u32::from(slot)).then_some(answered)
    })
}

/// A short-header packet (no real protection: the program reads the header only) to slot
/// `slot`'s connection ID, `nonce` in the ID's random part.
fn short_header(key: u16, slot: u8, nonce: u32) -> Vec<u8> {
    let id = ServerId { slot, generation: 0 };
    let mut datagram = vec![0x40];
    datagram.extend(quic::routing_octets(key, id, nonce as u8));
    datagram.resize(1 + usize::from(DEFAULT_CID_LEN) - 4, 0);
    datagram.extend(nonce.to_be_bytes());
    datagram.extend(b" ping");
    datagram
}

/// Sends `datagram` from a new socket on `source`; the slot that answered (the demo answers
/// `worker: <slot> <payload>`).
fn ask(source: SocketAddr, server: SocketAddr, datagram: &[u8]) -> Option<u32> {
    let socket = UdpSocket::bind(source).ok()?;
    socket.set_read_timeout(Some(super::udp::TIMEOUT)).ok()?;
    socket.send_to(datagram, server).ok()?;
    let mut buffer = [0u8; 256];
    let (length, _) = socket.recv_from(&mut buffer).ok()?;
    let answer = buffer[..length].strip_prefix(b"worker: ")?;
    let digits = answer.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&answer[..digits]).ok()?.parse().ok()
}
