//! The workers' readiness sockets: one per worker start, reachable by the workers' user only,
//! names nobody else can take, bounded against floods, handed over by an upgrade, gone with
//! their workers; READY=1 from a `systemd-notify` child counts every time.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::Instant,
};

use nix::sys::signal::Signal;
use sticky_tests::{
    StateDir, Sticky,
    another_user::{BIND, LIST, MKDIR, OTHER, PYTHON, as_user, send_as},
    eventually, in_netns, processes_in_netns, sticky_bin,
};
use sticky_user::control::{Request, Response};

/// The workers' user (`nobody`).
const WORKERS: u32 = 65534;
/// A directory as systemd makes `RuntimeDirectory=`: root's, mode 0755. Removed on drop.
fn runtime_dir() -> StateDir {
    let dir = StateDir::new();
    fs::create_dir_all(&dir.0).unwrap();
    fs::set_permissions(&dir.0, fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// A directory anyone may read (and with `mode` 0o777, write), for the workers' programs.
fn shared_dir(mode: u32) -> StateDir {
    let dir = StateDir::new();
    fs::create_dir_all(&dir.0).unwrap();
    fs::set_permissions(&dir.0, fs::Permissions::from_mode(mode)).unwrap();
    dir
}

/// The `NOTIFY_SOCKET` of process `pid`.
fn notify_socket(pid: u32) -> PathBuf {
    let environ = sticky_tests::privileges::environ_of(pid);
    let value = environ.split('\0').find_map(|var| var.strip_prefix("NOTIFY_SOCKET="));
    PathBuf::from(value.expect("NOTIFY_SOCKET is set"))
}

/// The sockets in a notify directory, by name.
fn sockets_in(dir: &Path) -> Vec<String> {
    let names = fs::read_dir(dir).map(|entries| {
        entries.map(|e| e.unwrap().file_name().into_string().unwrap()).collect::<Vec<_>>()
    });
    let mut sockets: Vec<_> =
        names.unwrap_or_default().into_iter().filter(|n| n.ends_with(".sock")).collect();
    sockets.sort();
    sockets
}

fn worker_pids(sticky: &Sticky) -> Vec<u32> {
    sticky.status().slots.iter().map(|slot| slot.pid.expect("a worker")).collect()
}

fn statuses(sticky: &Sticky) -> Vec<Option<String>> {
    sticky.status().slots.into_iter().map(|slot| slot.status).collect()
}

fn done(response: Response, sticky: &Sticky) -> String {
    match response {
        Response::Done { message } => message,
        other => panic!("{other:?}\n{}", sticky.log()),
    }
}

#[test]
fn another_user_can_neither_reach_a_workers_socket_nor_take_its_names() {
    in_netns(|| {
        let runtime = runtime_dir();
        let notify_dir = runtime.0.join("notify");
        // Before sticky starts, the names it will use cannot be taken.
        let err = as_user(OTHER, MKDIR, &[notify_dir.as_os_str()]).expect_err("mkdir");
        assert!(err.contains("PermissionError"), "{err}");
        let squatted = runtime.0.join("notify.sock");
        let err = as_user(OTHER, BIND, &[squatted.as_os_str()]).expect_err("bind");
        assert!(err.contains("PermissionError"), "{err}");

        // Workers that never say READY=1 themselves.
        let args = ["--listen", "127.0.0.1:3101", "-w", "2", "--ready", "notify"];
        let args = [&args[..], &["--ready-timeout", "60", "--", "sleep", "600"]].concat();
        let env = [("RUNTIME_DIRECTORY", runtime.0.to_str().unwrap())];
        let mut sticky = Sticky::start_with_env(&args, &env);
        sticky.wait_for_workers(2);
        let pids = worker_pids(&sticky);
        let sockets: Vec<PathBuf> = pids.iter().map(|&pid| notify_socket(pid)).collect();
        assert_ne!(sockets[0], sockets[1], "two workers share a socket");
        for socket in &sockets {
            assert_eq!(socket.parent(), Some(notify_dir.as_path()));
            let err = send_as(OTHER, socket, "READY=1").expect_err("another user's READY=1");
            assert!(err.contains("PermissionError"), "{err}");
        }
        let next = notify_dir.join("0-9.sock");
        let err = as_user(OTHER, BIND, &[next.as_os_str()]).expect_err("bind in the directory");
        assert!(err.contains("PermissionError"), "{err}");
        let err = as_user(OTHER, LIST, &[notify_dir.as_os_str()]).expect_err("list");
        assert!(err.contains("PermissionError"), "{err}");
        assert!(sticky.status().slots.iter().all(|slot| !slot.ready), "{:?}", sticky.status());

        // The workers' own user reaches them: what it sends is each worker's.
        for socket in &sockets {
            send_as(WORKERS, socket, "READY=1\nSTATUS=told by nobody").unwrap();
        }
        sticky.wait_until_serving(2);
        assert_eq!(worker_pids(&sticky), pids);
        assert_eq!(statuses(&sticky), vec![Some("told by nobody".to_owned()); 2]);
        // What `sticky status` shows carries no control character (escape sequences, bells)
        // that would drive the reader's terminal.
        send_as(WORKERS, &sockets[0], "STATUS=red \u{1b}[31malert\u{7}\u{9b}2J done").unwrap();
        eventually("the status without its control characters", || {
            statuses(&sticky)[0].as_deref() == Some("red [31malert2J done")
        });
        sticky.stop_cleanly();
        assert!(!notify_dir.exists(), "the notify directory outlived sticky");
    });
}

#[test]
fn a_notify_directory_others_could_write_to_is_refused_and_a_stale_one_emptied() {
    in_netns(|| {
        let runtime = runtime_dir();
        let notify_dir = runtime.0.join("notify");
        let env = [("RUNTIME_DIRECTORY", runtime.0.to_str().unwrap())];
        let args = ["--listen", "127.0.0.1:3102", "-w", "2"];
        let refused = |reason: String| {
            let exit = Sticky::start_with_env(&args, &env).wait();
            assert!(!exit.status.success(), "{}", exit.log);
            assert_eq!(exit.errors(), [format!("sticky: error: {reason}")], "{}", exit.log);
        };
        fs::create_dir(&notify_dir).unwrap();
        nix::unistd::chown(&notify_dir, Some(OTHER.into()), Some(OTHER.into())).unwrap();
        let path = notify_dir.display();
        refused(format!(
            "notify directory {path} belongs to uid {OTHER}, not to sticky's uid 0: remove it"
        ));
        nix::unistd::chown(&notify_dir, Some(0.into()), Some(0.into())).unwrap();
        fs::set_permissions(&notify_dir, fs::Permissions::from_mode(0o770)).unwrap();
        refused(format!(
            "notify directory {path} is writable by its group or others (mode 770): remove it"
        ));

        // Root's, closed to others, holding what a killed loader left: taken and emptied.
        fs::set_permissions(&notify_dir, fs::Permissions::from_mode(0o755)).unwrap();
        let stale = std::os::unix::net::UnixDatagram::bind(notify_dir.join("0-0.sock")).unwrap();
        fs::write(notify_dir.join("junk"), "x").unwrap();
        let mut sticky = Sticky::start_with_env(&args, &env);
        sticky.wait_until_serving(2);
        let names = sockets_in(&notify_dir);
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(!notify_dir.join("junk").exists());
        let mode = fs::metadata(&notify_dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o711);
        drop(stale);
        sticky.stop_cleanly();
    });
}

#[test]
fn a_notify_directory_the_workers_user_cannot_reach_is_refused_at_start() {
    in_netns(|| {
        // The control socket (and so the notify directory) below a directory only root may
        // enter. (sticky lets the workers through the directory it puts the notify directory
        // in, when it owns it, but never through one above.)
        let state = StateDir::new();
        fs::create_dir_all(&state.0).unwrap();
        fs::set_permissions(&state.0, fs::Permissions::from_mode(0o700)).unwrap();
        let control = state.0.join("inner/control.sock");
        let mut command = std::process::Command::new(sticky_bin());
        command.args(["run", "--listen", "127.0.0.1:3106", "-w", "2", "--user", "nobody"]);
        command.arg("--state-dir").arg(&state.0).arg("--control").arg(&control);
        let exit = Sticky::spawn(command).wait();
        assert!(!exit.status.success(), "{}", exit.log);
        let notify_dir = state.0.join("inner/control.sock.notify");
        let expected = format!(
            "sticky: error: the workers' user nobody cannot reach their notify socket in {}: \
             Permission denied (os error 13)",
            notify_dir.display()
        );
        assert_eq!(exit.errors(), [expected], "{}", exit.log);
        assert!(!notify_dir.exists(), "the unusable notify directory is left behind");
    });
}

/// A python worker that says READY=1 once listening; in slot 0, it then starts a child that
/// floods its notify socket as fast as it can (status lines, watchdog pings, READY=1, 8 KiB
/// datagrams), counting what the socket took and refused into a file in `argv[1]`.
const FLOODING_WORKER: &str = r#"import os, socket, sys
path = os.environ["NOTIFY_SOCKET"]
listener = socket.socket(fileno=3)
socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"READY=1", path)
if os.environ["STICKY_WORKER"] == "0" and os.fork() == 0:
    flood = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    flood.setblocking(False)
    report = os.path.join(sys.argv[1], str(os.getpid()))
    messages = [b"STATUS=flooding", b"WATCHDOG=1", b"READY=1", b"x" * 8192]
    sent = refused = 0
    while True:
        for message in messages:
            try:
                flood.sendto(message, path)
                sent += 1
            except BlockingIOError:
                refused += 1
        if (sent + refused) % 1024 == 0:
            with open(report + ".new", "w") as f:
                f.write(f"{sent} {refused}\n")
            os.replace(report + ".new", report)
while True:
    listener.accept()[0].close()
"#;

/// Datagrams the flooders sent and had refused (their socket's queue full), summed.
fn flood_counts(dir: &Path) -> (u64, u64) {
    let reports = fs::read_dir(dir).unwrap().map(|e| e.unwrap().path());
    let reports =
        reports.filter(|p| p.extension().is_none()).map(|p| fs::read_to_string(p).unwrap());
    reports.fold((0, 0), |(sent, refused), report| {
        let mut numbers = report.split_whitespace().map(|n| n.parse::<u64>().unwrap());
        (sent + numbers.next().unwrap(), refused + numbers.next().unwrap())
    })
}

/// The loader's CPU time so far, in clock ticks (user + system).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn a_flood_from_a_workers_child_does_not_hold_up_the_rolling_restart_of_the_others() {
    in_netns(|| {
        let programs = shared_dir(0o755);
        let reports = shared_dir(0o777);
        let script = programs.0.join("flood.py");
        fs::write(&script, FLOODING_WORKER).unwrap();
        let (script, reports_path) = (script.to_str().unwrap(), reports.0.to_str().unwrap());
        // A new worker not ready within the ready timeout stops the rolling restart.
        let args = ["--listen", "127.0.0.1:3103", "-w", "4", "--ready", "notify"];
        let args = [&args[..], &["--ready-timeout", "10", "--", PYTHON, script, reports_path]];
        let mut sticky = Sticky::serving(&args.concat(), 4);
        sticky.wait_for("the flood to reach the cap", |log| log.contains("the rest wait"));
        let (ticks, started, before) =
            (cpu_ticks(sticky.pid()), Instant::now(), flood_counts(&reports.0));
        let message = done(sticky.control(Request::Reload), &sticky);
        let (took, ticks) = (started.elapsed(), cpu_ticks(sticky.pid()) - ticks);
        let after = flood_counts(&reports.0);
        assert_eq!(message, "restarted 4 workers");
        eprintln!(
            "rolling restart of 4 slots under the flood: {took:?}, loader CPU {ticks} ticks; \
             the flood sent {} datagrams meanwhile, {} refused by the full queue",
            after.0 - before.0,
            after.1 - before.1
        );
        assert!(after.0 + after.1 > before.0 + before.1, "no flood during the rolling restart");
        let exit = sticky.stop_cleanly();
        assert!(exit.log.contains("notify datagram ignored"), "{}", exit.log);
    });
}

