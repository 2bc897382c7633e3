//! Workers: external commands over LISTEN_FDS, restarts into the same slot, no orphans.

use std::{
    io::Write as _,
    net::{IpAddr, SocketAddr},
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use sticky_tests::{
    Sticky, client_v4, connect, eventually, get, in_netns, is_running, loaded_programs,
    processes_in_netns, program_is_loaded, read_response, sticky_bin, try_get,
};

#[test]
fn a_killed_worker_comes_back_in_its_slot_and_serves_what_queued() {
    in_netns(|| {
        let mut sticky = Sticky::serving(&["--listen", "127.0.0.1:3011", "--workers", "4"], 4);
        let server: SocketAddr = "127.0.0.1:3011".parse().unwrap();
        let clients: Vec<IpAddr> = (0..200).map(client_v4).collect();
        let before: Vec<_> = clients.iter().map(|&c| get(c, server)).collect();
        let victim = before[0].clone();
        let victim_clients: Vec<IpAddr> = clients
            .iter()
            .zip(&before)
            .filter(|(_, r)| r.worker == victim.worker)
            .map(|(c, _)| *c)
            .collect();

        kill(Pid::from_raw(victim.pid as i32), Signal::SIGKILL).unwrap();
        eventually("the killed worker is dead", || !is_running(victim.pid));
        // Connect at once (the restart waits a backoff first): the connection waits in the
        // slot's queue until the new worker accepts it.
        let queued = get(victim_clients[0], server);
        assert_eq!(queued.worker, victim.worker);
        assert_ne!(queued.pid, victim.pid, "served by the killed worker?");
        sticky.wait_for_workers(5);

        // Every client still reaches its slot; only the victim's pid changed.
        for (client, old) in clients.iter().zip(&before) {
            let now = get(*client, server);
            assert_eq!(now.worker, old.worker, "{client} moved");
            if old.worker == victim.worker {
                assert_eq!(now.pid, queued.pid);
            } else {
                assert_eq!(now.pid, old.pid, "an untouched worker was restarted");
            }
        }
        let exit = sticky.stop_cleanly();
        assert!(exit.log.contains("worker exited"), "{}", exit.log);
    });
}

#[test]
fn workers_die_with_a_killed_loader_and_nothing_stays_attached() {
    in_netns(|| {
        let sticky = Sticky::serving(&["--listen", "127.0.0.1:3012", "--workers", "3"], 3);
        let server: SocketAddr = "127.0.0.1:3012".parse().unwrap();
        get(client_v4(1), server);
        let programs = loaded_programs(sticky.status().program_ids);
        assert_eq!(processes_in_netns().len(), 4, "sticky and 3 workers");
        sticky.signal(Signal::SIGKILL);
        let exit = sticky.wait();
        assert!(!exit.status.success());
        eventually("the workers are gone", || processes_in_netns().is_empty());
        eventually("the program is unloaded", || programs.iter().all(|&id| !program_is_loaded(id)));
        assert!(try_get(client_v4(1), server).is_err(), "something still listens");
    });
}

#[test]
fn ctrl_c_stops_workers_and_exits_zero() {
    in_netns(|| {
        let sticky = Sticky::serving(&["--listen", "127.0.0.1:3013", "--workers", "2"], 2);
        let programs = loaded_programs(sticky.status().program_ids);
        sticky.signal(Signal::SIGINT);
        let exit = sticky.wait();
        assert!(exit.status.success(), "{}", exit.log);
        assert!(exit.log.contains("SIGINT received"), "{}", exit.log);
        assert_eq!(processes_in_netns(), Vec::<u32>::new());
        assert!(programs.iter().all(|&id| !program_is_loaded(id)));
    });
}

/// Whether `pid` ignores SIGTERM, from its `SigIgn` mask in `/proc`.
fn ignores_sigterm(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let ignored = status.lines().find_map(|line| line.strip_prefix("SigIgn:"));
    let mask = ignored.and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok());
    mask.is_some_and(|mask| mask & (1 << (Signal::SIGTERM as u32 - 1)) != 0)
}

#[test]
fn a_worker_that_ignores_sigterm_is_killed_after_the_grace_period() {
    in_netns(|| {
        let script = "trap '' TERM; exec 3>&-; while :; do sleep 1; done";
        let args = [
            "--listen",
            "127.0.0.1:3014",
            "-w",
            "2",
            "--grace-period",
            "2",
            "--",
            "sh",
            "-c",
            script,
        ];
        let sticky = Sticky::serving(&args, 2);
        // Stop them only once their shells have set the trap.
        for slot in sticky.status().slots {
            let pid = slot.pid.expect("a worker");
            eventually("the worker ignores SIGTERM", || ignores_sigterm(pid));
        }
        let stopping = std::time::Instant::now();
        let exit = sticky.stop_cleanly();
        let took = stopping.elapsed();
        assert!(exit.log.contains("killing it"), "{}", exit.log);
        // SIGKILL comes after the grace period, not before (and not long after).
        let grace = std::time::Duration::from_secs(2);
        assert!(took >= grace && took < grace * 2, "the stop took {took:?}");
        assert_eq!(processes_in_netns(), Vec::<u32>::new());
    });
}

#[test]
fn with_userspace_dispatch_a_killed_worker_comes_back_and_serves_what_was_passed_to_it() {
    in_netns(|| {
        let args = ["--listen", "127.0.0.1:3015", "--workers", "3", "--dispatch", "userspace"];
        let sticky = Sticky::serving(&args, 3);
        let server: SocketAddr = "127.0.0.1:3015".parse().unwrap();
        let first = get(client_v4(7), server);
        kill(Pid::from_raw(first.pid as i32), Signal::SIGKILL).unwrap();
        eventually("the killed worker is dead", || !is_running(first.pid));
        // Passed to the slot while its worker is down: waits in the handoff socket.
        let queued = get(client_v4(7), server);
        assert_eq!(queued.worker, first.worker);
        assert_ne!(queued.pid, first.pid);
        let exit = sticky.stop_cleanly();
        assert!(exit.log.contains("worker exited"), "{}", exit.log);
    });
}

