//! Every transition of a slot's life, with time as an input: no process, no sleep.

use std::time::{Duration, Instant};

use super::{
    Action::{Eject, Kill, Restart, UpdateTable},
    Ejection::{CrashLooping, Hung},
    Event, FIRST_BACKOFF, FirstReady, Life, MAX_BACKOFF, Phase, Rules,
};
use crate::supervisor::worker::Exit;

const KERNEL: Rules =
    Rules { crash_limit: 3, crash_window: Duration::from_secs(30), can_eject: true };
const PLAIN: Rules = Rules { can_eject: false, ..KERNEL };

fn exited(ready: bool) -> Event {
    Event::Exited { exit: Exit::new("exited with status 1".into()), ready }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn a_new_slot_is_starting_in_the_table_and_becomes_ready() {
    let mut life = Life::default();
    assert_eq!((life.phase, life.in_table()), (Phase::Starting, true));
    assert_eq!(life.on(Event::Ready, Instant::now(), KERNEL), []);
    assert_eq!(life.phase, Phase::Ready);
    assert_eq!(life.first_ready, FirstReady::Seen);
}

#[test]
fn an_exit_restarts_with_a_doubling_backoff_up_to_the_cap() {
    let (mut life, start) = (Life::default(), Instant::now());
    life.on(Event::Ready, start, KERNEL);
    // Far apart: never a crash loop.
    let delays: Vec<_> =
        (0..8).map(|n| life.on(exited(true), start + secs(60 * n), KERNEL)).collect();
    let expected = [100, 200, 400, 800, 1600, 3200, 5000, 5000]
        .map(|ms| vec![Restart(Duration::from_millis(ms))]);
    assert_eq!(delays, expected);
    assert_eq!(life.backoff, MAX_BACKOFF);
    assert_eq!((life.phase, life.restarts), (Phase::Starting, 8));
}

#[test]
fn a_start_that_fails_is_retried_after_the_backoff_without_counting_an_exit() {
    let mut life = Life::default();
    assert_eq!(life.on(Event::StartFailed, Instant::now(), KERNEL), [Restart(FIRST_BACKOFF)]);
    assert_eq!((life.phase, life.restarts, life.exits.len()), (Phase::Starting, 0, 0));
    assert_eq!(life.backoff, FIRST_BACKOFF * 2);
}

#[test]
fn the_crash_limit_within_the_window_ejects_the_slot() {
    let (mut life, start) = (Life::default(), Instant::now());
    assert_eq!(life.on(exited(false), start, KERNEL), [Restart(FIRST_BACKOFF)]);
    assert_eq!(life.on(exited(false), start + secs(10), KERNEL).len(), 1);
    let third = life.on(exited(false), start + secs(20), KERNEL);
    assert_eq!(third, [Eject, Restart(FIRST_BACKOFF * 4)]);
    assert_eq!((life.phase, life.in_table()), (Phase::Ejected(CrashLooping), false));
    // Out of the table already: more exits only restart.
    assert_eq!(life.on(exited(false), start + secs(21), KERNEL), [Restart(FIRST_BACKOFF * 8)]);
    assert_eq!(life.phase, Phase::Ejected(CrashLooping));
}

#[test]
fn exits_older_than_the_window_do_not_count() {
    let (mut life, start) = (Life::default(), Instant::now());
    life.on(exited(false), start, KERNEL);
    life.on(exited(false), start + secs(20), KERNEL);
    // The first is 31 s old now: two in the window, not three.
    let third = life.on(exited(false), start + secs(31), KERNEL);
    assert_eq!(third, [Restart(FIRST_BACKOFF * 4)]);
    assert_eq!((life.phase, life.exits.len()), (Phase::Starting, 2));
    // Exactly the window's length old still counts.
    let fourth = life.on(exited(false), start + secs(50), KERNEL);
    assert_eq!(fourth[0], Eject);
}

#[test]
fn without_kernel_dispatch_a_crash_loop_stays_in_the_table() {
    let (mut life, start) = (Life::default(), Instant::now());
    for n in 0..5 {
        let actions = life.on(exited(false), start + secs(n), PLAIN);
        assert!(matches!(actions[..], [Restart(_)]), "{actions:?}");
    }
    assert_eq!((life.phase, life.in_table()), (Phase::Starting, true));
}

#[test]
fn a_crash_looping_slot_rejoins_once_a_worker_stays_up() {
    let (mut life, start) = (Life::default(), Instant::now());
    for n in 0..3 {
        life.on(exited(false), start + secs(n), KERNEL);
    }
    assert_eq!(life.phase, Phase::Ejected(CrashLooping));
    // Ready is not enough.
    assert_eq!(life.on(Event::Ready, start + secs(4), KERNEL), []);
    assert_eq!(life.phase, Phase::Ejected(CrashLooping));
    let later = start + secs(14);
    assert_eq!(life.on(Event::StayedUp { ready: true }, later, KERNEL), [UpdateTable]);
    assert_eq!((life.phase, life.backoff), (Phase::Ready, FIRST_BACKOFF));
    // A worker that stays up but is not ready (yet) brings it back as starting.
    let mut unready = Life { phase: Phase::Ejected(CrashLooping), ..Life::default() };
    assert_eq!(unready.on(Event::StayedUp { ready: false }, later, KERNEL), [UpdateTable]);
    assert_eq!(unready.phase, Phase::Starting);
}

#[test]
fn staying_up_resets_the_backoff_of_a_slot_in_the_table() {
    let (mut life, now) = (Life::default(), Instant::now());
    life.on(exited(true), now, KERNEL);
    life.on(exited(true), now + secs(40), KERNEL);
    assert_eq!(life.on(Event::StayedUp { ready: true }, now + secs(50), KERNEL), []);
    assert_eq!((life.phase, life.backoff), (Phase::Starting, FIRST_BACKOFF));
}

#[test]
fn a_hang_ejects_and_kills_and_the_slot_rejoins_when_the_next_worker_is_ready() {
    let (mut life, now) = (Life::default(), Instant::now());
    life.on(Event::Ready, now, KERNEL);
    // Found hung (by its queue or its watchdog: the same event).
    assert_eq!(life.on(Event::Hung, now, KERNEL), [Eject, Kill]);
    assert_eq!((life.phase, life.hangs), (Phase::Ejected(Hung), 1));
    // The killed worker exits: restarted, still out.
    assert_eq!(life.on(exited(true), now + secs(1), KERNEL), [Restart(FIRST_BACKOFF)]);
    assert_eq!(life.phase, Phase::Ejected(Hung));
    // Staying up is not enough for a hung slot; ready is.
    assert_eq!(life.on(Event::StayedUp { ready: false }, now + secs(12), KERNEL), []);
    assert_eq!(life.phase, Phase::Ejected(Hung));
    assert_eq!(life.on(Event::Ready, now + secs(13), KERNEL), [UpdateTable]);
    assert_eq!(life.phase, Phase::Ready);
}

#[test]
fn a_hang_without_kernel_dispatch_or_out_of_the_table_only_kills() {
    let mut plain = Life { phase: Phase::Ready, ..Life::default() };
    assert_eq!(plain.on(Event::Hung, Instant::now(), PLAIN), [Kill]);
    assert_eq!((plain.phase, plain.hangs), (Phase::Ready, 1));
    let mut ejected = Life { phase: Phase::Ejected(CrashLooping), ..Life::default() };
    assert_eq!(ejected.on(Event::Hung, Instant::now(), KERNEL), [Kill]);
    assert_eq!(ejected.phase, Phase::Ejected(CrashLooping));
}

#[test]
fn the_start_counts_a_slot_ready_once_and_keeps_the_last_failure_before() {
    let (mut life, now) = (Life::default(), Instant::now());
    life.on(exited(false), now, KERNEL);
    assert_eq!(life.first_ready, FirstReady::Failed(Exit::new("exited with status 1".into())));
    life.on(Event::Ready, now, KERNEL);
    assert_eq!(life.first_ready, FirstReady::Seen);
    // Ready once is enough: a later worker that fails does not undo it.
    life.on(exited(false), now, KERNEL);
    assert_eq!(life.first_ready, FirstReady::Seen);
}

#[test]
fn a_leaving_slot_is_out_of_the_table_and_does_not_rejoin() {
    let mut life = Life { phase: Phase::Ejected(CrashLooping), ..Life::default() };
    assert_eq!(life.on(Event::Leave, Instant::now(), KERNEL), []);
    assert_eq!((life.phase, life.in_table()), (Phase::Stopping, false));
    assert_eq!(life.on(Event::StayedUp { ready: true }, Instant::now(), KERNEL), []);
    assert_eq!(life.on(Event::Ready, Instant::now(), KERNEL), []);
    assert_eq!(life.phase, Phase::Stopping);
}
