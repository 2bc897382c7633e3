//! Aggregating samples into the benchmark's table, JSON file and SVG chart.

use std::{fmt::Write as _, fs, path::Path};

use serde_json::{Value, json};

use super::load::{CLIENTS, CONCURRENCY, LoadResult};

/// One measured run.
#[derive(Debug, Clone)]
pub struct Sample {
    conn_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    /// Server CPU (all its processes) per 1000 connections, in milliseconds.
    cpu_ms_per_1000: f64,
    /// The same for the server's first process alone (the userspace or seed master).
    main_cpu_ms_per_1000: f64,
    sticky_share: f64,
    imbalance: f64,
    failed: u64,
    bpf_ns: Option<f64>,
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

/// Every sample, per mode, in the order measured.
pub struct Report {
    quick: bool,
    workers: u32,
    modes: Vec<(String, Vec<Sample>)>,
    scaling: Vec<(u32, Sample)>,
}

fn median(mut values: Vec<f64>) -> f64 {
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
        Self { quick, workers, modes: Vec::new(), scaling: Vec::new() }
    }

    /// Adds a sample of `mode`.
    pub fn add(&mut self, mode: &str, sample: Sample) {
        match self.modes.iter_mut().find(|(name, _)| name == mode) {
            Some((_, samples)) => samples.push(sample),
            None => self.modes.push((mode.to_owned(), vec![sample])),
        }
    }

    /// Adds a kernel-dispatch sample with `workers` workers.
    pub fn add_scaling(&mut self, workers: u32, sample: Sample) {
        self.scaling.push((workers, sample));
    }

    fn median_of(&self, mode: &str, field: fn(&Sample) -> f64) -> f64 {
        self.modes
            .iter()
            .find(|(name, _)| name == mode)
            .map_or(f64::NAN, |(_, samples)| median(samples.iter().map(field).collect()))
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
        for (mode, samples) in &self.modes {
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
            "×rate, ×cpu: against kernel dispatch with the same workers (kernel-node for Node modes)"
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
        let _ = writeln!(
            out,
            "\nkernel dispatch scaling:\n{:<8} {:>9} {:>8} {:>9}",
            "workers", "conn/s", "p99 µs", "cpu ms/k"
        );
        for (workers, s) in &self.scaling {
            let _ = writeln!(
                out,
                "{workers:<8} {:>9.0} {:>8.0} {:>9.1}",
                s.conn_per_s, s.p99_us, s.cpu_ms_per_1000
            );
        }
        out
    }

    fn json(&self) -> Value {
        let sample = |s: &Sample| {
            json!({
                "conn_per_s": s.conn_per_s, "p50_us": s.p50_us, "p99_us": s.p99_us, "p999_us": s.p999_us,
                "cpu_ms_per_1000_conn": s.cpu_ms_per_1000,
                "first_process_cpu_ms_per_1000_conn": s.main_cpu_ms_per_1000,
                "sticky_share": s.sticky_share,
                "max_over_mean": s.imbalance, "failed": s.failed, "bpf_ns_per_dispatch": s.bpf_ns,
            })
        };
        json!({
            "quick": self.quick,
            "workers": self.workers,
            "concurrency": CONCURRENCY,
            "clients": CLIENTS,
            "machine": { "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()), "kernel": kernel_release() },
            "modes": self.modes.iter().map(|(mode, samples)| json!({
                "mode": mode, "samples": samples.iter().map(sample).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "scaling": self.scaling.iter().map(|(w, s)| json!({ "workers": w, "sample": sample(s) })).collect::<Vec<_>>(),
        })
    }

    /// A bar chart of conn/s and p99 per mode.
    fn svg(&self) -> String {
        let rows: Vec<(String, f64, f64)> = self
            .modes
            .iter()
            .map(|(mode, _)| {
                (
                    mode.clone(),
                    self.median_of(mode, |s| s.conn_per_s),
                    self.median_of(mode, |s| s.p99_us),
                )
            })
            .collect();
        let max_rate = rows.iter().map(|r| r.1).fold(1.0, f64::max);
        let max_p99 = rows.iter().map(|r| r.2).fold(1.0, f64::max);
        let mut svg = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"640\" height=\"{}\" font-family=\"sans-serif\" font-size=\"12\">\n\
             <text x=\"10\" y=\"18\" font-weight=\"bold\">conn/s (blue) and p99 latency (orange) per mode</text>\n",
            40 + rows.len() * 44
        );
        for (i, (mode, rate, p99)) in rows.iter().enumerate() {
            let y = 34 + i * 44;
            let _ = writeln!(svg, "<text x=\"10\" y=\"{}\">{mode}</text>", y + 16);
            let _ = writeln!(
                svg,
                "<rect x=\"90\" y=\"{y}\" width=\"{:.0}\" height=\"16\" fill=\"#3b75af\"/><text x=\"{:.0}\" y=\"{}\">{rate:.0} conn/s</text>",
                rate / max_rate * 400.0,
                95.0 + rate / max_rate * 400.0,
                y + 12
            );
            let _ = writeln!(
                svg,
                "<rect x=\"90\" y=\"{}\" width=\"{:.0}\" height=\"16\" fill=\"#ef8636\"/><text x=\"{:.0}\" y=\"{}\">p99 {p99:.0} µs</text>",
                y + 18,
                p99 / max_p99 * 400.0,
                95.0 + p99 / max_p99 * 400.0,
                y + 30
            );
        }
        svg + "</svg>\n"
    }

    /// Writes `latest.json` and `latest.svg` into `dir`.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        fs::create_dir_all(dir)?;
        fs::write(dir.join("latest.json"), serde_json::to_string_pretty(&self.json())? + "\n")?;
        fs::write(dir.join("latest.svg"), self.svg())
    }
}

/// The mode a mode's ratios are taken against: kernel dispatch with the same worker runtime.
fn baseline(mode: &str) -> &'static str {
    if mode.ends_with("-node") || mode == "seed" { "kernel-node" } else { "kernel" }
}

fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned()
}
