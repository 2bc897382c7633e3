//! A listen address and its transport: `ADDR:PORT` (TCP), `udp://ADDR:PORT` (UDP).

use std::{fmt, net::SocketAddr};

use serde::{Deserialize, Serialize};

/// The transport of a listen address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// TCP: one listening socket per slot, connections dispatched once each.
    Tcp,
    /// UDP: one bound socket per slot, datagrams dispatched one by one.
    Udp,
}

/// Where sticky listens: a socket address and its transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Listen {
    /// TCP or UDP.
    pub transport: Transport,
    /// The address every slot's socket binds.
    pub address: SocketAddr,
}

impl Listen {
    /// A TCP listen address.
    pub fn tcp(address: SocketAddr) -> Self {
        Self { transport: Transport::Tcp, address }
    }

    /// A UDP listen address.
    pub fn udp(address: SocketAddr) -> Self {
        Self { transport: Transport::Udp, address }
    }

    /// Whether it is UDP.
    pub fn is_udp(&self) -> bool {
        self.transport == Transport::Udp
    }

    /// `ADDR:PORT`, `tcp://ADDR:PORT` or `udp://ADDR:PORT`; `None` if it is none of them.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        if let Some(address) = text.strip_prefix("udp://") {
            return address.parse().ok().map(Self::udp);
        }
        text.strip_prefix("tcp://").unwrap_or(text).parse().ok().map(Self::tcp)
    }

    /// The name of its sockets in a worker's `LISTEN_FDNAMES`: `sticky-PORT` for TCP (as
    /// before UDP), `udp-PORT` for UDP. Names are colon-separated there, so none may hold a
    /// colon (nor may systemd's): not even an IPv6 address.
    pub fn fd_name(&self) -> String {
        match self.transport {
            Transport::Tcp => format!("sticky-{}", self.address.port()),
            Transport::Udp => format!("udp-{}", self.address.port()),
        }
    }
}

impl fmt::Display for Listen {
    /// As the options write it: `ADDR:PORT` for TCP, `udp://ADDR:PORT` for UDP.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.transport {
            Transport::Tcp => write!(f, "{}", self.address),
            Transport::Udp => write!(f, "udp://{}", self.address),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_is_the_default_and_udp_is_named() {
        let tcp = Listen::parse("127.0.0.1:3000").unwrap();
        assert_eq!(tcp, Listen::tcp("127.0.0.1:3000".parse().unwrap()));
        assert_eq!(Listen::parse("tcp://127.0.0.1:3000"), Some(tcp));
        let udp = Listen::parse("udp://[::]:53").unwrap();
        assert!(udp.is_udp());
        assert_eq!(udp.to_string(), "udp://[::]:53");
        assert_eq!(udp.fd_name(), "udp-53");
        assert_eq!(tcp.fd_name(), "sticky-3000");
        assert_eq!(Listen::parse("udp:/127.0.0.1:53"), None);
        assert_eq!(Listen::parse("quic://127.0.0.1:443"), None);
    }
}
