//! One worker's readiness socket, and the task that reads it for as long as the worker lives.

use std::{
    fmt, fs,
    io::{self, IoSliceMut},
    os::{
        fd::{AsRawFd, OwnedFd, RawFd},
        unix::net::UnixDatagram,
    },
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use nix::{
    cmsg_space,
    sys::socket::{ControlMessageOwned, MsgFlags, UnixCredentials, recvmsg},
};
use tokio::{
    io::{Interest, unix::AsyncFd},
    time::{Instant, sleep_until},
};
use tracing::{debug, warn};

use super::{Notice, parse};

/// The longest datagram read, in bytes; a longer one is ignored. sticky's keys (`READY=1`,
/// `STATUS=…`, `WATCHDOG=1`) fit many times over.
pub(crate) const MAX_DATAGRAM: usize = 4096;

/// The most datagrams read from one socket in a second; the rest wait in its kernel queue.
pub(crate) const MAX_PER_SECOND: u32 = 1000;

/// Datagrams read in a row before the reading task lets the loader's other tasks run.
const BATCH: u32 = 16;

const SECOND: Duration = Duration::from_secs(1);

/// One worker's notify socket; its file is removed when it is dropped.
#[derive(Debug)]
pub(crate) struct Inbox {
    socket: UnixDatagram,
    path: PathBuf,
    /// Besides root, the only uid whose datagrams count: the workers'.
    sender: u32,
}

impl Inbox {
    /// `socket` (non-blocking, with SO_PASSCRED), bound at `path` for workers of uid `sender`.
    pub(super) fn new(socket: UnixDatagram, path: PathBuf, sender: u32) -> Self {
        Self { socket, path, sender }
    }

    /// The socket an earlier image of this loader bound at `path` for a worker of uid `sender`
    /// and handed over (an upgrade). It is non-blocking with SO_PASSCRED already: both belong
    /// to the socket, not to this fd, and so outlive the exec. Cannot fail, so an upgrade can
    /// take it after the point where nothing may fail any more.
    pub(crate) fn adopt(socket: OwnedFd, path: PathBuf, sender: u32) -> Self {
        Self::new(UnixDatagram::from(socket), path, sender)
    }

    /// Its path: the worker's `NOTIFY_SOCKET`.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl AsRawFd for Inbox {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Reads `inbox` for as long as the returned future is polled (its worker's life), handing
/// what each datagram that counts says to `deliver`. `pid`, the worker's, is for the logs.
pub(crate) async fn receive(inbox: Arc<Inbox>, pid: u32, mut deliver: impl FnMut(Notice)) {
    let sender = inbox.sender;
    // SAFETY: the AsyncFd holds a clone of `inbox`, whose socket stays open and the same
    // until the last clone is dropped.
    let socket = match unsafe { AsyncFd::register_with_interest(inbox, Interest::READABLE) } {
        Ok(socket) => socket,
        Err(err) => {
            warn!(pid, error = %io::Error::from(err), "cannot read the worker's notify socket");
            return std::future::pending().await;
        }
    };
    let mut buffer = vec![0u8; MAX_DATAGRAM];
    let mut window = Window::new();
    loop {
        let Ok(mut ready) = socket.readable().await else {
            return std::future::pending().await;
        };
        let Ok(received) = ready.try_io(|socket| receive_one(socket.as_raw_fd(), &mut buffer))
        else {
            // Nothing left to read: wait for the next datagram.
            continue;
        };
        window.advance(pid);
        match received.map(|datagram| (datagram.rejection(sender), datagram.length)) {
            Ok((None, length)) => parse(&buffer[..length]).into_iter().for_each(&mut deliver),
            Ok((Some(rejection), _)) => window.ignore(pid, &rejection),
            Err(err) => debug!(pid, error = %err, "worker notify socket"),
        }
        if window.received >= MAX_PER_SECOND {
            warn!(
                pid,
                "the worker's notify socket got {MAX_PER_SECOND} datagrams within a second: \
                 the rest wait until the second is over"
            );
            sleep_until(window.start + SECOND).await;
        } else if window.received.is_multiple_of(BATCH) {
            tokio::task::yield_now().await;
        }
    }
}

/// One datagram as received: who sent it and how long it was.
#[derive(Debug, Clone, Copy)]
struct Datagram {
    /// The sender's uid (SCM_CREDENTIALS), if the kernel attached it.
    uid: Option<u32>,
    /// Bytes in the buffer.
    length: usize,
    /// Longer than the buffer: cut.
    truncated: bool,
    /// It carried file descriptors, which the kernel dropped: the control buffer has room for
    /// the credentials only, so no descriptor of a worker ever enters the loader.
    descriptors: bool,
}

/// Why a datagram does not count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rejection {
    Oversized,
    /// With descriptors, as `systemd-notify`'s `BARRIER=1`: dropping them on receipt is what
    /// releases the barrier.
    Descriptors,
    Anonymous,
    Foreign(u32),
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Oversized => write!(f, "longer than {MAX_DATAGRAM} bytes"),
            Self::Descriptors => f.write_str("with file descriptors"),
            Self::Anonymous => f.write_str("without sender credentials"),
            Self::Foreign(uid) => write!(f, "from uid {uid}, neither the workers' nor root"),
        }
    }
}

