//! Node workers behind a load balancer, and under userspace dispatch: the loader passes the
//! connections it accepts to the sticky-session package through Node's own IPC channel
//! (`--handoff node`, the default for node). A client reaches one worker whether it connects
//! directly or through a trusted proxy, and a killed worker or a rolling restart loses none of
//! the proxied connections the loader holds.

use std::{
    io::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use sticky_tests::{
    Failure, Outcome, Report, Response, Sticky, client_v4, connect, dropin::SeedApp, eventually,
    get, in_netns, is_running, proxy_v1, read_response, request_after,
};
use sticky_user::control::Request;

const WORKERS: usize = 4;
const PROXY: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const SERVER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 3000);

/// sticky with 4 node workers of the package's `identity.js`, ready by READY=1, and `extra`.
fn node_workers(app: &SeedApp, extra: &[&str]) -> Sticky {
    let mut args = vec!["-w", "4", "--ready", "notify", "--listen", "127.0.0.1:3000"];
    args.extend(extra);
    let script = app.arg("identity.js");
    args.extend(["--", "node", &script, "1.x"]);
    Sticky::serving(&args, WORKERS)
}

/// Behind the trusted proxy 127.0.0.1, which names the client in X-Forwarded-For.
const BEHIND_PROXY: [&str; 4] =
    ["--trusted-proxy", "127.0.0.1", "--client-address", "x-forwarded-for"];

/// One request from the proxy on behalf of `client`.
fn proxied(client: IpAddr) -> Result<Response, Failure> {
    let mut stream = connect(PROXY, SERVER).map_err(Failure::Connect)?;
    write!(
        stream,
        "GET / HTTP/1.1\r\nhost: sticky\r\nx-forwarded-for: {client}\r\nconnection: close\r\n\r\n"
    )
    .map_err(Failure::AfterConnect)?;
    read_response(&mut stream).map_err(Failure::AfterConnect)
}

#[test]
fn a_client_reaches_the_same_worker_directly_and_through_the_proxy() {
    let app = SeedApp::install(&["identity.js"]);
    in_netns(|| {
        let sticky = node_workers(&app, &BEHIND_PROXY);
        let pids: Vec<u32> = sticky.status().slots.iter().map(|s| s.pid.unwrap()).collect();
        let mut seen = [0; WORKERS];
        for client in (0..200).map(client_v4) {
            let direct = get(client, SERVER);
            for _ in 0..2 {
                let through = proxied(client).unwrap_or_else(|err| panic!("{client}: {err}"));
                assert_eq!(through.worker, direct.worker, "{client} through the proxy");
                assert_eq!(through.pid, pids[through.worker as usize], "{}", through.text);
            }
            seen[direct.worker as usize] += 1;
        }
        let routed = sticky.status().client_address.expect("trusted proxies").by_header;
        println!("clients per worker {seen:?}; {routed} routed by their header");
        assert!(seen.iter().all(|&n| n > 0), "idle worker {seen:?}");
        assert_eq!(routed, 400);
        let log = sticky.stop_cleanly().log;
        assert!(!log.contains("cannot pass"), "{log}");
    });
}

#[test]
fn node_gets_proxy_protocol_connections_without_the_header_and_with_the_client() {
    let app = SeedApp::install(&["identity.js"]);
    in_netns(|| {
        let proxy = ["--trusted-proxy", "127.0.0.1", "--client-address", "proxy-protocol"];
        let sticky = node_workers(&app, &proxy);
        for client in (0..100).map(client_v4) {
            let direct = get(client, SERVER);
            let header = proxy_v1(client, SERVER);
            let through = request_after(PROXY, SERVER, &header)
                .unwrap_or_else(|err| panic!("{client} through the proxy: {err}"));
            assert_eq!((through.worker, through.pid), (direct.worker, direct.pid), "{client}");
            let shown = format!("x-client-address: {client}\r\n");
            assert!(through.text.contains(&shown), "{client}: {}", through.text);
            assert!(!direct.text.contains("x-client-address"), "{}", direct.text);
        }
        let routed = sticky.status().client_address.expect("trusted proxies").by_header;
        assert_eq!(routed, 100);
        sticky.stop_cleanly();
    });
}

