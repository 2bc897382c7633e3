//! The lookup table that maps a client hash to a worker slot.
//!
//! The table has a fixed number of entries (`TABLE_SIZE`, far more than slots), so the eBPF
//! program finds a slot with one array lookup. Its fill has three properties:
//!
//! - **Balance.** Every live slot owns ⌊T/n⌋ or ⌈T/n⌉ of the T entries.
//! - **Least movement.** Adding the next slot moves exactly the entries it takes (⌊T/(n+1)⌋ or
//!   ⌈T/(n+1)⌉), each from a slot that had one more than it may keep; removing the highest slot
//!   is the same step backwards. Taking any slot out (an ejection) moves only its entries.
//! - **A pure function of the seed and the set of live slots**, so a restarted sticky and
//!   userspace dispatch map every client as before.
//!
//! How: the table for slots `0..n` is built one slot at a time. Every slot ranks its entries by
//! its own score for them (`slot_score`, the rendezvous hash, so the ranking is pseudo-random,
//! different for every slot and seed). Slot `k` takes from each earlier slot the entries beyond
//! that slot's new quota, those the giving slot ranks highest: who gives how many is fixed by
//! the quotas, which entries by the scores, and an entry that moved once is no likelier than
//! any other to move again. For a set with slots missing below its highest
//! (ejected slots), the missing slots' entries are then dealt to the live ones, each entry to
//! the live slot that scores highest for it among those still under quota.

use sticky_common::{MAX_SLOTS, TABLE_SIZE, Table, hash::slot_score};

// Dealing out needs every live slot's quota among fewer slots to be at least its quota among
// more (⌊T/(n−1)⌋ ≥ ⌈T/n⌉), which holds while n·(n−1) ≤ T.
const _: () = assert!(MAX_SLOTS as usize * (MAX_SLOTS as usize - 1) <= TABLE_SIZE);

/// The quota of slot `rank` among `slots`: ⌊T/slots⌋, plus one for the first `T mod slots`.
fn quota(rank: usize, slots: usize) -> usize {
    TABLE_SIZE / slots + usize::from(rank < TABLE_SIZE % slots)
}

/// Builds the table for the live `slots` (at least one, each below `MAX_SLOTS`, in any order);
/// entry `i` holds the slot of the clients whose hash is `i` modulo `TABLE_SIZE`.
pub fn build(seed: u64, slots: &[u32]) -> Box<Table> {
    assert!(!slots.is_empty(), "a table needs at least one slot");
    assert!(slots.iter().all(|&slot| slot < MAX_SLOTS), "slots must be below MAX_SLOTS");
    let mut live: Vec<u32> = slots.to_vec();
    live.sort_unstable();
    live.dedup();
    let count = *live.last().expect("not empty") as usize + 1;
    let mut owned = first_slot(seed);
    while owned.len() < count {
        add_slot(seed, &mut owned);
    }
    if live.len() < count {
        deal_out(seed, &mut owned, &live);
    }
    to_table(&owned)
}

/// Each slot's entries as keys: the entry in the low 16 bits under the entry's score for that
/// slot, in ascending order. Keys are distinct, so the order depends on nothing else.
type Owned = Vec<Vec<u64>>;

/// The key of `entry` in `slot`'s list.
fn key(seed: u64, entry: u16, slot: usize) -> u64 {
    slot_score(seed, u32::from(entry), slot as u32) & !0xffff | u64::from(entry)
}

/// The entry a key stands for.
fn entry(key: u64) -> usize {
    usize::from(key as u16)
}

/// Slot 0 owning every entry.
fn first_slot(seed: u64) -> Owned {
    let mut keys: Vec<u64> = (0..TABLE_SIZE as u16).map(|entry| key(seed, entry, 0)).collect();
    keys.sort_unstable();
    vec![keys]
}

/// Adds the next slot to the slots `0..owned.len()`: each gives up the entries beyond its new
/// quota, those it ranks highest (the ends of their lists), and the new slot ranks what it
/// took by its own scores.
fn add_slot(seed: u64, owned: &mut Owned) {
    let new = owned.len();
    let mut taken = Vec::with_capacity(quota(new, new + 1));
    for (rank, keys) in owned.iter_mut().enumerate() {
        let keep = quota(rank, new + 1);
        taken.extend(keys.drain(keep..).map(|old| key(seed, entry(old) as u16, new)));
    }
    taken.sort_unstable();
    owned.push(taken);
}

/// The table in which slot `i` owns the entries of `owned[i]`.
fn to_table(owned: &Owned) -> Box<Table> {
    let mut table = Box::new([0u8; TABLE_SIZE]);
    for (slot, keys) in owned.iter().enumerate() {
        for &key in keys {
            table[entry(key)] = slot as u8;
        }
    }
    table
}

