//! The optional Prometheus endpoint (`--metrics`): the figures of `sticky status` in the
//! Prometheus text format (0.0.4), at `GET /metrics`.
//!
//! Each scrape encodes one [`Status`] snapshot with `prometheus-client`'s encoder, through a
//! [`Collector`] that writes every family straight from the snapshot: no registry of live
//! metric objects to keep in step with the supervisor, and no hash map per scrape.

use std::{fmt, sync::Arc};

use prometheus_client::{
    collector::Collector,
    encoding::{
        DescriptorEncoder, EncodeLabelSet, EncodeMetric as _, MetricEncoder, prometheus_text,
    },
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

use super::{
    connections::{Connections, REQUEST_TIMEOUT, WhenFull},
    loader::Loader,
    protocol::{SlotState, SlotStatus, Status},
};
use crate::{accept::AcceptBackoff, limits::METRICS_CONNECTIONS};

/// Renders `status` in the Prometheus text format.
pub fn render(status: &Status) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot(status.clone())));
    let mut out = String::with_capacity(256 * status.slots.len() + 4096);
    prometheus_text::encode(&mut out, &registry).expect("writing to a String cannot fail");
    out
}

/// One status, as the collector a scrape encodes.
#[derive(Debug)]
struct Snapshot(Status);

/// A value of a family, as a counter or a gauge.
#[derive(Clone, Copy)]
enum Value {
    Counter(u64),
    CounterF(f64),
    Gauge(i64),
    GaugeF(f64),
}

impl Value {
    fn kind(self) -> MetricType {
        match self {
            Self::Counter(_) | Self::CounterF(_) => MetricType::Counter,
            Self::Gauge(_) | Self::GaugeF(_) => MetricType::Gauge,
        }
    }

    fn encode(self, encoder: MetricEncoder) -> fmt::Result {
        match self {
            Self::Counter(v) => ConstCounter::new(v).encode(encoder),
            Self::CounterF(v) => ConstCounter::new(v).encode(encoder),
            Self::Gauge(v) => ConstGauge::new(v).encode(encoder),
            Self::GaugeF(v) => ConstGauge::new(v).encode(encoder),
        }
    }
}

