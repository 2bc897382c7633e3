//! The workers' readiness socket: systemd's notify protocol, with sticky as the manager.
//!
//! Every worker gets `NOTIFY_SOCKET` naming one abstract datagram socket of the loader. A
//! message is taken from a worker or from any descendant of it (as systemd's
//! `NotifyAccess=all`), told apart by the sender's pid, which the kernel attaches
//! (SCM_CREDENTIALS). A receiving thread reads the sender's ancestry from /proc at once, while a
//! short-lived sender (`systemd-notify --ready`) is still there, and hands it on with the
//! message.

use std::{
    fs,
    io::{self, IoSliceMut},
    os::{
        fd::{AsRawFd as _, OwnedFd, RawFd},
        linux::net::SocketAddrExt as _,
        unix::net::{SocketAddr, UnixDatagram},
    },
    thread,
};

use nix::{
    cmsg_space,
    sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt::PassCred},
};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tracing::debug;

/// One message a worker sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Notice {
    /// `READY=1`.
    Ready,
    /// `STATUS=…`.
    Status(String),
    /// `WATCHDOG=1`.
    Watchdog,
}

/// A datagram: the sender's pid and its ancestors (nearest first), and what it said.
#[derive(Debug)]
pub(crate) struct Notification {
    /// The sender, its parent, its grandparent, … (up to a few levels).
    pub(crate) lineage: Vec<u32>,
    /// The messages it carried.
    pub(crate) notices: Vec<Notice>,
}

/// How far up a sender's ancestry a worker is looked for.
const MAX_DEPTH: usize = 8;

/// The workers' readiness socket, as the supervisor holds it.
pub(crate) struct NotifySocket {
    /// The workers' `NOTIFY_SOCKET` value (`@sticky/<pid>/notify`).
    pub(crate) name: String,
    /// The socket's fd (owned by the receiving thread, open as long as the loader runs): what an
    /// upgrade hands over.
    pub(crate) fd: RawFd,
    /// What workers send, as it arrives.
    pub(crate) notifications: UnboundedReceiver<Notification>,
}

/// Binds the readiness socket and starts receiving on it.
pub(crate) fn bind() -> io::Result<NotifySocket> {
    let name = format!("sticky/{}/notify", std::process::id());
    let socket = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes())?)?;
    setsockopt(&socket, PassCred, &true)?;
    serve(format!("@{name}"), socket)
}

/// Receives on the readiness socket an earlier image of this loader bound as `name` (same pid)
/// and handed over as `socket`.
pub(crate) fn adopt(name: String, socket: OwnedFd) -> io::Result<NotifySocket> {
    serve(name, UnixDatagram::from(socket))
}

fn serve(name: String, socket: UnixDatagram) -> io::Result<NotifySocket> {
    let fd = socket.as_raw_fd();
    let (sender, notifications) = unbounded_channel();
    thread::Builder::new().name("worker-notify".into()).spawn(move || receive(&socket, &sender))?;
    Ok(NotifySocket { name, fd, notifications })
}

/// Receives datagrams until the loader exits (or nobody listens any more).
fn receive(socket: &UnixDatagram, sender: &UnboundedSender<Notification>) {
    let mut buffer = [0u8; 4096];
    loop {
        let mut cmsg = cmsg_space!(nix::sys::socket::UnixCredentials);
        let mut iov = [IoSliceMut::new(&mut buffer)];
        let received = recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        );
        let (pid, length) = match received {
            Ok(message) => {
                let pid = message.cmsgs().ok().into_iter().flatten().find_map(|c| match c {
                    ControlMessageOwned::ScmCredentials(credentials) => Some(credentials.pid()),
                    _ => None,
                });
                (pid, message.bytes)
            }
            Err(err) => {
                debug!(error = %err, "worker notify socket");
                continue;
            }
        };
        let Some(pid) = pid.filter(|&pid| pid > 0) else { continue };
        let notification =
            Notification { lineage: lineage(pid as u32), notices: parse(&buffer[..length]) };
        if sender.send(notification).is_err() {
            return;
        }
    }
}

/// `pid`, its parent, its grandparent, … as far as /proc tells (or [`MAX_DEPTH`]).
fn lineage(pid: u32) -> Vec<u32> {
    let mut lineage = vec![pid];
    while lineage.len() < MAX_DEPTH {
        let Some(parent) = parent_of(*lineage.last().expect("not empty")) else { break };
        if parent <= 1 {
            break;
        }
        lineage.push(parent);
    }
    lineage
}

/// The parent of `pid`, from /proc/PID/stat (the field after the command's closing paren).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// The notices in a datagram: `KEY=VALUE` lines; unknown keys are ignored.
fn parse(datagram: &[u8]) -> Vec<Notice> {
    String::from_utf8_lossy(datagram)
        .lines()
        .filter_map(|line| match line.split_once('=')? {
            ("READY", "1") => Some(Notice::Ready),
            ("WATCHDOG", "1") => Some(Notice::Watchdog),
            ("STATUS", status) => Some(Notice::Status(status.to_owned())),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_parsed_line_by_line() {
        let notices = parse(b"READY=1\nSTATUS=serving 3 rooms\nMAINPID=7\nWATCHDOG=1\n");
        let expected = [Notice::Ready, Notice::Status("serving 3 rooms".into()), Notice::Watchdog];
        assert_eq!(notices, expected);
        assert!(parse(b"READY=0").is_empty());
    }

    #[test]
    fn the_lineage_starts_with_the_sender_and_climbs() {
        let me = std::process::id();
        let lineage = lineage(me);
        assert_eq!(lineage[0], me);
        assert_eq!(lineage.get(1).copied(), parent_of(me).filter(|&p| p > 1));
    }

    #[tokio::test]
    async fn a_worker_message_arrives_with_its_sender() {
        let NotifySocket { name, mut notifications, .. } = bind().unwrap();
        let address = SocketAddr::from_abstract_name(&name.as_bytes()[1..]).unwrap();
        UnixDatagram::unbound().unwrap().send_to_addr(b"READY=1", &address).unwrap();
        let notification = notifications.recv().await.unwrap();
        assert_eq!(notification.lineage[0], std::process::id());
        assert_eq!(notification.notices, [Notice::Ready]);
    }
}
