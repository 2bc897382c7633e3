//! Accept loops that survive failing accepts.

use std::{io, time::Duration};

use tracing::warn;

/// The pause after an accept that failed (EMFILE, ENOMEM, …), doubling up to a second while
/// accepts keep failing, so an endpoint never spins.
pub(crate) struct AcceptBackoff(Duration);

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    /// A backoff before any failure.
    pub(crate) fn new() -> Self {
        Self(Self::FIRST)
    }

    /// Takes an accept's result: passes a connection through (and resets the pause), or logs
    /// the error and waits before the caller tries again.
    pub(crate) async fn accepted<T>(&mut self, endpoint: &str, result: io::Result<T>) -> Option<T> {
        match result {
            Ok(connection) => {
                self.0 = Self::FIRST;
                Some(connection)
            }
            Err(err) => {
                warn!(endpoint, error = %err, retry_ms = self.0.as_millis() as u64, "accept failed");
                tokio::time::sleep(self.0).await;
                self.0 = (self.0 * 2).min(Self::MAX);
                None
            }
        }
    }
}
