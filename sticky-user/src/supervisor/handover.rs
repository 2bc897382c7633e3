//! The supervisor's state as the upgrade record carries it, and back: slots, restart counters,
//! in-table flags, and the workers, adopted by pid in the new image.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use super::state::{Progress, Slot, State, Worker};
use crate::upgrade::{SlotRecord, SupervisorRecord, WorkerRecord};

impl State {
    /// The slots and workers, for the next image.
    pub(super) fn handover(&self) -> SupervisorRecord {
        let now = Instant::now();
        let current: Vec<u32> = self.slots.iter().flat_map(|s| &s.worker).map(|w| w.pid).collect();
        SupervisorRecord {
            slots: self.slots.iter().map(|slot| slot.handover(now)).collect(),
            retiring: self
                .live
                .iter()
                .map(|w| w.pid)
                .filter(|pid| !current.contains(pid))
                .collect(),
            next_slot_id: self.next_slot_id,
            last_reload: self.last_reload.clone(),
            upgrades: self.upgrades,
        }
    }

    /// Takes over what an earlier image handed over: its slots, with their workers adopted,
    /// and the workers still retiring (in `live` only, until they exit).
    pub(super) fn adopt(&mut self, record: SupervisorRecord) {
        let now = Instant::now();
        self.slots = record.slots.into_iter().map(|slot| Slot::adopt(slot, now)).collect();
        self.live = record
            .retiring
            .into_iter()
            .map(|pid| Worker::adopted(pid, Duration::ZERO, true, None))
            .chain(self.slots.iter().flat_map(|slot| slot.worker.clone()))
            .collect();
        self.next_slot_id = record.next_slot_id;
        self.last_reload = record.last_reload;
        self.upgrades = record.upgrades + 1;
    }
}

impl Slot {
    fn handover(&self, now: Instant) -> SlotRecord {
        SlotRecord {
            id: self.id,
            worker: self.worker.as_ref().map(|worker| WorkerRecord {
                pid: worker.pid,
                uptime_secs: worker.started.elapsed().as_secs_f64(),
                ready: worker.is_ready(),
                status: worker.status(),
            }),
            restarts: self.restarts,
            exit_ages_secs: self.exits.iter().map(|&exit| (now - exit).as_secs_f64()).collect(),
            in_table: self.in_table,
            backoff_ms: self.backoff.as_millis() as u64,
            hangs: self.hangs,
            hung: self.hung,
            was_ready: self.was_ready,
        }
    }

    fn adopt(record: SlotRecord, now: Instant) -> Self {
        let ago =
            |secs: f64| now.checked_sub(Duration::from_secs_f64(secs.max(0.0))).unwrap_or(now);
        Slot {
            id: record.id,
            worker: record.worker.map(|w| {
                Worker::adopted(
                    w.pid,
                    Duration::from_secs_f64(w.uptime_secs.max(0.0)),
                    w.ready,
                    w.status,
                )
            }),
            restarts: record.restarts,
            exits: record.exit_ages_secs.into_iter().map(ago).collect::<VecDeque<_>>(),
            in_table: record.in_table,
            backoff: Duration::from_millis(record.backoff_ms),
            hangs: record.hangs,
            hung: record.hung,
            failure: None,
            was_ready: record.was_ready,
            progress: Progress { accepted: 0, at: now },
        }
    }
}