/// Gives the entries of the slots missing from `live` (sorted) to the live slots, up to their
/// quotas among `live.len()` slots: each entry, in order, to the live slot under quota that
/// scores highest for it.
fn deal_out(seed: u64, owned: &mut Owned, live: &[u32]) {
    let mut room: Vec<usize> = live
        .iter()
        .enumerate()
        .map(|(rank, &slot)| quota(rank, live.len()) - owned[slot as usize].len())
        .collect();
    let mut orphans: Vec<u16> = Vec::new();
    for (slot, keys) in owned.iter_mut().enumerate() {
        if live.binary_search(&(slot as u32)).is_err() {
            orphans.extend(keys.drain(..).map(|key| entry(key) as u16));
        }
    }
    orphans.sort_unstable();
    for orphan in orphans {
        let best = (0..live.len())
            .filter(|&rank| room[rank] > 0)
            .max_by_key(|&rank| slot_score(seed, u32::from(orphan), live[rank]))
            .expect("the quotas cover every entry");
        room[best] -= 1;
        let slot = live[best] as usize;
        owned[slot].push(key(seed, orphan, slot));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shares(table: &Table) -> Vec<usize> {
        let mut shares = vec![0; MAX_SLOTS as usize];
        for &slot in table.iter() {
            shares[usize::from(slot)] += 1;
        }
        shares
    }

    /// Entries whose slot differs between two tables.
    fn moved(before: &Table, after: &Table) -> usize {
        before.iter().zip(after.iter()).filter(|(old, new)| old != new).count()
    }

    fn all(count: u32) -> Vec<u32> {
        (0..count).collect()
    }

    /// The tables for 1, 2, … MAX_SLOTS slots, built the way [`build`] builds each one.
    fn every_prefix(seed: u64) -> Vec<Box<Table>> {
        let mut owned = first_slot(seed);
        let mut tables = vec![to_table(&owned)];
        while owned.len() < MAX_SLOTS as usize {
            add_slot(seed, &mut owned);
            tables.push(to_table(&owned));
        }
        tables
    }

    const SEEDS: [u64; 3] = [1, 0x5eed, u64::MAX];

    #[test]
    fn every_slot_owns_its_quota_at_every_slot_count() {
        for seed in SEEDS {
            for (table, count) in every_prefix(seed).iter().zip(1..) {
                let shares = shares(table);
                let (low, high) =
                    (TABLE_SIZE / count as usize, TABLE_SIZE.div_ceil(count as usize));
                for (slot, &share) in shares.iter().enumerate().take(count as usize) {
                    assert!(
                        (low..=high).contains(&share),
                        "{count} slots: slot {slot} has {share}"
                    );
                }
                assert_eq!(shares[count as usize..].iter().sum::<usize>(), 0);
            }
        }
    }

    #[test]
    fn adding_or_removing_the_highest_slot_moves_only_what_it_must() {
        for seed in SEEDS {
            let tables = every_prefix(seed);
            assert_eq!(tables[9], build(seed, &all(10)), "not the table build makes");
            for (pair, count) in tables.windows(2).zip(1u32..) {
                let (small, large) = (&pair[0], &pair[1]);
                let minimum = quota(count as usize, count as usize + 1);
                assert_eq!(moved(small, large), minimum, "{count} → {} slots", count + 1);
                // Every moved entry went to the new slot.
                for (old, new) in small.iter().zip(large.iter()) {
                    assert!(old == new || *new == count as u8);
                }
            }
        }
    }

    #[test]
    fn taking_any_slot_out_moves_only_its_entries_and_stays_balanced() {
        for seed in SEEDS {
            for count in [2u32, 5, 32, 128] {
                let full = build(seed, &all(count));
                for out in [0, count / 2, count - 1] {
                    let live: Vec<u32> = all(count).into_iter().filter(|&s| s != out).collect();
                    let ejected = build(seed, &live);
                    for (old, new) in full.iter().zip(ejected.iter()) {
                        assert!(old == new || u32::from(*old) == out, "a kept slot's entry moved");
                    }
                    let shares = shares(&ejected);
                    assert_eq!(shares[out as usize], 0, "the ejected slot {out} keeps entries");
                    let (low, high) = (TABLE_SIZE / live.len(), TABLE_SIZE.div_ceil(live.len()));
                    assert!(live.iter().all(|&s| (low..=high).contains(&shares[s as usize])));
                    // And back: the rejoining slot takes back exactly its entries.
                    assert_eq!(build(seed, &all(count)), full);
                }
            }
        }
    }

    #[test]
    fn the_table_depends_on_the_seed_and_the_set_only() {
        assert_ne!(build(1, &[0, 1, 2, 3]), build(2, &[0, 1, 2, 3]));
        assert_eq!(build(1, &[0, 1, 2, 3]), build(1, &[3, 2, 1, 0]));
        // A set without its highest slots is the smaller prefix, however it came about.
        assert_eq!(build(5, &[0, 1, 2]), build(5, &all(3)));
    }

    #[test]
    fn moved_entries_come_from_every_slot_evenly() {
        let (before, after) = (build(9, &all(4)), build(9, &all(5)));
        let mut given = [0usize; 4];
        for (old, new) in before.iter().zip(after.iter()) {
            if old != new {
                given[usize::from(*old)] += 1;
            }
        }
        let (low, high) = (given.iter().min().unwrap(), given.iter().max().unwrap());
        assert!(high - low <= 1, "{given:?}");
    }
}
