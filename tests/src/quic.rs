//! QUIC for the tests: a blocking quinn client of `sticky-example-quic`, which answers each
//! line on a bidirectional stream with `<slot> <pid> <line>`.
//!
//! A [`QuicClient`] is one client endpoint (one UDP socket) with its own tokio runtime, which
//! drives its connections in the background; [`QuicClient::rebind`] moves it to a new socket,
//! as a NAT rebinding or a migration would, and its connections follow. It trusts any server
//! certificate: tests only.

use std::{
    fmt,
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::Arc,
    time::Duration,
};

use quinn::{
    ClientConfig, Connection, ConnectionError, Endpoint, EndpointConfig, ReadError, ReadToEndError,
    TokioRuntime, TransportConfig, WriteError,
};
use tokio::runtime::Runtime;

/// The application protocol of `sticky-example-quic`.
pub const ECHO_ALPN: &[u8] = b"sticky-echo";
/// The server name the client asks for (the example's certificate has it; nothing checks it).
pub const QUIC_SERVER_NAME: &str = "sticky.test";
/// How long a handshake or an exchange may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// How often an idle connection pings its server: a stateless reset answers a ping too.
const KEEP_ALIVE: Duration = Duration::from_secs(1);

/// A QUIC client endpoint that skips certificate verification, driven by its own runtime.
pub struct QuicClient {
    endpoint: Endpoint,
    runtime: Arc<Runtime>,
}

impl QuicClient {
    /// A client endpoint on a new UDP socket at `ip`, a free port.
    pub fn bind(ip: IpAddr) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let socket = UdpSocket::bind((ip, 0)).expect("bind the QUIC client's socket");
        let _entered = runtime.enter();
        let mut endpoint =
            Endpoint::new(EndpointConfig::default(), None, socket, Arc::new(TokioRuntime))
                .expect("QUIC client endpoint");
        endpoint.set_default_client_config(insecure_client_config());
        Self { endpoint, runtime: Arc::new(runtime) }
    }

    /// The endpoint's address now.
    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint.local_addr().expect("local_addr")
    }

    /// The quinn endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// A new connection to `server`, once its handshake is done.
    pub fn connect(&self, server: SocketAddr) -> Result<QuicConnection, QuicFailure> {
        let _entered = self.runtime.enter();
        let connecting = self.endpoint.connect(server, QUIC_SERVER_NAME).expect("connect");
        let connection = block_on(&self.runtime, async { Ok(connecting.await?) })?;
        Ok(QuicConnection { connection, runtime: self.runtime.clone() })
    }

    /// Moves the endpoint, and its connections, to a new UDP socket at `ip` (the current IP if
    /// `None`) and a new port. Returns the new address.
    pub fn rebind(&self, ip: Option<IpAddr>) -> SocketAddr {
        let ip = ip.unwrap_or_else(|| self.local_addr().ip());
        let socket = UdpSocket::bind((ip, 0)).expect("bind the QUIC client's new socket");
        let address = socket.local_addr().expect("local_addr");
        let _entered = self.runtime.enter();
        self.endpoint.rebind(socket).expect("rebind the QUIC client");
        address
    }
}

/// One connection of a [`QuicClient`].
pub struct QuicConnection {
    connection: Connection,
    runtime: Arc<Runtime>,
}

impl QuicConnection {
    /// Sends `line` on a new bidirectional stream and reads the answer: the slot and the pid
    /// of the worker that served it.
    pub fn exchange(&self, line: &str) -> Result<(u32, u32), QuicFailure> {
        assert!(!line.contains('\n'), "one line");
        let answer = block_on(&self.runtime, async {
            let (mut send, mut recv) = self.connection.open_bi().await?;
            send.write_all(format!("{line}\n").as_bytes()).await.map_err(write_failure)?;
            send.finish().map_err(|err| QuicFailure::Stream(err.to_string()))?;
            recv.read_to_end(64 * 1024).await.map_err(read_failure)
        })?;
        let answer = String::from_utf8_lossy(&answer);
        parse_echo(&answer, line).ok_or_else(|| QuicFailure::Answer(answer.into_owned()))
    }

    /// The quinn connection.
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// Why the connection ended, if it has.
    pub fn close_reason(&self) -> Option<ConnectionError> {
        self.connection.close_reason()
    }

    /// Whether the connection ended by a stateless reset.
    pub fn ended_by_reset(&self) -> bool {
        self.close_reason().as_ref().is_some_and(is_stateless_reset)
    }

