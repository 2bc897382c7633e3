//! Restarting sticky itself under a real systemd, under load: `sticky upgrade` (same MainPID),
//! `kill -9` of MainPID and `systemctl restart`. The listening sockets live in systemd's fd
//! store, so no connection is refused; only connections the old workers had accepted may fail.
//! Then socket activation: a `.socket` unit binds the port and sticky adopts it.
//!
//! One test in its own binary: it is the only thing loading sk_reuseport programs while it runs.

use std::{
    net::{IpAddr, SocketAddr},
    thread,
    time::{Duration, Instant},
};

use sticky_tests::{Container, Failure, Load, MIN_SUCCEEDED, Report, client_v4, eventually};
use sticky_user::control::Status;

const UNIT: &str = "sticky-web.service";
const CONTROL: &str = "/run/sticky/web/control.sock";
/// A sticky binary the test may replace (the one under test is bound read-only).
const STICKY: &str = "/opt/sticky/sticky";
const APP: &str = "/usr/local/bin/app";

fn status(container: &Container) -> Status {
    container.sticky_status(STICKY, CONTROL)
}

fn worker_pids(container: &Container) -> Vec<Option<u32>> {
    status(container).slots.iter().map(|slot| slot.pid).collect()
}

fn wait_until_serving(container: &Container) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(container.property(UNIT, "ActiveState") == "active"
        && container.run(&[STICKY, "status", "--json", "--control", CONTROL]).status.success()
        && status(container).slots.iter().all(|slot| slot.pid.is_some() && slot.ready))
    {
        assert!(Instant::now() < deadline, "the service does not serve:\n{}", journal(container));
        thread::sleep(Duration::from_millis(100));
    }
}

fn journal(container: &Container) -> String {
    container.journal(UNIT)
}

/// Threads of each load: at most this many requests are in flight at any moment.
const LOAD_THREADS: usize = 4;

/// Runs `event` under load from `clients`; asserts that no connection was refused or failed
/// before the server accepted it, that every client stayed on its slot, and that the load
/// made more than [`MIN_SUCCEEDED`] requests, some of them during the event. Returns the
/// report, how many accepted connections failed, and when the event ran.
fn under_load(
    what: &str,
    server: SocketAddr,
    clients: &[IpAddr],
    event: impl FnOnce(),
) -> (Report, usize, (Instant, Instant)) {
    let load = Load::start(server, clients, LOAD_THREADS);
    thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    event();
    let span = (started, Instant::now());
    thread::sleep(Duration::from_millis(500));
    let report = load.stop();
    let mut lost_after_accept = 0;
    for (client, failure) in report.failures() {
        match failure {
            Failure::Connect(err) => {
                panic!("{what}: {client} was refused: {err}; {}", report.summary())
            }
            Failure::AfterConnect(_) => lost_after_accept += 1,
        }
    }
    for (client, seen) in report.workers_by_client() {
        assert!(seen.iter().all(|&w| w == seen[0]), "{what}: {client} moved: {seen:?}");
    }
    let during = report.succeeded_within(span);
    eprintln!(
        "{what}: {}; accepted then lost: {lost_after_accept}; {during} completed during it",
        report.summary()
    );
    assert!(report.succeeded() > MIN_SUCCEEDED, "{what}: {}", report.summary());
    assert!(during > 0, "{what}: no request completed during it: {}", report.summary());
    (report, lost_after_accept, span)
}