/// How many file descriptors `pid` has open.
fn open_fds(pid: u32) -> usize {
    fd_numbers(pid).len()
}

/// A request that arrives in pieces after its connection was accepted (the demo worker's slow
/// path) is still answered, even when the worker is told to stop in between.
fn a_stopping_worker_finishes_a_request_that_arrives_late(dispatch: &str, port: u16) {
    in_netns(|| {
        let listen = format!("127.0.0.1:{port}");
        let sticky =
            Sticky::serving(&["--listen", &listen, "--workers", "1", "--dispatch", dispatch], 1);
        let server: SocketAddr = listen.parse().unwrap();
        let worker = get(client_v4(1), server).pid;
        let idle = open_fds(worker);
        let mut stream = connect(client_v4(2), server).expect("connect");
        stream.write_all(b"GET / HTTP/1.1\r\nhost: sticky\r\n").unwrap();
        eventually("the worker holds the connection", || open_fds(worker) > idle);
        let holding = open_fds(worker);
        kill(Pid::from_raw(worker as i32), Signal::SIGTERM).unwrap();
        // It closes its listening socket (or handoff socket) and keeps the connection.
        eventually("the worker stops taking connections", || open_fds(worker) < holding);
        stream.write_all(b"connection: close\r\n\r\n").unwrap();
        let late = read_response(&mut stream).expect("the late request was not answered");
        assert_eq!(late.pid, worker, "not answered by the worker that accepted it");
        eventually("the drained worker exits", || !is_running(worker));
        sticky.stop_cleanly();
    });
}

#[test]
fn a_stopping_worker_finishes_a_late_request_with_kernel_dispatch() {
    a_stopping_worker_finishes_a_request_that_arrives_late("kernel", 3016);
}

#[test]
fn a_stopping_worker_finishes_a_late_request_with_userspace_dispatch() {
    a_stopping_worker_finishes_a_request_that_arrives_late("userspace", 3017);
}

#[test]
fn workers_start_with_only_their_sockets_and_cannot_gain_privileges() {
    in_netns(|| {
        let args = ["--listen", "127.0.0.1:3016", "--listen", "[::1]:3016", "-w", "2"];
        let args = [&args[..], &["--", "sleep", "600"]].concat();
        // sticky's own parent leaks two fds to it, as a careless supervisor would.
        let mut sticky = Sticky::start_with(&args, |command| {
            // SAFETY: dup2 and fcntl only, between fork and exec.
            unsafe {
                command.pre_exec(|| {
                    for fd in [10, 251] {
                        if libc::dup2(2, fd) < 0 || libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                })
            };
        });
        sticky.wait_until_serving(2);
        let sticky_fds = fd_numbers(sticky.pid());
        assert!(sticky_fds.contains(&10) && sticky_fds.contains(&251), "no leak: {sticky_fds:?}");
        for slot in sticky.status().slots {
            let pid = slot.pid.expect("a worker");
            let fds = fd_numbers(pid);
            assert_eq!(fds, [0, 1, 2, 3, 4], "worker {pid} has other fds open");
            for fd in [3, 4] {
                let target = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap();
                assert!(target.to_string_lossy().starts_with("socket:"), "fd {fd}: {target:?}");
            }
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            assert!(status.contains("NoNewPrivs:\t1"), "{status}");
            // The variables docs/operations.md promises, with their values.
            let environ = sticky_tests::privileges::environ_of(pid);
            let variables: Vec<&str> = environ.split('\0').collect();
            for expected in [
                format!("LISTEN_PID={pid}"),
                "LISTEN_FDS=2".to_owned(),
                "LISTEN_FDNAMES=sticky-3016:sticky-3016".to_owned(),
                format!("STICKY_WORKER={}", slot.slot),
                "STICKY_WORKERS=2".to_owned(),
            ] {
                assert!(variables.contains(&expected.as_str()), "no {expected}: {variables:?}");
            }
        }
        sticky.stop_cleanly();
    });
}

/// The fds open in process `pid`, in order (none if it is gone).
fn fd_numbers(pid: u32) -> Vec<u32> {
    let entries = std::fs::read_dir(format!("/proc/{pid}/fd")).into_iter().flatten().flatten();
    let mut fds: Vec<u32> = entries.filter_map(|e| e.file_name().to_str()?.parse().ok()).collect();
    fds.sort_unstable();
    fds
}

#[test]
fn a_worker_that_cannot_be_executed_says_which_command_and_user() {
    let dir = sticky_tests::StateDir::new();
    std::fs::create_dir_all(&dir.0).unwrap();
    let program = dir.0.join("worker.sh");
    std::fs::write(&program, format!("#!/bin/sh\nexec {} demo\n", sticky_bin().display())).unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    in_netns(|| {
        let args = ["--listen", "127.0.0.1:3017", "-w", "1", "--", program.to_str().unwrap()];
        let mut sticky = Sticky::serving(&args, 1);
        // A deploy breaks the program; the next start of the worker fails at exec.
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o700)).unwrap();
        let pid = sticky.status().slots[0].pid.expect("a worker");
        kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
        let expected = format!(
            "worker 0: cannot execute {} as user nobody: Permission denied",
            program.display()
        );
        sticky.wait_for("the exec failure", |log| log.contains(&expected));
        sticky.stop_cleanly();
    });
}
