//! A real systemd, booted in a container on a root of its own, for the service tests.
//!
//! The root (a minimal Debian with systemd, made once by `cargo xtask test` with mmdebstrap) is
//! booted with `systemd-nspawn --ephemeral`, so every boot starts from the same files and leaves
//! nothing behind. The container has its own network namespace with only loopback; the `sticky`
//! under test is bound read-only at `/usr/local/bin/sticky`. Never boot systemd on the host's
//! own root: its boot-time clean-up empties the host's /tmp.

use std::{
    env, fs,
    os::{fd::AsFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use nix::{
    sched::{CloneFlags, setns},
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use sticky_user::control::Status;

use crate::sticky_bin;

/// Where `cargo xtask test` keeps the container root: `$STICKY_SYSTEMD_ROOT`, or
/// `target/systemd-root` of this workspace.
pub fn systemd_root() -> PathBuf {
    env::var_os("STICKY_SYSTEMD_ROOT").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/systemd-root"),
        PathBuf::from,
    )
}

/// The longest a command in the container may run.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(60);

/// A booted container; shut down (and its ephemeral copy removed) on drop.
pub struct Container {
    nspawn: Child,
    init: u32,
}

impl Container {
    /// Boots [`systemd_root`] with `sticky` at `/usr/local/bin/sticky` and waits until systemd
    /// has finished booting.
    pub fn boot() -> Self {
        Self::boot_with(&[(&sticky_bin(), "/usr/local/bin/sticky")])
    }

    /// Boots [`systemd_root`] with each host file of `binds` bound read-only at its path in the
    /// container (and nothing else of the host's), and waits until systemd has finished booting.
    pub fn boot_with(binds: &[(&Path, &str)]) -> Self {
        let root = systemd_root();
        assert!(
            root.join("usr/lib/systemd/systemd").exists(),
            "no container root at {}: `cargo xtask test` builds it",
            root.display()
        );
        let mut nspawn = Command::new("systemd-nspawn");
        // If the test process dies without dropping the container, nspawn shuts it down.
        // SAFETY: prctl only, between fork and exec.
        unsafe {
            nspawn.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)
            })
        };
        let nspawn = nspawn
            .arg("--directory")
            .arg(&root)
            .args(["--ephemeral", "--boot", "--register=no", "--keep-unit", "--capability=all"])
            .args(["--private-network", "--console=passive"])
            .args(binds.iter().map(|(host, path)| format!("--bind-ro={}:{path}", host.display())))
            // nspawn's own seccomp filter forbids bpf() in the container.
            .env("SYSTEMD_SECCOMP", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("systemd-nspawn is missing: `cargo xtask test` installs systemd-container");
        let mut container = Self { init: 0, nspawn };
        container.init = container.wait_for_init();
        container.wait_for_boot();
        container
    }

    /// The pid (on the host) of the container's systemd.
    fn wait_for_init(&mut self) -> u32 {
        let nspawn = self.nspawn.id();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(pid) = children(nspawn).into_iter().find(|&pid| comm(pid) == "systemd") {
                return pid;
            }
            if let Some(status) = self.nspawn.try_wait().expect("try_wait") {
                panic!("systemd-nspawn exited ({status}) before the container booted");
            }
            assert!(Instant::now() < deadline, "the container's systemd did not start");
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until systemd reports the boot finished (`running`, or `degraded` if some unit
    /// of the minimal root failed). Early on, systemctl cannot reach it yet: that is retried.
    fn wait_for_boot(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let output = self.run(&["systemctl", "is-system-running", "--wait"]);
            let state = String::from_utf8_lossy(&output.stdout).trim().to_owned();
            if state == "running" || state == "degraded" {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the container did not boot: {state} {}",
                String::from_utf8_lossy(&output.stderr)
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Runs `args` in the container (all its namespaces) and returns its output. A command
    /// still running after [`COMMAND_LIMIT`] is killed (and fails), so a hung `systemctl` fails
    /// the test instead of hanging it.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .args(["--target", &self.init.to_string(), "--all"])
            .args(["timeout", "--kill-after=5", &COMMAND_LIMIT.as_secs().to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run nsenter")
    }

    /// Runs `args` in the container; panics with its output unless it succeeds. Returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "{args:?} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Runs a shell script in the container; panics unless it succeeds. Returns stdout.
    pub fn sh(&self, script: &str) -> String {
        self.ok(&["sh", "-ec", script])
    }

    /// Whether `path` exists in the container.
    pub fn exists(&self, path: &str) -> bool {
        self.run(&["test", "-e", path]).status.success()
    }

    /// The status of the sticky answering on `control`, asked with the `sticky` at `binary`.
    pub fn sticky_status(&self, binary: &str, control: &str) -> Status {
        let json = self.ok(&[binary, "status", "--json", "--control", control]);
        serde_json::from_str(&json).expect("status JSON")
    }

    /// The journal of `unit`, for failure messages.
    pub fn journal(&self, unit: &str) -> String {
        String::from_utf8_lossy(&self.run(&["journalctl", "-u", unit, "--no-pager"]).stdout)
            .into_owned()
    }

    /// One property of a unit, as `systemctl show` gives it.
    pub fn property(&self, unit: &str, name: &str) -> String {
        self.ok(&["systemctl", "show", "--property", name, "--value", unit]).trim().to_owned()
    }

    /// Runs `body` on a new thread in the container's network namespace (threads it starts
    /// stay there too), so test clients reach the container's loopback.
    pub fn in_netns<T: Send>(&self, body: impl FnOnce() -> T + Send) -> T {
        let namespace = fs::File::open(format!("/proc/{}/ns/net", self.init)).expect("netns");
        thread::scope(|scope| {
            scope
                .spawn(|| {
                    setns(namespace.as_fd(), CloneFlags::CLONE_NEWNET).expect("setns");
                    body()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // SIGTERM makes nspawn power the container off and remove its ephemeral copy.
        let nspawn = Pid::from_raw(self.nspawn.id() as i32);
        let _ = kill(nspawn, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.nspawn.try_wait().ok().flatten().is_some() {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
    }
}

/// The pids whose parent is `parent`.
fn children(parent: u32) -> Vec<u32> {
    let entries = fs::read_dir("/proc").expect("/proc");
    let pids = entries.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok());
    pids.filter(|&pid| {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let after_comm = stat.rsplit(')').next().unwrap_or_default();
        after_comm.split_whitespace().nth(1) == Some(&parent.to_string())
    })
    .collect()
}

/// The command name of `pid`.
fn comm(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_owned()
}
