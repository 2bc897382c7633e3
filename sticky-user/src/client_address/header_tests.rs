use super::*;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn proxy(bytes: &[u8]) -> Reading {
    read(AddressSource::ProxyProtocol, bytes, |_| false)
}

fn v2(command: u8, family: u8, addresses: &[u8]) -> Vec<u8> {
    let mut header = V2_SIGNATURE.to_vec();
    header.extend([command, family]);
    header.extend((addresses.len() as u16).to_be_bytes());
    header.extend(addresses);
    header
}

#[test]
fn proxy_protocol_v1() {
    let line = b"PROXY TCP4 192.0.2.7 198.51.100.1 5555 80\r\nGET / HTTP/1.1\r\n";
    assert_eq!(proxy(line), Reading::Client(ip("192.0.2.7")));
    let v6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 5555 80\r\n";
    assert_eq!(proxy(v6), Reading::Client(ip("2001:db8::7")));
    assert_eq!(proxy(b"PROXY UNKNOWN\r\n"), Reading::Proxy);
    for cut in [1, 3, 6, 20, line.len() - 20] {
        assert_eq!(proxy(&line[..cut]), Reading::Incomplete, "cut at {cut}");
    }
    let garbage = b"PROXY TCP4 not.an.address 198.51.100.1 5555 80\r\n";
    assert_eq!(proxy(garbage), Reading::Invalid(Invalid::Malformed));
    let mut long = b"PROXY TCP4 ".to_vec();
    long.resize(V1_MAX, b'1');
    assert_eq!(proxy(&long), Reading::Invalid(Invalid::Oversized));
}

#[test]
fn proxy_protocol_v2() {
    let mut v4 = vec![192, 0, 2, 7, 198, 51, 100, 1];
    v4.extend([0x15, 0xb3, 0, 80]);
    let header = v2(0x21, 0x11, &v4);
    assert_eq!(proxy(&header), Reading::Client(ip("192.0.2.7")));
    let mut with_data = header.clone();
    with_data.extend(b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(proxy(&with_data), Reading::Client(ip("192.0.2.7")));
    for cut in [1, 12, 15, header.len() - 1] {
        assert_eq!(proxy(&header[..cut]), Reading::Incomplete, "cut at {cut}");
    }
    let mut v6 =
        ip("2001:db8::7").to_string().parse::<std::net::Ipv6Addr>().unwrap().octets().to_vec();
    v6.extend([0; 16]);
    v6.extend([0, 1, 0, 80]);
    assert_eq!(proxy(&v2(0x21, 0x21, &v6)), Reading::Client(ip("2001:db8::7")));
    // LOCAL: a health check of the proxy itself.
    assert_eq!(proxy(&v2(0x20, 0x00, &[])), Reading::Proxy);
    assert_eq!(proxy(&v2(0x21, 0x11, &[0; 300])), Reading::Invalid(Invalid::Oversized));
    assert_eq!(proxy(&v2(0x99, 0x11, &v4)), Reading::Invalid(Invalid::Malformed));
}

#[test]
fn no_proxy_header_is_malformed() {
    assert_eq!(proxy(b"GET / HTTP/1.1\r\n"), Reading::Invalid(Invalid::Malformed));
    assert_eq!(proxy(b"\r\n\r\nX"), Reading::Invalid(Invalid::Malformed));
}

fn xff(head: &str, trusted: &[&str]) -> Reading {
    let trusted: Vec<IpAddr> = trusted.iter().map(|t| ip(t)).collect();
    read(AddressSource::XForwardedFor, head.as_bytes(), |a| trusted.contains(&a))
}

#[test]
fn x_forwarded_for_is_read_from_the_right() {
    let head = "GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 6.6.6.6, 192.0.2.7\r\n\r\n";
    assert_eq!(xff(head, &[]), Reading::Client(ip("192.0.2.7")));
    // A chain of trusted proxies is skipped; what a client wrote itself (6.6.6.6 on the left)
    // is believed only if every hop after it is trusted.
    let chain = "GET / HTTP/1.1\r\nX-Forwarded-For: 6.6.6.6, 192.0.2.7, 10.0.0.2\r\n\r\n";
    assert_eq!(xff(chain, &["10.0.0.2"]), Reading::Client(ip("192.0.2.7")));
    let split =
        "GET / HTTP/1.1\r\nx-forwarded-for: 192.0.2.9\r\nX-Forwarded-For: [2001:db8::5]:80\r\n\r\n";
    assert_eq!(xff(split, &[]), Reading::Client(ip("2001:db8::5")));
    let port = "GET / HTTP/1.1\r\nX-Forwarded-For: 192.0.2.9:4711\r\n\r\n";
    assert_eq!(xff(port, &[]), Reading::Client(ip("192.0.2.9")));
    assert_eq!(xff("GET / HTTP/1.1\r\nHost: x\r\n\r\n", &[]), Reading::Proxy);
    assert_eq!(xff("GET / HTTP/1.1\r\nX-Forwarded-For: unknown\r\n\r\n", &[]), Reading::Proxy);
    assert_eq!(xff("GET / HTTP/1.1\r\nHost: x\r\n", &[]), Reading::Incomplete);
    let bad = "GET / HTTP/1.1\r\nX-Forwarded-For: 192.0.2.300\r\n\r\n";
    assert_eq!(xff(bad, &[]), Reading::Invalid(Invalid::Malformed));
    assert_eq!(xff("\x16\x03\x01 binary", &[]), Reading::Invalid(Invalid::Malformed));
    let long = format!("GET / HTTP/1.1\r\nX-Long: {}", "a".repeat(HTTP_HEAD_MAX));
    assert_eq!(xff(&long, &[]), Reading::Invalid(Invalid::Oversized));
}

#[test]
fn forwarded_takes_the_for_parameter() {
    let read = |head: &str| read(AddressSource::Forwarded, head.as_bytes(), |_| false);
    let head =
        "GET / HTTP/1.1\r\nForwarded: for=6.6.6.6, for=\"[2001:db8::17]:4711\";proto=http\r\n\r\n";
    assert_eq!(read(head), Reading::Client(ip("2001:db8::17")));
    let v4 = "GET / HTTP/1.1\r\nForwarded: proto=https;For=192.0.2.60:80;by=10.0.0.1\r\n\r\n";
    assert_eq!(read(v4), Reading::Client(ip("192.0.2.60")));
    assert_eq!(read("GET / HTTP/1.1\r\nForwarded: for=_hidden\r\n\r\n"), Reading::Proxy);
    assert_eq!(read("GET / HTTP/1.1\r\nForwarded: by=10.0.0.1\r\n\r\n"), Reading::Proxy);
    let bad = "GET / HTTP/1.1\r\nForwarded: for=nonsense\r\n\r\n";
    assert_eq!(read(bad), Reading::Invalid(Invalid::Malformed));
}

#[test]
fn the_demo_believes_any_header() {
    assert_eq!(claimed(b"PROXY TCP4 192.0.2.7 198.51.100.1 5555 80\r\n"), Some(ip("192.0.2.7")));
    let head = b"GET / HTTP/1.1\r\nX-Forwarded-For: 192.0.2.8\r\n\r\n";
    assert_eq!(claimed(head), Some(ip("192.0.2.8")));
    let head = b"GET / HTTP/1.1\r\nForwarded: for=192.0.2.9\r\n\r\n";
    assert_eq!(claimed(head), Some(ip("192.0.2.9")));
    assert_eq!(claimed(b"GET / HTTP/1.1\r\n\r\n"), None);
}