/// Proxied requests for 200 clients from `threads` threads until `stop`.
fn proxied_load(threads: usize, stop: &Arc<AtomicBool>) -> Vec<thread::JoinHandle<Vec<Outcome>>> {
    let clients: Vec<IpAddr> = (0..200).map(client_v4).collect();
    clients
        .chunks(clients.len() / threads)
        .map(|chunk| {
            let (chunk, stop) = (chunk.to_vec(), stop.clone());
            thread::spawn(move || {
                let mut outcomes = Vec::new();
                for &client in chunk.iter().cycle() {
                    if stop.load(Ordering::Relaxed) || outcomes.len() > 100_000 {
                        break;
                    }
                    let started = Instant::now();
                    let result = proxied(client);
                    outcomes.push(Outcome { client, result, span: (started, Instant::now()) });
                }
                outcomes
            })
        })
        .collect()
}

#[test]
fn a_killed_worker_and_a_rolling_restart_lose_no_proxied_connection() {
    let app = SeedApp::install(&["identity.js"]);
    in_netns(|| {
        let sticky = node_workers(&app, &BEHIND_PROXY);
        let before = sticky.status();
        let stop = Arc::new(AtomicBool::new(false));
        let load = proxied_load(4, &stop);
        thread::sleep(Duration::from_secs(1));
        let victim = before.slots[1].pid.unwrap();
        let killed = Instant::now();
        kill(Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
        eventually("the killed worker is dead", || !is_running(victim));
        eventually("its slot serves again", || {
            sticky.status().slots[1].pid.is_some_and(|pid| pid != victim)
        });
        thread::sleep(Duration::from_secs(1));
        let reloading = Instant::now();
        let done = sticky.control(Request::Reload);
        let reload = (reloading, Instant::now());
        thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        let outcomes = load.into_iter().flat_map(|t| t.join().unwrap()).collect();
        let report = Report { outcomes };
        println!("{done:?}: {}", report.summary());
        // Only a request the victim had already taken when it was killed may fail (as under
        // kernel dispatch); every later one is served, the queued ones by its successor.
        let lost: Vec<_> = report
            .outcomes
            .iter()
            .filter(|o| o.result.is_err())
            .map(|o| (o.client, o.span, o.result.as_ref().err().unwrap().to_string()))
            .collect();
        assert!(lost.iter().all(|(_, span, _)| span.0 <= killed), "lost after the kill: {lost:?}");
        assert!(lost.len() <= 4, "more than one per load thread lost: {lost:?}");
        assert!(report.succeeded() > 1000, "too little load: {}", report.summary());
        assert!(report.succeeded_within(reload) > 0, "none during the reload");
        let after = sticky.status();
        for (old, new) in before.slots.iter().zip(&after.slots) {
            assert!(new.pid.is_some() && old.pid != new.pid, "slot {} was not restarted", old.slot);
        }
        for (client, seen) in report.workers_by_client() {
            assert!(seen.iter().all(|&w| w == seen[0]), "{client} moved: {seen:?}");
        }
        sticky.stop_cleanly();
    });
}

#[test]
fn userspace_dispatch_serves_node_workers_through_their_ipc_channel() {
    let app = SeedApp::install(&["identity.js"]);
    in_netns(|| {
        let sticky = node_workers(&app, &["--dispatch", "userspace"]);
        let mut seen = [0; WORKERS];
        for client in (0..200).map(client_v4) {
            let first = get(client, SERVER);
            assert_eq!(get(client, SERVER).worker, first.worker, "{client} moved");
            seen[first.worker as usize] += 1;
        }
        println!("clients per worker {seen:?}");
        assert!(seen.iter().all(|&n| n > 0), "idle worker {seen:?}");
        sticky.reload_under_load(SERVER, "node workers under userspace dispatch");
        sticky.stop_cleanly();
    });
}
