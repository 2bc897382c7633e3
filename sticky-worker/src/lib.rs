//! The worker side of sticky: what a worker process needs, with std and `nix` only.
//!
//! sticky starts worker `i` of `N` with systemd's socket-activation protocol:
//!
//! - its sockets at fd 3, 4, … ([`LISTEN_FDS_START`] onwards), one per listen address: a
//!   listening TCP socket, or a bound UDP socket for `--listen udp://ADDR:PORT`;
//! - `LISTEN_FDS`: how many; `LISTEN_PID`: the worker's own pid; `LISTEN_FDNAMES`: their names
//!   (`sticky-<port>` for TCP, `udp-<port>` for UDP), colon-separated;
//! - `STICKY_WORKER=i` (its slot) and `STICKY_WORKERS=N`.
//!
//! [`listeners`] checks `LISTEN_PID` and takes the sockets as [`TcpListener`]s; [`slot`] reads
//! the slot. Any program that speaks this protocol can be a worker.
//!
//! When the loader accepts connections itself and passes them on, it sets `STICKY_HANDOFF=1`
//! and one inherited fd is named `sticky-handoff` in `LISTEN_FDNAMES`: a `SOCK_SEQPACKET` Unix
//! socket. Under `sticky run --dispatch userspace` it is the only one (fd 3); with
//! `--trusted-proxy` it comes after the listening sockets, and carries the trusted proxies'
//! connections. Each message on it carries one accepted TCP connection as an SCM_RIGHTS fd, and
//! one byte: the index of the listen address it came in on. Nothing of the connection has been
//! read. [`inherited`] takes the listeners and that socket; [`receive`] takes one connection
//! from it.
//!
//! Readiness, as under systemd: [`notify`] sends a message such as `READY=1` to the
//! `NOTIFY_SOCKET` sticky gives every worker; [`ready`] is the usual one. With
//! `sticky run --ready notify`, a worker counts as ready (and a rolling restart moves on) only
//! once it sends `READY=1`.
//!
//! With the `quinn` feature, [`quic`] makes a QUIC worker's connection IDs name its slot, as
//! `sticky run --quic` routes by them.
//!
//! ```no_run
//! let (slot, slots) = sticky_worker::slot()?;
//! for listener in sticky_worker::listeners()? {
//!     // serve `listener` (std::net::TcpListener) as worker `slot` of `slots`
//! }
//! sticky_worker::ready()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

#[cfg(feature = "quinn")]
pub mod quic;

use std::{
    env,
    io::{self, IoSliceMut},
    net::{TcpListener, TcpStream, UdpSocket},
    os::{
        fd::{BorrowedFd, FromRawFd as _, OwnedFd, RawFd},
        linux::net::SocketAddrExt as _,
        unix::net::{SocketAddr, UnixDatagram},
    },
    sync::atomic::{AtomicBool, Ordering},
};

use nix::{
    cmsg_space,
    errno::Errno,
    fcntl::{FcntlArg, FdFlag, fcntl},
    sys::socket::{ControlMessageOwned, MsgFlags, SockType, getsockopt, recvmsg, sockopt},
};
use thiserror::Error;

/// The first inherited fd.
pub const LISTEN_FDS_START: RawFd = 3;
/// Number of inherited listening sockets.
pub const LISTEN_FDS: &str = "LISTEN_FDS";
/// The pid the sockets are meant for.
pub const LISTEN_PID: &str = "LISTEN_PID";
/// Colon-separated names of the inherited sockets.
pub const LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";
/// The worker's slot, `0..STICKY_WORKERS`.
pub const STICKY_WORKER: &str = "STICKY_WORKER";
/// The number of worker slots.
pub const STICKY_WORKERS: &str = "STICKY_WORKERS";
/// `1` when one inherited fd is a handoff socket (named [`HANDOFF_NAME`]).
pub const STICKY_HANDOFF: &str = "STICKY_HANDOFF";
/// The handoff socket's name in `LISTEN_FDNAMES`.
pub const HANDOFF_NAME: &str = "sticky-handoff";
/// The datagram socket a worker reports readiness to (`READY=1`, `STATUS=…`, `WATCHDOG=1`), as
/// under systemd; a leading `@` names an abstract socket.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";
/// With `sticky run --worker-watchdog`, the microseconds within which a worker must send
/// `WATCHDOG=1` again.
pub const WATCHDOG_USEC: &str = "WATCHDOG_USEC";
/// The pid `WATCHDOG_USEC` is meant for.
pub const WATCHDOG_PID: &str = "WATCHDOG_PID";

