//! Behind a load balancer (docs/deployment.md, section 5): real HAProxy and nginx in front of
//! sticky, which trusts their address (`--trusted-proxy 127.0.0.1`) and reads the client's
//! address from the PROXY header or X-Forwarded-For they send. A client reaches the same worker
//! through the proxy as directly from its own address; a client that is not a trusted proxy is
//! routed by its own address, whatever header it sends; a reload under a load through HAProxy
//! fails nothing.

use std::net::{IpAddr, SocketAddr};

use sticky_tests::{
    BinaryDir, Proxy, Sticky, client_v4, eventually, for_each_client, get, in_netns, proxy_v1,
    request_after,
};
use sticky_user::control::ClientAddressStatus;

/// Where sticky listens; its trusted proxies connect from 127.0.0.1.
const STICKY: &str = "127.0.0.1:3000";
/// Where the proxy in front listens.
const PROXY: &str = "127.0.0.1:8000";
const WORKERS: usize = 4;
/// Client addresses (127.16.0.1 …: not the trusted 127.0.0.1).
const CLIENTS: u32 = 500;
/// Requests through the proxy per client, each on a new connection.
const REQUESTS: u64 = 2;

fn address(text: &str) -> SocketAddr {
    text.parse().expect("an address")
}

/// The arguments of sticky with 4 demo workers on [`STICKY`], trusting 127.0.0.1's
/// `client_address` header.
fn behind_a_proxy(client_address: &str) -> Vec<&str> {
    let args = ["--listen", STICKY, "--workers", "4", "--trusted-proxy", "127.0.0.1"];
    [&args[..], &["--client-address", client_address]].concat()
}

/// sticky as [`behind_a_proxy`] says, serving.
fn sticky_behind_a_proxy(client_address: &str) -> Sticky {
    Sticky::serving(&behind_a_proxy(client_address), WORKERS)
}

/// The loader's counts of trusted proxies' connections.
fn counts(sticky: &Sticky) -> ClientAddressStatus {
    sticky.status().client_address.expect("client_address in the status")
}

/// Each of [`CLIENTS`] clients connects to sticky directly, then [`REQUESTS`] times through
/// the proxy at [`PROXY`]: every proxied request reaches the worker (slot and pid) of its
/// direct one, and that worker saw the client's address in what the proxy sent. All workers
/// serve; the loader routed each proxied connection by its header, and closed none.
fn assert_each_client_on_its_direct_worker(sticky: &Sticky, what: &str) {
    let before = counts(sticky);
    let clients: Vec<IpAddr> = (0..CLIENTS).map(client_v4).collect();
    let workers = for_each_client(&clients, 4, |client| {
        let direct = get(client, address(STICKY));
        assert_eq!(direct.text.lines().last(), Some(format!("worker: {}", direct.worker).as_str()));
        for _ in 0..REQUESTS {
            let proxied = get(client, address(PROXY));
            assert_eq!(
                (proxied.worker, proxied.pid),
                (direct.worker, direct.pid),
                "{what}: {client} directly and through the proxy"
            );
            let shown = format!("worker: {} client: {client}\n", direct.worker);
            assert!(proxied.text.ends_with(&shown), "{what}: {client}: {}", proxied.text);
        }
        direct.worker
    });
    let mut served = [0; WORKERS];
    for &worker in workers.values() {
        served[worker as usize] += 1;
    }
    assert!(served.iter().all(|&n| n > 0), "{what}: an idle worker: {served:?}");
    let after = counts(sticky);
    let proxied = u64::from(CLIENTS) * REQUESTS;
    assert_eq!(after.by_header - before.by_header, proxied, "{what}: {after:?}");
    assert_eq!(after.by_proxy, before.by_proxy, "{what}: {after:?}");
    assert!(after.proxied - before.proxied >= proxied, "{what}: {after:?}");
    assert!(after.errors.values().all(|&n| n == 0), "{what}: {after:?}");
    eprintln!("{what}: {CLIENTS} clients on their direct worker, {served:?} clients per worker");
}

#[test]
fn haproxy_send_proxy_v2_keeps_each_client_on_its_direct_worker() {
    in_netns(|| {
        let sticky = sticky_behind_a_proxy("proxy-protocol");
        // Two servers, both sticky, taken in turn: a client's connections come over both.
        let haproxy = Proxy::haproxy(
            address(PROXY),
            &format!(
                "  balance roundrobin\n  server s1 {STICKY} send-proxy-v2\n  \
                 server s2 {STICKY} send-proxy-v2"
            ),
        );
        assert_each_client_on_its_direct_worker(&sticky, "HAProxy send-proxy-v2");
        haproxy.stop();
        sticky.stop_cleanly();
    });
}

