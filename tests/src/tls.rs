//! TLS for the deployment tests: a self-signed certificate made by `openssl` for the test, and
//! `curl` as the HTTPS client, each request on a new connection from a chosen source address.

use std::{
    fs,
    net::{IpAddr, SocketAddr},
    os::unix::fs::PermissionsExt as _,
    path::PathBuf,
    process::Command,
};

use crate::{StateDir, client::Response};

/// The name the certificate is for; clients resolve it to the server's address.
pub const TLS_NAME: &str = "sticky.test";

/// A self-signed certificate and its key in a temporary directory, readable by the workers'
/// user (the test's only), removed on drop.
pub struct Certificate {
    _dir: StateDir,
    /// The private key (PEM).
    pub key: PathBuf,
    /// The certificate (PEM), also the clients' only trusted CA.
    pub cert: PathBuf,
}

impl Certificate {
    /// Makes a new P-256 key and a one-day self-signed certificate for [`TLS_NAME`].
    pub fn self_signed() -> Self {
        let dir = StateDir::new();
        fs::create_dir_all(&dir.0).expect("certificate directory");
        fs::set_permissions(&dir.0, fs::Permissions::from_mode(0o755)).expect("chmod");
        let (key, cert) = (dir.0.join("key.pem"), dir.0.join("cert.pem"));
        let output = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
            .args(["-nodes", "-days", "1", "-subj", &format!("/CN={TLS_NAME}")])
            .args(["-addext", &format!("subjectAltName=DNS:{TLS_NAME}")])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("run openssl (`cargo xtask test` installs it)");
        assert!(output.status.success(), "openssl: {}", String::from_utf8_lossy(&output.stderr));
        // The workers run as `nobody`; the directory is the test's own.
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).expect("chmod key");
        Self { _dir: dir, key, cert }
    }
}

/// `count` HTTPS requests from `source` to `server`, each on a new connection (one `curl`
/// process, `connection: close`), verified against `ca`; panics unless each one succeeds on a
/// connection of its own.
pub fn https_gets(
    source: IpAddr,
    server: SocketAddr,
    ca: &Certificate,
    count: usize,
) -> Vec<Response> {
    let url = format!("https://{TLS_NAME}:{}/", server.port());
    let mut command = Command::new("curl");
    command.args(["--silent", "--show-error", "--fail", "--max-time", "10"]);
    command.arg("--interface").arg(source.to_string());
    command.arg("--cacert").arg(&ca.cert);
    command.arg("--resolve").arg(format!("{TLS_NAME}:{}:{}", server.port(), server.ip()));
    command.args(["--header", "connection: close"]);
    command
        .args(["--write-out", "%{num_connects} %header{x-sticky-worker} %header{x-sticky-pid}\\n"]);
    for _ in 0..count {
        command.args(["--output", "/dev/null", &url]);
    }
    let output = command.output().expect("run curl (`cargo xtask test` installs it)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "curl from {source} to {server}: {text} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let responses: Vec<Response> = text
        .lines()
        .map(|line| {
            let fields: Vec<u32> = line.split(' ').map(|f| f.parse().expect(line)).collect();
            assert_eq!(fields[0], 1, "request from {source} reused a connection: {text}");
            Response { worker: fields[1], pid: fields[2], text: line.to_owned() }
        })
        .collect();
    assert_eq!(responses.len(), count, "curl from {source}: {text}");
    responses
}
