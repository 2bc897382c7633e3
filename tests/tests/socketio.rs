//! The socket.io chat in `examples/socketio` under sticky, with a real Redis for its adapter:
//! sessions that upgrade to websocket (and fail without stickiness), broadcasts relayed across
//! the workers, a worker that keeps serving while Redis is down, and a real browser.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;
use sticky_tests::{Redis, Sticky, in_netns, processes_in_netns};

const WORKERS: usize = 4;
/// Redis's own port: every test has its own network namespace, so its own Redis there.
const REDIS_PORT: u16 = 6379;

fn example(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/socketio").join(file)
}

/// Asserts that node and the example's npm package `package` are installed.
fn assert_installed(package: &str) {
    assert!(
        Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success()),
        "node is not installed: `cargo xtask test` installs it (apt-get install nodejs npm)"
    );
    assert!(
        example("node_modules").join(package).exists(),
        "{package} is not installed: `cargo xtask test` runs `npm ci` in examples/socketio"
    );
}

/// The chat run by sticky on 127.0.0.1:`port` with `dispatch`, and its Redis.
struct Chat {
    sticky: Sticky,
    redis: Option<Redis>,
    listen: String,
}

impl Chat {
    /// Starts Redis, then sticky with 4 chat workers that use it, and waits until they serve.
    fn start(dispatch: &str, port: u16) -> Self {
        let redis = Redis::start(REDIS_PORT);
        let listen = format!("127.0.0.1:{port}");
        let redis_url = format!("REDIS_URL={}", redis.url());
        let server = example("server.js");
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
            "--",
            "node",
            server.to_str().unwrap(),
        ];
        let sticky = Sticky::serving(&args, WORKERS);
        Self { sticky, redis: Some(redis), listen }
    }

    /// Runs `node SCRIPT ARGS` from the example and returns the JSON line it prints.
    fn node(&self, script: &str, args: &[&str]) -> Value {
        let output = Command::new("node")
            .arg(example(script))
            .arg(&self.listen)
            .args(args)
            .output()
            .unwrap_or_else(|err| panic!("run node {script}: {err}"));
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "node {script} failed: {stdout} {}\nsticky:\n{}",
            String::from_utf8_lossy(&output.stderr),
            self.sticky.log()
        );
        serde_json::from_str(stdout.trim())
            .unwrap_or_else(|err| panic!("node {script} printed {stdout:?}: {err}"))
    }

    /// Stops Redis, as an outage does.
    fn stop_redis(&mut self) {
        self.redis.take().expect("Redis runs").stop();
    }

    /// Stops Redis and sticky, and asserts that sticky exited cleanly and nothing is left; returns
    /// what sticky logged.
    fn stop(mut self) -> String {
        if self.redis.is_some() {
            self.stop_redis();
        }
        self.sticky.stop_cleanly().log
    }
}

/// 200 chat sessions with `transports` (`default` or `polling`) under `dispatch`, each from its
/// own source address, exchanging 10 acknowledged messages: what the client reports.
fn sessions(dispatch: &str, port: u16, transports: &str) -> Value {
    assert_installed("socket.io-client");
    in_netns(|| {
        let chat = Chat::start(dispatch, port);
        let summary = chat.node("client.js", &["200", "10", "0", transports]);
        let status = chat.sticky.status();
        chat.stop();
        if dispatch == "kernel" {
            assert!(status.slots.iter().map(|s| s.connections).sum::<u64>() > 0);
            assert_eq!((status.fallback, status.passed, status.unreadable), (0, 0, 0));
        }
        println!("{dispatch} dispatch, {transports} transports: {summary}");
        summary
    })
}

fn succeeded_failed(summary: &Value) -> (u64, u64) {
    (summary["succeeded"].as_u64().expect("succeeded"), summary["failed"].as_u64().expect("failed"))
}

/// With sticky, all 200 sessions with `transports` succeed.
fn all_succeed_with_sticky(port: u16, transports: &str) {
    let summary = sessions("kernel", port, transports);
    assert_eq!(succeeded_failed(&summary), (200, 0), "{summary}");
}

/// Without stickiness, most of the 200 sessions with `transports` fail: plain SO_REUSEPORT
/// sends a session's next request, or its upgrade, to a worker that has never heard of the
/// session. This is the failure sticky exists to prevent.
fn most_fail_without_stickiness(port: u16, transports: &str) {
    let summary = sessions("none", port, transports);
    // Failures of that cause only: the server answered 400 to a session it does not know, or
    // the upgrade did not happen; not a server that is down or a client that broke.
    let of_that_cause: u64 = summary["errors"]
        .as_object()
        .expect("errors")
        .iter()
        .filter(|(error, _)| error.contains("(HTTP 400)") || error.contains("upgrade"))
        .map(|(_, count)| count.as_u64().expect("a count"))
        .sum();
    assert!(
        of_that_cause >= 100,
        "only {of_that_cause} of 200 sessions failed for want of stickiness: {summary}"
    );
}

#[test]
fn socketio_sessions_upgrade_to_websocket_with_sticky() {
    // Default transports, as browsers: the polling handshake, then the websocket upgrade, must
    // reach the worker that holds the session. The client checks the upgrade of each one.
    all_succeed_with_sticky(3032, "default");
}

#[test]
fn socketio_sessions_fail_without_stickiness() {
    most_fail_without_stickiness(3033, "default");
}

