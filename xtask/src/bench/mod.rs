//! `cargo xtask bench`: every dispatch mode side by side, same workers, same load; one table of
//! measured figures and ratios to kernel dispatch, plus JSON and an SVG chart under
//! `bench/results/`. Nothing here asserts anything: it measures and reports.

mod balance;
mod chart;
mod load;
mod modes;
mod proxies;
mod quic;
mod quic_client;
mod report;
mod scrape;
mod servers;
mod udp;

use std::{path::Path, time::Duration};

use anyhow::Context as _;
use nix::unistd::{SysconfVar, sysconf};

use self::{
    modes::Mode,
    report::{Report, Sample, ThroughputSample},
    servers::{ADDRESS, Server},
};
use crate::{bootstrap, shell};

/// How long each measured run lasts, and how often each mode is repeated.
struct Plan {
    duration: Duration,
    repeats: usize,
    workers: u32,
    scaling: &'static [u32],
    /// Distinct client addresses of the balance run.
    balance_clients: u32,
    /// What the throughput modes download through one connection, in octets.
    download_octets: u64,
}

const FULL: Plan = Plan {
    duration: Duration::from_secs(5),
    repeats: 5,
    workers: 4,
    scaling: &[2, 4, 8],
    balance_clients: 100_000,
    download_octets: 1 << 30,
};
const QUICK: Plan = Plan {
    duration: Duration::from_secs(2),
    repeats: 1,
    workers: 4,
    scaling: &[2, 8],
    balance_clients: 20_000,
    download_octets: 256 << 20,
};

/// Runs the benchmark (`quick`: shorter runs, one repeat; `balance_only`: only the balance).
pub fn run(quick: bool, balance_only: bool, only: &[String]) -> anyhow::Result<()> {
    rerun_with_optimized_dependencies()?;
    bootstrap::build_tools()?;
    let packages = ["--package", "sticky-user", "--package", servers::QUIC_EXAMPLE];
    shell::run(shell::cargo().args(["build", "--release"]).args(packages))?;
    let root = shell::workspace_root();
    let sticky = root.join("target/release/sticky");
    let plan = if quick { QUICK } else { FULL };
    let work = std::env::temp_dir().join(format!("sticky-bench-{}", std::process::id()));
    let results = root.join("bench/results");
    // The metrics endpoint's cost: alone with `--only scrape`, printed first in a full run.
    let scrape_only = !only.is_empty() && only.iter().all(|name| name == scrape::NAME);
    if !balance_only && (only.is_empty() || only.iter().any(|name| name == scrape::NAME)) {
        scrape::run(&sticky, &work.join(scrape::NAME))?;
        if scrape_only {
            let _ = std::fs::remove_dir_all(&work);
            return Ok(());
        }
    }
    let only: Vec<String> = only.iter().filter(|name| *name != scrape::NAME).cloned().collect();
    let only = only.as_slice();
    if balance_only {
        let balance = balance::run(&sticky, &work.join("balance"), plan.balance_clients);
        let _ = std::fs::remove_dir_all(&work);
        return write_balance(&results, &balance?);
    }
    let proxies =
        [("nginx", Mode::Nginx, Mode::NginxNode), ("haproxy", Mode::Haproxy, Mode::HaproxyNode)];
    let proxies: Vec<_> = proxies
        .into_iter()
        .filter(|(tool, ..)| match bootstrap::ensure_tool(tool, tool) {
            Ok(()) => true,
            Err(err) => {
                shell::say(&format!("{tool}: skipped: {err:#}"));
                false
            }
        })
        .collect();
    let mut modes = vec![
        Mode::Kernel,
        Mode::Reuseport,
        Mode::Userspace,
        Mode::KernelTrusted,
        Mode::Proxied,
        Mode::ProxiedUserspace,
    ];
    modes.extend(proxies.iter().map(|(_, rust, _)| *rust));
    modes.extend([Mode::UdpKernel, Mode::UdpReuseport, Mode::QuicKernel]);
    modes.extend([Mode::QuicHandshakes, Mode::QuicHandshakesReuseport]);
    modes.extend([Mode::QuicBytes, Mode::QuicBytesReuseport]);
    if proxies.iter().any(|(tool, ..)| *tool == "nginx") {
        modes.push(Mode::UdpNginx);
    }
    match node_packages() {
        Ok(()) => {
            modes.extend([Mode::KernelNode, Mode::ReuseportNode, Mode::Seed]);
            modes.extend(proxies.iter().map(|(.., node)| *node));
        }
        Err(err) => shell::say(&format!("Node modes: skipped: {err:#}")),
    }
    if !only.is_empty() {
        modes.retain(|mode| only.iter().any(|name| name == mode.name()));
        anyhow::ensure!(!modes.is_empty(), "--only names no mode of this bench: {only:?}");
    }
    let stats = BpfStats::enable();
    let mut report = Report::new(quick, plan.workers);
    // Interleave the modes, so drift hits them alike.
    for repeat in 0..plan.repeats {
        for &mode in &modes {
            shell::say(&format!("{} ({}/{})", mode.name(), repeat + 1, plan.repeats));
            let dir = work.join(format!("{}-{repeat}", mode.name()));
            if mode.throughput() {
                let octets = plan.download_octets;
                let sample = measure_throughput(mode, plan.workers, octets, &sticky, &dir)?;
                report.add_throughput(mode.name(), sample);
            } else {
                let sample = measure(mode, plan.workers, plan.duration, &sticky, &dir)?;
                report.add(mode.name(), sample);
            }
        }
    }
    if !only.is_empty() {
        drop(stats);
        println!("{}", report.table());
        let _ = std::fs::remove_dir_all(&work);
        return Ok(());
    }
    for &workers in plan.scaling {
        shell::say(&format!("kernel with {workers} workers"));
        let sample = measure(
            Mode::Kernel,
            workers,
            plan.duration,
            &sticky,
            &work.join(format!("scale-{workers}")),
        )?;
        report.add_scaling(workers, sample);
    }
    drop(stats);
    println!("{}", report.table());
    let waiting = proxies::waiting_memory(&sticky, &work.join("waiting"))?;
    let balance = balance::run(&sticky, &work.join("balance"), plan.balance_clients)?;
    let _ = std::fs::remove_dir_all(&work);
    report.write(&results).with_context(|| format!("cannot write into {}", results.display()))?;
    shell::say(&format!("wrote {}/latest.json and latest.svg", results.display()));
    write_json(&results, "proxied_waiting.json", &waiting)?;
    write_balance(&results, &balance)
}

