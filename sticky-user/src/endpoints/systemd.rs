//! systemd's readiness protocol (sd_notify), a no-op when `NOTIFY_SOCKET` is not set.
//!
//! Messages go through one background thread, in order: a notify socket whose queue is full
//! blocks that thread, never the loader.

use std::{
    os::fd::{AsFd, OwnedFd},
    sync::{
        OnceLock,
        mpsc::{self, Receiver, Sender},
    },
    thread,
    time::Duration,
};

use sd_notify::NotifyState;
use tracing::{debug, warn};

/// A message for the notify socket.
enum Message {
    Ready(String),
    Reloading,
    Stopping,
    Watchdog,
    /// Keep these fds in the fd store under this name (polled by systemd, or not).
    Store(String, Vec<OwnedFd>, bool),
    /// Forget the fds stored under this name.
    Forget(String),
    /// Answered once everything before it was sent.
    Flush(Sender<()>),
}

fn sender() -> &'static Sender<Message> {
    static SENDER: OnceLock<Sender<Message>> = OnceLock::new();
    SENDER.get_or_init(|| {
        let (sender, receiver) = mpsc::channel();
        thread::Builder::new()
            .name("sd_notify".into())
            .spawn(move || deliver(receiver))
            .expect("spawn the sd_notify thread");
        sender
    })
}

fn deliver(messages: Receiver<Message>) {
    for message in messages {
        let monotonic;
        let states: &[NotifyState] = match &message {
            Message::Ready(status) => &[NotifyState::Ready, NotifyState::Status(status)],
            Message::Reloading => match NotifyState::monotonic_usec_now() {
                Ok(now) => {
                    monotonic = [NotifyState::Reloading, now];
                    &monotonic
                }
                Err(_) => &[NotifyState::Reloading],
            },
            Message::Stopping => &[NotifyState::Stopping],
            Message::Watchdog => &[NotifyState::Watchdog],
            Message::Flush(done) => {
                let _ = done.send(());
                continue;
            }
            Message::Store(name, fds, poll) => {
                let fds: Vec<_> = fds.iter().map(AsFd::as_fd).collect();
                let mut states = vec![NotifyState::FdStore, NotifyState::FdName(name)];
                if !poll {
                    states.push(NotifyState::Custom("FDPOLL=0"));
                }
                if let Err(err) = sd_notify::notify_with_fds(&states, &fds) {
                    warn!(error = %err, name, "cannot store the listening sockets in the fd store");
                }
                continue;
            }
            Message::Forget(name) => &[NotifyState::FdStoreRemove, NotifyState::FdName(name)],
        };
        if let Err(err) = sd_notify::notify(states) {
            debug!(error = %err, "sd_notify failed");
        }
    }
}

fn send(message: Message) {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        let _ = sender().send(message);
    }
}

/// Every slot listens, the program is attached and the workers are started.
pub fn ready(status: &str) {
    send(Message::Ready(status.to_owned()));
}

/// A rolling restart begins.
pub fn reloading() {
    send(Message::Reloading);
}

/// The loader is stopping.
pub fn stopping() {
    send(Message::Stopping);
}

/// Whether systemd keeps a file descriptor store for this service: `$FDSTORE` (which systemd
/// 254 and later set from `FileDescriptorStoreMax=`, and sticky's unit sets itself) is not 0.
pub fn fd_store() -> bool {
    let store = std::env::var("FDSTORE").ok().and_then(|max| max.parse::<u32>().ok());
    std::env::var_os("NOTIFY_SOCKET").is_some() && store.is_some_and(|max| max > 0)
}

/// Stores `fds` in systemd's fd store as `name`; systemd drops them once their sockets close.
pub fn store(name: String, fds: Vec<OwnedFd>) {
    send(Message::Store(name, fds, true));
}

/// Stores `fds` (not pollable, such as eBPF maps) in systemd's fd store as `name`.
pub fn store_unpolled(name: String, fds: Vec<OwnedFd>) {
    send(Message::Store(name, fds, false));
}

/// Removes the fds stored as `name` from systemd's fd store.
pub fn forget(name: String) {
    send(Message::Forget(name));
}

/// Waits (at most `limit`) until the messages sent so far are delivered.
pub fn flush(limit: Duration) {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        let (done, delivered) = mpsc::channel();
        if sender().send(Message::Flush(done)).is_ok() {
            let _ = delivered.recv_timeout(limit);
        }
    }
}

/// Pings systemd's watchdog at half its interval, forever, if `WATCHDOG_USEC` asks for it.
pub async fn watchdog() {
    let Some(interval) = sd_notify::watchdog_enabled() else { return };
    let period = (interval / 2).max(Duration::from_millis(10));
    loop {
        send(Message::Watchdog);
        tokio::time::sleep(period).await;
    }
}
