//! Behind a load balancer: which peers are trusted proxies, and where their connections carry
//! the real client's address (`--trusted-proxy`, `--client-address`,
//! `--client-address-timeout`).

use std::{net::IpAddr, time::Duration};

use clap::ValueEnum;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use sticky_common::MAX_PROXIES;

use super::{DispatchMode, error::ConfigError};

/// Where a trusted proxy's connection carries the client's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AddressSource {
    /// A PROXY protocol header, version 1 (text) or 2 (binary), before the stream.
    ProxyProtocol,
    /// The `X-Forwarded-For` header of the first HTTP request.
    XForwardedFor,
    /// The `for=` of the `Forwarded` header (RFC 7239) of the first HTTP request.
    Forwarded,
}

/// The trusted proxies and how to read the client's address from their connections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientAddress {
    /// The proxies whose header is believed (no other peer's is).
    pub trusted: Vec<IpNet>,
    /// Where the header is.
    pub source: AddressSource,
    /// How long a proxy's connection may take to deliver the header.
    pub timeout: Duration,
}

impl ClientAddress {
    /// Whether `peer` is a trusted proxy (a v4-mapped IPv6 peer as its IPv4 address).
    pub fn trusts(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.trusted.iter().any(|net| net.contains(&peer))
    }
}

/// The default of `--client-address-timeout`.
pub const DEFAULT_CLIENT_ADDRESS_TIMEOUT: Duration = Duration::from_secs(5);

/// The options' trusted proxies, source and timeout as a [`ClientAddress`], or `None` when no
/// proxy is trusted.
pub(super) fn resolve(
    trusted: &[String],
    source: Option<AddressSource>,
    timeout: Option<f64>,
    dispatch: DispatchMode,
) -> Result<Option<ClientAddress>, ConfigError> {
    let (source, trusted) = match (source, trusted.is_empty()) {
        (None, true) => return Ok(None),
        (Some(_), true) => return Err(ConfigError::ClientAddressWithoutProxy),
        (None, false) => return Err(ConfigError::ProxyWithoutClientAddress),
        (Some(source), false) => (source, trusted),
    };
    if dispatch == DispatchMode::None {
        return Err(ConfigError::ClientAddressDispatch);
    }
    if trusted.len() > MAX_PROXIES as usize {
        return Err(ConfigError::TooManyProxies(trusted.len()));
    }
    let trusted = trusted.iter().map(|text| parse_net(text)).collect::<Result<_, _>>()?;
    let timeout = match timeout {
        None => DEFAULT_CLIENT_ADDRESS_TIMEOUT,
        Some(secs) if (0.1..=300.0).contains(&secs) => Duration::from_secs_f64(secs),
        Some(secs) => return Err(ConfigError::ClientAddressTimeout(secs)),
    };
    Ok(Some(ClientAddress { trusted, source, timeout }))
}

/// `ADDR/LEN`, or a single address (`/32`, `/128`); the host bits are dropped.
fn parse_net(text: &str) -> Result<IpNet, ConfigError> {
    let text = text.trim();
    let net = match text.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => text
            .parse::<IpAddr>()
            .map(IpNet::from)
            .map_err(|_| ConfigError::TrustedProxy(text.into()))?,
    };
    Ok(net.trunc())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolved(
        trusted: &[&str],
        source: Option<AddressSource>,
    ) -> Result<ClientAddress, ConfigError> {
        let trusted: Vec<String> = trusted.iter().map(|s| s.to_string()).collect();
        resolve(&trusted, source, None, DispatchMode::Kernel).map(Option::unwrap)
    }

    #[test]
    fn proxies_and_a_source_go_together() {
        let proxy = Some(AddressSource::ProxyProtocol);
        assert_eq!(resolve(&[], None, None, DispatchMode::Kernel), Ok(None));
        assert_eq!(resolved(&[], proxy), Err(ConfigError::ClientAddressWithoutProxy));
        assert_eq!(resolved(&["10.0.0.1"], None), Err(ConfigError::ProxyWithoutClientAddress));
        let none = resolve(&["10.0.0.1".into()], proxy, None, DispatchMode::None);
        assert_eq!(none, Err(ConfigError::ClientAddressDispatch));
        let bad = resolve(&["10.0.0.1".into()], proxy, Some(0.0), DispatchMode::Kernel);
        assert_eq!(bad, Err(ConfigError::ClientAddressTimeout(0.0)));
    }

    #[test]
    fn a_proxy_is_a_network_or_an_address() {
        let proxy = Some(AddressSource::XForwardedFor);
        let config = resolved(&["10.1.2.3/8", "192.0.2.7", "2001:db8::/32"], proxy).unwrap();
        assert_eq!(config.trusted[0].to_string(), "10.0.0.0/8");
        assert_eq!(config.trusted[1].to_string(), "192.0.2.7/32");
        assert!(config.trusts("10.200.0.1".parse().unwrap()));
        assert!(config.trusts("::ffff:192.0.2.7".parse().unwrap()));
        assert!(config.trusts("2001:db8:1::5".parse().unwrap()));
        assert!(!config.trusts("192.0.2.8".parse().unwrap()));
        assert_eq!(config.timeout, DEFAULT_CLIENT_ADDRESS_TIMEOUT);
        assert_eq!(
            resolved(&["10.0.0.0/33"], proxy),
            Err(ConfigError::TrustedProxy("10.0.0.0/33".into()))
        );
        assert_eq!(
            resolved(&["proxy.example"], proxy),
            Err(ConfigError::TrustedProxy("proxy.example".into()))
        );
    }
}
