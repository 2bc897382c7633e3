//! The Go example (examples/go: net/http on `net.FileListener(os.NewFile(3, …))`, READY=1 on
//! NOTIFY_SOCKET, a graceful Shutdown on SIGTERM), built here with Debian's golang into
//! target/go and run under sticky: each client on one worker, and a rolling restart under load.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::Command,
    sync::OnceLock,
    thread,
    time::{Duration, Instant},
};

use sticky_tests::{Load, Sticky, client_v4, dropin::workspace, get, in_netns, load_clients};
use sticky_user::control::{Request, Response};

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
        let before = sticky.status();
        let load = Load::start(SocketAddr::from(([127, 0, 0, 1], 3071)), &load_clients(), 4);
        thread::sleep(Duration::from_secs(1));
        let started = Instant::now();
        let done = sticky.control(Request::Reload);
        let reload = (started, Instant::now());
        assert!(matches!(&done, Response::Done { message } if message == "restarted 4 workers"));
        thread::sleep(Duration::from_millis(500));
        let report = load.stop();
        report.assert_no_failure_during("go: a rolling restart", reload);
        let after = sticky.status();
        for (old, new) in before.slots.iter().zip(&after.slots) {
            assert_ne!(old.pid, new.pid, "slot {} was not restarted", old.slot);
        }
        for (client, seen) in report.workers_by_client() {
            assert!(seen.iter().all(|&w| w == seen[0]), "{client} moved: {seen:?}");
        }
        sticky.stop_cleanly();
    });
}
