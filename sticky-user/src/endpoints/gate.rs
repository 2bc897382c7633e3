//! The control socket's gate, closed by an upgrade just before its exec: new connections then
//! wait in the socket's queue, which the next image takes over and answers, and the requests
//! being answered finish first, so that no `sticky status` (or reload, or scale) asked during
//! an upgrade loses its answer to the exec.

use std::{sync::Arc, time::Duration};

use tokio::sync::watch;

use super::connections::Connections;

/// Where the gate stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Position {
    /// Connections are accepted.
    Open,
    /// An exec is coming: the accept loop is asked to stop accepting.
    Closing,
    /// The accept loop has stopped accepting.
    Closed,
}

/// The gate between the control socket and its accept loop.
pub(crate) struct Gate {
    position: watch::Sender<Position>,
    /// The connections being answered.
    pub(super) connections: Arc<Connections>,
}

impl Gate {
    /// An open gate for the connections the control socket serves.
    pub(super) fn new(connections: Arc<Connections>) -> Arc<Self> {
        Arc::new(Self { position: watch::Sender::new(Position::Open), connections })
    }

    /// Closes the gate: waits until the accept loop has stopped accepting, then until every
    /// connection it accepted is answered, at most `within` in all. Returns whether both
    /// happened in time.
    pub(crate) async fn close(&self, within: Duration) -> bool {
        self.position.send_replace(Position::Closing);
        let mut position = self.position.subscribe();
        tokio::time::timeout(within, async {
            let _ = position.wait_for(|&p| p == Position::Closed).await;
            self.connections.drained().await;
        })
        .await
        .is_ok()
    }

    /// Opens the gate again (the exec failed: this image goes on).
    pub(crate) fn open(&self) {
        self.position.send_replace(Position::Open);
    }

    /// Resolves once the gate is closing or closed: an operation waiting for its turn then
    /// gives up, as its answer would be lost to the exec.
    pub(crate) async fn closing(&self) {
        let _ = self.position.subscribe().wait_for(|&p| p != Position::Open).await;
    }

    /// For the accept loop: resolves when it must stop accepting, after telling the gate it
    /// has stopped, and returns once the gate is open again.
    pub(super) async fn hold(&self) {
        self.closing().await;
        self.position.send_if_modified(|p| {
            let closing = *p == Position::Closing;
            if closing {
                *p = Position::Closed;
            }
            closing
        });
        let _ = self.position.subscribe().wait_for(|&p| p == Position::Open).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoints::connections::WhenFull;

    #[tokio::test]
    async fn closing_waits_for_the_accept_loop_and_the_answers_being_written() {
        let gate = Gate::new(Connections::new(4, WhenFull::Refuse));
        let (answer, answered) = tokio::sync::oneshot::channel::<()>();
        gate.connections.serve(async move {
            let _ = answered.await;
        });
        let accept_loop = tokio::spawn({
            let gate = gate.clone();
            async move { gate.hold().await }
        });
        let closed = tokio::spawn({
            let gate = gate.clone();
            async move { gate.close(Duration::from_secs(30)).await }
        });
        // Neither is done while a request is being answered.
        gate.closing().await;
        tokio::task::yield_now().await;
        assert!(!closed.is_finished());
        answer.send(()).unwrap();
        assert!(closed.await.unwrap());
        assert!(!accept_loop.is_finished());
        gate.open();
        accept_loop.await.unwrap();
    }

    #[tokio::test]
    async fn a_closing_without_an_accept_loop_gives_up_in_time() {
        let gate = Gate::new(Connections::new(4, WhenFull::Refuse));
        assert!(!gate.close(Duration::from_millis(10)).await);
    }
}
