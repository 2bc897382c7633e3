//! The program's own log (aya-log): with `--log-level debug` the loader's log shows a
//! connection whose slot has no socket (the fallback), one no slot can take (passed to the
//! kernel) and a datagram `--quic` cannot route; at the default level the program logs none
//! of these, though they happen (even with `STICKY_LOG` letting its messages through); after
//! `sticky upgrade` the new image reads its log on.
//!
//! The workers are `sleep`s: they accept nothing, so nothing but the test touches the sockets,
//! and with `--hang-timeout 0` no slot is ejected for its waiting connections.

use std::{
    net::{SocketAddr, TcpListener},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use sticky_tests::{BinaryDir, Sticky, client_v4, connect, in_netns, sticky_bin, udp_client};
use sticky_user::control::{self, Request, Response, Status};

/// What the loader logs for a connection of slot 0 once that slot has no socket.
const FALLBACK: &str = "slot 0 has no socket: its client's connection goes to slot 1";
/// What it logs for a connection no slot can take.
const PASSED: &str = "no slot has a socket: the kernel chooses one for the connection";
/// What it logs for a datagram shorter than any QUIC packet.
const SHORT: &str = "datagram shorter than a QUIC header: unroutable, routed by address";

/// `sticky run`'s arguments: a TCP and a QUIC address on `port`, two `sleep` workers.
fn args(port: u16, extra: &[&'static str]) -> Vec<String> {
    let mut args: Vec<String> = ["--listen", &format!("127.0.0.1:{port}")]
        .into_iter()
        .chain(["--listen", &format!("udp://127.0.0.1:{port}"), "--quic", "-w", "2"])
        .chain(["--hang-timeout", "0"])
        .map(String::from)
        .collect();
    args.extend(extra.iter().map(|arg| arg.to_string()));
    args.extend(["--", "sleep", "3600"].map(String::from));
    args
}

fn start(binary: Option<&BinaryDir>, args: &[String], env: &[(&str, &str)]) -> Sticky {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut sticky = match binary {
        Some(binary) => Sticky::start_binary(&binary.sticky(), &args),
        None => Sticky::start_with_env(&args, env),
    };
    sticky.wait_until_serving(2);
    sticky
}

/// A duplicate of file descriptor `fd` of process `pid` (pidfd_getfd, Linux 5.6+).
fn steal_fd(pid: u32, fd: i32) -> OwnedFd {
    // SAFETY: plain system calls; each result is checked before use.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0);
        assert!(pidfd >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
        let pidfd = OwnedFd::from_raw_fd(pidfd as i32);
        let stolen = libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0);
        assert!(stolen >= 0, "pidfd_getfd: {}", std::io::Error::last_os_error());
        OwnedFd::from_raw_fd(stolen as i32)
    }
}

/// Slot `slot`'s TCP socket (its worker's fd 3) stops listening: the kernel takes it out of
/// the reuseport group and the program's socket array, so the slot has no socket.
fn unlisten(sticky: &Sticky, port: u16, slot: usize) {
    let worker = sticky.status().slots[slot].pid.expect("the slot's worker");
    let listener = TcpListener::from(steal_fd(worker, 3));
    let expected: SocketAddr = ([127, 0, 0, 1], port).into();
    assert_eq!(listener.local_addr().unwrap(), expected, "fd 3 is not the TCP socket");
    // SAFETY: a shutdown of an fd this test owns.
    assert_eq!(unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RD) }, 0);
}

/// Connections from 64 clients (those of slot 0 fall back to slot 1) and a 1-octet datagram.
fn exceptional_traffic(port: u16) {
    let server: SocketAddr = ([127, 0, 0, 1], port).into();
    let streams: Vec<_> =
        (0..64).map(|i| connect(client_v4(i), server).expect("connect")).collect();
    udp_client(client_v4(0)).send_to(b"x", server).unwrap();
    drop(streams);
}

/// Waits until the counters show both exceptional paths taken.
fn wait_until_counted(sticky: &mut Sticky) {
    let control = sticky.control_path().to_owned();
    let counted = |status: &Status| {
        status.fallback > 0 && status.quic.as_ref().is_some_and(|quic| quic.unroutable > 0)
    };
    sticky.wait_for("a fallback and an unroutable datagram counted", |_| {
        matches!(
            control::request(&control, &Request::Status),
            Ok(Response::Status(status)) if counted(&status)
        )
    });
}

#[test]
fn with_debug_the_log_shows_a_fallback_and_an_unroutable_datagram() {
    in_netns(|| {
        let port = 3401;
        let mut sticky = start(None, &args(port, &["--log-level", "debug"]), &[]);
        unlisten(&sticky, port, 0);
        exceptional_traffic(port);
        sticky.wait_for("the program's messages", |log| {
            log.contains(FALLBACK) && log.contains(SHORT)
        });
        let line = sticky.log().lines().find(|line| line.contains(FALLBACK)).unwrap().to_owned();
        assert!(
            line.contains("DEBUG sticky_ebpf") && line.contains("listen=127.0.0.1:3401"),
            "{line}"
        );
        sticky.stop_cleanly();
    });
}

#[test]
fn at_the_default_level_the_program_logs_nothing() {
    in_netns(|| {
        let port = 3402;
        // The loader's filter lets the program's messages through: none come.
        let mut sticky = start(None, &args(port, &[]), &[("STICKY_LOG", "info,sticky_ebpf=debug")]);
        unlisten(&sticky, port, 0);
        exceptional_traffic(port);
        wait_until_counted(&mut sticky);
        let log = sticky.stop_cleanly().log;
        assert!(!log.contains("sticky_ebpf"), "the program logged at the default level:\n{log}");
    });
}

#[test]
fn after_an_upgrade_the_new_image_shows_the_programs_messages() {
    in_netns(|| {
        let port = 3403;
        let binary = BinaryDir::new("program-log");
        let mut sticky = start(Some(&binary), &args(port, &["--log-level", "debug"]), &[]);
        let before = sticky.status();
        binary.install(&sticky_bin());
        match sticky.control(Request::Upgrade) {
            Response::Done { message } => {
                assert!(message.starts_with("upgraded in place"), "{message}")
            }
            other => panic!("{other:?}:\n{}", sticky.log()),
        }
        assert_eq!(sticky.status().program_ids, before.program_ids, "the program was replaced");
        unlisten(&sticky, port, 0);
        exceptional_traffic(port);
        sticky.wait_for("the program's messages", |log| {
            log.contains(FALLBACK) && log.contains(SHORT)
        });
        let log = sticky.stop_cleanly().log;
        assert!(!log.contains("the program's log is not read"), "{log}");
        assert!(!log.contains("the program has no log"), "{log}");
    });
}

#[test]
fn with_debug_a_connection_no_slot_can_take_is_logged_as_passed() {
    in_netns(|| {
        let port = 3404;
        // The loader's own socket (for the trusted proxies) stays in the group when no worker's
        // does: the kernel gives it the connection the program passes.
        let proxies = ["--trusted-proxy", "10.0.0.0/8", "--client-address", "proxy-protocol"];
        let extra: Vec<&'static str> =
            ["--log-level", "debug"].into_iter().chain(proxies).collect();
        let mut sticky = start(None, &args(port, &extra), &[]);
        unlisten(&sticky, port, 0);
        unlisten(&sticky, port, 1);
        let server: SocketAddr = ([127, 0, 0, 1], port).into();
        let _stream = connect(client_v4(0), server).expect("connect");
        sticky.wait_for("the program's message", |log| log.contains(PASSED));
        assert!(sticky.status().passed > 0);
        sticky.stop_cleanly();
    });
}