/// Why the inherited sockets cannot be used.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WorkerError {
    /// A protocol variable is missing (not started by sticky or systemd).
    #[error("{0} is not set: start this worker with `sticky run -- CMD`")]
    Unset(&'static str),
    /// A protocol variable does not hold a number.
    #[error("{name} is not a number: '{value}'")]
    NotANumber {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
    },
    /// An fd the protocol promises is not open.
    #[error("LISTEN_FDS promises fd {0}, but it is not open")]
    NotOpen(RawFd),
    /// The sockets were meant for another process.
    #[error("LISTEN_PID is {0}, not this process ({1})")]
    OtherProcess(u32, u32),
    /// The inherited fds were taken by an earlier call.
    #[error("the inherited sockets were already taken")]
    Taken,
}

/// This worker's slot and the number of slots, from `STICKY_WORKER` and `STICKY_WORKERS`.
pub fn slot() -> Result<(u32, u32), WorkerError> {
    Ok((number(STICKY_WORKER)?, number(STICKY_WORKERS)?))
}

/// What a worker inherits from sticky.
#[derive(Debug)]
pub struct Inherited {
    /// The listening sockets, one per TCP listen address (none under `--dispatch userspace`).
    pub listeners: Vec<TcpListener>,
    /// The UDP sockets, one per UDP listen address. Answer each datagram from the socket it
    /// came in on (`send_to` the sender). Never `connect` one: the socket is shared with the
    /// loader and every later worker of the slot, and (Linux 6.18) a connected socket leaves
    /// its reuseport group for good, so the slot's other clients fall back to another slot
    /// until sticky stops (docs/udp.md).
    pub udp: Vec<UdpSocket>,
    /// The socket the loader passes connections over, if it does ([`receive`] takes one).
    pub handoff: Option<OwnedFd>,
}

/// Takes every fd this process inherited (fd 3 onwards), after checking that `LISTEN_PID`
/// names this process: the listening sockets, and the handoff socket (the fd named
/// [`HANDOFF_NAME`]; fd 3 with `STICKY_HANDOFF=1` and no names). The fds become owned by the
/// result, so only the first call (of this, [`listeners`] or [`handoff_socket`]) gets them; a
/// later one fails with [`WorkerError::Taken`].
pub fn inherited() -> Result<Inherited, WorkerError> {
    check_pid()?;
    let count: RawFd = number(LISTEN_FDS)?;
    let end = LISTEN_FDS_START
        .checked_add(count)
        .filter(|_| count >= 0)
        .ok_or_else(|| WorkerError::NotANumber { name: LISTEN_FDS, value: count.to_string() })?;
    take()?;
    let fds = LISTEN_FDS_START..end;
    for fd in fds.clone() {
        close_on_exec(fd)?;
    }
    let names = env::var(LISTEN_FDNAMES).unwrap_or_default();
    let mut names = names.split(':');
    let unnamed_handoff = env::var(STICKY_HANDOFF).as_deref() == Ok("1");
    let mut inherited = Inherited { listeners: Vec::new(), udp: Vec::new(), handoff: None };
    for fd in fds {
        let handoff = match names.next() {
            Some(name) if !name.is_empty() => name == HANDOFF_NAME,
            _ => unnamed_handoff && fd == LISTEN_FDS_START,
        };
        // SAFETY: the protocol hands these open fds to this process, and this function is
        // their only taker.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        if handoff {
            inherited.handoff = Some(owned);
        } else if getsockopt(&owned, sockopt::SockType) == Ok(SockType::Datagram) {
            inherited.udp.push(UdpSocket::from(owned));
        } else {
            inherited.listeners.push(TcpListener::from(owned));
        }
    }
    Ok(inherited)
}

/// The listening sockets of [`inherited`]. A handoff socket is closed: a worker that sticky
/// may pass connections to (`--dispatch userspace`, `--trusted-proxy`) takes [`inherited`].
pub fn listeners() -> Result<Vec<TcpListener>, WorkerError> {
    inherited().map(|inherited| inherited.listeners)
}

/// The handoff socket of [`inherited`], if there is one; the listeners are closed.
pub fn handoff_socket() -> Result<Option<OwnedFd>, WorkerError> {
    inherited().map(|inherited| inherited.handoff)
}

/// Marks the inherited fds as taken; fails if they were already.
fn take() -> Result<(), WorkerError> {
    static TAKEN: AtomicBool = AtomicBool::new(false);
    if TAKEN.swap(true, Ordering::SeqCst) { Err(WorkerError::Taken) } else { Ok(()) }
}

/// Receives one connection from the handoff socket `end` (`WouldBlock` when none is ready on a
/// non-blocking socket, `UnexpectedEof` when the loader has closed it). The listener-index byte
/// is read and dropped.
pub fn receive(end: RawFd) -> io::Result<TcpStream> {
    let mut payload = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut payload)];
    let mut space = cmsg_space!([RawFd; 1]);
    let message = match recvmsg::<()>(end, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC) {
        Ok(message) => message,
        Err(Errno::EAGAIN) => return Err(io::ErrorKind::WouldBlock.into()),
        Err(err) => return Err(err.into()),
    };
    if message.bytes == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the loader closed the handoff socket",
        ));
    }
    for cmsg in message.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg
            && let Some(&fd) = fds.first()
        {
            // SAFETY: the kernel just installed this fd in our table for us.
            return Ok(unsafe { TcpStream::from_raw_fd(fd) });
        }
    }
    Err(io::Error::other("a handoff message without a connection"))
}

