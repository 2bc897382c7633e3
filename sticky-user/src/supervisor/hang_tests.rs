//! The hang decision, via the accept queue and via the watchdog, with time as an input.

use std::time::{Duration, Instant};

use super::{Queue, Seen, verdict};
use crate::{
    config::{ReadyMode, WorkerPolicy},
    supervisor::state::Progress,
};

fn policy(hang_timeout: Option<u64>, worker_watchdog: Option<u64>) -> WorkerPolicy {
    WorkerPolicy {
        grace_period: Duration::from_secs(5),
        crash_limit: 5,
        crash_window: Duration::from_secs(30),
        ready: ReadyMode::Notify,
        ready_delay: Duration::ZERO,
        ready_timeout: Duration::from_secs(30),
        hang_timeout: hang_timeout.map(Duration::from_secs),
        worker_watchdog: worker_watchdog.map(Duration::from_secs),
    }
}

const READY: Option<Seen> = Some(Seen { unfed: Duration::ZERO, in_table: true });

/// A TCP slot's queue: `selected` given, `waiting` of them not accepted yet.
fn queue(waiting: u32, selected: u64) -> impl FnOnce() -> Option<Queue> {
    move || Some(Queue { waiting, progress: selected - u64::from(waiting) })
}

#[test]
fn a_queue_that_waits_without_an_accept_for_the_timeout_is_a_hang() {
    let (policy, start) = (policy(Some(5), None), Instant::now());
    let mut progress = Progress { accepted: 0, at: start };
    let at = |secs| start + Duration::from_secs(secs);
    // 10 given, 3 waiting: 7 accepted, which is progress.
    assert_eq!(verdict(&mut progress, READY, queue(3, 10), &policy, at(1)), None);
    assert_eq!((progress.accepted, progress.at), (7, at(1)));
    // Still 7 accepted, 4 waiting: not yet 5 s.
    assert_eq!(verdict(&mut progress, READY, queue(4, 11), &policy, at(6)), None);
    let hung = verdict(&mut progress, READY, queue(4, 11), &policy, at(7));
    assert_eq!(hung.as_deref(), Some("4 connections or datagrams waiting, none taken for 5 s"));
}

#[test]
fn a_slow_worker_that_accepts_or_an_empty_queue_is_not_hung() {
    let (policy, start) = (policy(Some(5), None), Instant::now());
    let mut progress = Progress { accepted: 0, at: start };
    for n in 1..10 {
        // One more accepted every 4 s: slow, never hung.
        let at = start + Duration::from_secs(4 * n);
        assert_eq!(verdict(&mut progress, READY, queue(50, 50 + n), &policy, at), None);
    }
    // Nothing waiting: nothing to accept, however long.
    let late = start + Duration::from_secs(600);
    assert_eq!(verdict(&mut progress, READY, queue(0, 59), &policy, late), None);
    assert_eq!(progress.at, late);
}

#[test]
fn the_queue_counts_only_in_the_table_with_kernel_dispatch_and_a_timeout() {
    let start = Instant::now();
    let late = start + Duration::from_secs(600);
    let unread = || -> Option<Queue> { panic!("the queue is not read") };
    let out = Some(Seen { unfed: Duration::ZERO, in_table: false });
    let mut progress = Progress { accepted: 0, at: start };
    assert_eq!(verdict(&mut progress, out, unread, &policy(Some(5), None), late), None);
    assert_eq!(verdict(&mut progress, READY, unread, &policy(None, None), late), None);
    // Without kernel dispatch there is no queue to read.
    assert_eq!(verdict(&mut progress, READY, || None, &policy(Some(5), None), late), None);
    assert_eq!(progress.at, start);
}

#[test]
fn a_missed_watchdog_is_a_hang_in_or_out_of_the_table() {
    let (policy, now) = (policy(None, Some(2)), Instant::now());
    let mut progress = Progress { accepted: 0, at: now };
    let fed = Some(Seen { unfed: Duration::from_secs(2), in_table: true });
    assert_eq!(verdict(&mut progress, fed, || None, &policy, now), None);
    for in_table in [true, false] {
        let hungry = Some(Seen { unfed: Duration::from_millis(2001), in_table });
        let hung = verdict(&mut progress, hungry, || None, &policy, now);
        assert_eq!(hung.as_deref(), Some("no WATCHDOG=1 for 2 s"));
    }
}

#[test]
fn a_slot_without_a_ready_worker_is_not_hung_and_starts_over() {
    let (policy, start) = (policy(Some(5), Some(1)), Instant::now());
    let mut progress = Progress { accepted: 9, at: start };
    let later = start + Duration::from_secs(60);
    assert_eq!(verdict(&mut progress, None, queue(5, 5), &policy, later), None);
    assert_eq!((progress.accepted, progress.at), (0, later));
}
