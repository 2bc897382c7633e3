//! A sticky QUIC worker: a quinn echo server on the UDP sockets sticky hands it.
//!
//! `sticky run --listen udp://127.0.0.1:4433 --quic -w 4 -- target/debug/sticky-example-quic`
//! starts four of these. Each serves its inherited UDP sockets (fd 3 onwards) with a
//! self-signed certificate made at start (ALPN `sticky-echo`), minting its connection IDs in
//! sticky's layout so that sticky routes a connection's datagrams to it even when the client's
//! address changes. On every bidirectional stream it answers each line with
//! `<slot> <pid> <line>`, so a client sees which worker served it; a line `download N` is
//! answered so, then followed by N octets (at most [`MAX_DOWNLOAD`]): a bulk transfer.
//!
//! Outside `--quic` (plain `sticky run --listen udp://…`, or `--dispatch none`) it serves
//! with quinn's own random CIDs: sticky then routes its datagrams by address only.

use std::{error::Error, process::ExitCode, sync::Arc};

use quinn::{Connection, Endpoint, EndpointConfig, Incoming, RecvStream, SendStream, ServerConfig};
use sticky_worker::quic::{
    STICKY_QUIC_CID_LEN, StickyCids, endpoint_config, reset_key_from_env, server_endpoint,
};
use tokio::io::{AsyncBufReadExt as _, BufReader};

/// The application protocol clients must offer.
const ALPN: &[u8] = b"sticky-echo";
/// The names the self-signed certificate is for.
const NAMES: [&str; 2] = ["localhost", "sticky.test"];
/// The most octets one `download N` line asks for: 1 GiB.
const MAX_DOWNLOAD: u64 = 1 << 30;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("sticky-example-quic: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn Error>> {
    // Before the runtime: were an inherited fd missing, the runtime's epoll fd could take its
    // number and pass for it.
    let sockets = sticky_worker::inherited()?.udp;
    if sockets.is_empty() {
        return Err("no UDP socket inherited: start it with `sticky run --listen udp://…`".into());
    }
    let (slot, _) = sticky_worker::slot()?;
    // Under `--quic`, CIDs that name this slot; otherwise quinn's random ones.
    let cids = match std::env::var_os(STICKY_QUIC_CID_LEN) {
        Some(_) => Some(StickyCids::from_env()?),
        None => {
            eprintln!(
                "sticky-example-quic: not under sticky --quic: random connection IDs, routed by address only"
            );
            None
        }
    };
    let config = match cids {
        Some(cids) => endpoint_config(cids, reset_key_from_env()?.as_ref()),
        None => EndpointConfig::default(),
    };
    let naming = cids.map_or("random CIDs".to_owned(), |c| format!("CIDs naming {:?}", c.server()));
    let server_config = server_config()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let _entered = runtime.enter();
    let mut servers = tokio::task::JoinSet::new();
    for socket in sockets {
        let endpoint = server_endpoint(socket, config.clone(), server_config.clone())?;
        eprintln!(
            "sticky-example-quic: worker {slot} (pid {}) serves QUIC on {}, {naming}",
            std::process::id(),
            endpoint.local_addr()?,
        );
        servers.spawn(serve(endpoint, slot));
    }
    if let Err(err) = sticky_worker::ready() {
        eprintln!("sticky-example-quic: cannot notify readiness: {err}");
    }
    runtime.block_on(servers.join_all());
    Ok(())
}

/// A TLS 1.3 server configuration (ring) with a new self-signed certificate.
fn server_config() -> Result<ServerConfig, Box<dyn Error>> {
    let certified = rcgen::generate_simple_self_signed(NAMES.map(String::from))?;
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![certified.cert.der().clone()], key.into())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    Ok(ServerConfig::with_crypto(Arc::new(crypto)))
}

/// Accepts connections on `endpoint` until it closes.
async fn serve(endpoint: Endpoint, slot: u32) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            let client = incoming.remote_address();
            if let Err(err) = connection(incoming, slot).await {
                eprintln!("sticky-example-quic: worker {slot}: connection from {client}: {err}");
            }
        });
    }
}

/// Echoes on every bidirectional stream of one connection until the client closes it.
async fn connection(incoming: Incoming, slot: u32) -> Result<(), quinn::ConnectionError> {
    let connection: Connection = incoming.await?;
    loop {
        match connection.accept_bi().await {
            Ok((send, recv)) => {
                tokio::spawn(async move {
                    if let Err(err) = echo(send, recv, slot).await {
                        eprintln!("sticky-example-quic: worker {slot}: stream: {err}");
                    }
                });
            }
            Err(quinn::ConnectionError::ApplicationClosed(_)) => return Ok(()),
            Err(err) => return Err(err),
        }
    }
}

/// Answers each line of `recv` with `<slot> <pid> <line>` on `send`, a `download N` line
/// then with N octets, and finishes `send` at the end of `recv`.
async fn echo(mut send: SendStream, recv: RecvStream, slot: u32) -> Result<(), Box<dyn Error>> {
    let pid = std::process::id();
    let mut lines = BufReader::new(recv).lines();
    while let Some(line) = lines.next_line().await? {
        let download = download_size(&line);
        if download.is_some_and(|octets| octets > MAX_DOWNLOAD) {
            send.reset(1u32.into())?;
            return Err(format!("{line}: at most {MAX_DOWNLOAD} octets").into());
        }
        send.write_all(format!("{slot} {pid} {line}\n").as_bytes()).await?;
        if let Some(octets) = download {
            write_zeros(&mut send, octets).await?;
        }
    }
    send.finish()?;
    Ok(())
}

/// The N of a line `download N`.
fn download_size(line: &str) -> Option<u64> {
    line.strip_prefix("download ")?.trim().parse().ok()
}

/// Writes `octets` zero octets on `send`.
async fn write_zeros(send: &mut SendStream, mut octets: u64) -> Result<(), quinn::WriteError> {
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    while octets > 0 {
        let chunk = octets.min(ZEROS.len() as u64) as usize;
        send.write_all(&ZEROS[..chunk]).await?;
        octets -= chunk as u64;
    }
    Ok(())
}
