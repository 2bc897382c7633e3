//! systemd's readiness protocol (sd_notify), a no-op when `NOTIFY_SOCKET` is not set.
//!
//! Messages go through one background thread, in order: a notify socket whose queue is full
//! blocks that thread, never the loader.

use std::{
    sync::{
        OnceLock,
        mpsc::{self, Receiver, Sender},
    },
    thread,
    time::Duration,
};

use sd_notify::NotifyState;
use tracing::debug;

/// A message for the notify socket.
enum Message {
    Ready(String),
    Reloading,
    Stopping,
    Watchdog,
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
