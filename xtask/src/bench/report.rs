//! Aggregating samples into the benchmark's table and JSON file, and reading that file back
//! to draw its picture again.

use std::{fmt::Write as _, fs, path::Path};

use anyhow::Context as _;
use serde::{Deserialize, Deserializer, Serialize};

use super::{
    chart,
    load::{CLIENTS, CONCURRENCY, LoadResult},
};

/// One measured run, as `latest.json` holds it (a figure that is not a number is `null`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    #[serde(deserialize_with = "number")]
    pub conn_per_s: f64,
    #[serde(deserialize_with = "number")]
    p50_us: f64,
    #[serde(deserialize_with = "number")]
    pub p99_us: f64,
    #[serde(deserialize_with = "number")]
    p999_us: f64,
    /// Server CPU (all its processes) per 1000 connections, in milliseconds: CPU µs per
    /// connection.
    #[serde(rename = "cpu_ms_per_1000_conn", deserialize_with = "number")]
    pub cpu_ms_per_1000: f64,
    /// The same for the server's first process alone (the userspace or seed master).
    #[serde(rename = "first_process_cpu_ms_per_1000_conn", deserialize_with = "number")]
    main_cpu_ms_per_1000: f64,
    #[serde(deserialize_with = "number")]
    sticky_share: f64,
    #[serde(rename = "max_over_mean", deserialize_with = "number")]
    imbalance: f64,
    failed: u64,
    #[serde(rename = "bpf_ns_per_dispatch")]
    bpf_ns: Option<f64>,
}

/// A figure JSON holds as `null` when it was not a number (NaN: no request answered).
fn number<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

impl Sample {
    /// The figures of one load run and the server CPU it cost.
    pub fn new(load: &LoadResult, cpu_ms: f64, main_cpu_ms: f64, bpf_ns: Option<f64>) -> Self {
        Self {
            conn_per_s: load.rate(),
            p50_us: load.latency(0.5),
            p99_us: load.latency(0.99),
            p999_us: load.latency(0.999),
            cpu_ms_per_1000: cpu_ms / load.ok.max(1) as f64 * 1000.0,
            main_cpu_ms_per_1000: main_cpu_ms / load.ok.max(1) as f64 * 1000.0,
            sticky_share: load.sticky_share(),
            imbalance: load.imbalance(),
            failed: load.failed,
            bpf_ns,
        }
    }
}

/// Every sample, per mode, in the order measured: `latest.json`.
#[derive(Serialize, Deserialize)]
pub struct Report {
    pub quick: bool,
    pub workers: u32,
    pub concurrency: usize,
    pub clients: u32,
    pub machine: Machine,
    pub modes: Vec<ModeSamples>,
    scaling: Vec<ScalingSample>,
}

/// The machine the benchmark ran on.
#[derive(Serialize, Deserialize)]
pub struct Machine {
    pub cpus: usize,
    pub kernel: String,
}

/// The samples of one mode.
#[derive(Serialize, Deserialize)]
pub struct ModeSamples {
    pub mode: String,
    pub samples: Vec<Sample>,
}

/// A kernel-dispatch sample with `workers` workers.
#[derive(Serialize, Deserialize)]
struct ScalingSample {
    workers: u32,
    sample: Sample,
}

pub fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn spread(values: &[f64]) -> f64 {
    let max = values.iter().copied().fold(f64::MIN, f64::max);
    let min = values.iter().copied().fold(f64::MAX, f64::min);
    if values.len() < 2 { 0.0 } else { (max - min) / median(values.to_vec()) }
}

impl Report {
    /// An empty report.
    pub fn new(quick: bool, workers: u32) -> Self {
        let machine = Machine {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel: kernel_release(),
        };
        let (concurrency, clients) = (CONCURRENCY, CLIENTS);
        Self { quick, workers, concurrency, clients, machine, modes: vec![], scaling: vec![] }
    }

    /// The report in `dir`'s `latest.json`.
    pub fn read(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join("latest.json");
        let text = fs::read_to_string(&path).with_context(|| {
            format!("cannot read {}: run `cargo xtask bench` first", path.display())
        })?;
        serde_json::from_str(&text).with_context(|| format!("cannot parse {}", path.display()))
    }

    /// Adds a sample of `mode`.
    pub fn add(&mut self, mode: &str, sample: Sample) {
        match self.modes.iter_mut().find(|m| m.mode == mode) {
            Some(m) => m.samples.push(sample),
            None => self.modes.push(ModeSamples { mode: mode.to_owned(), samples: vec![sample] }),
        }
    }

    /// Adds a kernel-dispatch sample with `workers` workers.
    pub fn add_scaling(&mut self, workers: u32, sample: Sample) {
        self.scaling.push(ScalingSample { workers, sample });
    }

