//! sticky-session 2's API beyond the README examples: every 1.x and 0.x form under sticky with
//! the seed's worker identity, a rolling restart under load, SIGTERM (open requests finished,
//! the grace period bounding the exit, READY=1 and STOPPING=1), a second listen address, what
//! it refuses, behaviour outside sticky, and the TypeScript types under `tsc`.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::SocketAddr,
    os::unix::net::UnixDatagram,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use sticky_tests::{
    Sticky, client_v4, connect,
    dropin::{SeedApp, assert_node_package, body, example, http_text},
    get, in_netns,
};

const WORKERS: usize = 4;

/// sticky with 4 workers of `identity.js FORM` on `listen`, ready by READY=1, and `extra` flags.
fn identity(app: &SeedApp, form: &str, listen: &[&str], extra: &[&str]) -> Sticky {
    let mut args = vec!["-w", "4", "--ready", "notify"];
    for address in listen {
        args.extend(["--listen", address]);
    }
    args.extend(extra);
    let script = app.arg("identity.js");
    args.extend(["--", "node", &script, form]);
    Sticky::serving(&args, WORKERS)
}

/// The value of header `name` in `response`.
fn header<'a>(response: &'a str, name: &str) -> &'a str {
    response
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {name} in {response:?}"))
        .trim()
}

#[test]
fn every_api_form_serves_under_sticky_with_the_seeds_worker_identity() {
    let app = SeedApp::install(&["identity.js"]);
    for (form, note) in [
        ("1.x", Some("options workers ignored")),
        ("0.x", None),
        ("0.x-num", Some("options num ignored")),
        ("0.x-factory", None),
    ] {
        in_netns(|| {
            let sticky = identity(&app, form, &["127.0.0.1:3000"], &[]);
            let pids: Vec<u32> = sticky.status().slots.iter().map(|s| s.pid.unwrap()).collect();
            let server = SocketAddr::from(([127, 0, 0, 1], 3000));
            let mut seen = [0; WORKERS];
            for client in (0..200).map(client_v4) {
                let first = http_text(client, server, "/").expect("GET");
                let slot: usize = header(&first, "x-sticky-worker").parse().unwrap();
                // NODE_APP_INSTANCE is the slot, NODE_WORKER_ID and cluster.worker.id one more.
                assert_eq!(header(&first, "x-node-worker-id"), (slot + 1).to_string());
                assert_eq!(header(&first, "x-cluster-worker-id"), (slot + 1).to_string());
                assert_eq!(header(&first, "x-sticky-pid"), pids[slot].to_string(), "{first}");
                assert_eq!(get(client, server).worker as usize, slot, "{client} moved");
                seen[slot] += 1;
            }
            let log = sticky.stop_cleanly().log;
            println!("{form}: clients per worker {seen:?}");
            assert!(seen.iter().all(|&n| n > 0), "{form}: idle worker {seen:?}");
            assert_eq!(log.matches(&format!("identity.js ({form}): listening")).count(), 4);
            // A note about options sticky sets, from worker 0 only.
            let notes = log.matches("sticky-session: options").count();
            assert_eq!(notes, usize::from(note.is_some()), "{form}:\n{log}");
            assert!(note.is_none_or(|note| log.contains(note)), "{form}:\n{log}");
        });
    }
}

#[test]
fn a_rolling_restart_under_load_fails_no_connection() {
    let app = SeedApp::install(&["identity.js"]);
    in_netns(|| {
        let sticky = identity(&app, "1.x", &["127.0.0.1:3000"], &[]);
        sticky.reload_under_load(
            "127.0.0.1:3000".parse().unwrap(),
            "sticky-session: a rolling restart",
        );
        sticky.stop_cleanly();
    });
}

/// Sends `GET PATH` on a new connection and returns the connection, the answer not read yet.
fn send(server: SocketAddr, client: u32, path: &str) -> std::net::TcpStream {
    let mut stream = connect(client_v4(client), server).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nhost: sticky\r\nconnection: close\r\n\r\n").unwrap();
    stream
}

