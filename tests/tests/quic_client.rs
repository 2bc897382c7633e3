//! The QUIC test client against `sticky-example-quic` run without sticky: the test binds the
//! UDP socket (127.0.0.1, a free port) and hands it to the worker as fd 3, as sticky would.
//! Needs no root.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    process::{Child, Command},
    time::Duration,
};

use sticky_tests::{quic::QuicClient, target_bin};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// The CID length and key the workers are given.
const CID_LEN: &str = "20";
const KEY: &str = "1234";
/// A stateless reset key for workers to share (64 hex digits).
const RESET_KEY: (&str, &str) =
    ("STICKY_QUIC_RESET_KEY", "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a");

/// `sticky-example-quic` as worker `slot`, `socket` at fd 3, with extra variables `env`;
/// killed on drop.
struct Worker(Child);

impl Worker {
    fn start(socket: &UdpSocket, slot: u32, env: &[(&str, &str)]) -> Self {
        let fd = socket.as_raw_fd();
        let mut command = Command::new("sh");
        // LISTEN_PID is the pid sh execs the worker in.
        command.args(["-c", r#"LISTEN_PID=$$ exec "$0""#]);
        command.arg(target_bin("sticky-example-quic", "sticky-example-quic"));
        command.env("LISTEN_FDS", "1").env_remove("LISTEN_FDNAMES");
        command.env("STICKY_WORKER", slot.to_string()).env("STICKY_WORKERS", "4");
        command.env("STICKY_QUIC_CID_LEN", CID_LEN).env("STICKY_QUIC_KEY", KEY);
        command.envs(env.iter().copied()).env_remove("NOTIFY_SOCKET");
        // SAFETY: between fork and exec only dup2 and fcntl, both async-signal-safe.
        unsafe {
            command.pre_exec(move || {
                let done = match fd {
                    3 => libc::fcntl(3, libc::F_SETFD, 0),
                    _ => libc::dup2(fd, 3),
                };
                if done < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
            });
        }
        Self(command.spawn().expect("start sticky-example-quic"))
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn stop(mut self) {
        self.0.kill().expect("kill the worker");
        self.0.wait().expect("wait for the worker");
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn server_socket() -> (UdpSocket, SocketAddr) {
    let socket = UdpSocket::bind((LOCALHOST, 0)).expect("bind the server's socket");
    let address = socket.local_addr().expect("local_addr");
    (socket, address)
}

#[test]
fn a_connection_keeps_its_worker_across_a_rebinding() {
    let (socket, server) = server_socket();
    let worker = Worker::start(&socket, 2, &[]);
    let client = QuicClient::bind(LOCALHOST);
    let connection = client.connect(server).expect("connect");
    assert_eq!(connection.exchange("hello").expect("exchange"), (2, worker.pid()));
    let before = client.local_addr();
    let after = client.rebind(None);
    assert_ne!(before.port(), after.port());
    assert_eq!(client.local_addr(), after);
    assert_eq!(
        connection.exchange("again").expect("exchange after the rebinding"),
        (2, worker.pid())
    );
    let remote = connection.connection().remote_address();
    assert_eq!(remote, server);
    connection.close();
}

#[test]
fn a_worker_that_shares_the_reset_key_resets_a_connection_it_does_not_know() {
    let (socket, server) = server_socket();
    let first = Worker::start(&socket, 1, &[RESET_KEY]);
    let client = QuicClient::bind(LOCALHOST);
    let connection = client.connect(server).expect("connect");
    assert_eq!(connection.exchange("hello").expect("exchange"), (1, first.pid()));
    first.stop();
    // Its successor on the same socket has never heard of the connection.
    let _second = Worker::start(&socket, 1, &[RESET_KEY]);
    let failure = connection.exchange("anyone?").expect_err("a reset");
    assert!(failure.is_reset(), "{failure}");
    assert!(connection.ended_by_reset());
    assert!(connection.wait_closed(Duration::from_secs(1)).is_some());
}
