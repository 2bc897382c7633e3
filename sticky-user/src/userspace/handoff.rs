//! Userspace dispatch (`--dispatch userspace`): the loader itself accepts every connection,
//! picks the client's slot with the same table and hash as the eBPF program, and passes the
//! accepted socket to that slot's worker over a Unix socket (SCM_RIGHTS).
//!
//! The protocol, for workers: with `STICKY_HANDOFF=1`, fd 3 (`LISTEN_FDS=1`,
//! `LISTEN_FDNAMES=sticky-handoff`) is a `SOCK_SEQPACKET` Unix socket. Each message carries one
//! accepted TCP connection as an SCM_RIGHTS fd, and one byte: the index of the listen address
//! it came in on. The worker side (`handoff_socket`, `receive`) is in the `sticky-worker` crate.
//! The loader keeps both ends of each slot's socket pair, so connections passed while a worker
//! restarts wait for the next one.
//!
//! This is the design of Node's sticky-session done in Rust: a fallback for kernels without
//! SK_REUSEPORT programs, and the baseline the benchmark compares kernel dispatch against.

use std::{
    io::{self, IoSlice},
    net::IpAddr,
    os::fd::{AsRawFd, OwnedFd, RawFd},
    sync::Arc,
};

use nix::sys::socket::{
    AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, sendmsg, socketpair,
};
use sticky_common::{
    DispatchConfig, Table,
    client::{Client, Pick, pick_slot},
};
pub use sticky_worker::STICKY_HANDOFF;
use tokio::{io::unix::AsyncFd, net::TcpListener, sync::Semaphore};
use tracing::warn;

use crate::{accept::AcceptBackoff, limits::HANDOFF_PENDING};

/// One Unix socket pair per slot: the loader's ends (to send on) and the workers' (inherited).
pub fn pairs(slots: u32) -> io::Result<(Vec<OwnedFd>, Vec<OwnedFd>)> {
    let mut loader = Vec::new();
    let mut workers = Vec::new();
    for _ in 0..slots {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        )?;
        loader.push(ours);
        workers.push(theirs);
    }
    Ok((loader, workers))
}

/// The slot of client `ip`: the eBPF program's computation (every slot is live here).
pub fn slot_for(config: &DispatchConfig, table: &Table, ip: IpAddr) -> u32 {
    match pick_slot(&Client::from(ip), config, table, |_| true) {
        Pick::Hashed(slot) | Pick::Fallback(slot) => slot,
        Pick::None => unreachable!("every slot is live"),
    }
}

/// Registers `owned` (a socket this process owns) with the runtime's event loop.
pub(crate) fn register<T: AsRawFd + Into<OwnedFd>>(owned: T) -> io::Result<AsyncFd<T>> {
    // SAFETY: `owned` owns its fd, which stays open and registered once for the AsyncFd's life.
    unsafe { AsyncFd::register(owned) }.map_err(|err| io::Error::other(err.to_string()))
}

/// Accepts on every listener and passes each connection to its client's slot, forever.
pub async fn master(
    listeners: Vec<TcpListener>,
    loader_ends: Vec<OwnedFd>,
    config: DispatchConfig,
    table: Box<Table>,
) -> io::Result<()> {
    let ends: Arc<Vec<AsyncFd<OwnedFd>>> =
        Arc::new(loader_ends.into_iter().map(register).collect::<io::Result<_>>()?);
    let table = Arc::new(table);
    let pending = Arc::new(Semaphore::new(HANDOFF_PENDING));
    let mut accept_loops = tokio::task::JoinSet::new();
    for (index, listener) in listeners.into_iter().enumerate() {
        let (ends, table, pending) = (ends.clone(), table.clone(), pending.clone());
        accept_loops.spawn(async move {
            let mut backoff = AcceptBackoff::new();
            loop {
                let accepted = backoff.accepted("userspace dispatch", listener.accept().await);
                let Some((stream, peer)) = accepted.await else { continue };
                let slot = slot_for(&config, &table, peer.ip()) as usize;
                match send_raw(ends[slot].as_raw_fd(), stream.as_raw_fd(), index as u8) {
                    Ok(()) => {}
                    // The worker's queue is full (it is restarting, or slow): wait for room on
                    // the side, so one slot never holds up the others' clients; at most
                    // HANDOFF_PENDING connections wait, past that one is closed.
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                        let Ok(permit) = pending.clone().try_acquire_owned() else {
                            warn!(slot, "too many connections wait for their worker: closed one");
                            continue;
                        };
                        let ends = ends.clone();
                        tokio::spawn(async move {
                            let _permit = permit;
                            if let Err(err) =
                                pass(&ends[slot], stream.as_raw_fd(), index as u8).await
                            {
                                warn!(slot, error = %err, "cannot pass a connection to its worker");
                            }
                        });
                    }
                    Err(err) => warn!(slot, error = %err, "cannot pass a connection to its worker"),
                }
            }
        });
    }
    while accept_loops.join_next().await.is_some() {}
    Ok(())
}

/// Sends `fd` over `end`, waiting while the worker's queue is full.
async fn pass(end: &AsyncFd<OwnedFd>, fd: RawFd, listener: u8) -> io::Result<()> {
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
fn send_raw(end: RawFd, fd: RawFd, listener: u8) -> io::Result<()> {
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