#[test]
fn nginx_stream_proxy_protocol_keeps_each_client_on_its_direct_worker() {
    in_netns(|| {
        let sticky = sticky_behind_a_proxy("proxy-protocol");
        let nginx = Proxy::nginx_stream(
            address(PROXY),
            &format!(
                "  server {{\n    listen {PROXY};\n    proxy_pass {STICKY};\n    proxy_protocol on;\n  }}"
            ),
        );
        assert_each_client_on_its_direct_worker(&sticky, "nginx stream, proxy_protocol on");
        nginx.stop();
        sticky.stop_cleanly();
    });
}

#[test]
fn nginx_http_x_forwarded_for_keeps_each_client_on_its_direct_worker() {
    in_netns(|| {
        let sticky = sticky_behind_a_proxy("x-forwarded-for");
        // No `keepalive` in the upstream: one connection per request, from one client.
        let nginx = Proxy::nginx_http(
            address(PROXY),
            &format!(
                "  upstream sticky {{ server {STICKY}; }}\n  server {{\n    listen {PROXY};\n    \
                 location / {{\n      proxy_pass http://sticky;\n      \
                 proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n    }}\n  }}"
            ),
        );
        assert_each_client_on_its_direct_worker(&sticky, "nginx http, X-Forwarded-For");
        nginx.stop();
        sticky.stop_cleanly();
    });
}

#[test]
fn an_untrusted_client_is_routed_by_its_own_address_whatever_header_it_sends() {
    in_netns(|| {
        let sticky = sticky_behind_a_proxy("proxy-protocol");
        let server = address(STICKY);
        let claimed = IpAddr::from([1, 2, 3, 4]);
        let header = proxy_v1(claimed, server);
        // Where 1.2.3.4 goes when the trusted proxy names it.
        let trusted = request_after(IpAddr::from([127, 0, 0, 1]), server, &header);
        let named = trusted.expect("the trusted proxy's request").worker;
        let before = counts(&sticky);
        let mut elsewhere = 0;
        for client in (0..100).map(client_v4) {
            let direct = get(client, server);
            let claiming = request_after(client, server, &header)
                .unwrap_or_else(|err| panic!("{client} sending a PROXY header: {err}"));
            assert_eq!((claiming.worker, claiming.pid), (direct.worker, direct.pid), "{client}");
            // The worker received the header: the demo shows what it claims.
            assert!(claiming.text.ends_with(&format!("client: {claimed}\n")), "{claiming:?}");
            elsewhere += usize::from(direct.worker != named);
        }
        // Had the header been believed, these clients would have gone to 1.2.3.4's worker.
        assert!(elsewhere > 0, "every client's own worker is 1.2.3.4's ({named})");
        // The program never sent them to the loader, which counted nothing.
        assert_eq!(counts(&sticky), before);
        eprintln!("untrusted: 100 clients on their own worker, {elsewhere} not on {claimed}'s");
        sticky.stop_cleanly();
    });
}

#[test]
fn reload_under_a_load_through_haproxy_fails_nothing() {
    in_netns(|| {
        let sticky = sticky_behind_a_proxy("proxy-protocol");
        // With health checks, which HAProxy sends on the traffic port with a PROXY v2 LOCAL
        // header: the proxy's own connections.
        let server = format!("  server s1 {STICKY} send-proxy-v2 check inter 100ms");
        let haproxy = Proxy::haproxy(address(PROXY), &server);
        let before = counts(&sticky);
        sticky.reload_under_load(address(PROXY), "reload through HAProxy");
        eventually("HAProxy's checks are routed by its own address", || {
            counts(&sticky).by_proxy > before.by_proxy
        });
        let after = counts(&sticky);
        // The load went through the loader's header path, all of it.
        assert!(after.by_header - before.by_header > sticky_tests::MIN_SUCCEEDED as u64);
        assert!(after.errors.values().all(|&n| n == 0), "{after:?}");
        eprintln!("reload through HAProxy: {after:?}");
        haproxy.stop();
        sticky.stop_cleanly();
    });
}

#[test]
fn an_upgrade_under_a_load_through_haproxy_fails_nothing() {
    in_netns(|| {
        let binary = BinaryDir::new("upgrade-proxied");
        let mut sticky = Sticky::start_binary(&binary.sticky(), &behind_a_proxy("proxy-protocol"));
        sticky.wait_until_serving(WORKERS);
        let haproxy =
            Proxy::haproxy(address(PROXY), &format!("  server s1 {STICKY} send-proxy-v2"));
        // The loader stops accepting, lets what it accepted reach the workers, and hands its
        // own sockets and the workers' handoff sockets to the new image.
        sticky.upgrade_under_load(address(PROXY), "upgrade through HAProxy");
        let after = counts(&sticky);
        // Counted by the new image: the load went on through the loader's header path.
        assert!(after.by_header > 0, "{after:?}");
        assert!(after.errors.values().all(|&n| n == 0), "{after:?}");
        eprintln!("upgrade through HAProxy: {after:?}");
        haproxy.stop();
        sticky.stop_cleanly();
    });
}
