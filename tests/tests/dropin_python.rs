//! The Python servers people run, under sticky (examples/python-servers, packages pinned in its
//! requirements.txt and installed into target/pyenv by `cargo xtask test`): python-socketio
//! under uvicorn `--fd 3` with its Redis manager and a real Redis, and a WSGI app under
//! gunicorn with one gunicorn worker per slot. Each says READY=1 (`--ready notify`).

use std::{net::SocketAddr, path::PathBuf};

use serde_json::Value;
use sticky_tests::{
    Redis, Sticky, client_v4,
    dropin::{assert_node_package, example, node_json, workspace},
    get, in_netns,
};

const WORKERS: usize = 4;
const REDIS_PORT: u16 = 6379;

/// `target/pyenv/bin/NAME`, asserted installed.
fn pyenv(name: &str) -> String {
    let path: PathBuf = workspace().join("target/pyenv/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: `cargo xtask test` installs examples/python-servers/requirements.txt there",
        path.display()
    );
    path.to_str().expect("a UTF-8 path").to_owned()
}

/// The python-socketio chat under uvicorn, 4 workers on `port` with `dispatch`, using `redis`.
fn uvicorn(redis: &Redis, port: u16, dispatch: &str) -> Sticky {
    let (listen, redis_url) = (format!("127.0.0.1:{port}"), format!("REDIS_URL={}", redis.url()));
    let app_dir = example("python-servers");
    let args = [
        "--listen",
        &listen,
        "-w",
        "4",
        "--dispatch",
        dispatch,
        "--ready",
        "notify",
        "--env",
        &redis_url,
    ];
    let uvicorn = pyenv("uvicorn");
    let worker = [
        "--",
        &uvicorn,
        "--fd",
        "3",
        "--http",
        "chat:GracefulH11Protocol",
        "--app-dir",
        app_dir.to_str().unwrap(),
        "--no-access-log",
        "--timeout-graceful-shutdown",
        "8",
        "chat:app",
    ];
    Sticky::serving(&[&args[..], &worker[..]].concat(), WORKERS)
}

/// 100 socket.io-client sessions with the default transports and one broadcast: what
/// `chat-check.js` reports.
fn chat_check(sticky: &Sticky, port: u16) -> Value {
    assert_node_package("socketio", "socket.io-client");
    let server = format!("127.0.0.1:{port}");
    node_json(&example("python-servers/chat-check.js"), &[&server, "100"], || sticky.log())
}

#[test]
fn python_socketio_under_uvicorn_upgrades_and_broadcasts_across_workers() {
    in_netns(|| {
        let redis = Redis::start(REDIS_PORT);
        let sticky = uvicorn(&redis, 3060, "kernel");
        let summary = chat_check(&sticky, 3060);
        redis.stop();
        sticky.stop_cleanly();
        println!("python-socketio under uvicorn: {summary}");
        assert_eq!(summary["upgraded"], 100, "{summary}");
        assert_eq!(summary["received_once"], 100, "{summary}");
        let workers = summary["workers"].as_object().expect("workers");
        assert_eq!(workers.len(), WORKERS, "a worker held no session: {summary}");
    });
}

#[test]
fn python_socketio_fails_without_stickiness() {
    in_netns(|| {
        let redis = Redis::start(REDIS_PORT);
        let sticky = uvicorn(&redis, 3061, "none");
        let summary = chat_check(&sticky, 3061);
        redis.stop();
        sticky.stop_cleanly();
        println!("python-socketio without stickiness: {summary}");
        let upgraded = summary["upgraded"].as_u64().expect("upgraded");
        // The other worker does not know the session: HTTP 400, or an upgrade it refuses.
        let of_that_cause: u64 = summary["errors"]
            .as_object()
            .expect("errors")
            .iter()
            .filter(|(error, _)| error.contains("(HTTP 400)") || error.contains("upgrade"))
            .map(|(_, count)| count.as_u64().expect("a count"))
            .sum();
        assert!(upgraded <= 50 && of_that_cause >= 50, "{summary}");
    });
}

/// gunicorn with one worker per slot, 4 slots on `port`.
fn gunicorn(port: u16) -> Sticky {
    let listen = format!("127.0.0.1:{port}");
    let app_dir = example("python-servers");
    let gunicorn = pyenv("gunicorn");
    let args = [
        "--listen",
        &listen,
        "-w",
        "4",
        "--ready",
        "notify",
        "--",
        &gunicorn,
        "--workers",
        "1",
        "--graceful-timeout",
        "8",
        "--no-control-socket",
        "--chdir",
        app_dir.to_str().unwrap(),
        "wsgi:app",
    ];
    Sticky::serving(&args, WORKERS)
}

/// 200 clients, 3 requests each, each client always answered by one worker, every worker used.
fn assert_each_client_on_one_worker(port: u16, runtime: &str) {
    let server = SocketAddr::from(([127, 0, 0, 1], port));
    let mut clients_per_worker = [0; WORKERS];
    for client in (0..200).map(client_v4) {
        let first = get(client, server);
        assert!(first.text.contains(&format!("x-sticky-runtime: {runtime}")), "{}", first.text);
        for _ in 0..2 {
            assert_eq!(get(client, server).worker, first.worker, "{client} moved");
        }
        clients_per_worker[first.worker as usize] += 1;
    }
    println!("{runtime}: clients per worker {clients_per_worker:?}");
    assert!(clients_per_worker.iter().all(|&n| n > 0), "idle worker: {clients_per_worker:?}");
}

#[test]
fn gunicorn_keeps_each_client_on_one_worker() {
    in_netns(|| {
        let sticky = gunicorn(3062);
        assert_each_client_on_one_worker(3062, "gunicorn");
        sticky.stop_cleanly();
    });
}

#[test]
fn gunicorn_reload_under_load_fails_no_connection() {
    in_netns(|| {
        let sticky = gunicorn(3063);
        sticky.reload_under_load(
            SocketAddr::from(([127, 0, 0, 1], 3063)),
            "gunicorn: a rolling restart",
        );
        sticky.stop_cleanly();
    });
}

#[test]
fn uvicorn_reload_under_load_fails_no_connection() {
    in_netns(|| {
        let redis = Redis::start(REDIS_PORT);
        let sticky = uvicorn(&redis, 3064, "kernel");
        assert_each_client_on_one_worker(3064, "uvicorn");
        // The example's protocol answers the requests on connections uvicorn accepted just
        // before SIGTERM, which uvicorn's own shutdown would close unanswered.
        let server = SocketAddr::from(([127, 0, 0, 1], 3064));
        sticky.reload_under_load(server, "uvicorn: a rolling restart");
        redis.stop();
        sticky.stop_cleanly();
    });
}
