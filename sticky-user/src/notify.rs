//! systemd's readiness protocol (sd_notify), a no-op when `NOTIFY_SOCKET` is not set.

use std::time::Duration;

use sd_notify::NotifyState;
use tracing::debug;

fn send(states: &[NotifyState]) {
    if let Err(err) = sd_notify::notify(states) {
        debug!(error = %err, "sd_notify failed");
    }
}

/// Every slot listens, the program is attached and the workers are started.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A rolling restart begins.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// The loader is stopping.
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// Pings systemd's watchdog at half its interval, forever, if `WATCHDOG_USEC` asks for it.
pub async fn watchdog() {
    let Some(interval) = sd_notify::watchdog_enabled() else { return };
    let period = (interval / 2).max(Duration::from_millis(10));
    loop {
        send(&[NotifyState::Watchdog]);
        tokio::time::sleep(period).await;
    }
}
