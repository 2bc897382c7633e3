//! The QUIC modes' clients: real quinn connections (rustls with ring) to `sticky-example-quic`
//! workers, which answer each line on a bidirectional stream with `<slot> <pid> <line>`, and a
//! line `download N` with that answer and then N octets. They accept any server certificate
//! (each worker makes its own): a benchmark's clients only.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use quinn::{ClientConfig, Connection, Endpoint, EndpointConfig, TokioRuntime};
use tokio::runtime::Runtime;

use super::load::{LoadResult, client, drive_with};

/// The example's application protocol.
const ALPN: &[u8] = b"sticky-echo";
/// The name the client asks for (the example's certificate has it; nothing checks it).
const SERVER_NAME: &str = "sticky.test";
/// How long a handshake and its exchange may take.
const TIMEOUT: Duration = Duration::from_secs(5);
/// How long a download may take.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs the handshake load against `server` for `duration`: each request a new client socket
/// (a new port) at the next of `CLIENTS` addresses, a new connection from it (a full
/// handshake), one line answered, the connection closed. The answering worker is keyed by its
/// pid.
pub fn handshakes(server: SocketAddr, duration: Duration) -> LoadResult {
    drive_with(duration, HandshakeClient::new, move |handshakes, index| {
        handshakes.request(client(index), server)
    })
}

/// One load thread's client: a runtime that drives its connections, closing ones included
/// (the last of them are given a moment when it is dropped).
struct HandshakeClient {
    runtime: Runtime,
    config: ClientConfig,
    /// Whether this thread has said why a request failed (once is enough).
    told_failure: bool,
}

impl HandshakeClient {
    fn new() -> Self {
        Self { runtime: runtime(), config: client_config(), told_failure: false }
    }

    /// A connection from `source` (a new port) to `server` and one exchange on it; the pid
    /// that answered.
    fn request(&mut self, source: IpAddr, server: SocketAddr) -> Option<u32> {
        let exchange = exchange(source, server, self.config.clone());
        let result = self.runtime.block_on(async { tokio::time::timeout(TIMEOUT, exchange).await });
        match result.unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {TIMEOUT:?}"))) {
            Ok(pid) => Some(pid),
            Err(err) => {
                if !std::mem::replace(&mut self.told_failure, true) {
                    crate::shell::say(&format!(
                        "a QUIC request failed (first of its thread): {err:#}"
                    ));
                }
                None
            }
        }
    }
}

impl Drop for HandshakeClient {
    fn drop(&mut self) {
        self.runtime.block_on(pause());
    }
}

/// A new client endpoint on `source`, a new port; its connection to `server`, once its
/// handshake is done. Inside a runtime.
async fn connect(
    source: IpAddr,
    server: SocketAddr,
    config: ClientConfig,
) -> anyhow::Result<Connection> {
    let socket = UdpSocket::bind((source, 0)).with_context(|| format!("cannot bind {source}"))?;
    let endpoint = Endpoint::new(EndpointConfig::default(), None, socket, Arc::new(TokioRuntime))?;
    // The endpoint's driver lives on while its connection does, closing included.
    Ok(endpoint.connect_with(config, server, SERVER_NAME)?.await?)
}

/// A connection from `source` to `server`, one line answered on it, closed; the answering pid.
async fn exchange(source: IpAddr, server: SocketAddr, config: ClientConfig) -> anyhow::Result<u32> {
    let connection = connect(source, server, config).await?;
    let (mut send, mut recv) = connection.open_bi().await?;
    send.write_all(b"hello\n").await?;
    send.finish()?;
    let answer = recv.read_to_end(1024).await?;
    connection.close(0u32.into(), b"done");
    let answer = String::from_utf8_lossy(&answer);
    pid_of(&answer, "hello").with_context(|| format!("unexpected answer {answer:?}"))
}

/// The pid in the example's answer `<slot> <pid> <line>` to `line`.
fn pid_of(answer: &str, line: &str) -> Option<u32> {
    let mut fields = answer.lines().next()?.splitn(3, ' ');
    let (_slot, pid) = (fields.next()?, fields.next()?.parse().ok()?);
    (fields.next()? == line).then_some(pid)
}

/// One download through one connection.
pub struct Download {
    /// Octets received after the answer's first line.
    pub octets: u64,
    /// From sending the request to its last octet (the handshake excluded).
    pub seconds: f64,
}

/// Downloads `octets` from `server` through one new connection (from 127.16.0.1).
pub fn download(server: SocketAddr, octets: u64) -> anyhow::Result<Download> {
    let runtime = runtime();
    let config = client_config();
    let download = async {
        let connection = connect(client(0), server, config).await?;
        let began = Instant::now();
        let (mut send, mut recv) = connection.open_bi().await?;
        let line = format!("download {octets}");
        send.write_all(format!("{line}\n").as_bytes()).await?;
        send.finish()?;
        // The answer's first line, then the octets.
        let (mut first_line, mut received) = (Vec::new(), 0u64);
        while let Some(chunk) = recv.read_chunk(usize::MAX, true).await? {
            let mut bytes = &chunk.bytes[..];
            if !first_line.ends_with(b"\n") {
                let end = bytes.iter().position(|&b| b == b'\n').map_or(bytes.len(), |at| at + 1);
                first_line.extend_from_slice(&bytes[..end]);
                bytes = &bytes[end..];
            }
            received += bytes.len() as u64;
        }
        let seconds = began.elapsed().as_secs_f64();
        connection.close(0u32.into(), b"done");
        let first_line = String::from_utf8_lossy(&first_line);
        if pid_of(&first_line, &line).is_none() || received != octets {
            bail!("asked for {octets} octets, got {first_line:?} and {received} octets");
        }
        Ok(Download { octets: received, seconds })
    };
    let within = async { tokio::time::timeout(DOWNLOAD_TIMEOUT, download).await };
    let result = runtime.block_on(within).unwrap_or_else(|_| {
        Err(anyhow::anyhow!("download of {octets} octets not done within {DOWNLOAD_TIMEOUT:?}"))
    });
    runtime.block_on(pause());
    result
}

/// Waits (at most 20 s) until `server` answers a QUIC connection's line.
pub fn wait_until_serving(server: SocketAddr) -> anyhow::Result<()> {
    let (runtime, config) = (runtime(), client_config());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let exchange = exchange(IpAddr::V4(Ipv4Addr::LOCALHOST), server, config.clone());
        let within = async { tokio::time::timeout(TIMEOUT, exchange).await };
        if let Ok(Ok(_)) = runtime.block_on(within) {
            runtime.block_on(pause());
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{server} does not answer QUIC");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// A moment for the connections a runtime drives to send their closes, so that the server
/// does not keep them until they time out.
async fn pause() {
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// A runtime on the calling thread.
fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime")
}

/// A client configuration for the example's protocol that accepts any server certificate.
fn client_config() -> ClientConfig {
    loadgen::quic::insecure_client_config(ALPN)
}