#[test]
fn sigterm_finishes_open_requests_and_the_grace_period_bounds_the_exit() {
    let app = SeedApp::install(&["identity.js"]);
    in_netns(|| {
        // sticky's own grace period stays 10 s: the workers must end well before it.
        let grace = ["--env", "STICKY_SESSION_GRACE_PERIOD=3"];
        let sticky = identity(&app, "1.x", &["127.0.0.1:3000"], &grace);
        let server = SocketAddr::from(([127, 0, 0, 1], 3000));
        let mut answered = send(server, 0, "/wait/1500");
        let mut held = send(server, 1, "/wait/60000");
        thread::sleep(Duration::from_millis(300));
        let stopping = Instant::now();
        let exit = sticky.stop();
        let took = stopping.elapsed();
        let (mut first, mut second) = (String::new(), String::new());
        answered.read_to_string(&mut first).expect("the open request's answer");
        let _ = held.read_to_string(&mut second);
        println!("stopped in {took:?}; open request: {first:?}; held one: {second:?}");
        assert!(exit.status.success(), "{}", exit.log);
        let slot: u32 = header(&first, "x-sticky-worker").parse().unwrap();
        assert_eq!(body(&first), format!("worker: {}\n", slot + 1));
        assert!(second.is_empty(), "the held request was answered: {second:?}");
        // The held connection kept its worker for STICKY_SESSION_GRACE_PERIOD, not sticky's 10 s.
        assert!(took >= Duration::from_millis(2500) && took < Duration::from_secs(7), "{took:?}");
        assert!(
            exit.log
                .contains("sticky-session: connections still open after the grace period (3 s)"),
            "{}",
            exit.log
        );
    });
}

#[test]
fn ready_and_stopping_reach_the_notify_socket() {
    let app = SeedApp::install(&["identity.js"]);
    in_netns(|| {
        let socket_path = app.path("notify.sock");
        let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
        socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut node = Command::new("node")
            .args([&app.arg("identity.js"), "1.x", "3000"])
            .env("NOTIFY_SOCKET", &socket_path)
            .spawn()
            .expect("run node");
        // Each message, then the BARRIER=1 (with a descriptor) after which systemd-notify waits
        // until that descriptor is closed: read here, which drops it.
        let next = || {
            let mut messages = Vec::new();
            while messages.last().is_none_or(|m| m != "BARRIER=1") {
                let mut buffer = [0; 4096];
                let n = socket.recv(&mut buffer).expect("a notification within 10 s");
                messages.push(String::from_utf8_lossy(&buffer[..n]).into_owned());
            }
            messages.remove(0)
        };
        assert_eq!(next(), "READY=1");
        let server = SocketAddr::from(([127, 0, 0, 1], 3000));
        assert_eq!(body(&http_text(client_v4(0), server, "/").unwrap()), "worker: 1\n");
        kill(Pid::from_raw(node.id() as i32), Signal::SIGTERM).unwrap();
        assert_eq!(next(), "STOPPING=1");
        assert!(node.wait().expect("wait").success());
    });
}

#[test]
fn every_listen_address_is_served() {
    let app = SeedApp::install(&["identity.js"]);
    in_netns(|| {
        let sticky = identity(&app, "0.x-factory", &["127.0.0.1:3000", "127.0.0.1:3001"], &[]);
        for client in 0..100 {
            let on = |port: u16| get(client_v4(client), SocketAddr::from(([127, 0, 0, 1], port)));
            let (a, b) = (on(3000), on(3001));
            assert_eq!((a.worker, a.pid), (b.worker, b.pid), "client {client}");
        }
        sticky.stop_cleanly();
    });
}

#[test]
fn sockets_it_cannot_serve_are_refused_with_one_line() {
    let app = SeedApp::install(&["identity.js"]);
    let script = app.arg("identity.js");
    let cases = [
        (
            vec!["--dispatch", "userspace", "--handoff", "socket", "--", "node", &script],
            "sticky-session: sticky passes connections over its handoff socket, which node cannot read",
        ),
        (
            // Through a shell that does not exec node: the sockets are the shell's.
            vec!["--", "sh", "-c", "node \"$0\"; exit 3", &script],
            "sockets are for the process it starts; run node itself",
        ),
    ];
    for (args, line) in cases {
        in_netns(|| {
            let listen = ["--listen", "127.0.0.1:3000", "-w", "2", "--ready", "notify"];
            let exit = Sticky::start(&[&listen[..], &args[..]].concat()).wait();
            assert!(!exit.status.success(), "sticky started:\n{}", exit.log);
            assert!(exit.log.contains(line), "{}", exit.log);
        });
    }
}

