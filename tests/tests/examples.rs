//! The example workers in `examples/`, each run under sticky and checked from many clients.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
};

use sticky_tests::{Sticky, client_v4, get, in_netns, processes_in_netns, target_bin};

const WORKERS: usize = 4;

fn example(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples").join(path)
}

/// Runs `worker` under sticky on `port` (ready by READY=1), checks that 300 clients each stay
/// on one worker, that every worker served some and that the responses carry `runtime`.
fn check_sticky_worker(port: u16, runtime: &str, worker: &[&str]) {
    in_netns(|| {
        let listen = format!("[::]:{port}");
        // Each example says READY=1 once it listens: without it, sticky would not start.
        let mut args = vec!["--listen", &listen, "--workers", "4", "--ready", "notify", "--"];
        args.extend(worker);
        let sticky = Sticky::serving(&args, WORKERS);
        let server = SocketAddr::from(([127, 0, 0, 1], port));
        let mut clients_per_worker = [0; WORKERS];
        for client in (0..300).map(client_v4) {
            let first = get(client, server);
            assert!(first.text.contains(&format!("x-sticky-runtime: {runtime}")), "{}", first.text);
            for _ in 0..2 {
                assert_eq!(get(client, server).worker, first.worker, "{client} moved");
            }
            clients_per_worker[first.worker as usize] += 1;
        }
        assert!(clients_per_worker.iter().all(|&n| n > 0), "idle worker: {clients_per_worker:?}");
        let status = sticky.status();
        sticky.stop_cleanly();
        assert_eq!(status.slots.iter().map(|s| s.connections).sum::<u64>(), 900);
        assert_eq!(processes_in_netns(), Vec::<u32>::new());
    });
}

#[test]
fn the_python_example_worker_is_sticky() {
    let worker = example("python/worker.py");
    // The system's python: the workers run as `nobody`, who may not reach a per-user install.
    check_sticky_worker(3030, "python", &["/usr/bin/python3", worker.to_str().unwrap()]);
}

#[test]
fn the_rust_example_worker_is_sticky() {
    let worker = target_bin("sticky-example-rust", "sticky-example-rust");
    check_sticky_worker(3031, "rust-example", &[worker.to_str().unwrap()]);
}

/// The socket.io example's outcome: `(succeeded, failed, whole JSON line)`.
fn socketio_sessions(dispatch: &str, port: u16) -> (u32, u32, String) {
    let dir = example("socketio");
    assert!(
        Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success()),
        "node is not installed: `cargo xtask test` installs it (apt-get install nodejs npm)"
    );
    assert!(
        dir.join("node_modules/socket.io-client").exists(),
        "socket.io is not installed: `cargo xtask test` runs `npm ci` in examples/socketio"
    );
    in_netns(|| {
        let listen = format!("127.0.0.1:{port}");
        let server = dir.join("server.js");
        let args = [
            "--listen",
            &listen,
            "-w",
            "4",
            "--dispatch",
            dispatch,
            "--ready",
            "notify",
            "--",
            "node",
            server.to_str().unwrap(),
        ];
        let sticky = Sticky::serving(&args, WORKERS);
        let output = Command::new("node")
            .arg(dir.join("client.js"))
            .args([listen.as_str(), "200", "10"])
            .output()
            .expect("run the socket.io client");
        let summary = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        assert!(
            output.status.success(),
            "client failed: {summary} {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let status = sticky.status();
        sticky.stop_cleanly();
        if dispatch == "kernel" {
            assert!(status.slots.iter().map(|s| s.connections).sum::<u64>() > 0);
            assert_eq!((status.fallback, status.passed, status.unreadable), (0, 0, 0));
        }
        assert_eq!(processes_in_netns(), Vec::<u32>::new());
        let number = |name: &str| -> u32 {
            let value = summary.split(&format!("\"{name}\":")).nth(1).expect(name);
            value.split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
        };
        (number("succeeded"), number("failed"), summary.clone())
    })
}

#[test]
fn socketio_polling_sessions_all_succeed_with_sticky() {
    let (succeeded, failed, summary) = socketio_sessions("kernel", 3032);
    assert_eq!((succeeded, failed), (200, 0), "{summary}");
}

#[test]
fn socketio_polling_sessions_fail_without_stickiness() {
    // Plain SO_REUSEPORT spreads one session's requests over the workers: the handshake is
    // unknown to most of them. This is the failure sticky exists to prevent.
    let (_, failed, summary) = socketio_sessions("none", 3033);
    assert!(failed >= 100, "only {failed} of 200 sessions failed without stickiness: {summary}");
}
