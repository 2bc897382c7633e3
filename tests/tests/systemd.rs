//! The service as deployed: `sticky install` and the unit it writes, under a real systemd booted
//! in a container, workers as `nobody`, driven with systemctl under load.
//!
//! One test in its own binary: it is the only thing loading sk_reuseport programs while it runs.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    thread,
    time::{Duration, Instant},
};

use sticky_tests::{Container, Load, client_v4, eventually, loaded_programs, program_is_loaded};
use sticky_user::control::Status;

const UNIT: &str = "sticky-web.service";
const CONTROL: &str = "/run/sticky/web/control.sock";
const WORKERS: usize = 3;
/// The deployed worker program.
const APP: &str = "/usr/local/bin/app";
/// A working version of it (printf format).
const WORKING_APP: &str = "#!/bin/sh\\nexec sticky demo\\n";

fn status(container: &Container) -> Status {
    container.sticky_status("sticky", CONTROL)
}

/// The pids of the current workers.
fn worker_pids(container: &Container) -> Vec<u32> {
    status(container).slots.iter().map(|slot| slot.pid.expect("a worker in every slot")).collect()
}

/// The pids of processes running as `nobody` in the container.
fn nobody_processes(container: &Container) -> Vec<u32> {
    // ps exits 1 when there is none.
    let ps = container.run(&["ps", "-o", "pid=", "-u", "nobody"]);
    let pids = String::from_utf8_lossy(&ps.stdout).into_owned();
    pids.split_whitespace().map(|pid| pid.parse().expect("pid")).collect()
}

/// Waits until the service is active and serves all its slots.
fn wait_until_serving(container: &Container) {
    eventually("the service is active with every worker", || {
        container.property(UNIT, "ActiveState") == "active"
            && container.run(&["sticky", "status", "--json", "--control", CONTROL]).status.success()
            && status(container).slots.iter().filter(|slot| slot.pid.is_some()).count() == WORKERS
    });
}

fn journal(container: &Container) -> String {
    container.journal(UNIT)
}

