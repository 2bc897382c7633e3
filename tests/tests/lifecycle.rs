//! Lifecycle under load: killed workers, rolling restarts, scaling, crash loops, migration.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    os::unix::fs::PermissionsExt as _,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use sticky_tests::{
    Failure, Load, MIN_SUCCEEDED, Sticky, client_v4, connect, eventually, get, in_netns,
    is_running, load_clients, read_response, send_request, sticky_bin,
};
use sticky_user::control::{Request, Response};

/// Other addresses, to probe the mapping with.
fn probe_clients(count: u32) -> Vec<IpAddr> {
    (10_000..10_000 + count).map(client_v4).collect()
}

/// Each probe client's worker, one request each.
fn mapping(clients: &[IpAddr], server: SocketAddr) -> HashMap<IpAddr, u32> {
    clients.iter().map(|&client| (client, get(client, server).worker)).collect()
}

/// Threads of each load.
const LOAD_THREADS: usize = 4;

fn done(response: Response) -> String {
    match response {
        Response::Done { message } => message,
        other => panic!("expected done, got {other:?}"),
    }
}

#[test]
fn killing_a_worker_every_second_loses_only_its_accepted_connections() {
    in_netns(|| {
        let sticky = Sticky::serving(&["--listen", "127.0.0.1:3040", "-w", "4"], 4);
        let server = "127.0.0.1:3040".parse().unwrap();
        let load = Load::start(server, &load_clients(), LOAD_THREADS);
        // Each kill: its slot, and from just before the signal until the worker is gone.
        let mut kills: Vec<(u32, Instant, Instant)> = Vec::new();
        for round in 0..10u32 {
            thread::sleep(Duration::from_secs(1));
            let slot = round % 4;
            let status = sticky.status();
            if let Some(pid) = status.slots[slot as usize].pid {
                let sent = Instant::now();
                kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
                eventually("the killed worker is gone", || !is_running(pid));
                kills.push((slot, sent, Instant::now()));
            }
        }
        thread::sleep(Duration::from_secs(1));
        let report = load.stop();
        assert_eq!(kills.len(), 10, "a slot had no worker to kill");
        let workers = report.workers_by_client();
        let mut lost_per_kill = vec![0; kills.len()];
        for outcome in &report.outcomes {
            let Err(failure) = &outcome.result else { continue };
            let client = outcome.client;
            if let Failure::Connect(err) = failure {
                panic!("{client}: connection failed: {err}; {}", report.summary());
            }
            // A connection the killed worker had accepted dies with it: it must be one of the
            // killed slot's clients, in flight while that slot's worker was killed.
            let slot = workers.get(&client).map_or_else(|| get(client, server).worker, |w| w[0]);
            let (started, ended) = outcome.span;
            let kill = kills.iter().position(|&(killed, sent, gone)| {
                killed == slot && started <= gone && sent <= ended
            });
            let kill = kill.unwrap_or_else(|| {
                panic!("{client} of slot {slot} failed outside any kill of its slot: {failure}")
            });
            lost_per_kill[kill] += 1;
        }
        println!("{}; lost per kill: {lost_per_kill:?}", report.summary());
        // At most the requests in flight at that moment: one per load thread.
        assert!(lost_per_kill.iter().all(|&lost| lost <= LOAD_THREADS), "{lost_per_kill:?}");
        assert!(report.succeeded() > MIN_SUCCEEDED, "{}", report.summary());
        for (client, seen) in &workers {
            assert!(seen.iter().all(|&w| w == seen[0]), "{client} moved: {seen:?}");
        }
        let exit = sticky.stop_cleanly();
        assert!(exit.log.matches("worker exited").count() >= 10, "{}", exit.log);
    });
}

#[test]
fn a_rolling_restart_under_load_fails_no_connection() {
    in_netns(|| {
        let sticky = Sticky::serving(&["--listen", "127.0.0.1:3041", "-w", "4"], 4);
        sticky.reload_under_load("127.0.0.1:3041".parse().unwrap(), "a rolling restart");
        let after = sticky.status();
        // SIGHUP rolls too: every worker replaced, and the reload recorded as done.
        sticky.signal(Signal::SIGHUP);
        eventually("SIGHUP replaces every worker", || {
            let status = sticky.status();
            after.slots.iter().zip(&status.slots).all(|(old, new)| {
                new.pid.is_some() && new.pid != old.pid && new.ready && new.in_table
            })
        });
        let last = sticky.status().last_reload.expect("the reload's outcome");
        assert!(last.ok && last.message == "restarted 4 workers", "{last:?}");
        sticky.stop_cleanly();
    });
}

