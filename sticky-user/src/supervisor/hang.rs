//! Hung workers, found without probes.
//!
//! With kernel dispatch, a slot whose listening sockets hold waiting connections while none has
//! been accepted for the hang timeout is hung: the program's counter says how many connections
//! the slot was given, the accept queue (TCP_INFO) how many still wait, and the difference is
//! what the worker accepted. A worker that is only slow still accepts, so it never counts as
//! hung. With a worker watchdog, a ready worker that sends no `WATCHDOG=1` for that long is
//! hung too. A hung slot leaves the table, its worker is killed (its queue then migrates to
//! the other slots) and restarted, and the slot rejoins once the new worker is ready.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::time::sleep;
use tracing::{error, warn};

use super::{
    state::{Progress, State},
    workers::kill,
};
use crate::{
    chain::Chain, dispatch::Dispatch, kernel::Counters, listeners::accept_backlog, sync::lock,
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
            replace_hung(&mut state, index, &reason);
        }
    }
}

/// The slots whose worker is hung now, with why.
fn hung_slots(state: &mut State) -> Vec<(usize, String)> {
    let now = Instant::now();
    let policy = state.policy;
    let counters: Vec<_> =
        state.dispatch.dispatchers().iter().filter_map(|d| d.counters().ok()).collect();
    let mut hung = Vec::new();
    for (index, slot) in state.slots.iter_mut().enumerate() {
        let Some(worker) = slot.worker.as_ref().filter(|worker| worker.is_ready()) else {
            slot.progress = Progress { accepted: 0, at: now };
            continue;
        };
        if let Some(interval) = policy.worker_watchdog
            && worker.hungry_for() > interval
        {
            hung.push((index, format!("no WATCHDOG=1 for {} s", interval.as_secs_f64())));
            continue;
        }
        let Some(limit) = policy.hang_timeout.filter(|_| slot.in_table) else { continue };
        let Dispatch::Kernel(_) = state.dispatch else { continue };
        let waiting: u32 = state
            .groups
            .iter()
            .filter_map(|group| accept_backlog(&group.sockets[index]).ok())
            .sum();
        let accepted =
            Counters::selected_total(&counters, index).saturating_sub(u64::from(waiting));
        if waiting == 0 || accepted > slot.progress.accepted {
            slot.progress = Progress { accepted, at: now };
        } else if now - slot.progress.at > limit {
            let idle = limit.as_secs_f64();
            hung.push((
                index,
                format!("{waiting} connections waiting, none accepted for {idle} s"),
            ));
        }
    }
    hung
}

/// Takes hung slot `index` out of the table (its queue migrates to the others once its old
/// socket closes) and kills its worker, which is then restarted as after any exit.
fn replace_hung(state: &mut State, index: usize, reason: &str) {
    let slot = &mut state.slots[index];
    slot.hangs += 1;
    slot.progress = Progress { accepted: 0, at: Instant::now() };
    let Some(worker) = slot.worker.clone() else { return };
    warn!(slot = index, pid = worker.pid, reason, "worker is hung: replacing it");
    // Not found hung again while it dies.
    worker.feed();
    if slot.in_table && matches!(state.dispatch, Dispatch::Kernel(_)) {
        state.slots[index].hung = true;
        if let Err(err) = state.eject(index) {
            error!(slot = index, error = %Chain(&err), "cannot take the hung slot out of the table");
        }
    }
    kill(&worker);
}
