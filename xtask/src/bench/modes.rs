//! The modes the benchmark measures: what serves (sticky's dispatch modes, plain
//! SO_REUSEPORT, proxies, the seed), with which workers, under which load.

use std::time::Duration;

/// A way of dispatching connections to workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// sticky's eBPF program.
    Kernel,
    /// Plain SO_REUSEPORT (`--dispatch none`): the ceiling for kernel dispatch, not sticky.
    Reuseport,
    /// sticky's userspace dispatch: the loader accepts and passes fds to the workers.
    Userspace,
    /// nginx with `hash $remote_addr consistent`.
    Nginx,
    /// haproxy with `balance source` and `hash-type consistent`.
    Haproxy,
    /// sticky's eBPF program, Node workers.
    KernelNode,
    /// Plain SO_REUSEPORT, Node workers.
    ReuseportNode,
    /// npm sticky-session 1.1.2 (a Node master hands connections to Node workers).
    Seed,
    /// nginx in front of Node workers.
    NginxNode,
    /// haproxy in front of Node workers.
    HaproxyNode,
    /// sticky's eBPF program with a trusted proxy that sends nothing: the direct path's cost
    /// with `--trusted-proxy` set.
    KernelTrusted,
    /// Every client through a trusted proxy (a PROXY header before each request): the program
    /// sends each connection to the loader, which reads the header and passes it on.
    Proxied,
    /// The same through userspace dispatch, which reads the header of every connection.
    ProxiedUserspace,
    /// UDP (`--listen udp://`): sticky's eBPF program picks the worker for each datagram.
    UdpKernel,
    /// UDP with plain SO_REUSEPORT (`--dispatch none`): the ceiling for `UdpKernel`.
    UdpReuseport,
    /// UDP through nginx's `stream` module (`hash $remote_addr consistent`).
    UdpNginx,
    /// UDP with `--quic`: each datagram a QUIC short header whose connection ID names a slot,
    /// routed by it.
    QuicKernel,
    /// QUIC handshakes: a new quinn connection (and one exchange) per request, to
    /// `sticky-example-quic` workers under `--quic`.
    QuicHandshakes,
    /// The same on plain SO_REUSEPORT (`--dispatch none`): the workers mint random CIDs.
    QuicHandshakesReuseport,
    /// One quinn connection downloading a bounded amount from a `sticky-example-quic` worker
    /// under `--quic`: bytes per second, not connections.
    QuicBytes,
    /// The same on plain SO_REUSEPORT.
    QuicBytesReuseport,
}

impl Mode {
    /// The mode's name in tables and files.
    pub fn name(self) -> &'static str {
        match self {
            Self::Kernel => "kernel",
            Self::Reuseport => "reuseport",
            Self::Userspace => "userspace",
            Self::Nginx => "nginx",
            Self::Haproxy => "haproxy",
            Self::KernelNode => "kernel-node",
            Self::ReuseportNode => "reuseport-node",
            Self::Seed => "seed",
            Self::NginxNode => "nginx-node",
            Self::HaproxyNode => "haproxy-node",
            Self::KernelTrusted => "kernel-trusted",
            Self::Proxied => "proxied",
            Self::ProxiedUserspace => "proxied-userspace",
            Self::UdpKernel => "udp-kernel",
            Self::UdpReuseport => "udp-reuseport",
            Self::UdpNginx => "udp-nginx",
            Self::QuicKernel => "quic-kernel",
            Self::QuicHandshakes => "quic-handshakes",
            Self::QuicHandshakesReuseport => "quic-handshakes-reuseport",
            Self::QuicBytes => "quic-bytes",
            Self::QuicBytesReuseport => "quic-bytes-reuseport",
        }
    }

    /// Whether each request comes with a PROXY header.
    pub fn proxied(self) -> bool {
        matches!(self, Self::Proxied | Self::ProxiedUserspace)
    }

    /// Whether the load is datagrams (to UDP port 3900) rather than connections.
    pub fn udp(self) -> bool {
        matches!(self, Self::UdpKernel | Self::UdpReuseport | Self::UdpNginx | Self::QuicKernel)
    }

    /// Whether the workers are `sticky-example-quic` (quinn) and the load real QUIC clients.
    pub fn quic_example(self) -> bool {
        matches!(
            self,
            Self::QuicHandshakes
                | Self::QuicHandshakesReuseport
                | Self::QuicBytes
                | Self::QuicBytesReuseport
        )
    }

    /// Whether the mode measures bytes per second through one connection.
    pub fn throughput(self) -> bool {
        matches!(self, Self::QuicBytes | Self::QuicBytesReuseport)
    }

    /// Whether the workers are the Node handler rather than the Rust demo worker.
    pub fn node(self) -> bool {
        matches!(
            self,
            Self::KernelNode
                | Self::ReuseportNode
                | Self::Seed
                | Self::NginxNode
                | Self::HaproxyNode
        )
    }

    /// How long to load the server before measuring: Node's JIT needs a few seconds under load
    /// to reach its steady speed, the Rust worker none.
    pub fn warm_up(self) -> Duration {
        if self.node() { Duration::from_secs(3) } else { Duration::from_secs(1) }
    }
}
