//! The supervisor's state as the upgrade record carries it, and back: slots, restart counters,
//! in-table flags, and the workers, adopted by pid in the new image with their notify sockets.

use std::{
    collections::HashMap,
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use super::{
    drain::Draining,
    slot::{Ejection, FirstReady, Life, Phase},
    state::{Progress, Slot, State, Worker},
};
use crate::{
    endpoints::readiness::Inbox,
    upgrade::{DrainingRecord, NotifyRecord, SlotRecord, SupervisorRecord, WorkerRecord},
};

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
                .filter(|worker| !current.contains(&worker.pid))
                .map(Worker::handover)
                .collect(),
            next_slot_id: self.next_slot_id,
            last_reload: self.last_reload.clone(),
            upgrades: self.upgrades,
            draining: self
                .draining
                .iter()
                .map(|draining| DrainingRecord {
                    slot: draining.slot,
                    generation: draining.generation,
                    pid: draining.worker.pid,
                    secs: draining.since.elapsed().as_secs_f64(),
                })
                .collect(),
        }
    }

    /// Takes over what an earlier image handed over: its slots, with their workers adopted,
    /// and the workers still retiring (in `live` only, until they exit); each worker with its
    /// notify socket from `inboxes`.
    pub(super) fn adopt(&mut self, record: SupervisorRecord, mut inboxes: HashMap<u32, Inbox>) {
        let now = Instant::now();
        self.slots =
            record.slots.into_iter().map(|slot| Slot::adopt(slot, now, &mut inboxes)).collect();
        self.live = record
            .retiring
            .into_iter()
            .map(|worker| Worker::adopt(worker, &mut inboxes))
            .chain(self.slots.iter().flat_map(|slot| slot.worker.clone()))
            .collect();
        self.next_slot_id = record.next_slot_id;
        self.last_reload = record.last_reload;
        self.upgrades = record.upgrades + 1;
        self.draining = record
            .draining
            .into_iter()
            .filter_map(|draining| {
                let worker = self.live.iter().find(|w| w.pid == draining.pid)?.clone();
                let since = Duration::from_secs_f64(draining.secs.max(0.0));
                let since = now.checked_sub(since).unwrap_or(now);
                Some(Draining {
                    slot: draining.slot,
                    generation: draining.generation,
                    worker,
                    since,
                })
            })
            .collect();
    }
}

impl Slot {
    fn handover(&self, now: Instant) -> SlotRecord {
        let life = &self.life;
        SlotRecord {
            id: self.id,
            worker: self.worker.as_ref().map(Worker::handover),
            restarts: life.restarts,
            exit_ages_secs: life.exits.iter().map(|&exit| (now - exit).as_secs_f64()).collect(),
            in_table: life.in_table(),
            backoff_ms: life.backoff.as_millis() as u64,
            hangs: life.hangs,
            hung: life.phase == Phase::Ejected(Ejection::Hung),
            was_ready: life.first_ready == FirstReady::Seen,
        }
    }

    fn adopt(record: SlotRecord, now: Instant, inboxes: &mut HashMap<u32, Inbox>) -> Self {
        let ago =
            |secs: f64| now.checked_sub(Duration::from_secs_f64(secs.max(0.0))).unwrap_or(now);
        let worker = record.worker.map(|worker| Worker::adopt(worker, inboxes));
        let ready = worker.as_ref().is_some_and(Worker::is_ready);
        let phase = match (record.in_table, record.hung) {
            (true, _) if ready => Phase::Ready,
            (true, _) => Phase::Starting,
            (false, true) => Phase::Ejected(Ejection::Hung),
            (false, false) => Phase::Ejected(Ejection::CrashLooping),
        };
        let life = Life {
            phase,
            first_ready: if record.was_ready { FirstReady::Seen } else { FirstReady::Waiting },
            restarts: record.restarts,
            exits: record.exit_ages_secs.into_iter().map(ago).collect(),
            backoff: Duration::from_millis(record.backoff_ms),
            hangs: record.hangs,
        };
        Slot { id: record.id, worker, life, progress: Progress { accepted: 0, at: now } }
    }
}

impl Worker {
    fn handover(&self) -> WorkerRecord {
        WorkerRecord {
            pid: self.pid,
            uptime_secs: self.started.elapsed().as_secs_f64(),
            ready: self.is_ready(),
            status: self.status(),
            notify: self
                .inbox
                .as_ref()
                .map(|inbox| NotifyRecord { fd: inbox.as_raw_fd(), path: inbox.path().to_owned() }),
        }
    }

    fn adopt(record: WorkerRecord, inboxes: &mut HashMap<u32, Inbox>) -> Self {
        let uptime = Duration::from_secs_f64(record.uptime_secs.max(0.0));
        let inbox = inboxes.remove(&record.pid);
        Worker::adopted(record.pid, uptime, record.ready, record.status, inbox)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::supervisor::slot::Ejection::{CrashLooping, Hung};

    #[test]
    fn every_phase_survives_the_record_in_its_version_2_shape() {
        let now = Instant::now();
        for (phase, ready) in [
            (Phase::Starting, false),
            (Phase::Ready, true),
            (Phase::Ejected(Hung), false),
            (Phase::Ejected(CrashLooping), true),
        ] {
            let life = Life { phase, first_ready: FirstReady::Seen, hangs: 2, ..Life::default() };
            let worker = Worker::adopted(7, Duration::from_secs(3), ready, None, None);
            let slot = Slot {
                id: 4,
                worker: Some(worker),
                life,
                progress: Progress { accepted: 0, at: now },
            };
            let record = slot.handover(now);
            let json = serde_json::to_value(&record).expect("JSON");
            let keys: Vec<&str> =
                json.as_object().expect("object").keys().map(|k| k.as_str()).collect();
            assert_eq!(
                keys,
                [
                    "backoff_ms",
                    "exit_ages_secs",
                    "hangs",
                    "hung",
                    "id",
                    "in_table",
                    "restarts",
                    "was_ready",
                    "worker"
                ]
            );
            let back = Slot::adopt(
                serde_json::from_value(json).expect("a SlotRecord"),
                now,
                &mut HashMap::new(),
            );
            assert_eq!(back.life, slot.life, "{phase:?}");
        }
    }
}
