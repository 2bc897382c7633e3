//! Deploys and hangs under load: a rolling restart waits for each new worker to be ready and
//! stops, keeping the old workers, when one is not; startup fails when no worker becomes
//! ready; a hung worker is found without probes and its clients are served elsewhere.

use std::{
    fs,
    net::{IpAddr, SocketAddr},
    os::unix::fs::PermissionsExt as _,
    path::PathBuf,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use sticky_tests::{
    Failure, Load, StateDir, Sticky, client_v4, eventually, get, in_netns, load_clients,
    processes_in_netns, sticky_bin,
};
use sticky_user::control::{Request, Response};

/// The hang timeout of the hung-worker tests.
const HANG_TIMEOUT: Duration = Duration::from_secs(2);
/// The worker watchdog of the watchdog tests.
const WATCHDOG: Duration = Duration::from_secs(1);
/// How much later than its timeout a hang may be found: the checks run a few times per
/// timeout. The tests that a worker is never declared hung watch longer than timeout + this.
const DETECTION_SLACK: Duration = Duration::from_secs(2);

/// A deployed worker program: a script the test rewrites to deploy another version.
struct App {
    _dir: StateDir,
    script: PathBuf,
}

impl App {
    /// A working version: the demo worker.
    fn working() -> Self {
        let dir = StateDir::new();
        fs::create_dir_all(&dir.0).unwrap();
        fs::set_permissions(&dir.0, fs::Permissions::from_mode(0o755)).unwrap();
        let app = Self { script: dir.0.join("app.sh"), _dir: dir };
        app.deploy_working();
        app
    }

    fn deploy(&self, body: &str) {
        // A new file, as a deploy writes one: running workers keep the old.
        let next = self.script.with_extension("next");
        fs::write(&next, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&next, fs::Permissions::from_mode(0o755)).unwrap();
        fs::rename(&next, &self.script).unwrap();
    }

    fn deploy_working(&self) {
        self.deploy(&format!("exec {} demo", sticky_bin().display()));
    }

    fn path(&self) -> &str {
        self.script.to_str().unwrap()
    }
}

fn pids(sticky: &Sticky) -> Vec<Option<u32>> {
    sticky.status().slots.iter().map(|slot| slot.pid).collect()
}

/// Failures a load saw before connecting: refused or timed out.
fn refused(report: &sticky_tests::Report) -> usize {
    report.failures().iter().filter(|(_, failure)| matches!(failure, Failure::Connect(_))).count()
}

#[test]
fn a_broken_deploy_stops_the_reload_and_the_old_workers_keep_serving() {
    let app = App::working();
    in_netns(|| {
        let args = ["--listen", "127.0.0.1:3060", "-w", "4", "--ready-timeout", "5", "--"];
        let sticky = Sticky::serving(&[&args[..], &[app.path()]].concat(), 4);
        let server: SocketAddr = "127.0.0.1:3060".parse().unwrap();
        let before = pids(&sticky);
        let load = Load::start(server, &load_clients(), 4);
        thread::sleep(Duration::from_millis(500));

        app.deploy("echo 'broken build' >&2; exit 3");
        let reloads_started = Instant::now();
        let reload = Command::new(sticky_bin())
            .args(["reload", "--control"])
            .arg(sticky.control_path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&reload.stderr);
        assert_eq!(reload.status.code(), Some(1), "{stderr}");
        assert_eq!(
            stderr.trim(),
            "sticky: error: reload stopped at slot 0: the new worker exited with status 3 \
             before it was ready; the old workers keep serving"
        );
        assert_eq!(pids(&sticky), before, "an old worker was replaced");
        let outcome = sticky.status().last_reload.expect("the reload's outcome");
        assert!(!outcome.ok && outcome.message.contains("reload stopped at slot 0"), "{outcome:?}");

        app.deploy_working();
        let fixed = sticky.control(Request::Reload);
        assert!(matches!(&fixed, Response::Done { message } if message == "restarted 4 workers"));
        let after = pids(&sticky);
        assert!(after.iter().all(|pid| pid.is_some() && !before.contains(pid)), "{after:?}");
        assert!(sticky.status().last_reload.is_some_and(|outcome| outcome.ok));
        let reloads = (reloads_started, Instant::now());
        thread::sleep(Duration::from_millis(500));
        let report = load.stop();
        report.assert_no_failure_during("a broken deploy, then a fixed one", reloads);
        sticky.stop_cleanly();
    });
}

#[test]
fn in_notify_mode_a_worker_that_never_says_ready_stops_the_roll() {
    let app = App::working();
    in_netns(|| {
        let args = ["--listen", "127.0.0.1:3061", "-w", "3", "--ready", "notify"];
        let args = [&args[..], &["--ready-timeout", "2", "--", app.path()]].concat();
        let sticky = Sticky::serving(&args, 3);
        let server: SocketAddr = "127.0.0.1:3061".parse().unwrap();
        let before = pids(&sticky);
        let load = Load::start(server, &load_clients(), 4);
        thread::sleep(Duration::from_millis(500));

        // Starts and runs, but never sends READY=1.
        app.deploy("exec sleep 600");
        let reload_started = Instant::now();
        let refused_reload = sticky.control(Request::Reload);
        let reload = (reload_started, Instant::now());
        assert!(
            matches!(&refused_reload, Response::Error { message } if message
                == "reload stopped at slot 0: the new worker was not ready within 2 s; \
                    the old workers keep serving"),
            "{refused_reload:?}"
        );
        assert_eq!(pids(&sticky), before);
        thread::sleep(Duration::from_millis(500));
        let report = load.stop();
        report.assert_no_failure_during("a reload whose worker is never ready", reload);
        sticky.stop_cleanly();
    });
}

#[test]
fn a_worker_that_exits_at_once_fails_the_start_with_its_status() {
    in_netns(|| {
        let args = ["--listen", "127.0.0.1:3062", "-w", "2", "--", "sh", "-c", "exit 7"];
        let exit = Sticky::start(&args).wait();
        assert!(!exit.status.success(), "{}", exit.log);
        assert_eq!(
            exit.errors(),
            ["sticky: error: no worker became ready: worker 0 exited with status 7 before it was \
              ready"],
            "{}",
            exit.log
        );
        assert_eq!(processes_in_netns(), Vec::<u32>::new(), "something is left running");
    });
}

#[test]
fn a_stopped_worker_is_found_hung_and_its_clients_are_served_elsewhere() {
    in_netns(|| {
        let timeout = HANG_TIMEOUT.as_secs().to_string();
        let args = ["--listen", "127.0.0.1:3063", "-w", "4", "--hang-timeout", &timeout];
        let sticky = Sticky::serving(&args, 4);
        let server: SocketAddr = "127.0.0.1:3063".parse().unwrap();
        let clients = load_clients();
        let load = Load::start(server, &clients, 4);
        thread::sleep(Duration::from_millis(500));
        let stopped = sticky.status().slots[1].pid.unwrap();
        let slot_1_client = *clients.iter().find(|&&c| get(c, server).worker == 1).unwrap();
        kill(Pid::from_raw(stopped as i32), Signal::SIGSTOP).unwrap();
        let stopped_at = Instant::now();
        eventually("slot 1 is found hung", || sticky.status().slots[1].hangs == 1);
        let detected = stopped_at.elapsed();
        // Within the hang timeout and the checks' granularity: what the "never hung" tests
        // below rely on when they watch for longer.
        assert!(detected <= HANG_TIMEOUT + DETECTION_SLACK, "found hung after {detected:?}");
        eventually("slot 1 is served by a new worker", || {
            let slot = &sticky.status().slots[1];
            slot.hangs == 1 && slot.ready && slot.in_table && slot.pid != Some(stopped)
        });
        // Its clients are its own again.
        assert_eq!(get(slot_1_client, server).worker, 1);
        let report = load.stop();
        // Refused or timed out before connecting: none. After connecting, only what the
        // stopped worker had accepted itself may fail (each load thread waits on one request
        // at a time, so at most one per thread); what waited in its queue migrated.
        assert_eq!(refused(&report), 0, "{}", report.summary());
        assert!(report.failures().len() <= 4, "{}", report.summary());
        assert_eq!(sticky.status().slots.iter().map(|s| s.hangs).sum::<u32>(), 1);
        sticky.stop_cleanly();
    });
}

#[test]
fn a_slow_worker_is_never_declared_hung() {
    // Accepts one connection every 2 s; the load keeps its queue from ever emptying.
    let slow = "import os, socket, time\n\
                s = socket.socket(fileno=3)\n\
                while True:\n\
                \x20   c, _ = s.accept()\n\
                \x20   c.recv(4096)\n\
                \x20   c.sendall(b'HTTP/1.1 200 OK\\r\\nx-sticky-worker: ' + os.environ['STICKY_WORKER'].encode() + b'\\r\\nx-sticky-pid: 1\\r\\ncontent-length: 0\\r\\nconnection: close\\r\\n\\r\\n')\n\
                \x20   c.close()\n\
                \x20   time.sleep(2)\n";
    in_netns(|| {
        let args = ["--listen", "127.0.0.1:3064", "-w", "1", "--hang-timeout", "4"];
        let args = [&args[..], &["--", "/usr/bin/python3", "-c", slow]].concat();
        let sticky = Sticky::serving(&args, 1);
        let pid = sticky.status().slots[0].pid;
        let server: SocketAddr = "127.0.0.1:3064".parse().unwrap();
        let clients: Vec<IpAddr> = (0..8).map(client_v4).collect();
        let load = Load::start(server, &clients, 8);
        thread::sleep(Duration::from_secs(12));
        let status = sticky.status();
        let report = load.stop();
        assert!(report.succeeded() >= 4, "the slow worker served nothing: {}", report.summary());
        assert_eq!(status.slots[0].hangs, 0, "the slow worker was declared hung");
        assert_eq!(status.slots[0].pid, pid, "the slow worker was replaced");
        sticky.stop_cleanly();
    });
}

#[test]
fn with_a_worker_watchdog_a_silent_worker_is_replaced_and_a_feeding_one_kept() {
    in_netns(|| {
        // The demo worker sends WATCHDOG=1 every half interval.
        let args = ["--listen", "127.0.0.1:3065", "-w", "2", "--worker-watchdog", "1"];
        let fed = Sticky::serving(&args, 2);
        let before = pids(&fed);
        thread::sleep(Duration::from_secs(3));
        assert!(fed.status().slots.iter().all(|s| s.hangs == 0), "{:?}", fed.status());
        assert_eq!(pids(&fed), before);
        fed.stop_cleanly();

        // A worker that never sends WATCHDOG=1 is hung once ready (after the ready delay).
        let watchdog = WATCHDOG.as_secs().to_string();
        let args = ["--listen", "127.0.0.1:3066", "-w", "1", "--worker-watchdog", &watchdog];
        let silent = Sticky::serving(&[&args[..], &["--", "sleep", "600"]].concat(), 1);
        let ready_at = Instant::now();
        let first = silent.status().slots[0].pid;
        eventually("the silent worker is found hung", || silent.status().slots[0].hangs >= 1);
        let detected = ready_at.elapsed();
        assert!(detected <= WATCHDOG + DETECTION_SLACK, "found hung after {detected:?}");
        eventually("the silent worker is replaced by a new, ready one", || {
            let slot = &silent.status().slots[0];
            slot.pid.is_some() && slot.pid != first && slot.ready
        });
        silent.stop_cleanly();
    });
}

#[test]
fn a_stop_while_the_workers_get_ready_is_obeyed_at_once() {
    in_netns(|| {
        let args = ["--listen", "127.0.0.1:3067", "-w", "2", "--ready", "notify"];
        let args = [&args[..], &["--ready-timeout", "600", "--", "sleep", "600"]].concat();
        let mut sticky = Sticky::start(&args);
        sticky.wait_for("the workers to start", |log| log.matches("worker started").count() >= 2);
        // Not after the ready timeout: at once, and as a clean stop.
        let exit = sticky.stop();
        assert!(exit.status.success(), "{}", exit.log);
        assert!(exit.log.contains("SIGTERM received"), "{}", exit.log);
        assert_eq!(processes_in_netns(), Vec::<u32>::new(), "something is left running");
    });
}
