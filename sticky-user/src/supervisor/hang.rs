//! Hung workers, found without probes.
//!
//! With kernel dispatch, a slot whose listening sockets hold waiting connections while none has
//! been accepted for the hang timeout is hung: the program's counter says how many connections
//! the slot was given, the accept queue (TCP_INFO) how many still wait, and the difference is
//! what the worker accepted. A UDP socket's progress is its first waiting datagram, peeked: a
//! worker that reads changes it. A worker that is only slow still accepts (or reads), so it
//! never counts as hung. With a worker watchdog, a ready worker that sends no `WATCHDOG=1` for that long is
//! hung too. A hung slot leaves the table, its worker is killed (its queue then migrates to
//! the other slots) and restarted, and the slot rejoins once the new worker is ready.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::time::sleep;
use tracing::warn;

use super::{
    processes::carry_out,
    slot::Event,
    state::{Progress, State},
};
use crate::{
    config::{Transport, WorkerPolicy},
    dispatch::Dispatch,
    kernel::Counters,
    listeners::{ListenerGroup, accept_backlog, head_datagram},
    sync::lock,
};

/// Checks every slot a few times per hang timeout (and watchdog interval), until the loader
/// stops. Does nothing when both are off.
pub(super) async fn watch(shared: Arc<Mutex<State>>) {
    let policy = lock(&shared).policy;
    let limits = [policy.hang_timeout, policy.worker_watchdog];
    let Some(shortest) = limits.into_iter().flatten().min() else { return };
    let period = (shortest / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        sleep(period).await;
        let mut state = lock(&shared);
        if state.stopping {
            return;
        }
        for (index, reason) in hung_slots(&mut state) {
            replace_hung(&shared, &mut state, index, &reason);
        }
    }
}

/// The slots whose worker is hung now, with why.
fn hung_slots(state: &mut State) -> Vec<(usize, String)> {
    let now = Instant::now();
    let policy = state.policy;
    let kernel = matches!(state.dispatch, Dispatch::Kernel(_));
    let counters: Vec<_> =
        state.dispatch.dispatchers().iter().map(|d| d.counters().unwrap_or_default()).collect();
    let mut hung = Vec::new();
    for (index, slot) in state.slots.iter_mut().enumerate() {
        let seen = slot
            .worker
            .as_ref()
            .filter(|worker| worker.is_ready())
            .map(|worker| Seen { unfed: worker.hungry_for(), in_table: slot.life.in_table() });
        let groups = &state.groups;
        let queue = || kernel.then(|| queue_of(groups, &counters, index));
        if let Some(reason) = verdict(&mut slot.progress, seen, queue, &policy, now) {
            hung.push((index, reason));
        }
    }
    hung
}

/// Slot `index`'s queues over every group: what waits, and a mark that moves whenever its
/// worker takes something (connections accepted, the head of a UDP queue).
fn queue_of(groups: &[ListenerGroup], counters: &[Counters], index: usize) -> Queue {
    let mut queue = Queue { waiting: 0, progress: 0 };
    for (group, counters) in groups.iter().zip(counters) {
        let socket = &group.sockets[index];
        match group.listen.transport {
            Transport::Tcp => {
                let waiting = accept_backlog(socket).unwrap_or(0);
                let selected = counters.selected.get(index).copied().unwrap_or(0);
                queue.waiting += waiting;
                queue.progress =
                    queue.progress.wrapping_add(selected - u64::from(waiting).min(selected));
            }
            Transport::Udp => {
                if let Ok(Some(head)) = head_datagram(socket) {
                    queue.waiting += 1;
                    queue.progress = queue.progress.wrapping_add(head);
                }
            }
        }
    }
    queue
}

/// What the hang check sees of a slot's ready worker.
#[derive(Debug, Clone, Copy)]
pub(super) struct Seen {
    /// How long since its last `WATCHDOG=1` (or since it became ready).
    pub(super) unfed: Duration,
    /// Whether the slot is in the table.
    pub(super) in_table: bool,
}

/// A slot's queues, with kernel dispatch: how many connections (or UDP queues with datagrams)
/// wait, and a mark of the worker's progress: the connections it accepted, plus the head of
/// each UDP queue.
#[derive(Debug, Clone, Copy)]
pub(super) struct Queue {
    pub(super) waiting: u32,
    pub(super) progress: u64,
}

/// The hang decision for one slot at `now`: why its worker is hung, or `None`. `seen` is
/// `None` unless the slot has a ready worker; `queue` is read only when the queue decides
/// (a hang timeout, the slot in the table) and is `None` without kernel dispatch. `progress`
/// is what the check last saw, updated here.
pub(super) fn verdict(
    progress: &mut Progress,
    seen: Option<Seen>,
    queue: impl FnOnce() -> Option<Queue>,
    policy: &WorkerPolicy,
    now: Instant,
) -> Option<String> {
    let Some(seen) = seen else {
        *progress = Progress { accepted: 0, at: now };
        return None;
    };
    if let Some(interval) = policy.worker_watchdog
        && seen.unfed > interval
    {
        return Some(format!("no WATCHDOG=1 for {} s", interval.as_secs_f64()));
    }
    let limit = policy.hang_timeout.filter(|_| seen.in_table)?;
    let Queue { waiting, progress: mark } = queue()?;
    if waiting == 0 || mark != progress.accepted {
        *progress = Progress { accepted: mark, at: now };
        None
    } else if now - progress.at > limit {
        let idle = limit.as_secs_f64();
        Some(format!("{waiting} connections or datagrams waiting, none taken for {idle} s"))
    } else {
        None
    }
}

/// Takes hung slot `index` out of the table (its queue migrates to the others once its old
/// socket closes) and kills its worker, which is then restarted as after any exit.
fn replace_hung(shared: &Arc<Mutex<State>>, state: &mut State, index: usize, reason: &str) {
    let slot = &mut state.slots[index];
    slot.progress = Progress { accepted: 0, at: Instant::now() };
    let Some(worker) = slot.worker.clone() else { return };
    warn!(slot = index, pid = worker.pid, reason, "worker is hung: replacing it");
    // Not found hung again while it dies.
    worker.feed();
    let actions = state.on(index, Event::Hung);
    carry_out(shared, state, index, actions);
}

#[cfg(test)]
#[path = "hang_tests.rs"]
mod tests;
