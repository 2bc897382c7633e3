//! sticky-session 2 as a seed user meets it: the tarball `cargo xtask dist` makes, installed
//! with npm, and sticky-session's own README examples (1.x and 0.x) unchanged. Under `sticky
//! run --workers 4` each client stays on one worker and 200 socket.io long-polling sessions all
//! succeed; under plain SO_REUSEPORT most fail; `node app.js` alone serves.
//!
//! socket.io is attached to the README example's own server by a preload
//! (`node --require with-socketio.js app.js`, the line `require('socket.io')(server)` a seed
//! user's app has), so the app file stays the README's, byte for byte.

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use sticky_tests::{
    Sticky, client_v4,
    dropin::{SeedApp, assert_node_package, body, example, http_text, node_json},
    in_netns,
};

const WORKERS: usize = 4;
/// The README's own port: every test has its own network namespace.
const PORT: u16 = 3000;

/// The usage example of sticky-session 1.x's README (v1.1.2), verbatim.
const README_1X: &str = r"var cluster = require('cluster'); // Only required if you want the worker id
var sticky = require('sticky-session');

var server = require('http').createServer(function(req, res) {
  res.end('worker: ' + cluster.worker.id);
});

if (!sticky.listen(server, 3000)) {
  // Master code
  server.once('listening', function() {
    console.log('server started on 3000 port');
  });
} else {
  // Worker code
}
";

/// The "Simple" usage example of sticky-session 0.x's README (master before 1.0), verbatim.
const README_0X: &str = r"var sticky = require('sticky-session');

sticky(require('http').createServer(function(req, res) {
  res.end('worker: ' + process.env.NODE_WORKER_ID);
})).listen(3000, function() {
  console.log('server started on 3000 port');
});
";

/// The example files and the README text each must be, below its header comment.
const EXAMPLES: [(&str, &str); 2] = [("app.js", README_1X), ("app-0.x.js", README_0X)];

#[test]
fn the_examples_are_the_seed_readmes_byte_for_byte() {
    for (file, readme) in EXAMPLES {
        let text = std::fs::read_to_string(example("sticky-session").join(file)).unwrap();
        let code: String = text.split_inclusive('\n').skip_while(|l| l.starts_with("//")).collect();
        assert_eq!(code, readme, "{file} is not the README's example");
    }
}

/// The app `file` under sticky with `dispatch`, socket.io attached to its server.
fn start(app: &SeedApp, file: &str, dispatch: &str) -> Sticky {
    let preload = example("sticky-session/with-socketio.js");
    let listen = format!("127.0.0.1:{PORT}");
    let args = ["--listen", &listen, "-w", "4", "--dispatch", dispatch, "--ready", "notify"];
    let worker = ["--", "node", "--require", preload.to_str().unwrap(), &app.arg(file)];
    Sticky::serving(&[&args[..], &worker[..]].concat(), WORKERS)
}

/// 200 socket.io long-polling sessions from their own addresses, 10 echoes each.
fn polling_sessions(sticky: &Sticky) -> Value {
    let client = example("socketio/client.js");
    let server = format!("127.0.0.1:{PORT}");
    node_json(&client, &[&server, "200", "10", "0", "polling"], || sticky.log())
}

fn succeeded_failed(summary: &Value) -> (u64, u64) {
    (summary["succeeded"].as_u64().expect("succeeded"), summary["failed"].as_u64().expect("failed"))
}

/// Under sticky: 100 clients get the same `worker: N` (N = 1 to 4, every one seen) three times
/// each, and 200 polling sessions all succeed.
fn all_sticky(file: &str) {
    assert_node_package("sticky-session", "socket.io");
    assert_node_package("socketio", "socket.io-client");
    let app = SeedApp::install(&[file]);
    in_netns(|| {
        let sticky = start(&app, file, "kernel");
        let server = SocketAddr::from(([127, 0, 0, 1], PORT));
        let mut clients_per_worker: HashMap<String, usize> = HashMap::new();
        for client in (0..100).map(client_v4) {
            let answers: Vec<String> = (0..3)
                .map(|_| body(&http_text(client, server, "/").expect("GET")).to_owned())
                .collect();
            assert!(answers.iter().all(|a| *a == answers[0]), "{client} moved: {answers:?}");
            *clients_per_worker.entry(answers[0].clone()).or_default() += 1;
        }
        let mut workers: Vec<&String> = clients_per_worker.keys().collect();
        workers.sort();
        assert_eq!(workers, ["worker: 1", "worker: 2", "worker: 3", "worker: 4"]);
        let summary = polling_sessions(&sticky);
        sticky.stop_cleanly();
        println!("{file} under sticky: {clients_per_worker:?}; polling sessions: {summary}");
        assert_eq!(succeeded_failed(&summary), (200, 0), "{summary}");
    });
}