#[test]
fn socketio_polling_sessions_all_succeed_with_sticky() {
    all_succeed_with_sticky(3034, "polling");
}

#[test]
fn socketio_polling_sessions_fail_without_stickiness() {
    most_fail_without_stickiness(3035, "polling");
}

/// Asserts that every session that should have got each broadcast got it exactly once.
fn assert_delivered_once(summary: &Value, rounds: u64, receivers: u64) {
    let count = |name: &str| summary[name].as_u64().unwrap_or_else(|| panic!("{name}: {summary}"));
    assert_eq!(count("rounds"), rounds, "{summary}");
    assert_eq!(count("expected"), rounds * receivers, "{summary}");
    assert_eq!(count("once"), count("expected"), "{summary}");
    assert_eq!(summary["errors"], Value::Array(vec![]), "{summary}");
}

#[test]
fn socketio_broadcasts_reach_every_worker_exactly_once() {
    assert_installed("@socket.io/redis-adapter");
    in_netns(|| {
        let chat = Chat::start("kernel", 3036);
        // Two sessions held by each worker; a session of each worker in turn sends one message
        // to the room, which every session must receive once.
        let summary = chat.node("broadcast.js", &["4", "all", "2"]);
        chat.stop();
        assert_eq!(summary["workers"], serde_json::json!([2, 2, 2, 2]), "{summary}");
        assert_delivered_once(&summary, 4, 8);
    });
}

#[test]
fn socketio_worker_serves_its_own_clients_while_redis_is_down_then_relays_again() {
    assert_installed("@socket.io/redis-adapter");
    in_netns(|| {
        let mut chat = Chat::start("kernel", 3037);
        let before = chat.sticky.status();
        chat.stop_redis();
        // Worker 0's broadcast cannot be relayed: its own two sessions still get it, once.
        let alone = chat.node("broadcast.js", &["4", "local", "2"]);
        // Redis back on its port: each worker's two connections come back by themselves (and
        // subscribe again), and broadcasts reach every worker again.
        chat.redis = Some(Redis::start(REDIS_PORT));
        chat.sticky.wait_for("8 Redis connections to be ready again", |log| {
            log.matches("connection: ready again").count() >= 2 * WORKERS
        });
        let again = chat.node("broadcast.js", &["4", "all", "2"]);
        let after = chat.sticky.status();
        let log = chat.stop();
        assert_delivered_once(&alone, 1, 2);
        assert_delivered_once(&again, 4, 8);
        let pids = |status: &sticky_user::control::Status| {
            status.slots.iter().map(|s| s.pid).collect::<Vec<_>>()
        };
        assert_eq!(pids(&after), pids(&before), "a worker was restarted:\n{log}");
        assert!(
            log.contains("worker 0: redis adapter: broadcast not relayed to the other workers"),
            "the adapter's error is not logged:\n{log}"
        );
    });
}

#[test]
fn socketio_chat_page_in_chromium() {
    assert_installed("puppeteer-core");
    let chromium = env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: `cargo xtask test` installs it (apt-get install chromium)"
    );
    let exe = env::current_exe().expect("current_exe");
    let target = exe.ancestors().nth(3).expect("target dir");
    let screenshot = target.join("socketio-chat.png");
    let _ = std::fs::remove_file(&screenshot);
    let summary = in_netns(|| {
        let chat = Chat::start("kernel", 3038);
        let summary = chat.node("browser.js", &[screenshot.to_str().unwrap()]);
        chat.stop();
        summary
    });
    println!("chromium: {summary}; screenshot: {}", screenshot.display());
    let page = &summary["page"];
    let (page_worker, peer_worker) = (&page["worker"], &summary["peer"]["worker"]);
    assert_eq!(page["transport"], "websocket", "{summary}");
    assert_ne!(page_worker, peer_worker, "{summary}");
    let messages = page["messages"].as_array().expect("messages");
    let shown =
        |text: String| messages.iter().any(|m| m.as_str().is_some_and(|m| m.contains(&text)));
    assert!(shown(format!("hello from a client on worker {peer_worker}")), "{summary}");
    assert!(shown(format!("hello from Chromium on worker {page_worker}")), "{summary}");
    // The page's message reached the other worker's session, relayed by its own worker.
    assert_eq!(&summary["peer"]["received"], page_worker, "{summary}");
    let png = std::fs::read(&screenshot).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "{} is not a PNG", screenshot.display());
}

#[test]
fn socketio_chat_refuses_a_redis_url_that_is_not_one() {
    assert_installed("ioredis");
    in_netns(|| {
        let server = example("server.js");
        let args = ["--listen", "127.0.0.1:3039", "-w", "2", "--ready", "notify"];
        let worker = ["--env", "REDIS_URL=localhost:6379", "--", "node", server.to_str().unwrap()];
        let exit = Sticky::start(&[&args[..], &worker[..]].concat()).wait();
        assert!(!exit.status.success(), "sticky started:\n{}", exit.log);
        assert!(
            exit.log.contains(
                "server.js: REDIS_URL must be a redis:// or rediss:// URL, not \"localhost:6379\""
            ),
            "{}",
            exit.log
        );
        assert_eq!(exit.errors().len(), 1, "{}", exit.log);
        assert_eq!(processes_in_netns(), Vec::<u32>::new());
    });
}