/// Writes one family: its descriptor (`kind` if there are no samples), then each sample.
fn family<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: impl IntoIterator<Item = (L, Value)>,
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A family without labels and one sample.
fn single(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: Value) -> fmt::Result {
    let metric = encoder.encode_descriptor(name, help, None, value.kind())?;
    value.encode(metric)
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let status = &self.0;
        let e = &mut encoder;
        let per_slot = |value: fn(&SlotStatus) -> Option<Value>| {
            status.slots.iter().filter_map(move |s| Some(([("slot", s.slot)], value(s)?)))
        };
        let (counter, gauge) = (MetricType::Counter, MetricType::Gauge);
        let info = [("version", status.loader.version.as_str())];
        let info = [info[0], ("build_id", status.loader.build_id.as_str())];
        let build = [(info, Value::Gauge(1))];
        family(e, "sticky_build_info", "The running loader's version and build id.", gauge, build)?;
        let start = Value::Gauge(status.loader.started_at_unix_secs as i64);
        single(
            e,
            "sticky_start_time_seconds",
            "When this image of the loader started (Unix time).",
            start,
        )?;
        family(
            e,
            "sticky_connections",
            "Connections the eBPF program sent to each worker slot.",
            counter,
            per_slot(|s| Some(Value::Counter(s.connections))),
        )?;
        family(
            e,
            "sticky_accept_queue",
            "Connections waiting in each slot's accept queues (TCP), not yet taken by its worker.",
            gauge,
            per_slot(|s| Some(Value::Gauge(i64::from(s.queue?)))),
        )?;
        family(
            e,
            "sticky_worker_restarts",
            "Times each slot's worker exited and was restarted.",
            counter,
            per_slot(|s| Some(Value::Counter(u64::from(s.restarts)))),
        )?;
        family(
            e,
            "sticky_worker_hangs",
            "Times each slot's worker was found hung (connections or datagrams waiting, none \
             taken) and replaced.",
            counter,
            per_slot(|s| Some(Value::Counter(u64::from(s.hangs)))),
        )?;
        family(
            e,
            "sticky_slot_in_table",
            "1 while the slot is in the lookup table, 0 while it is ejected.",
            gauge,
            per_slot(|s| Some(Value::Gauge(i64::from(s.in_table)))),
        )?;
        let states = status.slots.iter().filter_map(|s| Some((s.slot, s.state?))).flat_map(
            |(slot, current)| {
                SlotState::ALL.into_iter().map(move |state| {
                    let labels = ([("slot", slot)], [("state", state.name())]);
                    (labels, Value::Gauge(i64::from(state == current)))
                })
            },
        );
        family(
            e,
            "sticky_slot_state",
            "1 for each slot's current state (starting, ready, hung, crash-looping, stopping).",
            gauge,
            states,
        )?;
        family(
            e,
            "sticky_table_share",
            "The fraction of the lookup table's entries (of the clients) each slot owns.",
            gauge,
            per_slot(|s| Some(Value::GaugeF(s.table_share?))),
        )?;
        family(
            e,
            "sticky_worker_ready_time_seconds",
            "When each slot's current worker became ready (Unix time).",
            gauge,
            per_slot(|s| Some(Value::Gauge(s.ready_at_unix_secs? as i64))),
        )?;
        family(
            e,
            "sticky_worker_cpu_seconds",
            "CPU time (user and system) each slot's current worker has used.",
            counter,
            per_slot(|s| Some(Value::CounterF(s.cpu_secs?))),
        )?;
        family(
            e,
            "sticky_worker_resident_memory_bytes",
            "Each slot's current worker's resident memory.",
            gauge,
            per_slot(|s| Some(Value::Gauge(s.rss_bytes? as i64))),
        )?;
        let up = status.slots.iter().filter(|s| s.pid.is_some()).count() as i64;
        single(e, "sticky_workers_up", "Worker processes running.", Value::Gauge(up))?;
        single(
            e,
            "sticky_fallbacks",
            "Connections whose slot was empty and went to another live slot.",
            Value::Counter(status.fallback),
        )?;
        single(
            e,
            "sticky_passed",
            "Connections left to the kernel's choice because no slot was live.",
            Value::Counter(status.passed),
        )?;
        single(
            e,
            "sticky_unreadable",
            "Packets whose source address could not be read.",
            Value::Counter(status.unreadable),
        )?;
        if let Some(reload) = &status.last_reload {
            single(
                e,
                "sticky_last_reload_success",
                "1 if the last rolling restart replaced every worker, 0 if it stopped.",
                Value::Gauge(i64::from(reload.ok)),
            )?;
            single(
                e,
                "sticky_last_reload_timestamp_seconds",
                "When the last rolling restart ended (Unix time).",
                Value::Gauge(reload.at_unix_secs as i64),
            )?;
        }
        if let Some(quic) = &status.quic {
            family(
                e,
                "sticky_quic_datagrams",
                "QUIC datagrams, by how their worker was chosen: the connection ID, or the \
                 client's address for a short header whose ID was not routable.",
                counter,
                [
                    ([("routed_by", "connection_id")], Value::Counter(quic.routed)),
                    ([("routed_by", "unroutable")], Value::Counter(quic.unroutable)),
                ],
            )?;
            let draining = quic.generations.iter().filter(|g| g.draining_secs.is_some()).count();
            single(
                e,
                "sticky_quic_draining_workers",
                "Workers of slots' previous QUIC socket generations, draining their connections.",
                Value::Gauge(draining as i64),
            )?;
        }
        if let Some(proxies) = &status.client_address {
            family(
                e,
                "sticky_proxied_connections",
                "Trusted proxies' connections, by how their worker was chosen: the client \
                 address their header named, or the proxy's own.",
                counter,
                [
                    ([("routed_by", "header")], Value::Counter(proxies.by_header)),
                    ([("routed_by", "proxy")], Value::Counter(proxies.by_proxy)),
                ],
            )?;
            family(
                e,
                "sticky_client_address_errors",
                "Trusted proxies' connections closed because their header was broken or late.",
                counter,
                proxies
                    .errors
                    .iter()
                    .map(|(reason, n)| ([("reason", reason.as_str())], Value::Counter(*n))),
            )?;
        }
        Ok(())
    }
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
        "HTTP/1.1 {status}\r\ncontent-type: {}\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        prometheus_text::CONTENT_TYPE,
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
        let slot = |slot, pid: Option<u32>, connections| SlotStatus {
            slot,
            pid,
            restarts: 2,
            in_table: pid.is_some(),
            connections,
            ready: pid.is_some(),
            hangs: 1,
            table_share: Some(0.5),
            state: Some(if pid.is_some() { SlotState::Ready } else { SlotState::CrashLooping }),
            queue: Some(3),
            ready_at_unix_secs: pid.map(|_| 1_700_000_000),
            cpu_secs: pid.map(|_| 1.5),
            rss_bytes: pid.map(|_| 4096),
            ..Default::default()
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
            last_reload: Some(crate::control::ReloadOutcome {
                at_unix_secs: 1_700_000_001,
                ok: true,
                message: "restarted 2 workers".into(),
            }),
            loader: crate::control::LoaderInfo {
                version: "0.1.0".into(),
                build_id: "abc".into(),
                ..Default::default()
            },
            last_upgrade: None,
            client_address: Some(crate::control::ClientAddressStatus {
                proxied: 9,
                by_header: 8,
                by_proxy: 1,
                errors: [("timeout".to_owned(), 4)].into(),
            }),
            quic: Some(crate::control::QuicStatus {
                cid_len: 20,
                routed: 11,
                unroutable: 2,
                generations: vec![crate::control::QuicGeneration {
                    draining_secs: Some(1.0),
                    ..Default::default()
                }],
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
        let unroutable = "sticky_quic_datagrams_total{routed_by=\"unroutable\"} 2\n";
        assert!(text.contains(unroutable), "{text}");
        assert!(text.contains("sticky_quic_draining_workers 1\n"), "{text}");
        assert!(text.contains("sticky_build_info{version=\"0.1.0\",build_id=\"abc\"} 1\n"));
        assert!(text.contains("sticky_accept_queue{slot=\"0\"} 3\n"));
        assert!(text.contains("sticky_slot_state{slot=\"1\",state=\"crash-looping\"} 1\n"));
        assert!(text.contains("sticky_slot_state{slot=\"1\",state=\"ready\"} 0\n"));
        assert!(text.contains("sticky_table_share{slot=\"0\"} 0.5\n"));
        assert!(text.contains("sticky_worker_ready_time_seconds{slot=\"0\"} 1700000000\n"));
        assert!(!text.contains("sticky_worker_ready_time_seconds{slot=\"1\"}"));
        assert!(text.contains("sticky_worker_cpu_seconds_total{slot=\"0\"} 1.5\n"));
        assert!(text.contains("sticky_worker_resident_memory_bytes{slot=\"0\"} 4096\n"));
        assert!(text.contains("sticky_last_reload_success 1\n"));
        assert!(text.contains("sticky_last_reload_timestamp_seconds 1700000001\n"));
    }
}
