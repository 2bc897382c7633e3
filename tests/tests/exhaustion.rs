//! A local user cannot starve the loader of file descriptors: 3000 idle connections held open
//! to the metrics port, against a loader whose open-files limit is 1024, leave `sticky status`,
//! `/metrics`, worker restarts and a rolling restart working.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::unix::process::CommandExt as _,
};

use nix::{
    sys::{
        resource::{Resource, getrlimit, setrlimit},
        signal::{Signal, kill},
    },
    unistd::Pid,
};
use sticky_tests::{Sticky, eventually, in_netns, privileges::open_fds};
use sticky_user::control::{Request, Response};

const IDLE: usize = 3000;
/// The loader's open-files limit, soft and hard: far below the idle connections.
const LOADER_NOFILE: u64 = 1024;

/// GET /metrics on a new connection; the response's status line and body.
fn scrape(metrics: SocketAddr) -> String {
    let mut stream = TcpStream::connect(metrics).expect("connect to /metrics");
    stream.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n").expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read /metrics");
    response
}

/// Opens `count` connections to `server` that never send a byte.
fn idle_connections(server: SocketAddr, count: usize) -> Vec<TcpStream> {
    (0..count).map(|_| TcpStream::connect(server).expect("connect an idle client")).collect()
}

#[test]
fn idle_connections_to_the_metrics_port_do_not_starve_the_loader() {
    in_netns(|| {
        // This test holds the idle connections itself.
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
        let metrics: SocketAddr = "127.0.0.1:9101".parse().unwrap();
        let args = ["--listen", "127.0.0.1:3044", "--workers", "4", "--metrics", "9101"];
        let mut sticky = Sticky::start_with(&args, |command| {
            // SAFETY: setrlimit is async-signal-safe and allocates nothing.
            unsafe {
                command.pre_exec(|| {
                    setrlimit(Resource::RLIMIT_NOFILE, LOADER_NOFILE, LOADER_NOFILE)
                        .map_err(std::io::Error::from)
                })
            };
        });
        sticky.wait_until_serving(4);

        let idle = idle_connections(metrics, IDLE);
        // The loader holds its bound of them, not all: room is left for everything else.
        let held = open_fds(sticky.pid());
        eprintln!("{IDLE} idle connections: the loader holds {held} fds");
        assert!(held < LOADER_NOFILE as usize / 2, "the loader holds {held} fds");

        // sticky status and /metrics answer.
        let status = sticky.status();
        assert_eq!(status.slots.len(), 4);
        let response = scrape(metrics);
        assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
        assert!(response.contains("sticky_workers_up 4"), "{response}");

        // A worker killed with kill -9 is replaced by a new, ready one.
        let victim = status.slots[1].pid.expect("a worker");
        kill(Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
        eventually("the killed worker is replaced", || {
            let slot = &sticky.status().slots[1];
            slot.pid.is_some_and(|pid| pid != victim) && slot.ready
        });

        // More idle clients, then a rolling restart replaces every worker.
        let more = idle_connections(metrics, IDLE);
        let before: Vec<_> = sticky.status().slots.iter().map(|s| s.pid).collect();
        match sticky.control(Request::Reload) {
            Response::Done { message } => assert_eq!(message, "restarted 4 workers"),
            other => panic!("reload: {other:?}\n{}", sticky.log()),
        }
        let after: Vec<_> = sticky.status().slots.iter().map(|s| s.pid).collect();
        assert!(before.iter().zip(&after).all(|(b, a)| b != a), "{before:?} → {after:?}");
        assert!(scrape(metrics).starts_with("HTTP/1.1 200 OK"));
        drop((idle, more));
        let exit = sticky.stop_cleanly();
        assert!(!exit.log.contains("Too many open files"), "{}", exit.log);
    });
}