#[test]
fn the_loader_upgrades_crashes_and_restarts_under_load_without_refusing_a_connection() {
    let container = Container::boot();
    container.in_netns(|| {
        let server = SocketAddr::from(([127, 0, 0, 1], 80));
        let clients: Vec<IpAddr> = (0..1000).map(client_v4).collect();
        container.sh(&format!(
            "mkdir -p /opt/sticky && cp /usr/local/bin/sticky {STICKY} && chmod 755 {STICKY}
             printf '#!/bin/sh\\nexec sticky demo\\n' > {APP} && chmod 755 {APP}"
        ));
        container.ok(&[
            STICKY,
            "install",
            "web",
            "--user",
            "nobody",
            "--listen",
            "[::]:80",
            "--workers",
            "3",
            "--grace-period",
            "5",
            "--",
            APP,
        ]);
        container.ok(&["systemctl", "start", UNIT]);
        wait_until_serving(&container);
        // One socket per slot in systemd's fd store, and the program's socket array.
        assert_eq!(
            container.property(UNIT, "NFileDescriptorStore"),
            "4",
            "{}",
            journal(&container)
        );

        // sticky upgrade: the same process, workers and program.
        let main_pid = container.property(UNIT, "MainPID");
        let before = status(&container);
        let (report, _, span) = under_load("sticky upgrade", server, &clients, || {
            container
                .sh(&format!("cp /usr/local/bin/sticky {STICKY}.new && mv {STICKY}.new {STICKY}"));
            let answer = container.ok(&[STICKY, "upgrade", "--control", CONTROL]);
            assert!(answer.starts_with("upgraded in place"), "{answer}");
        });
        // docs/operations.md's cost table: an upgrade loses nothing.
        report.assert_no_failure_during("sticky upgrade", span);
        let after = status(&container);
        assert_eq!(container.property(UNIT, "MainPID"), main_pid);
        assert_eq!(container.property(UNIT, "ActiveState"), "active");
        assert_eq!(after.loader.upgrades, 1);
        assert_eq!(after.program_ids, before.program_ids);
        assert_eq!(worker_pids(&container), before.slots.iter().map(|s| s.pid).collect::<Vec<_>>());

        // kill -9 of the loader: systemd restarts it with the stored sockets.
        let (_, crash_lost, _) = under_load("kill -9 of the loader", server, &clients, || {
            let main_pid = container.property(UNIT, "MainPID");
            container.ok(&["kill", "-9", &main_pid]);
            eventually("systemd restarted the loader", || {
                container.property(UNIT, "NRestarts") == "1"
                    && container.property(UNIT, "MainPID") != main_pid
            });
            wait_until_serving(&container);
        });
        assert!(
            journal(&container).contains("adopted listening sockets"),
            "{}",
            journal(&container)
        );

        // systemctl restart: the same, with the old workers stopped gracefully.
        let (report, _, span) = under_load("systemctl restart", server, &clients, || {
            container.ok(&["systemctl", "restart", UNIT]);
            wait_until_serving(&container);
        });
        // A crash loses at most what the killed workers had accepted: one request in flight
        // per load thread; a restart stops the old workers gracefully and loses nothing.
        assert!(crash_lost <= LOAD_THREADS, "kill -9 lost {crash_lost} accepted connections");
        report.assert_no_failure_during("systemctl restart", span);
        assert_eq!(container.property(UNIT, "NFileDescriptorStore"), "4");

        // Stop: systemd lets go of the sockets, and the program goes with them.
        let programs = sticky_tests::loaded_programs(status(&container).program_ids);
        container.ok(&["systemctl", "stop", UNIT]);
        eventually("the program is unloaded", || {
            programs.iter().all(|&id| !sticky_tests::program_is_loaded(id))
        });
        let refused = sticky_tests::connect(clients[0], server);
        assert!(refused.is_err(), "a stopped service still accepts");

        // Socket activation: systemd binds the port, sticky adopts it and adds the other slots.
        container.sh(
            "printf '[Socket]\\nListenStream=[::]:80\\nBindIPv6Only=both\\nReusePort=yes\\n' \
               > /etc/systemd/system/sticky-web.socket
             systemctl daemon-reload
             systemctl start sticky-web.socket",
        );
        container.ok(&["systemctl", "start", UNIT]);
        wait_until_serving(&container);
        let journal = journal(&container);
        assert!(
            journal.contains("adopted listening sockets from the service manager sockets=1 maps=0"),
            "{journal}"
        );
        for client in clients.iter().take(20) {
            let first = sticky_tests::get(*client, server).worker;
            assert_eq!(sticky_tests::get(*client, server).worker, first, "{client} moved");
        }
        container.ok(&["systemctl", "stop", UNIT, "sticky-web.socket"]);
    });
}
