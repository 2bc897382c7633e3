//! A slot's life, as a state machine without I/O: [`Life::on`] takes an event and the time and
//! returns what the supervisor must do (update the table, eject the slot, kill or restart its
//! worker); `processes.rs`, `hang.rs` and `state.rs` only carry that out.
//!
//! | phase                   | event                          | next                    | actions           |
//! |-------------------------|--------------------------------|-------------------------|-------------------|
//! | Starting, Ready         | Exited, crash limit in window  | Ejected(CrashLooping)   | Eject, Restart    |
//! | Starting, Ready         | Exited                         | Starting                | Restart           |
//! | Ejected(_)              | Exited                         | the same                | Restart           |
//! | any                     | StartFailed                    | the same                | Restart           |
//! | Starting                | Ready                          | Ready                   |                   |
//! | Ejected(Hung)           | Ready                          | Ready                   | UpdateTable       |
//! | Ejected(CrashLooping)   | StayedUp                       | Ready or Starting       | UpdateTable       |
//! | Starting, Ready         | Hung (kernel dispatch)         | Ejected(Hung)           | Eject, Kill       |
//! | other                   | Hung                           | the same                | Kill              |
//! | any                     | Leave                          | Stopping                |                   |
//!
//! Without kernel dispatch nothing can be ejected: the slot stays in the table. Every exit
//! doubles the restart delay (up to [`MAX_BACKOFF`]); a worker that stays up resets it.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use super::worker::Exit;
use crate::{config::WorkerPolicy, endpoints::control::SlotState};

/// A worker that ran this long is healthy: its backoff resets and an ejected slot rejoins.
pub(super) const HEALTHY_RUN: Duration = Duration::from_secs(10);

/// Delay before the first restart of a worker that exited.
pub(super) const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// The longest delay between restarts.
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Where a slot stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// In the table; its worker is not ready yet (or is being restarted).
    Starting,
    /// In the table, its worker ready.
    Ready,
    /// Out of the table, its clients with the other slots, for a reason.
    Ejected(Ejection),
    /// Leaving: removed by a scale down (out of the table first, then its socket and its
    /// worker go). A loader that stops keeps its slots as they are for `sticky status`.
    Stopping,
}

impl From<Phase> for SlotState {
    fn from(phase: Phase) -> Self {
        match phase {
            Phase::Starting => Self::Starting,
            Phase::Ready => Self::Ready,
            Phase::Ejected(Ejection::Hung) => Self::Hung,
            Phase::Ejected(Ejection::CrashLooping) => Self::CrashLooping,
            Phase::Stopping => Self::Stopping,
        }
    }
}

/// Why a slot is out of the table, which says when it comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ejection {
    /// Its worker was found hung: it rejoins once a new worker is ready.
    Hung,
    /// Its workers exited too often: it rejoins once a worker stays up for [`HEALTHY_RUN`].
    CrashLooping,
}

/// What the start has seen of a slot's workers (it waits until each slot has had a ready one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum FirstReady {
    /// None ready yet, and none failed.
    Waiting,
    /// None ready yet; the last one ended so.
    Failed(Exit),
    /// One was ready (a later one that exits does not undo it: it is restarted).
    Seen,
}

impl FirstReady {
    /// Whether none was ready and the last one failed.
    pub(super) fn failed(&self) -> bool {
        matches!(self, Self::Failed(_))
    }
}

/// Something that happened to a slot's current worker, or to the slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Event {
    /// Its worker could not be started.
    StartFailed,
    /// Its worker exited; `ready` says whether it had been ready.
    Exited {
        /// How it ended.
        exit: Exit,
        /// Whether it had been ready.
        ready: bool,
    },
    /// Its worker became ready (or a rolling restart swapped in a ready one).
    Ready,
    /// Its worker has run for [`HEALTHY_RUN`]; `ready` says whether it is ready.
    StayedUp {
        /// Whether the worker is ready.
        ready: bool,
    },
    /// Its worker was found hung.
    Hung,
    /// The slot leaves (scale down).
    Leave,
}

/// What the supervisor must do after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    /// Write the table again from the slots in it.
    UpdateTable,
    /// Take the slot out of the table and give it a fresh socket, so its queue migrates.
    Eject,
    /// SIGKILL to its worker.
    Kill,
    /// Start a new worker after this delay.
    Restart(Duration),
}