    /// The median of `field` over `mode`'s samples.
    pub fn median_of(&self, mode: &str, field: fn(&Sample) -> f64) -> f64 {
        self.modes
            .iter()
            .find(|m| m.mode == mode)
            .map_or(f64::NAN, |m| median(m.samples.iter().map(field).collect()))
    }

    /// The table printed on stdout.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\n{} workers, {CONCURRENCY} concurrent connections from {CLIENTS} addresses, new connection per request; medians{}",
            self.workers,
            if self.quick { " (quick)" } else { "" }
        );
        let _ = writeln!(
            out,
            "{:<14} {:>9} {:>7} {:>8} {:>8} {:>8} {:>9} {:>8} {:>7} {:>6} {:>7} {:>7}",
            "mode",
            "conn/s",
            "spread",
            "p50 µs",
            "p99 µs",
            "p999 µs",
            "cpu ms/k",
            "sticky",
            "max/avg",
            "failed",
            "×rate",
            "×cpu"
        );
        for ModeSamples { mode, samples } in &self.modes {
            let m = |field: fn(&Sample) -> f64| self.median_of(mode, field);
            let base = baseline(mode);
            let kernel_rate = self.median_of(base, |s| s.conn_per_s);
            let kernel_cpu = self.median_of(base, |s| s.cpu_ms_per_1000);
            let rates: Vec<f64> = samples.iter().map(|s| s.conn_per_s).collect();
            let _ = writeln!(
                out,
                "{:<14} {:>9.0} {:>6.1}% {:>8.0} {:>8.0} {:>8.0} {:>9.1} {:>7.1}% {:>7.2} {:>6} {:>7.2} {:>7.2}",
                mode,
                m(|s| s.conn_per_s),
                spread(&rates) * 100.0,
                m(|s| s.p50_us),
                m(|s| s.p99_us),
                m(|s| s.p999_us),
                m(|s| s.cpu_ms_per_1000),
                m(|s| s.sticky_share) * 100.0,
                m(|s| s.imbalance),
                samples.iter().map(|s| s.failed).sum::<u64>(),
                m(|s| s.conn_per_s) / kernel_rate,
                m(|s| s.cpu_ms_per_1000) / kernel_cpu,
            );
        }
        let _ = writeln!(
            out,
            "×rate, ×cpu: against kernel dispatch with the same workers (kernel-node for Node modes);\n\
             udp-*: datagrams, not connections (a new socket per datagram, its answer awaited), \
             against udp-reuseport"
        );
        // The modes with one master process that accepts every connection.
        for mode in ["userspace", "seed"] {
            let master = self.median_of(mode, |s| s.main_cpu_ms_per_1000);
            if master.is_finite() {
                let _ = writeln!(
                    out,
                    "{mode} master alone: {master:.1} ms CPU per 1000 connections: one master thread tops out near {:.0} conn/s",
                    1e6 / master
                );
            }
        }
        let bpf = self.median_of("kernel", |s| s.bpf_ns.unwrap_or(f64::NAN));
        let _ = writeln!(
            out,
            "\neBPF program cost (kernel.bpf_stats_enabled): {bpf:.0} ns per dispatch"
        );
        let udp = self.median_of("udp-kernel", |s| s.bpf_ns.unwrap_or(f64::NAN));
        if udp.is_finite() {
            let _ = writeln!(out, "eBPF program cost per UDP datagram: {udp:.0} ns");
        }
        let quic = self.median_of("quic-kernel", |s| s.bpf_ns.unwrap_or(f64::NAN));
        if quic.is_finite() {
            let _ =
                writeln!(out, "eBPF program cost per QUIC datagram routed by CID: {quic:.0} ns");
        }
        let _ = writeln!(
            out,
            "\nkernel dispatch scaling:\n{:<8} {:>9} {:>8} {:>9}",
            "workers", "conn/s", "p99 µs", "cpu ms/k"
        );
        for ScalingSample { workers, sample: s } in &self.scaling {
            let _ = writeln!(
                out,
                "{workers:<8} {:>9.0} {:>8.0} {:>9.1}",
                s.conn_per_s, s.p99_us, s.cpu_ms_per_1000
            );
        }
        out
    }

    /// Writes `latest.json` and its picture, `latest.svg`, into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        fs::create_dir_all(dir)?;
        fs::write(dir.join("latest.json"), serde_json::to_string_pretty(self)? + "\n")?;
        self.draw(dir)
    }

    /// Writes the picture of this report, `latest.svg`, into `dir`.
    pub fn draw(&self, dir: &Path) -> anyhow::Result<()> {
        Ok(fs::write(dir.join("latest.svg"), chart::svg(self)?)?)
    }
}

/// The mode a mode's ratios are taken against: kernel dispatch with the same worker runtime.
fn baseline(mode: &str) -> &'static str {
    if mode.starts_with("udp-") {
        "udp-reuseport"
    } else if mode.ends_with("-node") || mode == "seed" {
        "kernel-node"
    } else {
        "kernel"
    }
}

fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned()
}
