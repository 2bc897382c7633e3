//! Real proxies in front of sticky: HAProxy and nginx, each started by the test inside its
//! network namespace as its own child, with its configuration in a temporary directory, and
//! stopped by its pid when dropped. Also what a proxy sends, sent by the test itself (a PROXY
//! header or a request head before the request), and `/metrics` read as numbers.

use std::{
    collections::HashMap,
    fs::{self, File},
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    os::unix::fs::PermissionsExt as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use crate::{
    StateDir,
    client::{Failure, Response, connect, read_response, send_request},
    eventually,
};

/// Debian's nginx stream module (package `libnginx-mod-stream`), loaded explicitly since the
/// test's configuration does not include `/etc/nginx/modules-enabled`.
const NGINX_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";
/// HAProxy's `maxconn`: twice it (a client's and a server's connection each) must fit the
/// machine's open-files hard limit.
const HAPROXY_MAXCONN: u32 = 4000;

/// A proxy the test started; SIGTERM to its pid, and a wait, when dropped.
pub struct Proxy {
    name: &'static str,
    child: Child,
    log: PathBuf,
    /// Its configuration and log, removed with it.
    _dir: StateDir,
}

impl Proxy {
    /// HAProxy in the foreground (`-db`), listening on `listen`, with `backend` (the lines of a
    /// `backend sticky` section, e.g. `server s1 127.0.0.1:3000 send-proxy-v2`) in TCP mode.
    pub fn haproxy(listen: SocketAddr, backend: &str) -> Self {
        let dir = private_dir();
        let config = format!(
            "global\n  maxconn {HAPROXY_MAXCONN}\n\ndefaults\n  mode tcp\n  timeout connect 10s\n  \
             timeout client 30s\n  timeout server 30s\n\nfrontend clients\n  bind {listen}\n  \
             default_backend sticky\n\nbackend sticky\n{backend}\n"
        );
        let file = dir.0.join("haproxy.cfg");
        fs::write(&file, config).expect("write haproxy.cfg");
        let log = dir.0.join("haproxy.log");
        let mut command = Command::new("haproxy");
        command.arg("-db").arg("-f").arg(&file);
        command.stderr(File::create(&log).expect("haproxy.log"));
        Self::start("haproxy (`cargo xtask test` installs it)", command, listen, log, dir)
    }

    /// nginx with `recipe` inside its `stream { }` block, listening on `listen`.
    pub fn nginx_stream(listen: SocketAddr, recipe: &str) -> Self {
        Self::nginx(listen, |_| format!("stream {{\n{recipe}\n}}\n"))
    }

    /// nginx with `recipe` inside its `http { }` block, listening on `listen`.
    pub fn nginx_http(listen: SocketAddr, recipe: &str) -> Self {
        Self::nginx(listen, |d| {
            format!(
                "http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  \
                 proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  \
                 uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n{recipe}\n}}\n"
            )
        })
    }

    /// nginx in the foreground, its master root and its worker `nobody`, with the block
    /// `block(directory)` makes.
    fn nginx(listen: SocketAddr, block: impl FnOnce(&str) -> String) -> Self {
        let dir = private_dir();
        let d = dir.0.display().to_string();
        let config = format!(
            "load_module {NGINX_STREAM_MODULE};\ndaemon off;\nworker_processes 1;\n\
             user nobody nogroup;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 2048; }}\n{}",
            block(&d)
        );
        let file = dir.0.join("nginx.conf");
        fs::write(&file, config).expect("write nginx.conf");
        let log = dir.0.join("error.log");
        let mut command = Command::new("nginx");
        command.arg("-p").arg(&dir.0).arg("-e").arg(&log).arg("-c").arg(&file);
        Self::start("nginx (`cargo xtask test` installs it)", command, listen, log, dir)
    }

    fn start(
        name: &'static str,
        mut command: Command,
        listen: SocketAddr,
        log: PathBuf,
        dir: StateDir,
    ) -> Self {
        let child = command.stdin(Stdio::null()).spawn().unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut proxy = Self { name, child, log, _dir: dir };
        eventually(&format!("{name} listens on {listen}"), || {
            if let Some(status) = proxy.child.try_wait().expect("try_wait") {
                panic!("{name} exited ({status}):\n{}", proxy.log());
            }
            listening(listen)
        });
        proxy
    }

    /// What it logged.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops it (SIGTERM to its pid) and waits for it; panics if it had exited already.
    pub fn stop(mut self) {
        let exited = self.child.try_wait().expect("try_wait");
        assert!(exited.is_none(), "{} exited ({exited:?}):\n{}", self.name, self.log());
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

/// A new directory that the proxies' unprivileged workers can read.
fn private_dir() -> StateDir {
    let dir = StateDir::new();
    fs::create_dir_all(&dir.0).expect("proxy directory");
    fs::set_permissions(&dir.0, fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

/// Whether a TCP socket listens on `address` in the calling thread's network namespace (read
/// from its `/proc/thread-self/net/tcp`, so that no connection is made to find out).
fn listening(address: SocketAddr) -> bool {
    let SocketAddr::V4(address) = address else { panic!("IPv4 only: {address}") };
    let local = format!("{:08X}:{:04X}", u32::from_ne_bytes(address.ip().octets()), address.port());
    let table = fs::read_to_string("/proc/thread-self/net/tcp").expect("read net/tcp");
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(1) == Some(&local.as_str()) && fields.get(3) == Some(&"0A")
    })
}

/// One request on a new connection from `source` to `server`, after `prefix` (what a proxy
/// would send first: a PROXY header), on the same connection.
pub fn request_after(
    source: IpAddr,
    server: SocketAddr,
    prefix: &[u8],
) -> Result<Response, Failure> {
    let mut stream = connect(source, server).map_err(Failure::Connect)?;
    let sent = stream.write_all(prefix).and_then(|()| send_request(&mut stream));
    sent.and_then(|()| read_response(&mut stream)).map_err(Failure::AfterConnect)
}

/// A PROXY protocol v1 line naming `client` (port 40000) as the source, toward `server`.
pub fn proxy_v1(client: IpAddr, server: SocketAddr) -> Vec<u8> {
    let family = if client.is_ipv4() { "TCP4" } else { "TCP6" };
    format!("PROXY {family} {client} {} 40000 {}\r\n", server.ip(), server.port()).into_bytes()
}

/// `GET /metrics` at `address`: each sample (`name{labels}` → value).
pub fn metrics(address: SocketAddr) -> HashMap<String, u64> {
    let mut stream = TcpStream::connect(address).expect("connect to /metrics");
    stream.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n").expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read /metrics");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let body = response.split_once("\r\n\r\n").expect("a body").1;
    body.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}
