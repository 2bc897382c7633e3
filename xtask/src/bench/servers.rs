//! The servers under test: sticky's kernel and userspace dispatch, plain SO_REUSEPORT, and
//! nginx / haproxy proxies with consistent source hashing in front of one-worker backends, with
//! the Rust demo worker; then the same but userspace dispatch, and the seed (npm
//! sticky-session), with a Node worker; `sticky-example-quic` (quinn) under `--quic` or on plain
//! SO_REUSEPORT.

use std::{
    collections::HashMap,
    fs,
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use super::modes::Mode;

/// Where the server under test listens.
pub const ADDRESS: &str = "127.0.0.1:3900";
/// Where the UDP modes listen: the same port, over UDP.
const UDP_LISTEN: &str = "udp://127.0.0.1:3900";
/// The QUIC modes' worker, next to the `sticky` binary.
pub const QUIC_EXAMPLE: &str = "sticky-example-quic";
/// The first backend port of the proxy modes.
const BACKEND_PORT: u16 = 3910;

/// A running server: its processes (for CPU accounting) and how to stop them.
pub struct Server {
    children: Vec<Child>,
}

impl Server {
    /// Starts `mode` with `workers` workers, its files under `dir`. On failure, whatever was
    /// started is stopped again.
    pub fn start(mode: Mode, workers: u32, sticky: &Path, dir: &Path) -> anyhow::Result<Self> {
        fs::create_dir_all(dir)?;
        let mut server = Self { children: Vec::new() };
        match server.launch(mode, workers, sticky, dir) {
            Ok(()) => Ok(server),
            Err(err) => {
                server.stop();
                Err(err.context(format!("{} did not start", mode.name())))
            }
        }
    }

    fn launch(
        &mut self,
        mode: Mode,
        workers: u32,
        sticky: &Path,
        dir: &Path,
    ) -> anyhow::Result<()> {
        let quic_example = sticky.with_file_name(QUIC_EXAMPLE);
        let quic_example = quic_example.to_str().context("non-UTF-8 path")?.to_owned();
        let node_worker = node_dir().join("worker.js");
        let node_worker = node_worker.to_str().context("non-UTF-8 path")?;
        // The worker command: the demo (sticky's default) or the Node handler.
        let command: &[&str] = if mode.node() { &["node", node_worker] } else { &[] };
        let run = |name: &str, listen: &str, workers: u32, dispatch: &str| {
            sticky_run(sticky, dir, name, listen, workers, dispatch, command, &[])
        };
        // The load comes from 127.16.0.0/12; 192.0.2.1 never connects.
        let trusting = |proxy: &str, dispatch: &str| {
            let options = ["--trusted-proxy", proxy, "--client-address", "proxy-protocol"];
            sticky_run(sticky, dir, "main", ADDRESS, workers, dispatch, command, &options)
        };
        match mode {
            Mode::Kernel | Mode::KernelNode => {
                self.children.push(run("main", ADDRESS, workers, "kernel")?)
            }
            Mode::Reuseport | Mode::ReuseportNode => {
                self.children.push(run("main", ADDRESS, workers, "none")?)
            }
            Mode::Userspace => self.children.push(run("main", ADDRESS, workers, "userspace")?),
            Mode::KernelTrusted => self.children.push(trusting("192.0.2.1", "kernel")?),
            Mode::Proxied => self.children.push(trusting("127.16.0.0/12", "kernel")?),
            Mode::ProxiedUserspace => self.children.push(trusting("127.16.0.0/12", "userspace")?),
            Mode::Seed => {
                let port = ADDRESS.rsplit(':').next().unwrap_or("3900");
                let seed = Command::new("node")
                    .arg(node_dir().join("seed.js"))
                    .args([port, &workers.to_string()])
                    .stdin(Stdio::null())
                    .spawn()
                    .context("cannot start node")?;
                self.children.push(seed);
            }
            Mode::UdpKernel => self.children.push(run("main", UDP_LISTEN, workers, "kernel")?),
            Mode::UdpReuseport => self.children.push(run("main", UDP_LISTEN, workers, "none")?),
            Mode::QuicKernel => {
                let quic = ["--quic"];
                let main =
                    sticky_run(sticky, dir, "main", UDP_LISTEN, workers, "kernel", command, &quic)?;
                self.children.push(main);
            }
            Mode::QuicHandshakes | Mode::QuicBytes => {
                let example = [quic_example.as_str()];
                let quic = ["--quic"];
                let main = sticky_run(
                    sticky, dir, "main", UDP_LISTEN, workers, "kernel", &example, &quic,
                )?;
                self.children.push(main);
            }
            Mode::QuicHandshakesReuseport | Mode::QuicBytesReuseport => {
                let example = [quic_example.as_str()];
                let main =
                    sticky_run(sticky, dir, "main", UDP_LISTEN, workers, "none", &example, &[])?;
                self.children.push(main);
            }
            Mode::UdpNginx => {
                let backends: Vec<String> = (0..workers)
                    .map(|i| format!("127.0.0.1:{}", BACKEND_PORT + i as u16))
                    .collect();
                for (i, backend) in backends.iter().enumerate() {
                    let listen = format!("udp://{backend}");
                    self.children.push(run(&format!("backend{i}"), &listen, 1, "none")?);
                    super::udp::wait_until_serving(backend.parse()?)?;
                }
                self.children.push(super::udp::nginx(dir, ADDRESS, &backends)?);
            }
            Mode::Nginx | Mode::Haproxy | Mode::NginxNode | Mode::HaproxyNode => {
                let backends: Vec<String> = (0..workers)
                    .map(|i| format!("127.0.0.1:{}", BACKEND_PORT + i as u16))
                    .collect();
                for (i, backend) in backends.iter().enumerate() {
                    self.children.push(run(&format!("backend{i}"), backend, 1, "none")?);
                }
                for backend in &backends {
                    wait_until_serving(backend.parse()?)?;
                }
                let proxy = if matches!(mode, Mode::Nginx | Mode::NginxNode) {
                    nginx(dir, &backends)?
                } else {
                    haproxy(dir, &backends)?
                };
                self.children.push(proxy);
            }
        }
        if mode.quic_example() {
            return super::quic_client::wait_until_serving(ADDRESS.parse()?);
        }
        if mode.udp() {
            return super::udp::wait_until_serving(ADDRESS.parse()?);
        }
        wait_until_serving(ADDRESS.parse()?)
    }

    /// CPU time (user + system, in clock ticks) of the first process alone: sticky's loader
    /// (the master in userspace dispatch), the seed's master, or the first backend's loader.
    pub fn main_cpu_ticks(&self) -> u64 {
        let pid = self.children.first().map_or(0, Child::id);
        processes().get(&pid).map_or(0, |process| process.ticks)
    }

    /// CPU time (user + system, in clock ticks) of every process of the server, so far.
    pub fn cpu_ticks(&self) -> u64 {
        let processes = processes();
        let mut total = 0;
        let mut stack: Vec<u32> = self.children.iter().map(Child::id).collect();
        while let Some(pid) = stack.pop() {
            if let Some(process) = processes.get(&pid) {
                total += process.ticks;
            }
            stack.extend(processes.iter().filter(|(_, p)| p.parent == pid).map(|(pid, _)| *pid));
        }
        total
    }

    /// Stops every process (SIGTERM, then SIGKILL after 10 s).
    pub fn stop(mut self) {
        self.terminate();
    }

    /// Stops every process not stopped yet.
    fn terminate(&mut self) {
        for child in &self.children {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for mut child in self.children.drain(..) {
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for Server {
    /// A load that panicked leaves no server behind.
    fn drop(&mut self) {
        self.terminate();
    }
}

/// The directory of the Node handler and the seed runner.
pub fn node_dir() -> PathBuf {
    crate::shell::workspace_root().join("bench/node")
}

#[allow(clippy::too_many_arguments)]
pub(super) fn sticky_run(
    sticky: &Path,
    dir: &Path,
    name: &str,
    listen: &str,
    workers: u32,
    dispatch: &str,
    command: &[&str],
    options: &[&str],
) -> anyhow::Result<Child> {
    Command::new(sticky)
        .args([
            "run",
            "--listen",
            listen,
            "--workers",
            &workers.to_string(),
            "--dispatch",
            dispatch,
        ])
        .args(options)
        .args(["--allow-root-workers", "--state-dir"])
        .arg(dir.join(name))
        .arg("--control")
        .arg(dir.join(format!("{name}.sock")))
        .arg("--")
        .args(command)
        .env("STICKY_LOG", "error")
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", sticky.display()))
}

fn nginx(dir: &Path, backends: &[String]) -> anyhow::Result<Child> {
    let servers: String = backends.iter().map(|b| format!("    server {b};\n")).collect();
    let config = format!(
        "daemon off;\nworker_processes auto;\npid {pid};\nerror_log stderr error;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  upstream backends {{\n    hash $remote_addr consistent;\n{servers}  }}\n\
           server {{\n    listen {ADDRESS};\n    location / {{ proxy_pass http://backends; }}\n  }}\n}}\n",
        pid = dir.join("nginx.pid").display(),
    );
    start_nginx(dir, "nginx.conf", &config)
}

/// Writes `config` to `name` in `dir` and starts nginx on it, in the foreground.
pub(super) fn start_nginx(dir: &Path, name: &str, config: &str) -> anyhow::Result<Child> {
    let path = dir.join(name);
    fs::write(&path, config)?;
    Command::new("nginx")
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&path)
        .spawn()
        .context("cannot start nginx")
}

fn haproxy(dir: &Path, backends: &[String]) -> anyhow::Result<Child> {
    let servers: String =
        backends.iter().enumerate().map(|(i, b)| format!("  server w{i} {b}\n")).collect();
    let config = format!(
        "global\n  maxconn 4000\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n\
         timeout server 30s\nfrontend front\n  bind {ADDRESS}\n  default_backend workers\n\
         backend workers\n  balance source\n  hash-type consistent\n{servers}"
    );
    let path = dir.join("haproxy.cfg");
    fs::write(&path, config)?;
    Command::new("haproxy").arg("-db").arg("-f").arg(&path).spawn().context("cannot start haproxy")
}

/// Waits (at most 20 s) until `address` answers a request.
pub(super) fn wait_until_serving(address: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_secs(1)) {
            use std::io::{Read as _, Write as _};
            let mut response = String::new();
            if stream.write_all(b"GET / HTTP/1.1\r\nhost: b\r\nconnection: close\r\n\r\n").is_ok()
                && stream.read_to_string(&mut response).is_ok()
                && response.starts_with("HTTP/1.1 200")
            {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("{address} does not answer");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

struct Process {
    parent: u32,
    ticks: u64,
}

/// Every process's parent and CPU ticks, from /proc.
fn processes() -> HashMap<u32, Process> {
    let mut found = HashMap::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) =
            fs::read_to_string(PathBuf::from("/proc").join(pid.to_string()).join("stat"))
        else {
            continue;
        };
        // Fields after the command name: state ppid … utime (12th) stime (13th).
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let number = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        found.insert(pid, Process { parent: number(1) as u32, ticks: number(11) + number(12) });
    }
    found
}
