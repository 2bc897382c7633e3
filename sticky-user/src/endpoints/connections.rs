//! A bound on the connections an endpoint serves at once, so that clients that connect and
//! never finish cannot take every file descriptor of the loader.

use std::{
    collections::BTreeMap,
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::task::AbortHandle;
use tokio_util::task::TaskTracker;

use crate::sync::lock;

/// How long a client may take to send its request.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What an endpoint does with a new connection when it serves `limit` already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WhenFull {
    /// Close the oldest (a scrape takes milliseconds: the oldest is an idle client).
    CloseOldest,
    /// Close the new one (its client may try again).
    Refuse,
}

/// The connections an endpoint serves, each in a task of its own.
pub(crate) struct Connections {
    limit: usize,
    when_full: WhenFull,
    /// The live tasks, oldest first.
    live: Mutex<BTreeMap<u64, AbortHandle>>,
    next: AtomicU64,
    /// The same tasks, to wait for.
    tracker: TaskTracker,
}

impl Connections {
    /// At most `limit` connections at once.
    pub(crate) fn new(limit: usize, when_full: WhenFull) -> Arc<Self> {
        Arc::new(Self {
            limit,
            when_full,
            live: Mutex::new(BTreeMap::new()),
            next: AtomicU64::new(0),
            tracker: TaskTracker::new(),
        })
    }

    /// Serves one connection with `task`, within the bound. Returns false when the bound
    /// refused it (the caller's connection, owned by `task`, is dropped).
    pub(crate) fn serve(self: &Arc<Self>, task: impl Future<Output = ()> + Send + 'static) -> bool {
        let mut live = lock(&self.live);
        if live.len() >= self.limit && self.when_full == WhenFull::Refuse {
            return false;
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let this = self.clone();
        // The task removes itself once done; it cannot before `live` is unlocked below.
        let handle = self.tracker.spawn(async move {
            task.await;
            lock(&this.live).remove(&id);
        });
        live.insert(id, handle.abort_handle());
        while live.len() > self.limit {
            if let Some((_, oldest)) = live.pop_first() {
                oldest.abort();
            }
        }
        true
    }

    /// Resolves once no connection is served (new ones may come meanwhile, and are waited for).
    pub(crate) async fn drained(&self) {
        // A closed tracker's `wait` ends once it is empty; it is never reopened, as nothing
        // else depends on it being open.
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// How many connections are served now.
    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.live).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_oldest_is_closed_or_the_newest_refused() {
        let connections = Connections::new(2, WhenFull::CloseOldest);
        let (first_done, first) = tokio::sync::oneshot::channel::<()>();
        let idle = || std::future::pending::<()>();
        assert!(connections.serve(async move {
            let _done = first_done;
            idle().await
        }));
        assert!(connections.serve(idle()));
        assert!(connections.serve(idle()));
        // The first (oldest) task was aborted: its sender dropped.
        assert!(first.await.is_err());
        assert_eq!(connections.len(), 2);

        let refusing = Connections::new(1, WhenFull::Refuse);
        assert!(refusing.serve(idle()));
        assert!(!refusing.serve(idle()));
        assert_eq!(refusing.len(), 1);
        let finished = Connections::new(1, WhenFull::Refuse);
        assert!(finished.serve(async {}));
        tokio::task::yield_now().await;
        assert_eq!(finished.len(), 0);
    }
}