/// Runs `node -e SCRIPT` in the app directory (outside sticky) and returns its stdout, stderr.
fn node_eval(app: &SeedApp, script: &str, env: &[(&str, &str)]) -> (String, String) {
    let output = Command::new("node")
        .args(["-e", script])
        .current_dir(app.path(""))
        .envs(env.iter().copied())
        .output()
        .expect("run node");
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).trim().to_owned();
    assert!(output.status.success(), "node -e: {}", text(&output.stderr));
    (text(&output.stdout), text(&output.stderr))
}

#[test]
fn outside_sticky_the_api_behaves_as_the_seeds() {
    let app = SeedApp::install(&[]);
    let (out, _) = node_eval(
        &app,
        "const cluster = require('cluster'); const sticky = require('sticky-session');
         const http = require('http');
         let threw = ''; try { sticky(() => undefined); } catch (e) { threw = e.message; }
         const untouched = http.createServer();
         const same = sticky(0, untouched) === untouched && !Object.hasOwn(untouched, 'listen');
         console.log(JSON.stringify([process.env.NODE_WORKER_ID, process.env.NODE_APP_INSTANCE,
           cluster.worker.id, threw, same]));",
        &[],
    );
    assert_eq!(out, r#"["1","0",1,"Worker hasn't created server!",true]"#);
    // Values set by another manager (pm2) are kept outside sticky.
    let (out, _) = node_eval(
        &app,
        "require('sticky-session'); console.log(process.env.NODE_APP_INSTANCE, process.env.NODE_WORKER_ID)",
        &[("NODE_APP_INSTANCE", "7"), ("NODE_WORKER_ID", "8")],
    );
    assert_eq!(out, "7 8");
    in_netns(|| {
        let (out, err) = node_eval(
            &app,
            "const sticky = require('sticky-session');
             const server = require('http').createServer((q, s) => s.end('ok'));
             const served = sticky.listen(server, 3010, { workers: 3, env: { A: '1' } });
             server.once('listening', () => { console.log(served); process.kill(process.pid, 'SIGTERM'); });",
            &[],
        );
        assert_eq!(out, "true");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(
            lines,
            [
                "sticky-session: options workers, env ignored: `sticky run --workers N` sets the \
                 workers, `sticky run --env KEY=VALUE` their environment",
                "sticky-session: not under sticky: serving port 3010 in this one process; to run \
                 all workers: sticky run --workers 3 --listen '[::]:3010' -- node app.js",
            ]
        );
    });
}

#[test]
fn the_types_compile_with_tsc_and_catch_a_wrong_call() {
    assert_node_package("sticky-session", "typescript");
    let app = SeedApp::install(&["app.ts", "tsconfig.json"]);
    let types = example("sticky-session/node_modules/@types");
    std::os::unix::fs::symlink(&types, app.path("node_modules/@types")).unwrap();
    let tsc = example("sticky-session/node_modules/typescript/bin/tsc");
    let compile = |args: &[&str]| {
        Command::new("node").arg(&tsc).args(args).current_dir(app.path("")).output().unwrap()
    };
    let good = compile(&["--project", "tsconfig.json"]);
    let stdout = String::from_utf8_lossy(&good.stdout);
    assert!(good.status.success(), "tsc: {stdout}");
    assert!(app.path("dist/app.js").exists());
    // The types are in effect: a port given as a string does not compile.
    fs::write(
        app.path("wrong.ts"),
        "import sticky from 'sticky-session';\nimport * as http from 'node:http';\n\
         sticky.listen(http.createServer(), '3000');\n",
    )
    .unwrap();
    let wrong = compile(&["--strict", "--esModuleInterop", "--noEmit", "wrong.ts"]);
    let stdout = String::from_utf8_lossy(&wrong.stdout);
    println!("tsc on wrong.ts: {stdout}");
    assert!(!wrong.status.success() && stdout.contains("error TS2345"), "{stdout}");
}