/// Set in the bench that [`rerun_with_optimized_dependencies`] runs.
const OPTIMIZED_DEPENDENCIES: &str = "STICKY_BENCH_OPTIMIZED_DEPENDENCIES";

/// From a debug build, runs this bench again from a build of xtask whose dependencies are
/// optimized, and never returns but with an error: the QUIC modes' clients spend their time in
/// quinn, rustls and ring, several times slower unoptimized, and would measure themselves
/// rather than the server. The workspace's own crates (xtask, loadgen: the TCP and UDP loads)
/// stay as unoptimized as before. Its own target dir, so that neither build undoes the other.
fn rerun_with_optimized_dependencies() -> anyhow::Result<()> {
    if !cfg!(debug_assertions) || std::env::var_os(OPTIMIZED_DEPENDENCIES).is_some() {
        return Ok(());
    }
    let target = shell::workspace_root().join("target/bench-xtask");
    let optimized = ["--config", "profile.dev.package.\"*\".opt-level=3", "--target-dir"];
    shell::run(shell::cargo().args(["build", "--package", "xtask"]).args(optimized).arg(&target))?;
    let xtask = target.join("debug/xtask");
    let error = std::os::unix::process::CommandExt::exec(
        std::process::Command::new(&xtask)
            .args(std::env::args_os().skip(1))
            .env(OPTIMIZED_DEPENDENCIES, "1"),
    );
    Err(error).with_context(|| format!("cannot run {}", xtask.display()))
}

/// Draws `bench/results/latest.svg` again from `latest.json`, without measuring anything.
pub fn render() -> anyhow::Result<()> {
    let results = shell::workspace_root().join("bench/results");
    Report::read(&results)?
        .draw(&results)
        .with_context(|| format!("cannot write {}/latest.svg", results.display()))?;
    shell::say(&format!("drew {}/latest.svg from latest.json", results.display()));
    Ok(())
}

/// Writes the balance figures to `balance.json` in `results`.
fn write_balance(results: &Path, balance: &serde_json::Value) -> anyhow::Result<()> {
    write_json(results, "balance.json", balance)
}

/// Writes `value` to `name` in `results`.
fn write_json(results: &Path, name: &str, value: &serde_json::Value) -> anyhow::Result<()> {
    std::fs::create_dir_all(results)?;
    let path = results.join(name);
    std::fs::write(&path, serde_json::to_string_pretty(value)? + "\n")
        .with_context(|| format!("cannot write {}", path.display()))?;
    shell::say(&format!("wrote {}", path.display()));
    Ok(())
}

