//! One `SO_REUSEPORT` listening socket per worker slot, for each listen address.
//!
//! The loader owns these sockets for its whole life: a worker that dies and comes back is handed
//! the same socket, so connections queued while it was away are not lost.

use std::{
    collections::BTreeMap,
    io,
    net::{SocketAddr, TcpListener},
};

use socket2::{Domain, Protocol, Socket, Type};
use thiserror::Error;

/// Pending connections each listening socket can queue.
const BACKLOG: i32 = 4096;

/// The listening sockets of one address, index = worker slot; together one reuseport group.
#[derive(Debug)]
pub struct ListenerGroup {
    /// The address every socket is bound to.
    pub address: SocketAddr,
    /// One listening socket per worker slot.
    pub sockets: Vec<TcpListener>,
}

/// Why a listen address could not be opened.
#[derive(Debug, Error)]
pub enum ListenError {
    /// Another socket holds the address.
    #[error(
        "listen address {0} is already in use by another socket: stop what listens there \
         (`sticky stop` if it is a sticky) or choose another --listen"
    )]
    InUse(SocketAddr),
    /// Binding was refused.
    #[error("not allowed to listen on {0} (ports below 1024 need CAP_NET_BIND_SERVICE)")]
    Denied(SocketAddr),
    /// The address is not one of this host's.
    #[error("listen address {0} is not an address of this host")]
    NotLocal(SocketAddr),
    /// Any other socket error.
    #[error("cannot listen on {address}")]
    Socket {
        /// The listen address.
        address: SocketAddr,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// The `count` listening sockets on `address` that form one reuseport group: those in
/// `adopted` (slot → socket, inherited at start), and new ones for the other slots.
///
/// A `[::]` address also accepts IPv4 clients (as v4-mapped addresses).
pub fn open_group(
    address: SocketAddr,
    count: u32,
    mut adopted: BTreeMap<u32, TcpListener>,
) -> Result<ListenerGroup, ListenError> {
    if adopted.is_empty() {
        ensure_free(address)?;
    }
    let mut group = ListenerGroup { address, sockets: Vec::new() };
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
    /// Opens one more listening socket that joins this group (for a new or renewed slot).
    pub fn open_socket(&self) -> Result<TcpListener, ListenError> {
        listen(self.address).map_err(|err| classify(self.address, err))
    }
}

/// Connections waiting in `socket`'s accept queue: TCP_INFO's `tcpi_unacked`, which for a
/// listening socket is its current accept backlog.
pub fn accept_backlog(socket: &TcpListener) -> io::Result<u32> {
    let mut info = std::mem::MaybeUninit::<libc::tcp_info>::zeroed();
    let mut length = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `length` bytes into `info`, a zeroed tcp_info.
    let ret = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(socket),
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

/// Fails if any socket listens on `address` already, with or without `SO_REUSEPORT`: joining a
/// stranger's reuseport group would split its traffic with ours.
fn ensure_free(address: SocketAddr) -> Result<(), ListenError> {
    let probe = new_socket(address).map_err(|err| classify(address, err))?;
    probe.bind(&address.into()).map_err(|err| classify(address, err))
}

fn new_socket(address: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, Some(Protocol::TCP))?;
    if address.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    // Lets a restarted sticky bind while old connections sit in TIME_WAIT.
    socket.set_reuse_address(true)?;
    Ok(socket)
}

fn listen(address: SocketAddr) -> io::Result<TcpListener> {
    let socket = new_socket(address)?;
    socket.set_reuse_port(true)?;
    socket.bind(&address.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

fn classify(address: SocketAddr, source: io::Error) -> ListenError {
    match source.kind() {
        io::ErrorKind::AddrInUse => ListenError::InUse(address),
        io::ErrorKind::PermissionDenied => ListenError::Denied(address),
        io::ErrorKind::AddrNotAvailable => ListenError::NotLocal(address),
        _ => ListenError::Socket { address, source },
    }
}