#[test]
fn scaling_up_and_down_under_load_moves_only_the_clients_it_must() {
    in_netns(|| {
        let sticky = Sticky::serving(&["--listen", "127.0.0.1:3042", "-w", "4"], 4);
        let server = "127.0.0.1:3042".parse().unwrap();
        let probes = probe_clients(2000);
        let load = Load::start(server, &load_clients(), LOAD_THREADS);
        let four = mapping(&probes, server);
        let scaling_started = Instant::now();

        assert_eq!(done(sticky.control(Request::Scale { workers: 5 })), "5 workers");
        let five = mapping(&probes, server);
        let moved: Vec<_> = probes.iter().filter(|c| four[c] != five[c]).collect();
        assert!(moved.iter().all(|c| five[c] == 4), "a client moved between old workers");
        let fraction = moved.len() as f64 / probes.len() as f64;
        println!("4→5: {:.3} of clients moved", fraction);
        assert!((0.85 / 5.0..=1.15 / 5.0).contains(&fraction), "{fraction} moved");

        assert_eq!(done(sticky.control(Request::Scale { workers: 4 })), "4 workers");
        let back = mapping(&probes, server);
        let of_removed = probes.iter().filter(|c| five[c] == 4).count();
        let moved: Vec<_> = probes.iter().filter(|c| five[c] != back[c]).collect();
        assert!(moved.iter().all(|c| five[c] == 4), "a client of an untouched slot moved");
        assert!(moved.len() as f64 <= 1.15 * of_removed as f64);
        assert_eq!(back, four, "scaling back restores the first mapping");
        let scaling = (scaling_started, Instant::now());

        let report = load.stop();
        report.assert_no_failure_during("scaling 4 → 5 → 4", scaling);
        assert_eq!(sticky.status().slots.len(), 4);
        sticky.stop_cleanly();
    });
}

#[test]
fn a_crashing_worker_is_restarted_after_a_backoff_doubling_from_100_ms_to_5_s() {
    let marks = sticky_tests::StateDir::new();
    std::fs::create_dir_all(&marks.0).unwrap();
    std::fs::set_permissions(&marks.0, std::fs::Permissions::from_mode(0o777)).unwrap();
    let starts = marks.0.join("starts");
    // Slot 1's worker notes when it starts (ns), and exits at once; slot 0 serves.
    let script = format!(
        "if [ \"$STICKY_WORKER\" = 1 ]; then date +%s%N >> {starts}; exit 1; fi; exec {sticky} demo",
        starts = starts.display(),
        sticky = sticky_bin().display(),
    );
    in_netns(|| {
        // No ejection for crash looping here: only the backoff spaces the restarts.
        let args = ["--listen", "127.0.0.1:3048", "-w", "2", "--crash-limit", "1000"];
        let sticky = Sticky::start(&[&args[..], &["--", "sh", "-c", &script]].concat());
        let read = || -> Vec<u128> {
            let text = std::fs::read_to_string(&starts).unwrap_or_default();
            text.lines().map(|line| line.trim().parse().expect("nanoseconds")).collect()
        };
        eventually("nine starts of the crashing worker", || read().len() >= 9);
        sticky.stop_cleanly();
        let gaps: Vec<Duration> = read()
            .windows(2)
            .take(8)
            .map(|pair| Duration::from_nanos((pair[1] - pair[0]) as u64))
            .collect();
        println!("gaps between restarts: {gaps:?}");
        let backoffs = [100, 200, 400, 800, 1600, 3200, 5000, 5000].map(Duration::from_millis);
        for (gap, backoff) in gaps.iter().zip(backoffs) {
            assert!(*gap >= backoff, "a restart came {gap:?} after the last, before {backoff:?}");
        }
        // Capped at 5 s: not 6.4 s, then 12.8 s.
        assert!(gaps[6..].iter().all(|gap| *gap < Duration::from_secs(6)), "{gaps:?}");
    });
}