/// A node worker whose READY=1 comes from a `systemd-notify --ready` child, once the file `go`
/// exists in `argv[2]`; there it then marks its pid, the child having exited and been reaped.
/// With the file `no-block` there, the child does not wait until sticky has read its message
/// (no `BARRIER=1`): it may be gone before sticky reads it.
const NODE_WORKER: &str = r#"const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');
const { execFile } = require('node:child_process');
const dir = process.argv[2];
const blocks = () => !fs.existsSync(path.join(dir, 'no-block'));
const flags = () => blocks() ? ['--ready'] : ['--ready', '--no-block'];
const notify = () => execFile('systemd-notify', flags(), (err) => {
  if (err) { console.error(`systemd-notify: ${err.message}`); process.exit(1); }
  fs.writeFileSync(path.join(dir, `${process.pid}`), '');
});
const whenGo = () => fs.existsSync(path.join(dir, 'go')) ? notify() : setTimeout(whenGo, 10);
http.createServer((req, res) => res.end(`worker: ${process.env.STICKY_WORKER}\n`))
  .listen({ fd: 3 }, whenGo);
"#;

#[test]
fn two_hundred_node_starts_ready_by_a_systemd_notify_child_all_count() {
    in_netns(|| {
        let (programs, marks) = (shared_dir(0o755), shared_dir(0o777));
        let script = programs.0.join("server.js");
        fs::write(&script, NODE_WORKER).unwrap();
        let args = ["--listen", "127.0.0.1:3104", "-w", "4", "--ready", "notify"];
        let command = [script.to_str().unwrap(), marks.0.to_str().unwrap()];
        let args = [&args[..], &["--ready-timeout", "20", "--", "node"], &command].concat();
        let mut sticky = Sticky::start(&args);
        sticky.wait_for_workers(4);
        // sticky reads nothing while stopped: each READY=1 waits in its worker's socket, its
        // sender gone (exited and reaped) by the time sticky reads it.
        let pids = worker_pids(&sticky);
        let no_block = marks.0.join("no-block");
        fs::write(&no_block, "").unwrap();
        sticky.signal(Signal::SIGSTOP);
        fs::write(marks.0.join("go"), "").unwrap();
        let notified = || pids.iter().all(|pid| marks.0.join(pid.to_string()).exists());
        eventually("every systemd-notify child has exited", notified);
        sticky.signal(Signal::SIGCONT);
        sticky.wait_until_serving(4);
        // Then 49 rolling restarts of 4, every other one with a child that waits until sticky
        // has read its message: a new worker not counted as ready within 20 s stops the restart.
        let started = Instant::now();
        for round in 1..=49 {
            if round % 2 == 0 {
                fs::write(&no_block, "").unwrap();
            } else {
                fs::remove_file(&no_block).unwrap();
            }
            let message = done(sticky.control(Request::Reload), &sticky);
            assert_eq!(message, "restarted 4 workers", "round {round}");
        }
        let log = sticky.log();
        let (starts, ready) =
            (log.matches("worker started").count(), log.matches("worker ready").count());
        eprintln!(
            "{ready}/{starts} node starts counted as ready, 49 rolling restarts in {:?}",
            started.elapsed()
        );
        assert_eq!((starts, ready), (200, 200));
        // Each worker's socket went with it: the directory holds the live workers' only.
        let notify_dir = PathBuf::from(format!("{}.notify", sticky.control_path().display()));
        let mut live: Vec<String> = worker_pids(&sticky)
            .into_iter()
            .map(|pid| notify_socket(pid).file_name().unwrap().to_str().unwrap().to_owned())
            .collect();
        live.sort();
        eventually("the gone workers' sockets are removed", || sockets_in(&notify_dir) == live);
        sticky.stop_cleanly();
        assert!(!notify_dir.exists(), "the notify directory outlived sticky");
    });
}

