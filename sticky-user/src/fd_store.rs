//! Listening sockets that outlive the loader: kept in systemd's file descriptor store, and
//! taken back at start.
//!
//! With `FileDescriptorStoreMax=` in the unit, systemd sets `$FDSTORE` (from 254 on; the unit
//! sticky writes sets it for older versions) and sticky stores every listening socket there,
//! named after its slot (`sticky-slot-N`). After `systemctl restart`, or a crash with
//! `Restart=`, systemd hands them back (`LISTEN_FDS`, `LISTEN_FDNAMES`) and sticky adopts them:
//! the sockets never closed, so no connection was refused, and those that arrived meanwhile
//! wait in their slot's queue, where the still attached program put them by client.
//!
//! A socket can be in one program's socket array only, and the dead loader's program (still
//! attached, so still dispatching) holds them in its own: sticky stores that array too
//! (`sticky-map-ADDRESS`, not polled), and a restart moves each socket from the old array to
//! the new one, slot by slot, before it attaches its own program in place of the old one.
//!
//! Sockets a `.socket` unit binds (socket activation) arrive the same way under other names,
//! and fill the lowest free slots of their address.

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    os::fd::{AsFd as _, FromRawFd as _, OwnedFd},
};

use socket2::{Protocol, Socket, Type};
use tracing::{info, warn};

use crate::{
    config::{Listen, Transport},
    endpoints::systemd,
    listeners::ListenerGroup,
};

/// The fd-store name of slot `slot`'s sockets (one per listen address).
pub fn slot_name(slot: u32) -> String {
    format!("sticky-slot-{slot}")
}

/// The fd-store name of the socket array of the program serving `listen`.
pub fn map_name(listen: Listen) -> String {
    let address = listen.address.to_string().replace(':', "_");
    match listen.transport {
        Transport::Tcp => format!("sticky-map-{address}"),
        Transport::Udp => format!("sticky-map-udp-{address}"),
    }
}

/// The listening sockets (and socket arrays) the service manager handed to this process at
/// start.
#[derive(Debug, Default)]
pub struct Inherited {
    sockets: Vec<InheritedSocket>,
    /// Socket arrays of an earlier loader's programs, by store name.
    maps: Vec<(String, OwnedFd)>,
}

#[derive(Debug)]
struct InheritedSocket {
    name: String,
    address: Listen,
    socket: Socket,
    /// The socket's inode: the same socket may arrive twice (from a `.socket` unit and from
    /// the fd store).
    inode: u64,
}

/// The inherited sockets, sorted: per listen address, each slot's socket.
#[derive(Debug, Default)]
pub struct Adopted {
    /// Per listen address (in the configuration's order), slot → socket.
    pub by_address: Vec<BTreeMap<u32, Socket>>,
    /// Per listen address, the socket array of the program an earlier loader attached.
    pub old_maps: Vec<Option<OwnedFd>>,
    /// Store names some of whose sockets no longer fit (closed): systemd should forget them.
    pub forget: BTreeSet<String>,
}

impl Inherited {
    /// Takes the fds systemd passed (`LISTEN_FDS`, `LISTEN_FDNAMES`, for this pid) and unsets
    /// those variables. An fd that is neither a listening TCP socket nor a bound UDP one is
    /// closed, with a warning.
    ///
    /// # Safety
    ///
    /// Call before any thread starts (it changes the environment), and before anything else
    /// takes the fds from 3 on.
    pub unsafe fn from_environment() -> io::Result<Self> {
        // SAFETY: guaranteed by the caller.
        let fds = unsafe { sd_notify::listen_fds_with_names_and_unset_env() }?;
        let (mut sockets, mut maps) = (Vec::new(), Vec::new());
        for (fd, name) in fds {
            // SAFETY: systemd passed this fd to this process; nothing else owns it.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            if name.starts_with("sticky-map-") {
                maps.push((name, owned));
                continue;
            }
            match listening(owned) {
                Ok((socket, address)) => {
                    let inode = nix::sys::stat::fstat(&socket).map_or(0, |stat| stat.st_ino);
                    sockets.push(InheritedSocket { name, address, socket, inode });
                }
                Err(reason) => warn!(fd, name, "ignoring an inherited fd: {reason}"),
            }
        }
        Ok(Self { sockets, maps })
    }

    /// Whether nothing was inherited.
    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// Sorts the sockets into `slots` slots of each of `listen`: a socket named after its
    /// slot goes back to it, another fills its address's lowest free slot. Sockets of an
    /// address or slot the configuration no longer has are closed.
    pub fn adopt(self, listen: &[Listen], slots: u32) -> Adopted {
        let mut adopted = Adopted {
            by_address: listen.iter().map(|_| BTreeMap::new()).collect(),
            old_maps: listen.iter().map(|_| None).collect(),
            forget: BTreeSet::new(),
        };
        for (name, map) in self.maps {
            match listen.iter().position(|&address| map_name(address) == name) {
                Some(position) => adopted.old_maps[position] = Some(map),
                None => {
                    adopted.forget.insert(name);
                }
            }
        }
        let (named, unnamed): (Vec<_>, Vec<_>) =
            self.sockets.into_iter().partition(|s| slot_of(&s.name).is_some());
        let mut seen = BTreeSet::new();
        for inherited in named.into_iter().chain(unnamed) {
            if !seen.insert(inherited.inode) {
                continue;
            }
            let position = listen.iter().position(|&address| address == inherited.address);
            let Some(sockets) = position.map(|p| &mut adopted.by_address[p]) else {
                warn!(address = %inherited.address, "closing an inherited socket: not a listen address");
                adopted.forget.extend(slot_of(&inherited.name).map(slot_name));
                continue;
            };
            let slot = slot_of(&inherited.name)
                .filter(|slot| !sockets.contains_key(slot))
                .or_else(|| (0..slots).find(|slot| !sockets.contains_key(slot)));
            match slot.filter(|&slot| slot < slots) {
                Some(slot) => {
                    sockets.insert(slot, inherited.socket);
                }
                None => {
                    warn!(address = %inherited.address, name = inherited.name, "closing an inherited socket: no slot for it");
                    adopted.forget.extend(slot_of(&inherited.name).map(slot_name));
                }
            }
        }
        let count: usize = adopted.by_address.iter().map(BTreeMap::len).sum();
        let maps = adopted.old_maps.iter().flatten().count();
        if count + maps > 0 {
            info!(sockets = count, maps, "adopted listening sockets from the service manager");
        }
        adopted
    }
}