impl Datagram {
    /// Why it does not count, if it does not: for workers of uid `sender`, a datagram counts
    /// if it is whole, carries no descriptors and comes from that uid or root.
    fn rejection(&self, sender: u32) -> Option<Rejection> {
        match self.uid {
            _ if self.truncated => Some(Rejection::Oversized),
            _ if self.descriptors => Some(Rejection::Descriptors),
            None => Some(Rejection::Anonymous),
            Some(uid) if uid != sender && uid != 0 => Some(Rejection::Foreign(uid)),
            Some(_) => None,
        }
    }
}

/// Receives one datagram into `buffer`, without waiting.
fn receive_one(fd: RawFd, buffer: &mut [u8]) -> io::Result<Datagram> {
    let mut cmsg = cmsg_space!(UnixCredentials);
    let mut iov = [IoSliceMut::new(buffer)];
    let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC;
    let message = recvmsg::<()>(fd, &mut iov, Some(&mut cmsg), flags)?;
    let uid = message.cmsgs().into_iter().flatten().find_map(|cmsg| match cmsg {
        ControlMessageOwned::ScmCredentials(credentials) => Some(credentials.uid()),
        _ => None,
    });
    Ok(Datagram {
        uid,
        length: message.bytes,
        truncated: message.flags.contains(MsgFlags::MSG_TRUNC),
        descriptors: message.flags.contains(MsgFlags::MSG_CTRUNC),
    })
}

/// What one socket received in the current second.
struct Window {
    start: Instant,
    received: u32,
    ignored: u32,
}

impl Window {
    fn new() -> Self {
        Self { start: Instant::now(), received: 0, ignored: 0 }
    }

    /// Counts one datagram, in a new second if the last one is over.
    fn advance(&mut self, pid: u32) {
        if self.start.elapsed() >= SECOND {
            if self.ignored > 1 {
                warn!(pid, ignored = self.ignored, "notify datagrams ignored within a second");
            }
            *self = Self::new();
        }
        self.received += 1;
    }

    /// Counts an ignored datagram; logs the first of each second (a barrier only at debug).
    fn ignore(&mut self, pid: u32, rejection: &Rejection) {
        if *rejection == Rejection::Descriptors {
            debug!(pid, "notify datagram with file descriptors (a barrier): dropped with them");
            return;
        }
        self.ignored += 1;
        if self.ignored == 1 {
            warn!(pid, %rejection, "notify datagram ignored");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::IoSlice;

    use nix::{
        sys::socket::{ControlMessage, UnixAddr, sendmsg},
        unistd::{getegid, geteuid},
    };
    use tokio::sync::mpsc;

    use super::*;
    use crate::endpoints::readiness::{Identity, NotifyDir};

    #[test]
    fn only_whole_datagrams_of_the_workers_user_or_root_count() {
        let datagram = |uid, truncated| Datagram { uid, length: 7, truncated, descriptors: false };
        assert_eq!(datagram(Some(65534), false).rejection(65534), None);
        assert_eq!(datagram(Some(0), false).rejection(65534), None);
        assert_eq!(datagram(Some(65533), false).rejection(65534), Some(Rejection::Foreign(65533)));
        assert_eq!(datagram(None, false).rejection(65534), Some(Rejection::Anonymous));
        assert_eq!(datagram(Some(65534), true).rejection(65534), Some(Rejection::Oversized));
        let barrier = Datagram { descriptors: true, ..datagram(Some(65534), false) };
        assert_eq!(barrier.rejection(65534), Some(Rejection::Descriptors));
    }

    #[tokio::test]
    async fn a_message_arrives_an_oversized_one_is_ignored_and_a_barrier_released() {
        let path = std::env::temp_dir().join(format!("sticky-inbox-{}", std::process::id()));
        let me = Identity { user: "me".into(), uid: geteuid().as_raw(), gid: getegid().as_raw() };
        let mut dir = NotifyDir::create(path, me).unwrap();
        let inbox = Arc::new(dir.bind(0).unwrap());
        let sender = UnixDatagram::unbound().unwrap();
        let mut oversized = b"STATUS=cut\n".to_vec();
        oversized.resize(MAX_DATAGRAM + 1, b'x');
        sender.send_to(&oversized, inbox.path()).unwrap();
        sender.send_to(b"READY=1\nSTATUS=up", inbox.path()).unwrap();
        // A barrier, as systemd-notify sends: released once its descriptor is dropped.
        let (barrier, write_end) = nix::unistd::pipe().unwrap();
        let address = UnixAddr::new(inbox.path()).unwrap();
        let fds = [write_end.as_raw_fd()];
        let (message, rights) = ([IoSlice::new(b"BARRIER=1")], [ControlMessage::ScmRights(&fds)]);
        sendmsg(sender.as_raw_fd(), &message, &rights, MsgFlags::empty(), Some(&address)).unwrap();
        drop(write_end);
        let (notices, mut received) = mpsc::unbounded_channel();
        let reading = tokio::spawn(receive(inbox, 1, move |notice| {
            let _ = notices.send(notice);
        }));
        assert_eq!(received.recv().await, Some(Notice::Ready));
        assert_eq!(received.recv().await, Some(Notice::Status("up".into())));
        let eof = tokio::task::spawn_blocking(move || nix::unistd::read(&barrier, &mut [0; 1]));
        let eof = tokio::time::timeout(Duration::from_secs(10), eof).await;
        assert_eq!(eof.expect("the barrier is released").unwrap(), Ok(0));
        reading.abort();
        dir.remove();
    }
}
