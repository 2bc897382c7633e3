//! One `SO_REUSEPORT` socket per worker slot, for each listen address: a listening TCP socket,
//! or a bound UDP socket.
//!
//! The loader owns these sockets for its whole life: a worker that dies and comes back is handed
//! the same socket, so connections (or datagrams) queued while it was away are not lost.

use std::{collections::BTreeMap, io, os::fd::AsRawFd as _};

use socket2::{Domain, Protocol, Socket, Type};
use thiserror::Error;

use crate::config::{Listen, Transport};

/// Pending connections each listening socket can queue.
const BACKLOG: i32 = 4096;

/// The sockets of one listen address, index = worker slot; together one reuseport group.
#[derive(Debug)]
pub struct ListenerGroup {
    /// The address every socket is bound to, and its transport.
    pub listen: Listen,
    /// One socket per worker slot.
    pub sockets: Vec<Socket>,
}

/// Why a listen address could not be opened.
#[derive(Debug, Error)]
pub enum ListenError {
    /// Another socket holds the address.
    #[error(
        "listen address {0} is already in use by another socket: stop what listens there \
         (`sticky stop` if it is a sticky) or choose another --listen"
    )]
    InUse(Listen),
    /// Binding was refused.
    #[error("not allowed to listen on {0} (ports below 1024 need CAP_NET_BIND_SERVICE)")]
    Denied(Listen),
    /// The address is not one of this host's.
    #[error("listen address {0} is not an address of this host")]
    NotLocal(Listen),
    /// Any other socket error.
    #[error("cannot listen on {address}")]
    Socket {
        /// The listen address.
        address: Listen,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// The `count` sockets on `listen` that form one reuseport group: those in `adopted` (slot →
/// socket, inherited at start), and new ones for the other slots.
///
/// A `[::]` address also takes IPv4 clients (as v4-mapped addresses).
pub fn open_group(
    listen: Listen,
    count: u32,
    mut adopted: BTreeMap<u32, Socket>,
) -> Result<ListenerGroup, ListenError> {
    if adopted.is_empty() {
        ensure_free(listen)?;
    }
    let mut group = ListenerGroup { listen, sockets: Vec::new() };
    for slot in 0..count {
        let socket = match adopted.remove(&slot) {
            Some(socket) => socket,
            None => group.open_socket()?,
        };
        group.sockets.push(socket);
    }
    Ok(group)
}

impl ListenerGroup {
    /// Opens one more socket that joins this group (for a new or renewed slot).
    pub fn open_socket(&self) -> Result<Socket, ListenError> {
        open(self.listen).map_err(|err| classify(self.listen, err))
    }
}

/// Connections waiting in `socket`'s accept queue: TCP_INFO's `tcpi_unacked`, which for a
/// listening socket is its current accept backlog.
pub fn accept_backlog(socket: &Socket) -> io::Result<u32> {
    let mut info = std::mem::MaybeUninit::<libc::tcp_info>::zeroed();
    let mut length = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `length` bytes into `info`, a zeroed tcp_info.
    let ret = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut length,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: zero-initialised and (partly) filled by the kernel: every bit pattern is valid.
    Ok(unsafe { info.assume_init() }.tcpi_unacked)
}

/// The first datagram waiting on a UDP `socket`, as a fingerprint of its sender and first
/// bytes (peeked, not taken), or `None` when none waits. While a worker reads, the head
/// changes; a head that stays is a worker that does not.
pub fn head_datagram(socket: &Socket) -> io::Result<Option<u64>> {
    use std::hash::{Hash as _, Hasher as _};
    let mut buffer = [std::mem::MaybeUninit::<u8>::uninit(); 64];
    let flags = libc::MSG_PEEK | libc::MSG_DONTWAIT;
    match socket.recv_from_with_flags(&mut buffer, flags) {
        Ok((length, sender)) => {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            sender.as_socket().hash(&mut hasher);
            // SAFETY: the kernel initialised the first `length` bytes (at most the buffer).
            let bytes =
                unsafe { std::slice::from_raw_parts(buffer.as_ptr().cast::<u8>(), length.min(64)) };
            bytes.hash(&mut hasher);
            Ok(Some(hasher.finish()))
        }
        Err(err) if err.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(err) => Err(err),
    }
}

/// Fails if any socket is bound to `listen` already, with or without `SO_REUSEPORT`: joining
/// a stranger's reuseport group would split its traffic with ours.
fn ensure_free(listen: Listen) -> Result<(), ListenError> {
    let probe = new_socket(listen).map_err(|err| classify(listen, err))?;
    probe.bind(&listen.address.into()).map_err(|err| classify(listen, err))
}

fn new_socket(listen: Listen) -> io::Result<Socket> {
    let (kind, protocol) = match listen.transport {
        Transport::Tcp => (Type::STREAM, Protocol::TCP),
        Transport::Udp => (Type::DGRAM, Protocol::UDP),
    };
    let socket = Socket::new(Domain::for_address(listen.address), kind, Some(protocol))?;
    if listen.address.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    if listen.transport == Transport::Tcp {
        // Lets a restarted sticky bind while old connections sit in TIME_WAIT.
        socket.set_reuse_address(true)?;
    }
    Ok(socket)
}

fn open(listen: Listen) -> io::Result<Socket> {
    let socket = new_socket(listen)?;
    socket.set_reuse_port(true)?;
    socket.bind(&listen.address.into())?;
    if listen.transport == Transport::Tcp {
        socket.listen(BACKLOG)?;
    }
    Ok(socket)
}

fn classify(listen: Listen, source: io::Error) -> ListenError {
    match source.kind() {
        io::ErrorKind::AddrInUse => ListenError::InUse(listen),
        io::ErrorKind::PermissionDenied => ListenError::Denied(listen),
        io::ErrorKind::AddrNotAvailable => ListenError::NotLocal(listen),
        _ => ListenError::Socket { address: listen, source },
    }
}
