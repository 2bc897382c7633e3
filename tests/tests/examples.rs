//! The example workers in `examples/`, each run under sticky and checked from many clients (the
//! socket.io chat has its own file, socketio.rs).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
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
