//! One Unix socket pair per slot, and sending an accepted connection over one (SCM_RIGHTS and
//! the listen address's index).
//!
//! This is the design of Node's sticky-session done in Rust: userspace dispatch is the fallback
//! for kernels without SK_REUSEPORT programs, and the baseline the benchmark compares kernel
//! dispatch against.

use std::{
    io::{self, IoSlice},
    net::IpAddr,
    os::fd::{AsFd, AsRawFd, OwnedFd, RawFd},
};

use nix::{
    fcntl::{FcntlArg, OFlag, fcntl},
    sys::socket::{
        AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, sendmsg, socketpair,
    },
};
use sticky_common::{
    DispatchConfig, Table,
    client::{Client, Pick, pick_slot},
};
pub use sticky_worker::STICKY_HANDOFF;
use tokio::io::unix::AsyncFd;

/// One Unix socket pair per slot: the loader's ends (to send on) and the workers' (inherited).
pub fn pairs(slots: u32) -> io::Result<(Vec<OwnedFd>, Vec<OwnedFd>)> {
    (0..slots)
        .map(|_| pair())
        .collect::<io::Result<Vec<_>>>()
        .map(|pairs| pairs.into_iter().unzip())
}

/// One slot's socket pair: the loader's end (non-blocking) and the worker's (blocking, as a
/// worker's inherited listening sockets are).
pub fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let flags = SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK;
    let (loader, worker) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, flags)?;
    set_blocking(&worker)?;
    Ok((loader, worker))
}

/// Clears `O_NONBLOCK` on `fd`'s open file (shared with every copy of the fd).
pub fn set_blocking(fd: &impl AsFd) -> io::Result<()> {
    let blocking = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?) - OFlag::O_NONBLOCK;
    fcntl(fd, FcntlArg::F_SETFL(blocking))?;
    Ok(())
}

/// The slot of client `ip`: the eBPF program's computation (every slot is live here).
pub fn slot_for(config: &DispatchConfig, table: &Table, ip: IpAddr) -> u32 {
    match pick_slot(&Client::from(ip), config, table, |_| true) {
        Pick::Hashed(slot) | Pick::Fallback { to: slot, .. } => slot,
        Pick::None => unreachable!("every slot is live"),
    }
}

/// Registers `owned` (a socket this process owns) with the runtime's event loop.
pub(crate) fn register<T: AsRawFd + Into<OwnedFd>>(owned: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: `owned` owns its fd, which stays open and registered once for the AsyncFd's life.
    unsafe { AsyncFd::register(owned) }.map_err(|err| io::Error::other(err.to_string()))
}

/// Sends `fd` over `end`, waiting while the worker's queue is full.
pub(crate) async fn pass(end: &AsyncFd<OwnedFd>, fd: RawFd, listener: u8) -> io::Result<()> {
    loop {
        let mut ready = end.writable().await?;
        match ready.try_io(|end| send_raw(end.as_raw_fd(), fd, listener)) {
            Ok(result) => return result,
            Err(_would_block) => continue,
        }
    }
}

/// One handoff message, now or `WouldBlock`: `fd` as SCM_RIGHTS and the listener index as the
/// payload byte.
pub(crate) fn send_raw(end: RawFd, fd: RawFd, listener: u8) -> io::Result<()> {
    let payload = [listener];
    let iov = [IoSlice::new(&payload)];
    let fds = [fd];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    sendmsg::<()>(end, &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None).map(drop).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_mapped_clients_hash_as_ipv4() {
        // 64 slots and 1000 addresses: a mapped path hashed any other way would agree with
        // the IPv4 one by chance about once in 64, never 1000 times.
        let slots: Vec<u32> = (0..64).collect();
        let config = DispatchConfig::new(5, 24, 64, 64);
        let table = crate::kernel::table::build(5, &slots);
        let mut used = std::collections::HashSet::new();
        for i in 0..1000u32 {
            let [a, b, c, d] = (0x0a00_0000 + i * 257).to_be_bytes();
            let v4 = IpAddr::from([a, b, c, d]);
            let slot = slot_for(&config, &table, v4);
            let mapped: IpAddr = format!("::ffff:{a}.{b}.{c}.{d}").parse().unwrap();
            let same_prefix: IpAddr = format!("::ffff:{a}.{b}.{c}.{}", d ^ 0xff).parse().unwrap();
            assert_eq!(slot_for(&config, &table, mapped), slot, "{v4}");
            assert_eq!(slot_for(&config, &table, same_prefix), slot, "{v4}'s /24");
            used.insert(slot);
        }
        assert!(used.len() > 32, "the clients hit only slots {used:?}");
    }
}