/// The slot a store name names.
fn slot_of(name: &str) -> Option<u32> {
    name.strip_prefix("sticky-slot-")?.parse().ok()
}

/// The socket and its listen address, if it is a listening TCP socket or a bound UDP one.
fn listening(fd: OwnedFd) -> Result<(Socket, Listen), String> {
    let socket = Socket::from(fd);
    let (kind, protocol) = (socket.r#type().ok(), socket.protocol().ok().flatten());
    let transport = match (kind, protocol) {
        (Some(Type::STREAM), Some(Protocol::TCP)) if socket.is_listener().unwrap_or(false) => {
            Transport::Tcp
        }
        (Some(Type::DGRAM), Some(Protocol::UDP)) => Transport::Udp,
        _ => return Err("not a listening TCP socket or a UDP socket".into()),
    };
    let address = socket.local_addr().ok().and_then(|address| address.as_socket());
    match address {
        Some(address) if address.port() != 0 => Ok((socket, Listen { transport, address })),
        _ => Err("not bound to an address".into()),
    }
}

/// Stores slot `slot`'s sockets (of every group) in systemd's fd store, if it keeps one.
pub fn keep(groups: &[ListenerGroup], slot: u32) {
    if !systemd::fd_store() {
        return;
    }
    let fds = groups
        .iter()
        .filter_map(|group| group.sockets.get(slot as usize))
        .filter_map(|socket| socket.as_fd().try_clone_to_owned().ok())
        .collect();
    systemd::store(slot_name(slot), fds);
}

/// Stores the socket array of the program serving `listen`, replacing the one stored before.
pub fn keep_map(listen: Listen, map: std::os::fd::BorrowedFd<'_>) {
    if !systemd::fd_store() {
        return;
    }
    systemd::forget(map_name(listen));
    if let Ok(map) = map.try_clone_to_owned() {
        // A map is not pollable as systemd expects of a stored fd.
        systemd::store_unpolled(map_name(listen), vec![map]);
    }
}

/// Tells systemd to forget the sockets stored under `name`.
pub fn forget(name: String) {
    if systemd::fd_store() {
        systemd::forget(name);
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    fn inherited(name: &str, socket: &TcpListener) -> InheritedSocket {
        let socket = Socket::from(socket.try_clone().unwrap());
        let inode = nix::sys::stat::fstat(&socket).unwrap().st_ino;
        let address = Listen::tcp(socket.local_addr().unwrap().as_socket().unwrap());
        InheritedSocket { name: name.into(), address, socket, inode }
    }

    #[test]
    fn sockets_go_back_to_their_slots_and_what_no_longer_fits_is_forgotten() {
        let listener = || TcpListener::bind("127.0.0.1:0").unwrap();
        let (slot1, activated, stranger, beyond) = (listener(), listener(), listener(), listener());
        // All but the stranger as if on one address: the test's sockets have distinct ports.
        let address = Listen::tcp(slot1.local_addr().unwrap());
        let mut sockets = vec![
            inherited("web.socket", &activated),
            inherited("sticky-slot-1", &slot1),
            // The same socket again (a .socket unit's socket, also in the store).
            inherited("sticky-slot-1", &slot1),
            inherited("sticky-slot-5", &beyond),
            inherited("sticky-slot-0", &stranger),
        ];
        for socket in &mut sockets[..4] {
            socket.address = address;
        }
        let inherited = Inherited { sockets, maps: Vec::new() };
        let adopted = inherited.adopt(&[address], 3);
        let slots: Vec<u32> = adopted.by_address[0].keys().copied().collect();
        assert_eq!(slots, [0, 1], "slot 1 by name, the activated socket in the lowest free slot");
        let port = |socket: &Socket| socket.local_addr().unwrap().as_socket().unwrap().port();
        let local = |socket: &TcpListener| socket.local_addr().unwrap().port();
        assert_eq!(port(&adopted.by_address[0][&1]), local(&slot1));
        assert_eq!(port(&adopted.by_address[0][&0]), local(&activated));
        let forget: Vec<&str> = adopted.forget.iter().map(String::as_str).collect();
        assert_eq!(forget, ["sticky-slot-0", "sticky-slot-5"]);
    }
}
