//! The example workers run under the unit's system call filter, which they inherit from the
//! loader: the node, Python and Rust examples, the TLS example and the socket.io chat, each
//! installed with `sticky install` and started by a real systemd in a container.
//!
//! One test in its own binary: it is the only thing loading sk_reuseport programs while it runs.

use std::{fs, os::unix::fs::PermissionsExt as _, path::Path};

use sticky_tests::{Certificate, Container, Redis, StateDir, eventually, target_bin};

const WORKERS: usize = 2;

/// One example as a service: its name, port, worker command and extra options.
struct Example<'a> {
    name: &'a str,
    port: u16,
    options: &'a [&'a str],
    command: &'a [&'a str],
    /// What a plain GET of `/` (or of the path) answers with.
    path: &'a str,
    expect: &'a str,
    /// `https` instead of `http`.
    tls: bool,
}

#[test]
fn the_examples_serve_under_the_units_system_call_filter() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let rust = target_bin("sticky-example-rust", "sticky-example-rust");
    let certificate = Certificate::self_signed();
    let tls_dir = certificate.key.parent().expect("the key's directory");
    let app = StateDir::new();
    fs::create_dir_all(&app.0).expect("app directory");
    fs::set_permissions(&app.0, fs::Permissions::from_mode(0o755)).expect("chmod");
    fs::write(app.0.join("app.js"), NODE_APP).expect("write the node app");
    let container = Container::boot_with(&[
        (&sticky_tests::sticky_bin(), "/usr/local/bin/sticky"),
        (&examples, "/srv/examples"),
        (&rust, "/usr/local/bin/sticky-example-rust"),
        (tls_dir, "/srv/tls"),
        (&app.0, "/srv/app"),
    ]);
    let node_app = "/srv/app/app.js";
    container.in_netns(|| {
        let redis = Redis::start(6379);
        let examples = [
            Example {
                name: "node",
                port: 3100,
                options: &[],
                command: &["/usr/bin/node", node_app],
                path: "/",
                expect: "x-sticky-runtime: node",
                tls: false,
            },
            Example {
                name: "python",
                port: 3101,
                options: &[],
                command: &["/usr/bin/python3", "/srv/examples/python/worker.py"],
                path: "/",
                expect: "x-sticky-runtime: python",
                tls: false,
            },
            Example {
                name: "rust",
                port: 3102,
                options: &[],
                command: &["/usr/local/bin/sticky-example-rust"],
                path: "/",
                expect: "x-sticky-runtime: rust-example",
                tls: false,
            },
            Example {
                name: "tls",
                port: 3103,
                options: &[
                    "--env",
                    "TLS_KEY=/srv/tls/key.pem",
                    "--env",
                    "TLS_CERT=/srv/tls/cert.pem",
                ],
                command: &["/usr/bin/node", "/srv/examples/tls/server.js"],
                path: "/",
                expect: "x-sticky-runtime: node-tls",
                tls: true,
            },
            Example {
                name: "chat",
                port: 3104,
                options: &["--env", &format!("REDIS_URL={}", redis.url())],
                command: &["/usr/bin/node", "/srv/examples/socketio/server.js"],
                path: "/socket.io/?EIO=4&transport=polling",
                expect: "\"sid\"",
                tls: false,
            },
        ];
        for example in &examples {
            serve_under_the_filter(&container, example);
        }
        redis.stop();
    });
}

/// Installs and starts `example` as a service, checks that its workers run under a seccomp
/// filter and answer, then stops and uninstalls it.
fn serve_under_the_filter(container: &Container, example: &Example) {
    let unit = format!("sticky-{}.service", example.name);
    let control = format!("/run/sticky/{}/control.sock", example.name);
    let listen = format!("127.0.0.1:{}", example.port);
    let workers = WORKERS.to_string();
    let mut install = vec!["sticky", "install", example.name, "--user", "nobody"];
    install.extend(["--listen", &listen, "--workers", &workers, "--ready", "notify"]);
    install.extend(example.options);
    install.push("--");
    install.extend(example.command);
    container.ok(&install);
    let started = container.run(&["systemctl", "start", &unit]);
    assert!(
        started.status.success(),
        "{} did not start:\n{}",
        example.name,
        container.journal(&unit)
    );
    eventually(&format!("{} serves", example.name), || {
        container.run(&["sticky", "status", "--json", "--control", &control]).status.success()
            && container.sticky_status("sticky", &control).slots.iter().all(|s| s.ready)
    });
    for slot in container.sticky_status("sticky", &control).slots {
        let pid = slot.pid.expect("a worker");
        let status = container.ok(&["cat", &format!("/proc/{pid}/status")]);
        assert!(
            status.contains("Seccomp:\t2"),
            "{} worker {pid} has no filter:\n{status}",
            example.name
        );
    }
    let scheme = if example.tls { "https" } else { "http" };
    let url = format!("{scheme}://127.0.0.1:{}{}", example.port, example.path);
    for source in ["127.0.0.2", "127.0.0.3", "127.0.0.4"] {
        let answer = container.ok(&["curl", "-sSik", "--interface", source, &url]);
        assert!(
            answer.contains(example.expect),
            "{}: {answer}\n{}",
            example.name,
            container.journal(&unit)
        );
    }
    let journal = container.journal(&unit);
    assert!(!journal.contains("Operation not permitted"), "{}:\n{journal}", example.name);
    container.ok(&["systemctl", "stop", &unit]);
    container.ok(&["sticky", "uninstall", example.name]);
}

/// A plain node http server on the inherited socket, as the README shows.
const NODE_APP: &str = r#"const http = require('node:http');
const { execFile } = require('node:child_process');
const server = http.createServer((req, res) => {
  res.writeHead(200, { 'x-sticky-runtime': 'node' });
  res.end(`worker: ${process.env.STICKY_WORKER}\n`);
});
server.listen({ fd: 3 }, () => execFile('systemd-notify', ['--ready']));
process.on('SIGTERM', () => server.close());
"#;
