//! Aggregating samples into the benchmark's table and JSON file, and reading that file back
//! to draw its picture again. Throughput (bytes through one connection) has a section of its
//! own.

use std::{fmt::Write as _, fs, path::Path};

use anyhow::Context as _;
use serde::{Deserialize, Deserializer, Serialize};

use super::{
    chart,
    load::{CLIENTS, CONCURRENCY, LoadResult},
    quic_client::Download,
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

/// One download through one connection, as `latest.json` holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ThroughputSample {
    octets: u64,
    #[serde(deserialize_with = "number")]
    seconds: f64,
    /// Millions of octets per second.
    #[serde(deserialize_with = "number")]
    mb_per_s: f64,
    /// Server CPU (all its processes) per million octets, in milliseconds.
    #[serde(deserialize_with = "number")]
    cpu_ms_per_mb: f64,
    failed: u64,
}

impl ThroughputSample {
    /// The figures of one download (or its failure, all not a number) and the server CPU it
    /// cost.
    pub fn new(download: &anyhow::Result<Download>, cpu_ms: f64) -> Self {
        match download {
            Ok(Download { octets, seconds }) => Self {
                octets: *octets,
                seconds: *seconds,
                mb_per_s: *octets as f64 / seconds / 1e6,
                cpu_ms_per_mb: cpu_ms / (*octets as f64 / 1e6),
                failed: 0,
            },
            Err(_) => Self {
                octets: 0,
                seconds: f64::NAN,
                mb_per_s: f64::NAN,
                cpu_ms_per_mb: f64::NAN,
                failed: 1,
            },
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
    /// Downloads through one connection, per mode (none in reports from before they were).
    #[serde(default)]
    throughput: Vec<ModeThroughput>,
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

/// The downloads of one throughput mode.
#[derive(Serialize, Deserialize)]
struct ModeThroughput {
    mode: String,
    samples: Vec<ThroughputSample>,
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
        let (modes, scaling, throughput) = (vec![], vec![], vec![]);
        Self { quick, workers, concurrency, clients, machine, modes, scaling, throughput }
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

    /// Adds a download of throughput mode `mode`.
    pub fn add_throughput(&mut self, mode: &str, sample: ThroughputSample) {
        match self.throughput.iter_mut().find(|m| m.mode == mode) {
            Some(m) => m.samples.push(sample),
            None => {
                self.throughput.push(ModeThroughput { mode: mode.into(), samples: vec![sample] })
            }
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
        if !self.modes.is_empty() {
            self.connections_table(&mut out);
        }
        if !self.throughput.is_empty() {
            self.throughput_table(&mut out);
        }
        if !self.scaling.is_empty() {
            let _ = writeln!(
                out,
                "\nkernel dispatch scaling:\n{:<8} {:>9} {:>8} {:>9}",
                "workers", "conn/s", "p99 µs", "cpu ms/k"
            );
        }
        for ScalingSample { workers, sample: s } in &self.scaling {
            let _ = writeln!(
                out,
                "{workers:<8} {:>9.0} {:>8.0} {:>9.1}",
                s.conn_per_s, s.p99_us, s.cpu_ms_per_1000
            );
        }
        out
    }

    /// The table of the modes measured in requests, and what their samples tell beyond it.
    fn connections_table(&self, out: &mut String) {
        let width = self.modes.iter().map(|m| m.mode.len()).max().unwrap_or(0).max(14);
        let _ = writeln!(
            out,
            "\n{} workers, {CONCURRENCY} concurrent connections from {CLIENTS} addresses, new connection per request; medians{}",
            self.workers,
            if self.quick { " (quick)" } else { "" }
        );
        let _ = writeln!(
            out,
            "{:<width$} {:>9} {:>7} {:>8} {:>8} {:>8} {:>9} {:>8} {:>7} {:>6} {:>7} {:>7}",
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
                "{:<width$} {:>9.0} {:>6.1}% {:>8.0} {:>8.0} {:>8.0} {:>9.1} {:>7.1}% {:>7.2} {:>6} {:>7.2} {:>7.2}",
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
             udp-*, quic-kernel: datagrams, not connections (a new socket per datagram, its answer \
             awaited), against udp-reuseport;\n\
             quic-handshakes*: a new QUIC connection (a new client socket, a full handshake) and \
             one exchange per request, quinn workers, against quic-handshakes-reuseport"
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
        // The eBPF program's cost per run, in the modes that load it, where it is measured.
        let programs = [
            ("kernel", "eBPF program cost (kernel.bpf_stats_enabled): ", " per dispatch"),
            ("udp-kernel", "eBPF program cost per UDP datagram: ", ""),
            ("quic-kernel", "eBPF program cost per QUIC datagram routed by CID: ", ""),
            ("quic-handshakes", "eBPF program cost per datagram of quinn's handshakes: ", ""),
        ];
        let mut first = true;
        for (mode, before, after) in programs {
            let ns = self.median_of(mode, |s| s.bpf_ns.unwrap_or(f64::NAN));
            if ns.is_finite() {
                let gap = if std::mem::take(&mut first) { "\n" } else { "" };
                let _ = writeln!(out, "{gap}{before}{ns:.0} ns{after}");
            }
        }
    }

    /// The table of the throughput modes.
    fn throughput_table(&self, out: &mut String) {
        let octets = self.throughput.iter().flat_map(|m| &m.samples).map(|s| s.octets).max();
        let _ = writeln!(
            out,
            "\nQUIC throughput: one quinn connection downloading {} MiB from one of {} workers; medians{}",
            octets.unwrap_or(0) >> 20,
            self.workers,
            if self.quick { " (quick)" } else { "" }
        );
        let _ = writeln!(
            out,
            "{:<22} {:>8} {:>7} {:>8} {:>10} {:>6} {:>7}",
            "mode", "MB/s", "spread", "seconds", "cpu ms/MB", "failed", "×rate"
        );
        let median_of = |mode: &str, field: fn(&ThroughputSample) -> f64| {
            self.throughput
                .iter()
                .find(|m| m.mode == mode)
                .map_or(f64::NAN, |m| median(m.samples.iter().map(field).collect()))
        };
        for ModeThroughput { mode, samples } in &self.throughput {
            let m = |field: fn(&ThroughputSample) -> f64| median_of(mode, field);
            let rates: Vec<f64> = samples.iter().map(|s| s.mb_per_s).collect();
            let _ = writeln!(
                out,
                "{:<22} {:>8.0} {:>6.1}% {:>8.2} {:>10.2} {:>6} {:>7.2}",
                mode,
                m(|s| s.mb_per_s),
                spread(&rates) * 100.0,
                m(|s| s.seconds),
                m(|s| s.cpu_ms_per_mb),
                samples.iter().map(|s| s.failed).sum::<u64>(),
                m(|s| s.mb_per_s) / median_of("quic-bytes-reuseport", |s| s.mb_per_s),
            );
        }
        let _ = writeln!(
            out,
            "MB: 10^6 octets, from the request to the last octet; cpu: the server's; ×rate: against quic-bytes-reuseport"
        );
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
    if mode.starts_with("udp-") || mode == "quic-kernel" {
        "udp-reuseport"
    } else if mode.starts_with("quic-handshakes") {
        "quic-handshakes-reuseport"
    } else if mode.ends_with("-node") || mode == "seed" {
        "kernel-node"
    } else {
        "kernel"
    }
}

fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned()
}