#[test]
fn a_crash_looping_slot_leaves_the_table_and_rejoins_once_its_worker_stays_up() {
    let state = sticky_tests::StateDir::new();
    std::fs::create_dir_all(&state.0).unwrap();
    // The workers (as `nobody`) count their starts in it.
    std::fs::set_permissions(&state.0, std::os::unix::fs::PermissionsExt::from_mode(0o777))
        .unwrap();
    let starts = state.0.join("slot-2-starts");
    // Slot 2's worker exits at once on its first three starts, then serves.
    let script = format!(
        "if [ \"$STICKY_WORKER\" = 2 ] && [ $(wc -c < {starts} 2>/dev/null || echo 0) -lt 3 ]; \
         then printf x >> {starts}; exit 3; fi; exec {sticky} demo",
        starts = starts.display(),
        sticky = sticky_bin().display(),
    );
    let seed = sticky_tests::StateDir::new();
    in_netns(|| {
        let args =
            ["--listen", "127.0.0.1:3043", "-w", "4", "--crash-limit", "3", "--crash-window", "20"];
        let mut sticky =
            Sticky::start_with_state(&seed, &[&args[..], &["--", "sh", "-c", &script]].concat());
        // Slot 2's worker exits at once, so the status rarely shows it running: wait for the
        // first start of every slot instead.
        sticky.wait_for_workers(4);
        let server = "127.0.0.1:3043".parse().unwrap();
        // A request from a slot 2 client made now waits in its queue until the ejection
        // migrates it.
        let probes = probe_clients(400);
        let ejected = mapping(&probes, server);
        sticky.wait_for("the ejection", |log| log.contains("slot is crash-looping"));
        let ejected_at = Instant::now();
        assert!(ejected.values().all(|&w| w != 2), "the crash-looping slot answered");
        let status = sticky.status();
        assert!(!status.slots[2].in_table, "{status:?}");
        assert!(status.slots.iter().enumerate().all(|(i, s)| i == 2 || s.in_table));
        assert_eq!(mapping(&probes, server), ejected, "a client moved while slot 2 was out");

        sticky.wait_for("the rejoin", |log| log.contains("slot rejoins the table"));
        assert!(sticky.status().slots[2].in_table);
        // Once its worker has stayed up 10 s, which started after the ejection.
        let out = ejected_at.elapsed();
        assert!(out >= Duration::from_secs(10), "slot 2 rejoined after {out:?}");
        let rejoined = mapping(&probes, server);
        let back: Vec<_> = probes.iter().filter(|c| rejoined[c] != ejected[c]).collect();
        assert!(back.iter().all(|c| rejoined[c] == 2), "a client moved between other slots");
        assert!(back.len() >= probes.len() / 8, "only {} clients returned to slot 2", back.len());
        sticky.stop_cleanly();

        // Back in the table, slot 2 has exactly the clients of a healthy run with the seed.
        let mut healthy =
            Sticky::start_with_state(&seed, &["--listen", "127.0.0.1:3043", "-w", "4"]);
        healthy.wait_until_serving(4);
        assert_eq!(
            rejoined,
            mapping(&probes, server),
            "the rejoined mapping is not the healthy one"
        );
        healthy.stop_cleanly();
    });
}

#[test]
fn scaling_down_migrates_the_connections_queued_on_the_closing_listener() {
    in_netns(|| {
        let args = ["--listen", "127.0.0.1:3044", "-w", "5", "--grace-period", "1"];
        let sticky = Sticky::serving(&args, 5);
        let server = "127.0.0.1:3044".parse().unwrap();
        let status = sticky.status();
        assert!(status.migrates, "this kernel cannot migrate (needs 5.14): {status:?}");
        let probes = probe_clients(400);
        let slot4: Vec<IpAddr> =
            probes.iter().copied().filter(|&c| get(c, server).worker == 4).take(20).collect();
        assert!(slot4.len() >= 10);
        // Freeze slot 4's worker: new connections to it wait in its listener's queue.
        let pid = status.slots[4].pid.unwrap();
        kill(Pid::from_raw(pid as i32), Signal::SIGSTOP).unwrap();
        let mut queued: Vec<_> = slot4
            .iter()
            .map(|&client| {
                let mut stream = connect(client, server).expect("connect");
                send_request(&mut stream).expect("send");
                stream
            })
            .collect();
        assert_eq!(done(sticky.control(Request::Scale { workers: 4 })), "4 workers");
        for stream in &mut queued {
            let response = read_response(stream).expect("a queued connection was reset");
            assert_ne!(response.worker, 4);
        }
        let exit = sticky.stop_cleanly();
        assert!(exit.counters()[0].selected.len() == 4);
    });
}