#[test]
fn an_upgrade_hands_every_notify_socket_over_and_a_killed_loaders_are_replaced() {
    in_netns(|| {
        let runtime = runtime_dir();
        let notify_dir = runtime.0.join("notify");
        let env = [("RUNTIME_DIRECTORY", runtime.0.to_str().unwrap())];
        let state = StateDir::new();
        let args = ["--listen", "127.0.0.1:3105", "-w", "2"];
        let mut sticky = Sticky::start_with_state_env(&state, &args, &env);
        sticky.wait_until_serving(2);
        let tell = |sticky: &Sticky, status: &str| {
            for pid in worker_pids(sticky) {
                send_as(WORKERS, &notify_socket(pid), &format!("STATUS={status}")).unwrap();
            }
            let expected = vec![Some(status.to_owned()); 2];
            eventually(&format!("every worker's status is {status:?}"), || {
                statuses(sticky) == expected
            });
        };
        tell(&sticky, "before");
        let pids = worker_pids(&sticky);
        let sockets = sockets_in(&notify_dir);

        // The new image reads the same sockets: what the workers send still arrives.
        done(sticky.control(Request::Upgrade), &sticky);
        assert_eq!(sticky.status().loader.upgrades, 1);
        assert_eq!((worker_pids(&sticky), sockets_in(&notify_dir)), (pids.clone(), sockets));
        assert_eq!(statuses(&sticky), vec![Some("before".to_owned()); 2]);
        tell(&sticky, "after the upgrade");
        // ... and binds new ones beside them; the old ones go with their workers.
        done(sticky.control(Request::Reload), &sticky);
        let restarted = worker_pids(&sticky);
        assert!(restarted.iter().all(|pid| !pids.contains(pid)));
        eventually("only the new workers' sockets are left", || sockets_in(&notify_dir).len() == 2);
        tell(&sticky, "after the reload");

        // A killed loader leaves its sockets behind; the next one starts regardless.
        sticky.signal(Signal::SIGKILL);
        assert!(!sticky.wait().status.success());
        eventually("the workers are gone", || processes_in_netns().is_empty());
        assert_eq!(sockets_in(&notify_dir).len(), 2, "no stale sockets to replace");
        let mut sticky = Sticky::start_with_state_env(&state, &args, &env);
        sticky.wait_until_serving(2);
        assert_eq!(sockets_in(&notify_dir).len(), 2);
        tell(&sticky, "fresh");
        sticky.stop_cleanly();
        assert!(!notify_dir.exists(), "the notify directory outlived sticky");
    });
}
