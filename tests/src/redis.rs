//! A real Redis server for the tests whose workers share state through it.

use std::{
    env,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

/// A `redis-server` (Debian's package) on a loopback port of the calling thread's network
/// namespace, without persistence; stopped when stopped or dropped.
pub struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    /// Starts `redis-server` on 127.0.0.1:`port` with no snapshot and no append-only file, and
    /// waits (at most 30 s) until it answers PING.
    pub fn start(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .arg("--dir")
            .arg(env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect(
                "run redis-server: `cargo xtask test` installs it (apt-get install redis-server)",
            );
        let mut redis = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !redis.answers_ping() {
            if let Some(status) = redis.child.try_wait().expect("try_wait") {
                panic!("redis-server exited ({status}) before answering on port {port}");
            }
            assert!(Instant::now() < deadline, "redis-server did not answer on port {port}");
            thread::sleep(Duration::from_millis(20));
        }
        redis
    }

    /// The URL the workers connect to.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops the server and waits for it to exit.
    pub fn stop(mut self) {
        self.kill();
    }

    fn answers_ping(&self) -> bool {
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let Ok(mut stream) = TcpStream::connect_timeout(&address, Duration::from_secs(1)) else {
            return false;
        };
        let mut reply = [0; 7];
        stream.set_read_timeout(Some(Duration::from_secs(5))).is_ok()
            && stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        // A failed test must not leave redis-server behind.
        self.kill();
    }
}
