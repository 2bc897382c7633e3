//! docs/deployment.md's recipes on one host: TLS ended in the workers, and a TLS-ending nginx in
//! front that keeps each client's address (`proxy_bind $remote_addr transparent`), against the
//! same nginx without it.

use std::{
    collections::{HashMap, HashSet},
    fs,
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use sticky_tests::{
    Certificate, Netns, Response, StateDir, Sticky, client_v4, eventually, for_each_client,
    https_gets, in_netns, processes_in_netns, veth,
};

const WORKERS: usize = 4;
/// New connections (HTTPS requests) per client.
const REQUESTS: usize = 3;

fn example(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples").join(path)
}

/// The one worker each client reached, from `gets(client)` on 4 threads; panics if a client's
/// requests reached more than one worker process.
fn worker_of_each(
    clients: &[IpAddr],
    gets: impl Fn(IpAddr) -> Vec<Response> + Sync,
) -> HashMap<IpAddr, (u32, u32)> {
    for_each_client(clients, 4, |client| {
        let responses = gets(client);
        let first = (responses[0].worker, responses[0].pid);
        for response in &responses {
            assert_eq!((response.worker, response.pid), first, "{client} moved: {responses:?}");
        }
        first
    })
}

/// How many clients each worker slot served.
fn clients_per_worker(workers: &HashMap<IpAddr, (u32, u32)>) -> [usize; WORKERS] {
    let mut counts = [0; WORKERS];
    for &(worker, _) in workers.values() {
        counts[worker as usize] += 1;
    }
    counts
}

#[test]
fn tls_in_the_workers_keeps_every_client_on_one_worker() {
    in_netns(|| {
        let cert = Certificate::self_signed();
        let (key, crt) = (
            format!("TLS_KEY={}", cert.key.display()),
            format!("TLS_CERT={}", cert.cert.display()),
        );
        let server_js = example("tls/server.js");
        let sticky = Sticky::serving(
            &[
                "--listen",
                "127.0.0.1:3443",
                "--workers",
                "4",
                "--ready",
                "notify",
                "--env",
                &key,
                "--env",
                &crt,
                "--",
                "node",
                server_js.to_str().unwrap(),
            ],
            WORKERS,
        );
        let server = SocketAddr::from(([127, 0, 0, 1], 3443));
        let clients: Vec<IpAddr> = (0..500).map(client_v4).collect();
        let workers =
            worker_of_each(&clients, |client| https_gets(client, server, &cert, REQUESTS));
        let counts = clients_per_worker(&workers);
        assert!(counts.iter().all(|&n| n > 0), "idle worker: {counts:?}");
        let status = sticky.status();
        sticky.stop_cleanly();
        // Every TLS connection went through sticky's program, none left to the kernel. (The
        // program also runs for the odd segment that arrives after a connection's reset and
        // finds only the listener, so it may count a few more.)
        let connections: u64 = status.slots.iter().map(|s| s.connections).sum();
        assert!(connections >= (clients.len() * REQUESTS) as u64, "{connections} selections");
        assert_eq!((status.fallback, status.passed, status.unreadable), (0, 0, 0));
        eprintln!(
            "TLS in the workers: {} clients, {connections} connections, {counts:?}",
            clients.len()
        );
    });
}

/// nginx, started by the test with its own configuration in a temporary directory; stopped
/// (SIGTERM to the master, which stops its workers) when dropped.
struct Nginx {
    child: Child,
    dir: StateDir,
}

/// sticky's listen address behind nginx: an address of the server's own veth.
const STICKY_ADDR: &str = "10.16.0.1:3000";
/// The server's address, where nginx listens.
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 16, 0, 1);