/// Fails unless `LISTEN_PID` names this process.
fn check_pid() -> Result<(), WorkerError> {
    let pid: u32 = number(LISTEN_PID)?;
    if pid != std::process::id() {
        return Err(WorkerError::OtherProcess(pid, std::process::id()));
    }
    Ok(())
}

/// Sets `FD_CLOEXEC` on inherited `fd`, like sd_listen_fds: the sockets are not passed on to
/// this worker's own children. Fails if `fd` is not open.
fn close_on_exec(fd: RawFd) -> Result<(), WorkerError> {
    // SAFETY: the borrow lives for this one fcntl call only; the protocol promises `fd` is open
    // and, if it is not, fcntl fails with EBADF.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    match fcntl(borrowed, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)) {
        Ok(_) => Ok(()),
        Err(_) => Err(WorkerError::NotOpen(fd)),
    }
}

/// Sends `message` (`READY=1`, `STATUS=…`, `WATCHDOG=1`, several separated by newlines) to
/// `NOTIFY_SOCKET`. Returns whether there was a socket to send to.
pub fn notify(message: &str) -> io::Result<bool> {
    let Some(path) = env::var_os(NOTIFY_SOCKET) else { return Ok(false) };
    let path = path.to_string_lossy();
    let address = match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
        None => SocketAddr::from_pathname(path.as_ref())?,
    };
    UnixDatagram::unbound()?.send_to_addr(message.as_bytes(), &address)?;
    Ok(true)
}

/// With a worker watchdog (`WATCHDOG_USEC` meant for this process): how often `WATCHDOG=1`
/// must be sent at the least. Sending it at half that is the usual rhythm.
pub fn watchdog_interval() -> Option<std::time::Duration> {
    let pid: u32 = number(WATCHDOG_PID).ok()?;
    let usec: u64 = number(WATCHDOG_USEC).ok()?;
    (pid == std::process::id()).then(|| std::time::Duration::from_micros(usec))
}

/// Tells sticky this worker is ready: [`notify`] with `READY=1`.
pub fn ready() -> io::Result<bool> {
    notify("READY=1")
}

fn number<T: std::str::FromStr>(name: &'static str) -> Result<T, WorkerError> {
    let value = env::var(name).map_err(|_| WorkerError::Unset(name))?;
    value.trim().parse().map_err(|_| WorkerError::NotANumber { name, value })
}

#[cfg(test)]
mod tests {
    use std::{
        io::{IoSlice, Read as _, Write as _},
        os::fd::AsRawFd as _,
    };

    use nix::sys::socket::{
        AddressFamily, ControlMessage, SockFlag, SockType, sendmsg, shutdown, socketpair,
    };

    use super::*;

    fn pair() -> (OwnedFd, OwnedFd) {
        socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_NONBLOCK).unwrap()
    }

    #[test]
    fn receive_takes_the_passed_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        let (loader, worker) = pair();
        let fds = [accepted.as_raw_fd()];
        let cmsg = [ControlMessage::ScmRights(&fds)];
        sendmsg::<()>(loader.as_raw_fd(), &[IoSlice::new(&[1])], &cmsg, MsgFlags::empty(), None)
            .unwrap();
        drop(accepted);

        let mut received = receive(worker.as_raw_fd()).unwrap();
        assert_eq!(received.peer_addr().unwrap(), client.local_addr().unwrap());
        received.write_all(b"hi").unwrap();
        let mut answer = [0u8; 2];
        client.read_exact(&mut answer).unwrap();
        assert_eq!(&answer, b"hi");
    }

    #[test]
    fn receive_reports_an_empty_or_closed_socket() {
        let (loader, worker) = pair();
        let empty = receive(worker.as_raw_fd()).unwrap_err();
        assert_eq!(empty.kind(), io::ErrorKind::WouldBlock);
        shutdown(loader.as_raw_fd(), nix::sys::socket::Shutdown::Write).unwrap();
        let closed = receive(worker.as_raw_fd()).unwrap_err();
        assert_eq!(closed.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn receive_rejects_a_message_without_a_connection() {
        let (loader, worker) = pair();
        sendmsg::<()>(loader.as_raw_fd(), &[IoSlice::new(&[0])], &[], MsgFlags::empty(), None)
            .unwrap();
        let err = receive(worker.as_raw_fd()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::Other);
    }
}
