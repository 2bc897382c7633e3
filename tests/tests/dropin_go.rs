//! The Go example (examples/go: net/http on `net.FileListener(os.NewFile(3, …))`, READY=1 on
//! NOTIFY_SOCKET, a graceful Shutdown on SIGTERM), built here with Debian's golang into
//! target/go and run under sticky: each client on one worker, a rolling restart under load,
//! and the connections sticky passes on from a trusted proxy, served from the handoff socket.

use std::{
    io::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::Command,
    sync::OnceLock,
};

use sticky_tests::{Sticky, client_v4, connect, dropin::workspace, get, in_netns, read_response};

const WORKERS: usize = 4;

/// The example built once per run into target/go (the build cache there too).
fn go_worker() -> &'static str {
    static BUILT: OnceLock<String> = OnceLock::new();
    BUILT.get_or_init(|| {
        let target = workspace().join("target/go");
        let binary: PathBuf = target.join("sticky-example-go");
        let output = Command::new("go")
            .args(["build", "-o"])
            .arg(&binary)
            .arg(".")
            .current_dir(workspace().join("examples/go"))
            .env("GOCACHE", target.join("cache"))
            .env("GOPATH", target.join("path"))
            .env("GOFLAGS", "-mod=mod")
            .output()
            .expect("run go: `cargo xtask test` installs it (apt-get install golang)");
        assert!(output.status.success(), "go build: {}", String::from_utf8_lossy(&output.stderr));
        binary.to_str().expect("a UTF-8 path").to_owned()
    })
}

/// The Go worker under sticky, 4 slots on `port`, ready by READY=1.
fn start(port: u16) -> Sticky {
    let listen = format!("127.0.0.1:{port}");
    let args = ["--listen", &listen, "-w", "4", "--ready", "notify", "--", go_worker()];
    Sticky::serving(&args, WORKERS)
}

#[test]
fn the_go_worker_keeps_each_client_on_one_worker() {
    in_netns(|| {
        let sticky = start(3070);
        let server = SocketAddr::from(([127, 0, 0, 1], 3070));
        let mut clients_per_worker = [0; WORKERS];
        for client in (0..200).map(client_v4) {
            let first = get(client, server);
            assert!(first.text.contains("x-sticky-runtime: go"), "{}", first.text);
            for _ in 0..2 {
                let again = get(client, server);
                assert_eq!((again.worker, again.pid), (first.worker, first.pid), "{client} moved");
            }
            clients_per_worker[first.worker as usize] += 1;
        }
        let status = sticky.status();
        sticky.stop_cleanly();
        println!("go: clients per worker {clients_per_worker:?}");
        assert!(clients_per_worker.iter().all(|&n| n > 0), "idle worker: {clients_per_worker:?}");
        assert_eq!(status.slots.iter().map(|s| s.connections).sum::<u64>(), 600);
    });
}

#[test]
fn the_go_worker_reload_under_load_fails_no_connection() {
    in_netns(|| {
        let sticky = start(3071);
        sticky.reload_under_load(SocketAddr::from(([127, 0, 0, 1], 3071)), "go: a rolling restart");
        sticky.stop_cleanly();
    });
}

#[test]
fn the_go_worker_serves_the_connections_sticky_passes_on_from_a_trusted_proxy() {
    in_netns(|| {
        let listen = "127.0.0.1:3072";
        let args = ["--listen", listen, "-w", "4", "--ready", "notify", "--trusted-proxy"];
        let args = [&args[..], &["127.0.0.1", "--client-address", "x-forwarded-for", "--"]];
        let sticky = Sticky::serving(&[&args.concat()[..], &[go_worker()]].concat(), WORKERS);
        let server: SocketAddr = listen.parse().unwrap();
        for client in (0..100).map(client_v4) {
            let direct = get(client, server);
            // From the trusted proxy, naming the client.
            let mut stream = connect(IpAddr::V4(Ipv4Addr::LOCALHOST), server).expect("connect");
            let request = format!(
                "GET / HTTP/1.1\r\nhost: sticky\r\nx-forwarded-for: {client}\r\n\
                 connection: close\r\n\r\n"
            );
            stream.write_all(request.as_bytes()).expect("send");
            let proxied = read_response(&mut stream).expect("an answer through the handoff socket");
            assert_eq!((proxied.worker, proxied.pid), (direct.worker, direct.pid), "{client}");
        }
        let routed = sticky.status().client_address.expect("trusted proxies").by_header;
        assert_eq!(routed, 100);
        sticky.stop_cleanly();
    });
}
