//! The lookup table that maps a client hash to a worker slot.
//!
//! Like Maglev's, the table has a fixed number of entries (`TABLE_SIZE`, far more than slots) so
//! the eBPF program finds a slot with one array lookup. It is filled by rendezvous hashing: each
//! entry goes to the slot with the highest score for it. That makes the table a pure function of
//! the seed and the set of live slots, and gives the strictest form of consistency: removing a
//! slot moves only that slot's entries, and adding one takes about 1/N of the entries, evenly
//! from the others.

use sticky_common::{MAX_SLOTS, TABLE_SIZE, Table, hash::slot_score};

/// Builds the table for the live `slots` (at least one, each below `MAX_SLOTS`); entry `i`
/// holds the slot of the clients whose hash is `i` modulo `TABLE_SIZE`.
pub fn build(seed: u64, slots: &[u32]) -> Box<Table> {
    assert!(!slots.is_empty(), "a table needs at least one slot");
    assert!(slots.iter().all(|&slot| slot < MAX_SLOTS), "slots must be below MAX_SLOTS");
    let mut table = Box::new([0; TABLE_SIZE]);
    for (entry, slot) in (0..).zip(table.iter_mut()) {
        let best = slots.iter().max_by_key(|&&candidate| slot_score(seed, entry, candidate));
        *slot = *best.expect("slots is not empty") as u8;
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shares(table: &Table, slots: u8) -> Vec<usize> {
        (0..slots).map(|slot| table.iter().filter(|&&s| s == slot).count()).collect()
    }

    #[test]
    fn entries_are_balanced() {
        for slots in [2u8, 4, 7, 32] {
            let all: Vec<u32> = (0..u32::from(slots)).collect();
            let shares = shares(&build(42, &all), slots);
            let mean = TABLE_SIZE as f64 / f64::from(slots);
            // Each share is a binomial draw: allow four standard deviations.
            let tolerance = 4.0 * mean.sqrt();
            let off = shares.iter().map(|&share| (share as f64 - mean).abs()).fold(0.0, f64::max);
            assert!(off < tolerance, "{slots} slots: {shares:?}");
        }
    }

    #[test]
    fn removing_a_slot_moves_only_its_entries() {
        let before = build(7, &[0, 1, 2, 3, 4]);
        let after = build(7, &[0, 1, 3, 4]);
        for (old, new) in before.iter().zip(after.iter()) {
            if *old != 2 {
                assert_eq!(old, new, "an entry of a kept slot moved");
            } else {
                assert_ne!(*new, 2);
            }
        }
        // The removed slot's entries spread over all the others.
        let moved: Vec<u8> =
            before.iter().zip(after.iter()).filter(|(o, _)| **o == 2).map(|(_, n)| *n).collect();
        for slot in [0, 1, 3, 4] {
            let share = moved.iter().filter(|&&s| s == slot).count() as f64 / moved.len() as f64;
            assert!((0.2..0.3).contains(&share), "slot {slot} took {share}");
        }
    }

    #[test]
    fn adding_a_slot_moves_about_one_in_n() {
        let before = build(9, &[0, 1, 2, 3]);
        let after = build(9, &[0, 1, 2, 3, 4]);
        let moved = before.iter().zip(after.iter()).filter(|(o, n)| o != n).count();
        assert!(
            after.iter().zip(before.iter()).all(|(n, o)| n == o || *n == 4),
            "moved between old slots"
        );
        let fraction = moved as f64 / TABLE_SIZE as f64;
        assert!((0.19..0.21).contains(&fraction), "{fraction}");
    }

    #[test]
    fn the_seed_changes_the_table() {
        assert_ne!(build(1, &[0, 1, 2, 3]), build(2, &[0, 1, 2, 3]));
        assert_eq!(build(1, &[0, 1, 2, 3]), build(1, &[3, 2, 1, 0]));
    }
}
