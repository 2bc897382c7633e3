//! The optional Prometheus endpoint (`--metrics`): the figures of `sticky status` in the text
//! exposition format, at `GET /metrics`.

use std::{fmt::Write as _, sync::Arc};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

use super::{
    connections::{Connections, REQUEST_TIMEOUT, WhenFull},
    loader::Loader,
    protocol::{SlotStatus, Status},
};
use crate::{accept::AcceptBackoff, limits::METRICS_CONNECTIONS};

/// Renders `status` in the Prometheus text format.
fn render(status: &Status) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, u64)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let per_slot = |value: fn(&SlotStatus) -> u64| {
        status.slots.iter().map(|s| (format!("{{slot=\"{}\"}}", s.slot), value(s))).collect()
    };
    family(
        "sticky_connections_total",
        "counter",
        "Connections the eBPF program sent to each worker slot.",
        per_slot(|s| s.connections),
    );
    family(
        "sticky_worker_restarts_total",
        "counter",
        "Times each slot's worker exited and was restarted.",
        per_slot(|s| u64::from(s.restarts)),
    );
    family(
        "sticky_worker_hangs_total",
        "counter",
        "Times each slot's worker was found hung (connections or datagrams waiting, none taken) and replaced.",
        per_slot(|s| u64::from(s.hangs)),
    );
    family(
        "sticky_slot_in_table",
        "gauge",
        "1 while the slot is in the lookup table, 0 while it is ejected.",
        per_slot(|s| u64::from(s.in_table)),
    );
    let up = status.slots.iter().filter(|s| s.pid.is_some()).count() as u64;
    family("sticky_workers_up", "gauge", "Worker processes running.", vec![(String::new(), up)]);
    family(
        "sticky_fallbacks_total",
        "counter",
        "Connections whose slot was empty and went to another live slot.",
        vec![(String::new(), status.fallback)],
    );
    family(
        "sticky_passed_total",
        "counter",
        "Connections left to the kernel's choice because no slot was live.",
        vec![(String::new(), status.passed)],
    );
    family(
        "sticky_unreadable_total",
        "counter",
        "Packets whose source address could not be read.",
        vec![(String::new(), status.unreadable)],
    );
    if let Some(proxies) = &status.client_address {
        family(
            "sticky_proxied_connections_total",
            "counter",
            "Trusted proxies' connections, by how their worker was chosen: the client address \
             their header named, or the proxy's own.",
            vec![
                ("{routed_by=\"header\"}".into(), proxies.by_header),
                ("{routed_by=\"proxy\"}".into(), proxies.by_proxy),
            ],
        );
        family(
            "sticky_client_address_errors_total",
            "counter",
            "Trusted proxies' connections closed because their header was broken or late.",
            proxies
                .errors
                .iter()
                .map(|(reason, n)| (format!("{{reason=\"{reason}\"}}"), *n))
                .collect(),
        );
    }
    out
}

/// Serves `GET /metrics` on `listener` until the loader stops: at most
/// [`METRICS_CONNECTIONS`] at once (a new one closes the oldest), each request read within
/// [`REQUEST_TIMEOUT`].
pub(crate) async fn serve(listener: TcpListener, loader: Arc<impl Loader>) {
    let mut backoff = AcceptBackoff::new();
    let connections = Connections::new(METRICS_CONNECTIONS, WhenFull::CloseOldest);
    loop {
        if let Some((stream, _)) = backoff.accepted("metrics", listener.accept().await).await {
            connections.serve(answer(stream, loader.clone()));
        }
    }
}

async fn answer(mut stream: TcpStream, loader: Arc<impl Loader>) {
    let Ok(Some(head)) = tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream)).await else {
        return;
    };
    let (status, body) = match (head.starts_with(b"GET /metrics "), loader.status()) {
        (true, Ok(status)) => ("200 OK", render(&status)),
        (true, Err(err)) => ("500 Internal Server Error", format!("{err}\n")),
        (false, _) => ("404 Not Found", "try /metrics\n".to_owned()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
}

/// The request's head, up to its blank line or 8 KiB; `None` if the client closes first.
async fn read_head(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut buffer = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buffer[..n]),
        }
    }
    Some(head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DispatchMode;

    #[test]
    fn renders_every_family() {
        let slot = |slot, pid, connections| SlotStatus {
            slot,
            pid,
            uptime_secs: None,
            restarts: 2,
            in_table: pid.is_some(),
            connections,
            ready: pid.is_some(),
            status: None,
            hangs: 1,
            table_share: None,
        };
        let status = Status {
            pid: 1,
            listen: vec![],
            dispatch: DispatchMode::Kernel,
            program_ids: vec![],
            migrates: true,
            fallback: 3,
            passed: 0,
            unreadable: 0,
            slots: vec![slot(0, Some(10), 5), slot(1, None, 7)],
            last_reload: None,
            loader: Default::default(),
            last_upgrade: None,
            client_address: Some(crate::control::ClientAddressStatus {
                proxied: 9,
                by_header: 8,
                by_proxy: 1,
                errors: [("timeout".to_owned(), 4)].into(),
            }),
        };
        let text = render(&status);
        assert!(text.contains("sticky_connections_total{slot=\"1\"} 7\n"), "{text}");
        assert!(text.contains("sticky_worker_restarts_total{slot=\"0\"} 2\n"));
        assert!(text.contains("sticky_slot_in_table{slot=\"1\"} 0\n"));
        assert!(text.contains("sticky_workers_up 1\n"));
        assert!(text.contains("sticky_worker_hangs_total{slot=\"1\"} 1\n"));
        assert!(text.contains("sticky_fallbacks_total 3\n"));
        assert!(text.contains("# TYPE sticky_connections_total counter\n"));
        assert!(text.contains("sticky_proxied_connections_total{routed_by=\"header\"} 8\n"));
        assert!(text.contains("sticky_client_address_errors_total{reason=\"timeout\"} 4\n"));
    }
}