#[test]
fn the_installed_service_starts_reloads_restarts_and_stops_under_a_real_systemd() {
    let container = Container::boot();
    container.in_netns(|| {
        let server = SocketAddr::from(([127, 0, 0, 1], 80));
        let clients: Vec<IpAddr> = (0..600).map(client_v4).collect();

        // The deployed application: a script a deploy replaces.
        container.sh(&format!("printf '{WORKING_APP}' > {APP} && chmod 755 {APP}"));
        // Install and start, on a port below 1024.
        let options = ["--user", "nobody", "--listen", "[::]:80", "--workers", "3"];
        // A grace period longer than `eventually` waits: systemd would only kill workers that
        // outlive the loader after it (TimeoutStopSec), so their quick end below is sticky's.
        let options = [&options[..], &["--grace-period", "40", "--ready-timeout", "5", "--", APP]].concat();
        container.ok(&[&["sticky", "install", "web"], &options[..]].concat());
        container.ok(&["systemctl", "start", UNIT]);
        assert_eq!(container.property(UNIT, "ActiveState"), "active", "{}", journal(&container));
        let status_text = container.property(UNIT, "StatusText");
        assert!(status_text.contains("3 workers on [::]:80"), "StatusText={status_text}");
        wait_until_serving(&container);

        // Each worker has a notify socket of its own in the unit's runtime directory, which the
        // workers' user reaches and another user does not.
        assert_eq!(container.ok(&["stat", "-c", "%a %U", "/run/sticky/web/notify"]).trim(), "711 root");
        let notify = |pid: u32, uid: &str, message: &str| {
            let environ = container.ok(&["cat", &format!("/proc/{pid}/environ")]);
            let socket = environ.split('\0').find_map(|var| var.strip_prefix("NOTIFY_SOCKET="));
            let socket = socket.expect("NOTIFY_SOCKET").to_owned();
            assert!(socket.starts_with("/run/sticky/web/notify/"), "{socket}");
            let ids = [format!("--reuid={uid}"), format!("--regid={uid}")];
            let env = format!("NOTIFY_SOCKET={socket}");
            let sender = ["env", &env, "setpriv", &ids[0], &ids[1], "--clear-groups"];
            container.run(&[&sender[..], &["systemd-notify", "--no-block", message]].concat())
        };
        for pid in worker_pids(&container) {
            let refused = notify(pid, "65533", "STATUS=from another user");
            let stderr = String::from_utf8_lossy(&refused.stderr);
            assert!(!refused.status.success() && stderr.contains("Permission denied"), "{stderr}");
            let sent = notify(pid, "65534", "STATUS=from nobody");
            assert!(sent.status.success(), "{}", String::from_utf8_lossy(&sent.stderr));
        }
        eventually("each worker's STATUS= arrives", || {
            status(&container).slots.iter().all(|s| s.status.as_deref() == Some("from nobody"))
        });

        // Each client address always reaches the same worker.
        for client in clients.iter().take(8) {
            let workers: HashSet<u32> = (0..4)
                .map(|_| sticky_tests::get(*client, server).worker)
                .collect();
            assert_eq!(workers.len(), 1, "{client} reached workers {workers:?}");
        }
        let curl = |source: &str| {
            container.ok(&["curl", "-sS", "--interface", source, "http://127.0.0.1/"])
        };
        for source in ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"] {
            let first = curl(source);
            assert!(first.starts_with("worker: "), "{first}");
            assert_eq!(curl(source), first, "{source} moved");
        }

        // A rolling restart under load: no failed connection, every worker replaced.
        let before = worker_pids(&container);
        let load = Load::start(server, &clients, 4);
        thread::sleep(Duration::from_millis(500));
        let reload_started = Instant::now();
        container.ok(&["systemctl", "reload", UNIT]);
        let reload = (reload_started, Instant::now());
        thread::sleep(Duration::from_millis(500));
        let report = load.stop();
        eprintln!("systemctl reload took {:?}", reload.1 - reload.0);
        report.assert_no_failure_during("systemctl reload", reload);
        let after = worker_pids(&container);
        assert!(before.iter().all(|pid| !after.contains(pid)), "{before:?} → {after:?}");
        let moved: HashMap<IpAddr, Vec<u32>> = report
            .workers_by_client()
            .into_iter()
            .filter(|(_, workers)| workers.iter().any(|&w| w != workers[0]))
            .collect();
        assert!(moved.is_empty(), "clients moved during the reload: {moved:?}");

        // A broken deploy: systemctl reload fails and says why; the old workers keep serving.
        let serving = worker_pids(&container);
        container.sh(&format!("printf '#!/bin/sh\\nexit 3\\n' > {APP}.next && chmod 755 {APP}.next && mv {APP}.next {APP}"));
        let broken = container.run(&["systemctl", "reload", UNIT]);
        assert!(!broken.status.success(), "systemctl reload of a broken deploy succeeded");
        let status_text = container.property(UNIT, "StatusText");
        assert!(
            status_text.starts_with("reload stopped at slot 0: the new worker exited with status 3"),
            "StatusText={status_text}"
        );
        assert_eq!(container.property(UNIT, "ActiveState"), "active");
        assert_eq!(worker_pids(&container), serving);
        sticky_tests::get(clients[2], server);
        container.sh(&format!("printf '{WORKING_APP}' > {APP}.next && chmod 755 {APP}.next && mv {APP}.next {APP}"));
        container.ok(&["systemctl", "reload", UNIT]);
        assert!(container.property(UNIT, "StatusText").contains("3 workers on [::]:80"));

        // kill -9 of the loader: no worker outlives it, systemd restarts it and it serves.
        let main_pid = container.property(UNIT, "MainPID");
        let orphans = worker_pids(&container);
        container.ok(&["kill", "-9", &main_pid]);
        eventually("the old workers are gone", || {
            let running = nobody_processes(&container);
            orphans.iter().all(|pid| !running.contains(pid))
        });
        eventually("systemd restarted the service", || {
            container.property(UNIT, "NRestarts") == "1"
                && container.property(UNIT, "MainPID") != main_pid
        });
        wait_until_serving(&container);
        sticky_tests::get(clients[0], server);

        // With a watchdog, the loader keeps systemd fed.
        container.sh(
            "mkdir -p /etc/systemd/system/sticky-web.service.d
             printf '[Service]\\nWatchdogSec=5\\n' > /etc/systemd/system/sticky-web.service.d/watchdog.conf
             systemctl daemon-reload
             systemctl restart sticky-web.service",
        );
        wait_until_serving(&container);
        // The drop-in took effect: without it, this part would prove nothing.
        assert_eq!(container.property(UNIT, "WatchdogUSec"), "5s");
        let watched_pid = container.property(UNIT, "MainPID");
        let restarts = container.property(UNIT, "NRestarts");
        thread::sleep(Duration::from_secs(15));
        assert_eq!(container.property(UNIT, "ActiveState"), "active", "{}", journal(&container));
        assert_eq!(container.property(UNIT, "MainPID"), watched_pid, "{}", journal(&container));
        assert_eq!(container.property(UNIT, "NRestarts"), restarts);
        sticky_tests::get(clients[1], server);

        // Stop under load: inactive without a timeout, nothing left running or attached.
        let programs = loaded_programs(status(&container).program_ids);
        let load = Load::start(server, &clients, 4);
        thread::sleep(Duration::from_millis(500));
        let stop_started = Instant::now();
        container.ok(&["systemctl", "stop", UNIT]);
        let stop_took = stop_started.elapsed();
        let report = load.stop();
        eprintln!("systemctl stop took {stop_took:?}; load: {}", report.summary());
        assert_eq!(container.property(UNIT, "ActiveState"), "inactive");
        assert_eq!(container.property(UNIT, "Result"), "success", "{}", journal(&container));
        assert_eq!(nobody_processes(&container), Vec::<u32>::new(), "workers left running");
        assert_eq!(container.property(UNIT, "MainPID"), "0");
        // The program goes with the sockets, once systemd lets go of those it stored.
        eventually("the program is unloaded", || programs.iter().all(|&id| !program_is_loaded(id)));

        // A start whose workers never become ready fails visibly, instead of an active
        // service with nothing behind it.
        container.sh(&format!(
            "printf '#!/bin/sh\\nexit 3\\n' > {APP}.next && chmod 755 {APP}.next && mv {APP}.next {APP}"
        ));
        let start = container.run(&["systemctl", "start", UNIT]);
        assert!(!start.status.success(), "systemctl start with a broken app succeeded");
        let journal = journal(&container);
        assert!(
            journal.contains("no worker became ready: worker 0 exited with status 3"),
            "{journal}"
        );

        // Uninstall removes the unit and its configuration.
        container.ok(&["sticky", "uninstall", "web"]);
        assert_eq!(container.property(UNIT, "LoadState"), "not-found");
        let left = container.run(&["ls", "/etc/sticky/web.toml", "/etc/systemd/system/sticky-web.service"]);
        assert!(!left.status.success(), "files left: {}", String::from_utf8_lossy(&left.stdout));
    });
}