/// Under plain SO_REUSEPORT (`--dispatch none`) most sessions fail for want of stickiness: the
/// worker that gets a session's next poll answers 400 to a session it does not know.
fn most_fail_without_stickiness(file: &str) {
    assert_node_package("socketio", "socket.io-client");
    let app = SeedApp::install(&[file]);
    in_netns(|| {
        let sticky = start(&app, file, "none");
        let summary = polling_sessions(&sticky);
        sticky.stop_cleanly();
        println!("{file} without stickiness: {summary}");
        let unknown: u64 = summary["errors"]
            .as_object()
            .expect("errors")
            .iter()
            .filter(|(error, _)| error.contains("(HTTP 400)"))
            .map(|(_, count)| count.as_u64().expect("a count"))
            .sum();
        assert!(unknown >= 100, "only {unknown} of 200 sessions met an unknown session: {summary}");
    });
}

#[test]
fn the_1x_readme_example_is_sticky_under_sticky_run() {
    all_sticky("app.js");
}

#[test]
fn the_1x_readme_example_fails_without_stickiness() {
    most_fail_without_stickiness("app.js");
}

#[test]
fn the_0x_readme_example_is_sticky_under_sticky_run() {
    all_sticky("app-0.x.js");
}

#[test]
fn the_0x_readme_example_fails_without_stickiness() {
    most_fail_without_stickiness("app-0.x.js");
}

/// `node FILE` alone in this network namespace: it serves port 3000 as worker 1, says once how
/// to run all workers, and prints what the README's callback prints (`printed`, if any).
fn serves_alone(file: &str, printed: Option<&str>) {
    let app = SeedApp::install(&[file]);
    in_netns(|| {
        let mut node = Command::new("node")
            .arg(file)
            .current_dir(app.path(""))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run node");
        let server = SocketAddr::from(([127, 0, 0, 1], PORT));
        let deadline = Instant::now() + Duration::from_secs(30);
        let answer = loop {
            match http_text(client_v4(0), server, "/") {
                Ok(answer) => break answer,
                Err(err) if Instant::now() > deadline => {
                    panic!("node {file} does not serve: {err}")
                }
                Err(_) => thread::sleep(Duration::from_millis(50)),
            }
        };
        // SIGTERM: the package closes the server and exits by itself.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(node.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let status = node.wait().expect("wait for node");
        let read = |pipe: Box<dyn std::io::Read>| {
            BufReader::new(pipe).lines().map_while(Result::ok).collect::<Vec<_>>()
        };
        let stdout = read(Box::new(node.stdout.take().unwrap()));
        let stderr = read(Box::new(node.stderr.take().unwrap()));
        println!("node {file} alone: {answer:?}, stdout {stdout:?}, stderr {stderr:?}");
        assert_eq!(body(&answer), "worker: 1");
        assert!(status.success(), "node {file} ended with {status}: {stderr:?}");
        let hint = format!(
            "sticky-session: not under sticky: serving port 3000 in this one process; to run all \
             workers: sticky run -- node {file}"
        );
        assert_eq!(stderr, [hint]);
        assert_eq!(stdout, printed.map(str::to_owned).into_iter().collect::<Vec<_>>());
    });
}

#[test]
fn the_readme_examples_serve_alone_under_plain_node() {
    // 1.x: `listen` returns true, so the README's "Master code" branch does not run.
    serves_alone("app.js", None);
    // 0.x: the listen callback runs once the server listens.
    serves_alone("app-0.x.js", Some("server started on 3000 port"));
}
