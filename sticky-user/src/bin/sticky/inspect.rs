//! `sticky inspect-table` (hidden): the lookup table for N slots, as the benchmark reads it, and
//! its first entries, as a balancer's bucket map can reuse them (docs/deployment.md).

use std::time::Instant;

use anyhow::{bail, ensure};
use serde_json::json;
use sticky_common::{MAX_SLOTS, TABLE_SIZE};
use sticky_user::table;

/// How many builds the build time is the median of.
const BUILDS: usize = 21;

/// Prints, as JSON, how many entries each of `slots` slots owns in the table without the slots
/// in `without`, the median time one build of it takes, and its first `entries` entries.
pub fn run(slots: u32, seed: u64, without: &[u32], entries: usize) -> anyhow::Result<()> {
    ensure!((1..=MAX_SLOTS).contains(&slots), "--slots must be between 1 and {MAX_SLOTS}");
    ensure!(entries <= TABLE_SIZE, "--entries must be at most {TABLE_SIZE}");
    if let Some(slot) = without.iter().find(|&&slot| slot >= slots) {
        bail!("--without {slot}: there are only {slots} slots");
    }
    let live: Vec<u32> = (0..slots).filter(|slot| !without.contains(slot)).collect();
    ensure!(!live.is_empty(), "--without leaves no slot in the table");
    let mut times: Vec<f64> = (0..BUILDS)
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(table::build(seed, &live));
            start.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    times.sort_by(f64::total_cmp);
    let table = table::build(seed, &live);
    let mut owned = vec![0u32; slots as usize];
    for &slot in table.iter() {
        owned[usize::from(slot)] += 1;
    }
    let mut report = json!({ "slots": slots, "entries": owned, "build_micros": times[BUILDS / 2] });
    if entries > 0 {
        report["table"] = json!(table[..entries]);
    }
    println!("{report}");
    Ok(())
}
