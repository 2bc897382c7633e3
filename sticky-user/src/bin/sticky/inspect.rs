//! `sticky inspect-table` (hidden): the lookup table for N slots, as the benchmark reads it.

use std::time::Instant;

use anyhow::ensure;
use serde_json::json;
use sticky_common::MAX_SLOTS;
use sticky_user::table;

/// How many builds the build time is the median of.
const BUILDS: usize = 21;

/// Prints, as JSON, how many entries each of `slots` slots owns and the median time one build
/// of the table takes.
pub fn run(slots: u32, seed: u64) -> anyhow::Result<()> {
    ensure!((1..=MAX_SLOTS).contains(&slots), "--slots must be between 1 and {MAX_SLOTS}");
    let live: Vec<u32> = (0..slots).collect();
    let mut times: Vec<f64> = (0..BUILDS)
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(table::build(seed, &live));
            start.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    times.sort_by(f64::total_cmp);
    let table = table::build(seed, &live);
    let mut entries = vec![0u32; slots as usize];
    for &slot in table.iter() {
        entries[usize::from(slot)] += 1;
    }
    let report = json!({ "slots": slots, "entries": entries, "build_micros": times[BUILDS / 2] });
    println!("{report}");
    Ok(())
}