/// Node and the seed's npm packages (from bench/node's lock file).
fn node_packages() -> anyhow::Result<()> {
    bootstrap::ensure_tool("node", "nodejs")?;
    bootstrap::ensure_tool("npm", "npm")?;
    let dir = servers::node_dir();
    if !dir.join("node_modules/sticky-session").exists() {
        shell::run(
            std::process::Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&dir),
        )?;
    }
    Ok(())
}

/// One run of `mode`: start it, warm up, measure load and server CPU, stop it.
fn measure(
    mode: Mode,
    workers: u32,
    duration: Duration,
    sticky: &Path,
    dir: &Path,
) -> anyhow::Result<Sample> {
    let server = Server::start(mode, workers, sticky, dir)?;
    let address = ADDRESS.parse()?;
    let load = |duration| {
        if mode.quic_example() {
            quic_client::handshakes(address, duration)
        } else if mode == Mode::QuicKernel {
            quic::run(address, &dir.join("main"), workers, duration)
        } else if mode.udp() {
            let mut result = udp::run(address, duration);
            if mode == Mode::UdpNginx {
                // Its backends are one-worker servers, each answering as slot 0.
                udp::forget_workers(&mut result);
            }
            result
        } else {
            load::run(address, duration, mode.proxied())
        }
    };
    load(mode.warm_up());
    let (cpu_before, main_before, bpf_before) =
        (server.cpu_ticks(), server.main_cpu_ticks(), BpfStats::read());
    let result = load(duration);
    let (cpu_after, main_after, bpf_after) =
        (server.cpu_ticks(), server.main_cpu_ticks(), BpfStats::read());
    server.stop();
    let (cpu_ms, main_ms) =
        (ticks_to_ms(cpu_after - cpu_before)?, ticks_to_ms(main_after - main_before)?);
    // The program that ran the most during the load is this server's (other sticky programs,
    // such as tests running in other network namespaces, may be loaded too).
    let bpf_ns = bpf_after
        .iter()
        .filter_map(|(id, &(time1, count1))| {
            let (time0, count0) = bpf_before.get(id).copied().unwrap_or((0, 0));
            (count1 > count0).then(|| (count1 - count0, time1 - time0))
        })
        .max()
        .map(|(count, time)| time as f64 / count as f64);
    Ok(Sample::new(&result, cpu_ms, main_ms, bpf_ns))
}

/// One run of throughput mode `mode`: start it, download an eighth of `octets` to warm up,
/// then `octets` through one new connection, measuring the server's CPU; stop it.
fn measure_throughput(
    mode: Mode,
    workers: u32,
    octets: u64,
    sticky: &Path,
    dir: &Path,
) -> anyhow::Result<ThroughputSample> {
    let server = Server::start(mode, workers, sticky, dir)?;
    let address = ADDRESS.parse()?;
    if let Err(err) = quic_client::download(address, octets / 8) {
        shell::say(&format!("{}: the warm-up download failed: {err:#}", mode.name()));
    }
    let cpu_before = server.cpu_ticks();
    let download = quic_client::download(address, octets);
    let cpu_after = server.cpu_ticks();
    server.stop();
    if let Err(err) = &download {
        shell::say(&format!("{}: the download failed: {err:#}", mode.name()));
    }
    Ok(ThroughputSample::new(&download, ticks_to_ms(cpu_after - cpu_before)?))
}

/// `ticks` of CPU time (`/proc/PID/stat`'s unit) in milliseconds.
fn ticks_to_ms(ticks: u64) -> anyhow::Result<f64> {
    match sysconf(SysconfVar::CLK_TCK) {
        Ok(Some(per_second)) => Ok(ticks as f64 * 1000.0 / per_second as f64),
        _ => anyhow::bail!("cannot read the clock tick rate"),
    }
}

/// `kernel.bpf_stats_enabled` on for the benchmark's life, restored after.
struct BpfStats {
    previous: Option<String>,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    fn enable() -> Self {
        let previous = std::fs::read_to_string(BPF_STATS).ok();
        if std::fs::write(BPF_STATS, "1").is_err() {
            shell::say("cannot enable kernel.bpf_stats_enabled: no eBPF cost per dispatch");
        }
        Self { previous }
    }

    /// Total run time (ns) and run count of each loaded sticky program, by id.
    fn read() -> std::collections::HashMap<u32, (u64, u64)> {
        aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .filter(|p| p.name_as_str().is_some_and(|n| n.starts_with("sticky_")))
            .map(|p| (p.id(), (p.run_time().as_nanos() as u64, p.run_count())))
            .collect()
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Some(previous) = &self.previous {
            let _ = std::fs::write(BPF_STATS, previous.trim());
        }
    }
}
