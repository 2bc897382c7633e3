//! Waiting for readiness: the guarded rolling restart, and the start that tells the truth.
//!
//! A rolling restart replaces one slot at a time: the new worker starts on the slot's sockets
//! beside the old one, and only once it is ready does the old one get SIGTERM. With `--quic`,
//! the new worker starts on the slot's next socket generation instead, and the old one drains
//! (`drain.rs`). A new worker
//! that exits first, or is not ready within the ready timeout, is killed; the old worker keeps
//! its slot, the slots not yet rolled are left alone, and the restart stops with the reason.

use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::{
    Supervisor, SupervisorError,
    processes::{kill, spawn_worker, terminate},
    slot::FirstReady,
    worker::NotReady,
};
use crate::{
    chain::Chain,
    endpoints::{control::ReloadOutcome, systemd},
    sync::unix_now,
};

/// How often the start checks whether every slot is ready.
const POLL: Duration = Duration::from_millis(20);

impl Supervisor {
    /// Replaces every worker, one slot at a time, each only once its successor is ready. With
    /// a [`crate::config::Reconfigure`], a changed worker count in the configuration is applied first.
    /// The outcome is kept for `sticky status` and told to systemd.
    pub async fn reload(&self) -> Result<String, SupervisorError> {
        let _operation = self.operation().await?;
        systemd::reloading();
        let result = self.roll().await;
        let (ok, message) = match &result {
            Ok(message) => (true, message.clone()),
            Err(err) => (false, err.to_string()),
        };
        let at_unix_secs = unix_now();
        self.state().last_reload =
            Some(ReloadOutcome { at_unix_secs, ok, message: message.clone() });
        systemd::ready(&if ok { self.summary() } else { message });
        result
    }

    async fn roll(&self) -> Result<String, SupervisorError> {
        if let Some(reconfigure) = &self.reconfigure
            && let Some(workers) = reconfigure().map_err(SupervisorError::Reconfigure)?
        {
            info!(workers, "the configuration changed the worker count");
            self.resize(workers).await?;
        }
        let count = self.state().slots.len();
        info!(workers = count, "rolling restart");
        let (ready_timeout, grace) = {
            let policy = self.state().policy;
            (policy.ready_timeout, policy.grace_period)
        };
        let mut roll = Roll::new(count);
        loop {
            let slot = {
                let state = self.state();
                let Some(slot) = roll.next(state.slots.len(), state.stopping)? else { break };
                slot
            };
            self.replace(slot, ready_timeout, grace).await?;
        }
        Ok(format!("restarted {count} workers"))
    }

    /// Replaces slot `slot`'s worker as a rolling restart does, that slot alone (`sticky
    /// top`'s `r`). Serialized with reload, scale and upgrade.
    pub async fn restart_slot(&self, slot: usize) -> Result<String, SupervisorError> {
        let _operation = self.operation().await?;
        let policy = self.state().policy;
        info!(slot, "restarting one slot");
        self.replace(slot, policy.ready_timeout, policy.grace_period).await?;
        Ok(format!("restarted slot {slot}"))
    }

    /// Starts a new worker on slot `slot` beside its current one and, once it is ready, makes
    /// it the slot's worker and stops the old one, or with `--quic` lets it drain; a new worker
    /// that is not ready in time is killed, and the old one keeps the slot.
    async fn replace(
        &self,
        slot: usize,
        ready_timeout: Duration,
        grace: Duration,
    ) -> Result<(), SupervisorError> {
        let (old, new, next) = {
            let mut state = self.state();
            // Checked with the start, under the same lock.
            if state.stopping {
                return Err(SupervisorError::Stopping);
            }
            let slots = state.slots.len();
            if slot >= slots {
                return Err(SupervisorError::NoSuchSlot { slot, slots });
            }
            let stopped = |reason| SupervisorError::ReloadStopped { slot, reason };
            let next = state.next_generation(slot).map_err(|err| {
                stopped(format!("the new generation's sockets cannot be opened ({})", Chain(&err)))
            })?;
            let new = spawn_worker(&self.shared, &mut state, slot, next.as_ref())
                .map_err(|err| stopped(format!("the new worker cannot be started ({err})")))?;
            (state.slots[slot].worker.clone(), new, next)
        };
        let ready = new.wait_ready(ready_timeout).await;
        if let Err(stopped) = Roll::candidate(slot, ready.clone()) {
            kill(&new);
            new.wait().await;
            if let Err(not_ready) = ready {
                warn!(slot, reason = %not_ready, "rolling restart stopped");
            }
            return Err(stopped);
        }
        let taken = {
            let mut state = self.state();
            let moved = match next {
                // The slot's new sockets take its place; its old UDP ones drain.
                Some(next) => state.take_generation(slot, next).map(|()| true),
                None => Ok(false),
            };
            moved.map(|drains| {
                let current = state.slots[slot].worker.replace(new.clone());
                state.slot_ready(slot);
                if drains {
                    self.drain_previous(&mut state, slot, current.clone());
                }
                (current, drains)
            })
        };
        let (current, drains) = match taken {
            Ok(taken) => taken,
            Err(err) => {
                kill(&new);
                new.wait().await;
                let reason =
                    format!("the slot cannot move to its new generation ({})", Chain(&err));
                warn!(slot, reason, "rolling restart stopped");
                return Err(SupervisorError::ReloadStopped { slot, reason });
            }
        };
        if drains {
            // The old worker drains; one that had exited and been restarted meanwhile
            // (`current` is then its successor) is gone already.
            return Ok(());
        }
        // The old worker, unless it exited meanwhile and was restarted: stop that one too.
        if let Some(current) = current.filter(|c| old.as_ref().is_none_or(|o| o.pid != c.pid)) {
            terminate(&current, grace);
        }
        if let Some(old) = old {
            terminate(&old, grace);
            old.wait().await;
        }
        Ok(())
    }