    /// Waits at most `within` for the connection to end; why it did.
    pub fn wait_closed(&self, within: Duration) -> Option<ConnectionError> {
        let closed = async { tokio::time::timeout(within, self.connection.closed()).await };
        self.runtime.block_on(closed).ok()
    }

    /// Closes the connection (application code 0).
    pub fn close(&self) {
        self.connection.close(0u32.into(), b"done");
    }
}

/// Why an exchange or a handshake failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuicFailure {
    /// The connection is lost or could not be made.
    Connection(ConnectionError),
    /// No answer within the timeout.
    TimedOut,
    /// The stream failed on its own (reset, stopped, too long).
    Stream(String),
    /// An answer not of the form `<slot> <pid> <line>`.
    Answer(String),
}

impl QuicFailure {
    /// Whether the connection ended by a stateless reset.
    pub fn is_reset(&self) -> bool {
        matches!(self, Self::Connection(err) if is_stateless_reset(err))
    }
}

impl fmt::Display for QuicFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connection(err) => write!(f, "QUIC connection: {err}"),
            Self::TimedOut => write!(f, "no answer within {TIMEOUT:?}"),
            Self::Stream(err) => write!(f, "QUIC stream: {err}"),
            Self::Answer(answer) => write!(f, "unexpected answer {answer:?}"),
        }
    }
}

impl From<ConnectionError> for QuicFailure {
    fn from(error: ConnectionError) -> Self {
        Self::Connection(error)
    }
}

/// A connection and the worker (slot, pid) that answered it.
pub type Served = (QuicConnection, (u32, u32));

/// `clients` client endpoints, from addresses `client_v4(first..)`, with `per_client`
/// connections each to `server`, every one answered once; each connection with the worker
/// (slot, pid) that answered.
pub fn connect_all(
    server: SocketAddr,
    first: u32,
    clients: u32,
    per_client: usize,
) -> Vec<(QuicClient, Vec<Served>)> {
    let spawned: Vec<_> = (first..first + clients)
        .map(|i| {
            std::thread::spawn(move || {
                let client = QuicClient::bind(crate::client_v4(i));
                let connections = (0..per_client)
                    .map(|n| {
                        let connection = client.connect(server).expect("handshake");
                        let worker = connection.exchange(&format!("hello {n}")).expect("answer");
                        (connection, worker)
                    })
                    .collect();
                (client, connections)
            })
        })
        .collect();
    spawned.into_iter().map(|t| t.join().unwrap()).collect()
}

/// Whether `error` is a stateless reset: the server no longer knew the connection, and had
/// the reset key of the one that did.
pub fn is_stateless_reset(error: &ConnectionError) -> bool {
    matches!(error, ConnectionError::Reset)
}

/// The slot and pid in answer `<slot> <pid> <line>` to `line`.
pub fn parse_echo(answer: &str, line: &str) -> Option<(u32, u32)> {
    let mut fields = answer.strip_suffix('\n')?.splitn(3, ' ');
    let (slot, pid) = (fields.next()?.parse().ok()?, fields.next()?.parse().ok()?);
    (fields.next()? == line).then_some((slot, pid))
}

/// A client configuration for [`ECHO_ALPN`] that accepts any server certificate (tests only),
/// with keep-alives every [`KEEP_ALIVE`].
pub fn insecure_client_config() -> ClientConfig {
    let mut config = loadgen::quic::insecure_client_config(ECHO_ALPN);
    let mut transport = TransportConfig::default();
    transport.keep_alive_interval(Some(KEEP_ALIVE));
    config.transport_config(Arc::new(transport));
    config
}

/// Runs `future` on `runtime` for at most [`TIMEOUT`].
fn block_on<T>(
    runtime: &Runtime,
    future: impl Future<Output = Result<T, QuicFailure>>,
) -> Result<T, QuicFailure> {
    let within = async { tokio::time::timeout(TIMEOUT, future).await };
    runtime.block_on(within).unwrap_or(Err(QuicFailure::TimedOut))
}

/// A write's failure: its connection's, or the stream's own.
fn write_failure(error: WriteError) -> QuicFailure {
    match error {
        WriteError::ConnectionLost(err) => QuicFailure::Connection(err),
        err => QuicFailure::Stream(err.to_string()),
    }
}

/// A read's failure: its connection's, or the stream's own.
fn read_failure(error: ReadToEndError) -> QuicFailure {
    match error {
        ReadToEndError::Read(ReadError::ConnectionLost(err)) => QuicFailure::Connection(err),
        err => QuicFailure::Stream(err.to_string()),
    }
}