impl Nginx {
    /// Starts nginx with examples/nginx/sticky.conf (the transparent proxy on port 443) and,
    /// for comparison, the same proxy without `proxy_bind` on port 8443.
    fn start(cert: &Certificate) -> Self {
        let dir = StateDir::new();
        fs::create_dir_all(&dir.0).expect("nginx directory");
        fs::set_permissions(&dir.0, fs::Permissions::from_mode(0o755)).expect("chmod");
        let recipe = fs::read_to_string(example("nginx/sticky.conf")).expect("the example");
        let recipe = recipe
            .replace("/etc/ssl/sticky/cert.pem", cert.cert.to_str().unwrap())
            .replace("/etc/ssl/sticky/key.pem", cert.key.to_str().unwrap())
            .replace("192.0.2.10:3000", STICKY_ADDR);
        fs::write(dir.0.join("sticky.conf"), recipe).expect("write sticky.conf");
        let d = dir.0.display();
        let config = format!(
            "daemon off;\nworker_processes 2;\nuser nobody nogroup;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\nevents {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n\
             proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n\
             uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  include {d}/sticky.conf;\n\
             server {{\n    listen 8443 ssl;\n    ssl_certificate {cert};\n\
             ssl_certificate_key {key};\n    location / {{ proxy_pass http://sticky; }}\n  }}\n}}\n",
            cert = cert.cert.display(),
            key = cert.key.display(),
        );
        let conf = dir.0.join("nginx.conf");
        fs::write(&conf, config).expect("write nginx.conf");
        let child = Command::new("nginx")
            .arg("-p")
            .arg(&dir.0)
            .arg("-e")
            .arg(dir.0.join("error.log"))
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .spawn()
            .expect("run nginx (`cargo xtask test` installs it)");
        let mut nginx = Self { child, dir };
        eventually("nginx listens", || {
            assert!(
                nginx.child.try_wait().expect("try_wait").is_none(),
                "nginx exited: {}",
                nginx.log()
            );
            [443, 8443].iter().all(|&port| TcpStream::connect((SERVER, port)).is_ok())
        });
        nginx
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.0.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

/// Client address `i` of the nginx test, in 10.17.0.0/16 (inside the test's client namespace).
fn nginx_client(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 17, (i / 250) as u8, (i % 250 + 1) as u8))
}

#[test]
fn nginx_in_front_keeps_each_client_on_one_worker_only_with_transparent_proxy_bind() {
    in_netns(|| {
        // Clients in their own namespace, reaching the server over a veth; each client address
        // is one of 10.17.0.0/16, routed to that namespace's lo (so any of them can be bound).
        let clients_ns = Netns::new("nginx-clients");
        veth("server", "10.16.0.1/24", &clients_ns, "clients", "10.16.0.2/24");
        clients_ns.ip(&["route", "add", "local", "10.17.0.0/16", "dev", "lo"]);
        let status = Command::new("ip")
            .args(["route", "add", "10.17.0.0/16", "via", "10.16.0.2"])
            .status()
            .expect("ip");
        assert!(status.success());
        // The recipe's return route for sticky's answers to client addresses.
        let routing = Command::new(example("nginx/transparent-routing.sh"))
            .arg("3000")
            .output()
            .expect("run transparent-routing.sh (needs nft: `cargo xtask test` installs it)");
        assert!(routing.status.success(), "{}", String::from_utf8_lossy(&routing.stderr));

        let sticky = Sticky::serving(&["--listen", STICKY_ADDR, "--workers", "4"], WORKERS);
        let cert = Certificate::self_signed();
        let nginx = Nginx::start(&cert);
        let clients: Vec<IpAddr> = (0..500).map(nginx_client).collect();
        let (transparent, plain) = clients_ns.enter(|| {
            let transparent = worker_of_each(&clients, |client| {
                https_gets(client, SocketAddr::from((SERVER, 443)), &cert, REQUESTS)
            });
            let plain = worker_of_each(&clients[..100], |client| {
                https_gets(client, SocketAddr::from((SERVER, 8443)), &cert, REQUESTS)
            });
            (transparent, plain)
        });
        let counts = clients_per_worker(&transparent);
        assert!(counts.iter().all(|&n| n > 0), "idle worker behind nginx: {counts:?}");
        // Without transparency every connection comes from nginx's own address: one worker.
        let plain_workers: HashSet<u32> = plain.values().map(|&(worker, _)| worker).collect();
        assert_eq!(plain_workers.len(), 1, "without proxy_bind: {plain_workers:?}");
        drop(nginx);
        let status = sticky.status();
        sticky.stop_cleanly();
        let connections: u64 = status.slots.iter().map(|s| s.connections).sum();
        assert!(connections >= ((clients.len() + 100) * REQUESTS) as u64, "{connections}");
        assert_eq!(processes_in_netns(), Vec::<u32>::new());
        eprintln!(
            "nginx transparent: {} clients on {counts:?}; without: 100 clients all on worker {:?}",
            clients.len(),
            plain_workers
        );
    });
}
