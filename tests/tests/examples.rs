//! The example workers in `examples/`, each run under sticky and checked from many clients (the
//! socket.io chat has its own file, socketio.rs).

use std::{
    io::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
};

use sticky_tests::{
    Response, Sticky, client_v4, connect, get, in_netns, processes_in_netns, read_response,
    target_bin,
};

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

/// A request from the trusted proxy 127.0.0.1 that names `client` in X-Forwarded-For.
fn get_forwarded_for(client: IpAddr, server: SocketAddr) -> Response {
    let mut stream = connect(IpAddr::V4(Ipv4Addr::LOCALHOST), server).expect("connect");
    let request = format!(
        "GET / HTTP/1.1\r\nhost: sticky\r\nx-forwarded-for: {client}\r\nconnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).expect("send");
    read_response(&mut stream).expect("a response")
}

/// Runs `worker` under sticky (`dispatch`) trusting 127.0.0.1's X-Forwarded-For: each of 100
/// clients reaches, through 127.0.0.1 (the loader passes those connections on over the handoff
/// socket), the worker it reaches directly.
fn check_proxied_worker(port: u16, worker: &[&str], dispatch: &str) {
    in_netns(|| {
        let listen = format!("127.0.0.1:{port}");
        let mut args = vec!["--listen", &listen, "--workers", "4", "--ready", "notify"];
        args.extend(["--dispatch", dispatch, "--trusted-proxy", "127.0.0.1"]);
        args.extend(["--client-address", "x-forwarded-for", "--"]);
        args.extend(worker);
        let sticky = Sticky::serving(&args, WORKERS);
        let server = SocketAddr::from(([127, 0, 0, 1], port));
        for client in (0..100).map(client_v4) {
            let direct = get(client, server);
            let proxied = get_forwarded_for(client, server);
            assert_eq!((proxied.worker, proxied.pid), (direct.worker, direct.pid), "{client}");
        }
        let status = sticky.status();
        sticky.stop_cleanly();
        let routed = status.client_address.expect("trusted proxies in the status");
        assert_eq!(routed.by_header, 100, "{routed:?}");
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

#[test]
fn the_python_and_rust_examples_serve_proxied_connections() {
    let python = example("python/worker.py");
    let python = ["/usr/bin/python3", python.to_str().unwrap()];
    check_proxied_worker(3032, &python, "kernel");
    check_proxied_worker(3033, &python, "userspace");
    let rust = target_bin("sticky-example-rust", "sticky-example-rust");
    check_proxied_worker(3034, &[rust.to_str().unwrap()], "kernel");
}

#[test]
fn a_passed_connection_is_blocking_so_a_late_request_is_answered() {
    // The loader passes each connection under userspace dispatch at its accept, before the
    // request arrives; Python's socket(fileno=) takes the fd's mode as blocking, so a
    // non-blocking fd made the example close it on EAGAIN, unanswered.
    let python = example("python/worker.py");
    let python = ["/usr/bin/python3", python.to_str().unwrap()];
    in_netns(|| {
        let mut args = vec!["--listen", "127.0.0.1:3035", "--workers", "2", "--ready", "notify"];
        args.extend(["--dispatch", "userspace", "--"]);
        args.extend(python);
        let sticky = Sticky::serving(&args, 2);
        let server = SocketAddr::from(([127, 0, 0, 1], 3035));
        for client in (0..10).map(client_v4) {
            let mut stream = connect(client, server).expect("connect");
            // The worker has the connection by now, and reads it.
            std::thread::sleep(std::time::Duration::from_millis(100));
            let request = "GET / HTTP/1.1\r\nhost: sticky\r\nconnection: close\r\n\r\n";
            stream.write_all(request.as_bytes()).expect("send");
            let response = read_response(&mut stream).expect("a response");
            assert!(response.text.contains("x-sticky-runtime: python"), "{}", response.text);
        }
        sticky.stop_cleanly();
    });
}