#[test]
fn the_control_socket_is_private_and_says_when_no_loader_runs() {
    in_netns(|| {
        let sticky = Sticky::serving(&["--listen", "127.0.0.1:3045", "-w", "2"], 2);
        let mode = std::fs::metadata(sticky.control_path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let control = sticky.control_path().to_owned();
        // Past its mode, the loader answers only root and its own user, checked by the peer's
        // credentials: another user gets no answer even on a socket opened to all.
        let open = |mode| {
            std::fs::set_permissions(&control, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        open(0o666);
        let denied = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(sticky_bin())
            .args(["status", "--control"])
            .arg(&control)
            .output()
            .unwrap();
        open(0o600);
        assert!(!denied.status.success(), "another user was answered");
        assert!(!String::from_utf8_lossy(&denied.stdout).contains("in_table"));
        // A request is one line of at most 64 KiB: 64 KiB without its end is refused at once,
        // not waited on. (More would be left unread, and the close would reset the answer.)
        let mut stream = std::os::unix::net::UnixStream::connect(&control).unwrap();
        std::io::Write::write_all(&mut stream, &vec![b' '; 64 * 1024]).unwrap();
        let mut answer = String::new();
        std::io::Read::read_to_string(&mut stream, &mut answer).unwrap();
        assert!(answer.contains("the request is incomplete or too long"), "{answer}");
        assert!(sticky.status().slots.iter().all(|slot| slot.ready), "the loader stopped serving");
        let run = |args: &[&str]| {
            let output = Command::new(sticky_bin())
                .args(args)
                .arg("--control")
                .arg(&control)
                .output()
                .unwrap();
            (
                output.status.success(),
                String::from_utf8_lossy(&output.stdout).into_owned(),
                String::from_utf8_lossy(&output.stderr).into_owned(),
            )
        };
        let (ok, stdout, _) = run(&["status", "--json"]);
        assert!(ok && stdout.contains("\"in_table\": true"), "{stdout}");
        let (ok, _, stderr) = run(&["scale", "0"]);
        assert!(!ok && stderr.contains("workers must be between 1 and 128, got 0"), "{stderr}");
        // A second loader refuses the same control socket.
        let mut second = Command::new(sticky_bin());
        second.args(["run", "--listen", "127.0.0.1:3046", "-w", "1", "--allow-root-workers"]);
        second.arg("--control").arg(&control);
        let exit = Sticky::spawn(second).wait();
        assert!(!exit.status.success());
        assert!(exit.log.contains("another sticky is running with control socket"), "{}", exit.log);
        let (ok, stdout, _) = run(&["stop"]);
        assert!(ok && stdout.contains("stopping"), "{stdout}");
        assert!(sticky.wait().status.success());
        assert!(!control.exists(), "the control socket was left behind");
        let (ok, _, stderr) = run(&["status"]);
        assert!(!ok, "status without a loader succeeded");
        assert!(stderr.starts_with("sticky: error: no sticky is running"), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    });
}

#[test]
fn a_reload_applies_a_changed_worker_count_from_the_config_file() {
    let dir = sticky_tests::StateDir::new();
    std::fs::create_dir_all(&dir.0).unwrap();
    let file = dir.0.join("sticky.toml");
    std::fs::write(&file, "listen = [\"127.0.0.1:3047\"]\nworkers = 2\n").unwrap();
    in_netns(|| {
        let sticky = Sticky::serving(&["--config", file.to_str().unwrap()], 2);
        let server = "127.0.0.1:3047".parse().unwrap();
        let load = Load::start(server, &load_clients(), LOAD_THREADS);
        std::fs::write(&file, "listen = [\"127.0.0.1:3047\"]\nworkers = 3\n").unwrap();
        thread::sleep(Duration::from_millis(500));
        let reload_started = Instant::now();
        assert_eq!(done(sticky.control(Request::Reload)), "restarted 3 workers");
        let reload = (reload_started, Instant::now());
        thread::sleep(Duration::from_millis(500));
        let status = sticky.status();
        assert_eq!(status.slots.len(), 3);
        assert!(status.slots.iter().all(|s| s.pid.is_some()));
        // A broken file is refused and changes nothing.
        std::fs::write(&file, "workers = 0\n").unwrap();
        let refused = sticky.control(Request::Reload);
        assert!(
            matches!(&refused, Response::Error { message } if message.contains("--workers must be between 1 and 128")),
            "{refused:?}"
        );
        assert_eq!(sticky.status().slots.len(), 3);
        let report = load.stop();
        report.assert_no_failure_during("a reload to 3 workers", reload);
        sticky.stop_cleanly();
    });
}