    /// Waits until every slot has had a ready worker, so that systemd hears READY=1 only then
    /// (a worker that is ready and then exits at once still counts: it is restarted). Fails
    /// with the workers' failure if none becomes ready: every slot's worker exited before it
    /// was ready, or the ready timeout passed. Some ready by then is enough to serve.
    pub(super) async fn wait_until_ready(&self) -> Result<(), SupervisorError> {
        let limit = self.state().policy.ready_timeout;
        let deadline = Instant::now() + limit;
        loop {
            let (ready, failed, total, failure) = {
                let state = self.state();
                let slots = &state.slots;
                let failure = slots.iter().enumerate().find_map(|(index, slot)| {
                    let FirstReady::Failed(exit) = &slot.life.first_ready else { return None };
                    Some(format!("worker {index} {exit} before it was ready"))
                });
                let failed = slots.iter().filter(|slot| slot.life.first_ready.failed()).count();
                let ready =
                    slots.iter().filter(|slot| slot.life.first_ready == FirstReady::Seen).count();
                (ready, failed, slots.len(), failure)
            };
            if ready == total {
                return Ok(());
            }
            if ready == 0 && failed == total {
                return Err(SupervisorError::NoWorkerReady(failure.expect("a failure")));
            }
            if Instant::now() >= deadline {
                if ready > 0 {
                    warn!(
                        ready,
                        workers = total,
                        "not every worker is ready: serving with those that are"
                    );
                    return Ok(());
                }
                let reason = failure
                    .unwrap_or_else(|| format!("none was ready within {} s", limit.as_secs_f64()));
                return Err(SupervisorError::NoWorkerReady(reason));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// A rolling restart as data: which slot it replaces next, and when it ends or stops. The
/// supervisor starts each candidate and waits for it; this decides. Reload, scale and upgrade
/// take the supervisor's operation lock, so a scale or an upgrade asked for during a roll runs
/// after it (an upgrade is then decided by [`super::upgrade::may_upgrade`]); should there be
/// fewer slots all the same, the roll ends at the last one, and a loader that stops stops it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Roll {
    /// The slots there were when it began: it replaces no more.
    count: usize,
    /// The slot it replaces next.
    next: usize,
}

impl Roll {
    /// A roll over the `count` slots there are now.
    pub(super) fn new(count: usize) -> Self {
        Self { count, next: 0 }
    }

    /// The slot to replace next, given the `slots` there are now and whether the loader is
    /// `stopping`: `None` once it has replaced the slots it began with, or reached the end of
    /// fewer slots; an error if the loader stops first.
    pub(super) fn next(
        &mut self,
        slots: usize,
        stopping: bool,
    ) -> Result<Option<usize>, SupervisorError> {
        if self.next >= self.count {
            return Ok(None);
        }
        if stopping {
            return Err(SupervisorError::Stopping);
        }
        if self.next >= slots {
            return Ok(None);
        }
        self.next += 1;
        Ok(Some(self.next - 1))
    }

    /// Whether slot `slot`'s candidate, which became `ready` or not, takes the slot; if not,
    /// the roll stops here with why (the old worker keeps the slot, later slots are left).
    pub(super) fn candidate(
        slot: usize,
        ready: Result<(), NotReady>,
    ) -> Result<(), SupervisorError> {
        ready.map_err(|not_ready| SupervisorError::ReloadStopped {
            slot,
            reason: not_ready.to_string(),
        })
    }
}

#[cfg(test)]
#[path = "roll_tests.rs"]
mod tests;
