//! The rolling restart's decisions: which slot next, when it ends, when it stops; and an
//! upgrade asked for during a roll, decided once the roll has ended.

use std::time::Duration;

use super::Roll;
use crate::{
    supervisor::{
        SupervisorError,
        upgrade::may_upgrade,
        worker::{Exit, NotReady},
    },
    upgrade::UpgradeError,
};

/// The slots a roll replaces when nothing stops it, with `slots` there at each step.
fn replaced(roll: &mut Roll, slots: impl Fn(usize) -> usize) -> Vec<usize> {
    let mut replaced = Vec::new();
    while let Some(slot) = roll.next(slots(replaced.len()), false).unwrap() {
        assert_eq!(Roll::candidate(slot, Ok(())).ok(), Some(()));
        replaced.push(slot);
    }
    replaced
}

#[test]
fn a_roll_replaces_every_slot_in_order_once() {
    assert_eq!(replaced(&mut Roll::new(4), |_| 4), [0, 1, 2, 3]);
    assert_eq!(replaced(&mut Roll::new(0), |_| 0), [] as [usize; 0]);
}

#[test]
fn a_worker_that_is_never_ready_stops_the_roll_at_its_slot() {
    let mut roll = Roll::new(3);
    assert_eq!(roll.next(3, false).unwrap(), Some(0));
    assert!(Roll::candidate(0, Ok(())).is_ok());
    assert_eq!(roll.next(3, false).unwrap(), Some(1));
    let timed_out = Roll::candidate(1, Err(NotReady::TimedOut(Duration::from_secs(2))));
    let Err(SupervisorError::ReloadStopped { slot, reason }) = timed_out else {
        panic!("{timed_out:?}")
    };
    assert_eq!((slot, reason.as_str()), (1, "the new worker was not ready within 2 s"));
    let exit = Exit::new("exited with status 3".into());
    let exited = Roll::candidate(2, Err(NotReady::Exited(exit))).unwrap_err();
    assert_eq!(
        exited.to_string(),
        "reload stopped at slot 2: the new worker exited with status 3 before it was ready; the \
         old workers keep serving"
    );
}

#[test]
fn a_scale_during_a_roll_neither_extends_it_nor_runs_past_the_slots() {
    // More slots meanwhile: the roll replaces the slots it began with.
    assert_eq!(replaced(&mut Roll::new(2), |_| 5), [0, 1]);
    // Fewer slots meanwhile: it ends at the last one there is.
    assert_eq!(replaced(&mut Roll::new(4), |done| if done < 1 { 4 } else { 2 }), [0, 1]);
}

#[test]
fn a_stop_during_a_roll_stops_it_but_not_a_finished_one() {
    let mut roll = Roll::new(2);
    assert_eq!(roll.next(2, false).unwrap(), Some(0));
    assert!(matches!(roll.next(2, true), Err(SupervisorError::Stopping)));
    let mut finished = Roll::new(1);
    assert_eq!(finished.next(1, false).unwrap(), Some(0));
    assert_eq!(finished.next(1, true).unwrap(), None);
}

/// Runs `roll` over `slots` slots to its end as the supervisor does, with the loader stopping
/// before slot `stop_at` and the candidate of slot `broken` never ready, then decides the
/// upgrade that was asked for meanwhile (it waited for the operation lock the roll held).
fn upgrade_after(
    slots: usize,
    stop_at: Option<usize>,
    broken: Option<usize>,
) -> (Vec<usize>, Result<(), UpgradeError>) {
    let (mut roll, mut replaced, mut stopping) = (Roll::new(slots), Vec::new(), false);
    loop {
        stopping |= stop_at == Some(replaced.len());
        let Ok(Some(slot)) = roll.next(slots, stopping) else { break };
        let ready = if broken == Some(slot) {
            Err(NotReady::TimedOut(Duration::from_secs(2)))
        } else {
            Ok(())
        };
        if Roll::candidate(slot, ready).is_err() {
            break;
        }
        replaced.push(slot);
    }
    (replaced, may_upgrade(stopping, false))
}

#[test]
fn an_upgrade_asked_during_a_roll_goes_on_once_it_has_ended() {
    // Finished: every slot has its new worker, which the upgrade hands over.
    let (replaced, upgrade) = upgrade_after(4, None, None);
    assert_eq!((replaced.as_slice(), upgrade.is_ok()), ([0, 1, 2, 3].as_slice(), true));
    // Stopped at a broken slot: the old workers from there on keep serving and are handed
    // over as they are.
    let (replaced, upgrade) = upgrade_after(4, None, Some(2));
    assert_eq!((replaced.as_slice(), upgrade.is_ok()), ([0, 1].as_slice(), true));
}

#[test]
fn an_upgrade_asked_during_a_roll_that_a_stop_ended_is_refused() {
    let (replaced, upgrade) = upgrade_after(4, Some(1), None);
    assert_eq!(replaced, [0]);
    assert_eq!(upgrade.unwrap_err().to_string(), "upgrade refused: sticky is stopping");
}

#[test]
fn node_workers_ipc_channels_refuse_an_upgrade() {
    let refused = may_upgrade(false, true).unwrap_err();
    assert!(refused.to_string().contains("--handoff node"), "{refused}");
    assert!(matches!(may_upgrade(true, true), Err(UpgradeError::Stopping)));
}
