//! What a trusted proxy sends wrong: a malformed or oversized header, a header cut short by
//! FIN, nothing at all. Each such connection is closed unanswered and counted by reason, in
//! `sticky status --json` and in `/metrics`; well-formed headers that name no client are routed
//! by the proxy's own address; 1000 idle proxy connections hold up no one, and are closed at
//! their timeout.

use std::{
    collections::BTreeMap,
    io::{self, Read as _, Write as _},
    net::{IpAddr, Shutdown, SocketAddr, TcpStream},
};

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use sticky_tests::{
    Response, Sticky, client_v4, connect, eventually, get, in_netns, metrics, privileges::open_fds,
    proxy_v1, read_response,
};
use sticky_user::control::ClientAddressStatus;

const SERVER: &str = "127.0.0.1:3000";
const METRICS: &str = "127.0.0.1:9100";
/// The trusted proxy's address.
const PROXY: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
const REQUEST: &str = "GET / HTTP/1.1\r\nhost: sticky\r\nconnection: close\r\n\r\n";
/// The PROXY protocol v2 signature.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

fn address(text: &str) -> SocketAddr {
    text.parse().expect("an address")
}

/// sticky with 4 demo workers on [`SERVER`], trusting 127.0.0.1's `source` header, with
/// `/metrics` on [`METRICS`] and `extra` options.
fn sticky_trusting_127_0_0_1(source: &str, extra: &[&str]) -> Sticky {
    let args = ["--listen", SERVER, "--workers", "4", "--metrics", "9100"];
    let args = [&args[..], &["--trusted-proxy", "127.0.0.1", "--client-address", source], extra];
    Sticky::serving(&args.concat(), 4)
}

/// A connection from `source` that sends `bytes`, then FIN if `finish`.
fn sending(source: IpAddr, bytes: &[u8], finish: bool) -> TcpStream {
    let mut stream = connect(source, address(SERVER)).expect("connect");
    // The loader may close (reset) the connection before all of it is sent.
    let _ = stream.write_all(bytes);
    if finish {
        let _ = stream.shutdown(Shutdown::Write);
    }
    stream
}

/// Sends `bytes` from `source` and reads the answer.
fn ask(source: IpAddr, bytes: &[u8]) -> io::Result<Response> {
    read_response(&mut sending(source, bytes, false))
}

/// Asserts that `stream` is closed (FIN or reset) without a byte of answer.
fn assert_closed_unanswered(mut stream: TcpStream, what: &str) {
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) => {
            assert!(answer.is_empty(), "{what}: answered {:?}", String::from_utf8_lossy(&answer))
        }
        Err(err) if err.kind() == io::ErrorKind::ConnectionReset => {}
        Err(err) => panic!("{what}: {err} (a read timeout: the loader never closed it)"),
    }
}

/// `sticky status --json`'s counts of trusted proxies' connections.
fn status_json(sticky: &Sticky) -> ClientAddressStatus {
    sticky.status_json().client_address.expect("client_address in the status")
}

/// Asserts the counts in `sticky status --json` and in `/metrics`: connections routed by
/// their header and by the proxy's address, and those closed by reason.
fn assert_counted(sticky: &Sticky, by_header: u64, by_proxy: u64, errors: &[(&str, u64)]) {
    let mut expected: BTreeMap<String, u64> =
        ["closed", "malformed", "overloaded", "oversized", "timeout"].map(|r| (r.into(), 0)).into();
    expected.extend(errors.iter().map(|&(reason, n)| (reason.to_owned(), n)));
    let status = status_json(sticky);
    assert_eq!((status.by_header, status.by_proxy), (by_header, by_proxy), "{status:?}");
    assert_eq!(status.errors, expected, "sticky status --json");
    let samples = metrics(address(METRICS));
    for (reason, count) in &expected {
        let name = format!("sticky_client_address_errors_total{{reason=\"{reason}\"}}");
        assert_eq!(samples.get(&name), Some(count), "/metrics: {name}");
    }
    let routed =
        |by: &str| samples[&format!("sticky_proxied_connections_total{{routed_by=\"{by}\"}}")];
    assert_eq!((routed("header"), routed("proxy")), (by_header, by_proxy), "/metrics");
    eprintln!("counted: {by_header} by header, {by_proxy} by proxy, errors {expected:?}");
}

