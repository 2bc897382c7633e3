//! The workers' readiness sockets: systemd's notify protocol, with sticky as the manager.
//!
//! Every worker start gets a datagram socket of its own (an [`Inbox`]), a file in the loader's
//! notify directory ([`NotifyDir`]) that its `NOTIFY_SOCKET` names. Any datagram on it is that
//! worker's: sent by the worker or by any process it started (as systemd's `NotifyAccess=all`),
//! even one that has exited by the time it is read, such as `systemd-notify --ready`.
//!
//! Who can send. The directory belongs to the loader's uid and nobody else may write to it, so
//! nobody else can create, replace or take a name in it. Each socket file has mode 0600 and,
//! when the workers run as another user, a POSIX ACL entry granting that user (only) write
//! permission, which connecting and sending need. The loader sets that ACL as the file's owner,
//! which needs neither CAP_CHOWN nor CAP_FOWNER. As defence in depth, every datagram carries its
//! sender's credentials (SCM_CREDENTIALS), and one whose uid is neither the workers' nor root's
//! is dropped. Workers of all slots share one user, so one worker can reach another's socket,
//! as it can signal or trace it.
//!
//! Bounds. A datagram longer than [`inbox::MAX_DATAGRAM`] bytes is ignored, and so is one with
//! file descriptors, which the kernel drops (that releases `systemd-notify`'s `BARRIER=1`).
//! Each socket is read by a task of its own, at most [`inbox::MAX_PER_SECOND`] datagrams a
//! second; the rest wait in the kernel's queue of that socket (`net.unix.max_dgram_qlen`
//! datagrams, charged to their sender), so a flood on one socket costs the loader little and
//! delays no other worker.

mod access;
mod dir;
mod inbox;

pub(crate) use self::{
    access::Identity,
    dir::{NotifyDir, NotifyDirError, location},
    inbox::{Inbox, receive},
};

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
}
