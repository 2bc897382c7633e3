//! Balance: how evenly the lookup table, and so real clients, spread over the workers, and how
//! many clients a change of the worker count moves.
//!
//! The table's shares come from the release binary itself (`sticky inspect-table`); the client
//! figures from a running sticky with kernel dispatch, probed once from each of many distinct
//! addresses, before and after `sticky scale`.

use std::{collections::HashMap, path::Path, process::Command};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use super::{
    load,
    modes::Mode,
    servers::{ADDRESS, Server},
};
use crate::shell;

/// Slot counts whose tables are inspected.
const TABLE_SLOTS: [u32; 3] = [4, 32, 128];
/// Workers in the client-level run.
const WORKERS: u32 = 32;

/// Measures balance; returns the figures as JSON and prints a table.
pub fn run(sticky: &Path, dir: &Path, clients: u32) -> anyhow::Result<Value> {
    let mut tables = Vec::new();
    for slots in TABLE_SLOTS {
        let output = Command::new(sticky)
            .args(["inspect-table", "--slots", &slots.to_string()])
            .output()
            .context("cannot run sticky inspect-table")?;
        if !output.status.success() {
            bail!("sticky inspect-table failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        let table: Value = serde_json::from_slice(&output.stdout)?;
        let entries: Vec<f64> = table["entries"]
            .as_array()
            .context("sticky inspect-table printed no \"entries\" array")?
            .iter()
            .filter_map(Value::as_f64)
            .collect();
        let (max, min) = spread(&entries);
        tables.push(json!({
            "slots": slots, "max_mean": max, "min_mean": min,
            "build_ms": table["build_micros"].as_f64().unwrap_or(f64::NAN) / 1000.0,
        }));
    }
    shell::say(&format!("balance: {clients} clients against {WORKERS} workers"));
    let server = Server::start(Mode::Kernel, WORKERS, sticky, dir)?;
    let measured = clients_and_scaling(sticky, dir, clients);
    server.stop();
    let (imbalance, up, down) = measured?;
    let report = json!({
        "tables": tables,
        "clients": clients, "workers": WORKERS, "client_max_mean": imbalance,
        "moved_scaling_up": up, "moved_scaling_down": down,
    });
    print(&report);
    Ok(report)
}

/// max/mean of the clients per worker, and the fractions of clients moved by scaling
/// WORKERS → WORKERS+1 and (back, then) WORKERS → WORKERS−1.
fn clients_and_scaling(sticky: &Path, dir: &Path, clients: u32) -> anyhow::Result<(f64, f64, f64)> {
    let address = ADDRESS.parse()?;
    let base = load::probe(address, clients);
    let mut per_worker: HashMap<u32, f64> = HashMap::new();
    for pid in base.iter().flatten() {
        *per_worker.entry(*pid).or_default() += 1.0;
    }
    let counts: Vec<f64> = per_worker.into_values().collect();
    let (imbalance, _) = spread(&counts);
    let scale = |workers: u32| -> anyhow::Result<Vec<Option<u32>>> {
        shell::run(
            Command::new(sticky)
                .args(["scale", &workers.to_string(), "--control"])
                .arg(dir.join("main.sock")),
        )?;
        Ok(load::probe(address, clients))
    };
    let up = moved(&base, &scale(WORKERS + 1)?);
    scale(WORKERS)?;
    let down = moved(&base, &scale(WORKERS - 1)?);
    Ok((imbalance, up, down))
}

/// max/mean and min/mean of `values`.
fn spread(values: &[f64]) -> (f64, f64) {
    let mean = values.iter().sum::<f64>() / values.len().max(1) as f64;
    let max = values.iter().copied().fold(f64::MIN, f64::max);
    let min = values.iter().copied().fold(f64::MAX, f64::min);
    (max / mean, min / mean)
}

/// The fraction of clients answered by another worker than before (both answered).
fn moved(before: &[Option<u32>], after: &[Option<u32>]) -> f64 {
    let both: Vec<(u32, u32)> =
        before.iter().zip(after).filter_map(|(b, a)| Some(((*b)?, (*a)?))).collect();
    both.iter().filter(|(b, a)| b != a).count() as f64 / both.len().max(1) as f64
}

fn print(report: &Value) {
    println!("\nBalance (lookup table: entries per slot; clients: connections per worker)");
    println!("{:>6}  {:>9}  {:>9}  {:>9}", "slots", "max/mean", "min/mean", "build ms");
    for table in report["tables"].as_array().into_iter().flatten() {
        println!(
            "{:>6}  {:>9.3}  {:>9.3}  {:>9.2}",
            table["slots"].as_u64().unwrap_or(0),
            table["max_mean"].as_f64().unwrap_or(f64::NAN),
            table["min_mean"].as_f64().unwrap_or(f64::NAN),
            table["build_ms"].as_f64().unwrap_or(f64::NAN)
        );
    }
    let workers = report["workers"].as_u64().unwrap_or(0);
    println!(
        "{} clients against {workers} workers: max/mean {:.3}; scaling {workers}→{} moved {:.2}% \
         (ideal {:.2}%), {workers}→{} moved {:.2}% (ideal {:.2}%)",
        report["clients"],
        report["client_max_mean"].as_f64().unwrap_or(f64::NAN),
        workers + 1,
        report["moved_scaling_up"].as_f64().unwrap_or(f64::NAN) * 100.0,
        100.0 / (workers + 1) as f64,
        workers - 1,
        report["moved_scaling_down"].as_f64().unwrap_or(f64::NAN) * 100.0,
        100.0 / workers as f64,
    );
}