#[test]
fn bad_proxy_protocol_headers_are_closed_and_counted() {
    in_netns(|| {
        let sticky =
            sticky_trusting_127_0_0_1("proxy-protocol", &["--client-address-timeout", "1"]);
        let bad_address = format!("PROXY TCP4 not-an-address 127.0.0.1 40000 3000\r\n{REQUEST}");
        let long_line = format!("PROXY TCP4 {}", "1".repeat(120));
        let mut long_v2 = V2_SIGNATURE.to_vec();
        long_v2.extend([0x21, 0x11, 0x04, 0x00]);
        long_v2.extend([0; 1024]);
        let cases: [(&str, &[u8], bool); 6] = [
            ("a malformed v1 line", bad_address.as_bytes(), false),
            ("no PROXY header at all", REQUEST.as_bytes(), false),
            ("a v1 line longer than 107 bytes", long_line.as_bytes(), false),
            ("a v2 header longer than 232 bytes", &long_v2, false),
            ("FIN before any byte", b"", true),
            ("FIN within the header", b"PROXY TCP4 1.2", true),
        ];
        for (what, bytes, finish) in cases {
            assert_closed_unanswered(sending(PROXY, bytes, finish), what);
        }
        assert_closed_unanswered(sending(PROXY, b"", false), "nothing, past the timeout");

        // Well-formed: a client named, and none (`PROXY UNKNOWN`: the proxy's own connection,
        // routed by 127.0.0.1 like a header naming 127.0.0.1).
        let client = client_v4(7);
        let named = ask(PROXY, &[proxy_v1(client, address(SERVER)), REQUEST.into()].concat());
        assert_eq!(named.expect("a named client").pid, get(client, address(SERVER)).pid);
        let local = ask(PROXY, &[proxy_v1(PROXY, address(SERVER)), REQUEST.into()].concat());
        let unknown = ask(PROXY, format!("PROXY UNKNOWN\r\n{REQUEST}").as_bytes());
        assert_eq!(unknown.expect("PROXY UNKNOWN").pid, local.expect("127.0.0.1 named").pid);

        let errors = [("malformed", 2), ("oversized", 2), ("closed", 2), ("timeout", 1)];
        assert_counted(&sticky, 2, 1, &errors);
        sticky.stop_cleanly();
    });
}

#[test]
fn bad_x_forwarded_for_heads_are_closed_and_counted() {
    in_netns(|| {
        let sticky =
            sticky_trusting_127_0_0_1("x-forwarded-for", &["--client-address-timeout", "1"]);
        let with = |header: &str| format!("GET / HTTP/1.1\r\nhost: sticky\r\n{header}\r\n\r\n");
        let malformed = with("x-forwarded-for: not-an-address");
        let oversized = with(&format!("x-padding: {}", "a".repeat(9000)));
        for (what, bytes) in
            [("a malformed X-Forwarded-For", &malformed), ("a 9 KiB head", &oversized)]
        {
            assert_closed_unanswered(sending(PROXY, bytes.as_bytes(), false), what);
        }
        let unfinished = "GET / HTTP/1.1\r\nhost: sticky\r\n";
        assert_closed_unanswered(sending(PROXY, unfinished.as_bytes(), false), "past the timeout");

        // The rightmost hop that is not a trusted proxy is the client: not a spoofed hop left
        // of it, nor the trusted proxy right of it.
        let client = client_v4(7);
        let direct = get(client, address(SERVER));
        let chain = with(&format!("x-forwarded-for: 10.9.9.9, {client}, 127.0.0.1"));
        assert_eq!(ask(PROXY, chain.as_bytes()).expect("a chain").pid, direct.pid);
        // No X-Forwarded-For: routed by the proxy's own address, like one naming it.
        let local = ask(PROXY, with("x-forwarded-for: 127.0.0.1").as_bytes());
        let plain = ask(PROXY, with("x-other: 1").as_bytes());
        assert_eq!(plain.expect("no header").pid, local.expect("127.0.0.1 named").pid);

        assert_counted(&sticky, 2, 1, &[("malformed", 1), ("oversized", 1), ("timeout", 1)]);
        sticky.stop_cleanly();
    });
}

#[test]
fn idle_proxy_connections_hold_up_no_one_and_are_closed_at_their_timeout() {
    in_netns(|| {
        const IDLE: usize = 1000;
        // This test holds the idle connections itself.
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
        // A timeout long enough to see them all open; the default is 5 s.
        let sticky =
            sticky_trusting_127_0_0_1("proxy-protocol", &["--client-address-timeout", "10"]);
        let loader = sticky.pid();
        let before = open_fds(loader);
        let idle: Vec<TcpStream> = (0..IDLE).map(|_| sending(PROXY, b"", false)).collect();
        eventually("the loader holds the idle connections", || open_fds(loader) >= before + IDLE);

        // Meanwhile a direct client and a proxied one are answered, by the same worker.
        let client = client_v4(7);
        let direct = get(client, address(SERVER));
        let proxied = ask(PROXY, &[proxy_v1(client, address(SERVER)), REQUEST.into()].concat());
        assert_eq!(proxied.expect("a proxied client while 1000 wait").pid, direct.pid);
        // They were all still waiting: none has timed out, the loader holds them all.
        let held = open_fds(loader);
        assert!(held >= before + IDLE, "the loader holds {held} fds, {before} before");
        assert_eq!(status_json(&sticky).errors["timeout"], 0);

        eventually("the idle connections time out", || {
            status_json(&sticky).errors["timeout"] == IDLE as u64
        });
        for stream in idle {
            assert_closed_unanswered(stream, "an idle proxy connection");
        }
        eventually("the loader's fds are back", || open_fds(loader) <= before + 2);
        assert_counted(&sticky, 1, 0, &[("timeout", IDLE as u64)]);
        eprintln!(
            "{IDLE} idle: the loader held {held} fds ({before} before), then {}",
            open_fds(loader)
        );
        sticky.stop_cleanly();
    });
}