/// The rules of the slot's life that come from the configuration and the dispatch.
#[derive(Debug, Clone, Copy)]
pub(super) struct Rules {
    /// Exits within `crash_window` that make a slot crash-looping.
    pub(super) crash_limit: u32,
    /// See `crash_limit`.
    pub(super) crash_window: Duration,
    /// Whether a slot can be taken out of the table (kernel dispatch only).
    pub(super) can_eject: bool,
}

impl Rules {
    /// The rules for `policy`, with or without kernel dispatch.
    pub(super) fn new(policy: &WorkerPolicy, can_eject: bool) -> Self {
        Self { crash_limit: policy.crash_limit, crash_window: policy.crash_window, can_eject }
    }
}

/// A slot's life: its phase, and what its transitions count.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Life {
    pub(super) phase: Phase,
    pub(super) first_ready: FirstReady,
    /// Workers of this slot that exited.
    pub(super) restarts: u32,
    /// When its workers exited, within the crash window.
    pub(super) exits: VecDeque<Instant>,
    /// The delay before the next restart.
    pub(super) backoff: Duration,
    /// Times its worker was found hung.
    pub(super) hangs: u32,
}

impl Default for Life {
    fn default() -> Self {
        Self {
            phase: Phase::Starting,
            first_ready: FirstReady::Waiting,
            restarts: 0,
            exits: VecDeque::new(),
            backoff: FIRST_BACKOFF,
            hangs: 0,
        }
    }
}

impl Life {
    /// Whether clients map to the slot.
    pub(super) fn in_table(&self) -> bool {
        matches!(self.phase, Phase::Starting | Phase::Ready)
    }

    /// Takes `event`, which happened at `now`; returns what the supervisor must do, in order.
    pub(super) fn on(&mut self, event: Event, now: Instant, rules: Rules) -> Vec<Action> {
        let mut actions = Vec::new();
        match event {
            Event::StartFailed => actions.push(self.restart()),
            Event::Exited { exit, ready } => {
                if !ready && self.first_ready != FirstReady::Seen {
                    self.first_ready = FirstReady::Failed(exit);
                }
                self.restarts += 1;
                self.exits.push_back(now);
                while self.exits.front().is_some_and(|&at| now - at > rules.crash_window) {
                    self.exits.pop_front();
                }
                if self.in_table() {
                    let crash_loop = self.exits.len() as u32 >= rules.crash_limit;
                    if crash_loop && rules.can_eject {
                        self.phase = Phase::Ejected(Ejection::CrashLooping);
                        actions.push(Action::Eject);
                    } else {
                        self.phase = Phase::Starting;
                    }
                }
                actions.push(self.restart());
            }
            Event::Ready => {
                self.first_ready = FirstReady::Seen;
                match self.phase {
                    Phase::Starting => self.phase = Phase::Ready,
                    Phase::Ejected(Ejection::Hung) => {
                        self.phase = Phase::Ready;
                        actions.push(Action::UpdateTable);
                    }
                    Phase::Ready | Phase::Ejected(Ejection::CrashLooping) | Phase::Stopping => {}
                }
            }
            Event::StayedUp { ready } => {
                if self.phase == Phase::Stopping {
                    return actions;
                }
                self.backoff = FIRST_BACKOFF;
                if self.phase == Phase::Ejected(Ejection::CrashLooping) {
                    self.phase = if ready { Phase::Ready } else { Phase::Starting };
                    actions.push(Action::UpdateTable);
                }
            }
            Event::Hung => {
                self.hangs += 1;
                if self.in_table() && rules.can_eject {
                    self.phase = Phase::Ejected(Ejection::Hung);
                    actions.push(Action::Eject);
                }
                actions.push(Action::Kill);
            }
            Event::Leave => self.phase = Phase::Stopping,
        }
        actions
    }

    /// A restart after the current backoff, which doubles for the next one.
    fn restart(&mut self) -> Action {
        let delay = self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        Action::Restart(delay)
    }
}

#[cfg(test)]
#[path = "slot_tests.rs"]
mod tests;
