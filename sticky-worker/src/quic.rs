//! QUIC workers (feature `quinn`): connection IDs that name this worker, for quinn.
//!
//! Under `sticky run --quic`, sticky's program routes a QUIC datagram by its destination
//! connection ID (CID) when the CID is in sticky's layout (`sticky_common::quic`), which names
//! the worker's slot: a client keeps reaching the worker that serves it when its address
//! changes (a NAT rebinding, a migration). A worker takes part by minting every CID it issues in
//! that layout: [`StickyCids`] is a quinn [`ConnectionIdGenerator`] that does, set up by
//! [`StickyCids::from_env`] from what sticky gives each worker:
//!
//! - [`STICKY_QUIC_CID_LEN`]: the CIDs' length, 8 to 20 octets;
//! - [`STICKY_QUIC_KEY`]: the key of the CIDs' check;
//! - [`STICKY_QUIC_GENERATION`] (0 when unset): the slot's socket generation;
//! - `STICKY_WORKER`: the slot.
//!
//! [`server_endpoint`] makes a quinn server [`Endpoint`] on an inherited UDP socket with an
//! [`endpoint_config`] that installs the generator; it must be called inside a tokio runtime.
//!
//! ```no_run
//! # async fn serve(server_config: quinn::ServerConfig) -> Result<(), Box<dyn std::error::Error>> {
//! use sticky_worker::quic::{StickyCids, endpoint_config, reset_key_from_env, server_endpoint};
//!
//! let cids = StickyCids::from_env()?;
//! let config = endpoint_config(cids, reset_key_from_env()?.as_ref());
//! for socket in sticky_worker::inherited()?.udp {
//!     let endpoint = server_endpoint(socket, config.clone(), server_config.clone())?;
//!     // endpoint.accept().await …
//! }
//! # Ok(()) }
//! ```

use std::{env, io, net::UdpSocket, sync::Arc, time::Duration};

use quinn::{ConnectionId, ConnectionIdGenerator, Endpoint, EndpointConfig, ServerConfig};
use quinn_proto::InvalidCid;
pub use sticky_common::quic::ServerId;
use sticky_common::quic::{MAX_CID_LEN, MIN_CID_LEN, ROUTING_OCTETS, routing_octets, server_id};
use thiserror::Error;

/// The length of the CIDs a worker mints, in octets (decimal, 8 to 20).
pub const STICKY_QUIC_CID_LEN: &str = "STICKY_QUIC_CID_LEN";
/// The key of the CIDs' check (decimal, 0 to 65535).
pub const STICKY_QUIC_KEY: &str = "STICKY_QUIC_KEY";
/// The slot's socket generation (decimal, 0 to 255); 0 when unset.
pub const STICKY_QUIC_GENERATION: &str = "STICKY_QUIC_GENERATION";
/// The stateless reset key of the worker's slot (64 hex digits), which sticky gives every
/// worker of that slot alike: a slot's new worker (after a crash) ends its predecessor's
/// connections with stateless resets the clients accept, while another slot's reset ends
/// nothing. Without it each worker has a random key of its own, and a client of a worker that
/// died waits for its idle timeout instead.
pub const STICKY_QUIC_RESET_KEY: &str = "STICKY_QUIC_RESET_KEY";

/// Why a worker cannot mint sticky's CIDs.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum QuicError {
    /// A variable sticky sets under `--quic` is missing.
    #[error("{0} is not set: start this worker with `sticky run --quic -- CMD`")]
    Unset(&'static str),
    /// A variable holds no acceptable value.
    #[error("{name} is '{value}', not {expected}")]
    Invalid {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// What it should hold.
        expected: &'static str,
    },
    /// A CID length out of sticky's range.
    #[error("a CID length of {0} octets is not within {MIN_CID_LEN}..={MAX_CID_LEN}")]
    CidLen(u8),
}

/// Mints CIDs in sticky's layout for one worker: its routing octets (the slot and its socket
/// generation, under the key's check), then random nonce octets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StickyCids {
    cid_len: u8,
    key: u16,
    server: ServerId,
    lifetime: Option<Duration>,
}

impl StickyCids {
    /// A generator of `cid_len`-octet CIDs (8 to 20) that name `server` under `key`.
    pub fn new(cid_len: u8, key: u16, server: ServerId) -> Result<Self, QuicError> {
        if !(MIN_CID_LEN..=MAX_CID_LEN).contains(&cid_len) {
            return Err(QuicError::CidLen(cid_len));
        }
        Ok(Self { cid_len, key, server, lifetime: None })
    }

    /// The generator sticky configures this worker for: [`STICKY_QUIC_CID_LEN`],
    /// [`STICKY_QUIC_KEY`], [`STICKY_QUIC_GENERATION`] (0 when unset) and the slot
    /// (`STICKY_WORKER`).
    pub fn from_env() -> Result<Self, QuicError> {
        Self::from_lookup(|name| env::var(name).ok())
    }

    /// [`Self::from_env`] with the variables `lookup` gives.
    fn from_lookup(lookup: impl Fn(&'static str) -> Option<String>) -> Result<Self, QuicError> {
        let var = |name| (name, lookup(name));
        let cid_len = parse_value(var(STICKY_QUIC_CID_LEN), "a CID length (8 to 20)")?;
        let key = parse_value(var(STICKY_QUIC_KEY), "a key (0 to 65535)")?;
        let slot = parse_value(var(crate::STICKY_WORKER), "a slot (0 to 255)")?;
        let generation = match lookup(STICKY_QUIC_GENERATION) {
            None => 0,
            value => parse_value((STICKY_QUIC_GENERATION, value), "a generation (0 to 255)")?,
        };
        Self::new(cid_len, key, ServerId { slot, generation }).map_err(|_| QuicError::Invalid {
            name: STICKY_QUIC_CID_LEN,
            value: cid_len.to_string(),
            expected: "a CID length (8 to 20)",
        })
    }

    /// The same generator, its CIDs retired after `lifetime`.
    pub fn with_lifetime(self, lifetime: Duration) -> Self {
        Self { lifetime: Some(lifetime), ..self }
    }

    /// The server (slot and generation) its CIDs name.
    pub fn server(&self) -> ServerId {
        self.server
    }

    /// A new CID: routing octets, then nonce.
    pub fn mint(&self) -> ConnectionId {
        let mut octets = [0u8; MAX_CID_LEN as usize];
        let cid = &mut octets[..usize::from(self.cid_len)];
        rand::fill(cid);
        let routing = routing_octets(self.key, self.server, cid[0]);
        cid[..ROUTING_OCTETS].copy_from_slice(&routing);
        ConnectionId::new(cid)
    }

    /// The server `cid` names, if it is sticky's under this key (any slot's).
    pub fn server_of(&self, cid: &[u8]) -> Option<ServerId> {
        let octets = cid.get(..ROUTING_OCTETS)?.try_into().ok()?;
        server_id(self.key, octets).filter(|_| cid.len() == usize::from(self.cid_len))
    }
}

impl ConnectionIdGenerator for StickyCids {
    fn generate_cid(&mut self) -> ConnectionId {
        self.mint()
    }

    /// Accepts sticky's CIDs, of any slot: quinn drops other short-header packets for unknown
    /// connections without answering them with a stateless reset.
    fn validate(&self, cid: &ConnectionId) -> Result<(), InvalidCid> {
        self.server_of(cid).map(|_| ()).ok_or(InvalidCid)
    }

    fn cid_len(&self) -> usize {
        usize::from(self.cid_len)
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        self.lifetime
    }
}

/// A quinn endpoint configuration that mints its CIDs with `cids`, and resets connections
/// statelessly with `reset_key` (a random key of its own when `None`).
pub fn endpoint_config(cids: StickyCids, reset_key: Option<&[u8; 32]>) -> EndpointConfig {
    let mut config = match reset_key {
        Some(key) => {
            EndpointConfig::new(Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key)))
        }
        None => EndpointConfig::default(),
    };
    config.cid_generator(move || Box::new(cids));
    config
}

/// The shared stateless reset key, if sticky gives one ([`STICKY_QUIC_RESET_KEY`]).
pub fn reset_key_from_env() -> Result<Option<[u8; 32]>, QuicError> {
    let Ok(value) = env::var(STICKY_QUIC_RESET_KEY) else { return Ok(None) };
    hex_key(value.trim()).map(Some).ok_or(QuicError::Invalid {
        name: STICKY_QUIC_RESET_KEY,
        value,
        expected: "64 hex digits",
    })
}

/// The 32 octets that 64 hex digits spell.
fn hex_key(digits: &str) -> Option<[u8; 32]> {
    let mut key = [0u8; 32];
    if digits.len() != 2 * key.len() || !digits.bytes().all(|digit| digit.is_ascii_hexdigit()) {
        return None;
    }
    for (octet, at) in key.iter_mut().zip((0..digits.len()).step_by(2)) {
        *octet = u8::from_str_radix(&digits[at..at + 2], 16).ok()?;
    }
    Some(key)
}

/// A quinn server endpoint on inherited UDP `socket` (from [`crate::inherited`]), configured by
/// `config` (an [`endpoint_config`]). Call it inside a tokio runtime, which drives it.
pub fn server_endpoint(
    socket: UdpSocket,
    config: EndpointConfig,
    server_config: ServerConfig,
) -> io::Result<Endpoint> {
    Endpoint::new(config, Some(server_config), socket, Arc::new(quinn::TokioRuntime))
}

/// The value of variable `name`, parsed, or why not.
fn parse_value<T: std::str::FromStr>(
    (name, value): (&'static str, Option<String>),
    expected: &'static str,
) -> Result<T, QuicError> {
    let value = value.ok_or(QuicError::Unset(name))?;
    value.trim().parse().map_err(|_| QuicError::Invalid { name, value, expected })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: ServerId = ServerId { slot: 3, generation: 7 };

    #[test]
    fn a_minted_cid_names_its_server_and_has_the_length() {
        for cid_len in MIN_CID_LEN..=MAX_CID_LEN {
            let cids = StickyCids::new(cid_len, 1234, SERVER).unwrap();
            let cid = cids.mint();
            assert_eq!(cid.len(), usize::from(cid_len));
            let routing: &[u8; ROUTING_OCTETS] = cid[..ROUTING_OCTETS].try_into().unwrap();
            assert_eq!(server_id(1234, routing), Some(SERVER));
            assert_eq!(server_id(4321, routing), None, "another key");
            assert_eq!(cids.cid_len(), usize::from(cid_len));
            assert!(cids.validate(&cid).is_ok());
        }
    }

    #[test]
    fn minted_cids_differ() {
        let mut cids = StickyCids::new(MIN_CID_LEN, 1, SERVER).unwrap();
        let minted: std::collections::HashSet<_> = (0..1000).map(|_| cids.generate_cid()).collect();
        assert_eq!(minted.len(), 1000);
    }

    #[test]
    fn other_cids_are_invalid() {
        let cids = StickyCids::new(20, 1234, SERVER).unwrap();
        let other = StickyCids::new(20, 1234, ServerId { slot: 9, generation: 0 }).unwrap();
        assert_eq!(cids.server_of(&other.mint()), Some(ServerId { slot: 9, generation: 0 }));
        assert!(cids.validate(&ConnectionId::new(&[0; 20])).is_err());
        let short = StickyCids::new(8, 1234, SERVER).unwrap().mint();
        assert!(cids.validate(&short).is_err(), "another length");
    }

    #[test]
    fn the_environment_names_the_server() {
        let vars = |vars: &'static [(&str, &str)]| {
            move |name: &str| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string())
        };
        let cids = StickyCids::from_lookup(vars(&[
            (STICKY_QUIC_CID_LEN, "12"),
            (STICKY_QUIC_KEY, "1234"),
            (crate::STICKY_WORKER, "3"),
            (STICKY_QUIC_GENERATION, "7"),
        ]));
        assert_eq!(cids, StickyCids::new(12, 1234, SERVER));
        let cids = StickyCids::from_lookup(vars(&[
            (STICKY_QUIC_CID_LEN, "20"),
            (STICKY_QUIC_KEY, "1"),
            (crate::STICKY_WORKER, "3"),
        ]));
        assert_eq!(cids.unwrap().server(), ServerId { slot: 3, generation: 0 });
        let unset = StickyCids::from_lookup(vars(&[(STICKY_QUIC_CID_LEN, "20")]));
        assert_eq!(unset, Err(QuicError::Unset(STICKY_QUIC_KEY)));
        let long = StickyCids::from_lookup(vars(&[
            (STICKY_QUIC_CID_LEN, "21"),
            (STICKY_QUIC_KEY, "1"),
            (crate::STICKY_WORKER, "0"),
        ]));
        assert!(matches!(long, Err(QuicError::Invalid { name: STICKY_QUIC_CID_LEN, .. })));
        let slot = StickyCids::from_lookup(vars(&[
            (STICKY_QUIC_CID_LEN, "20"),
            (STICKY_QUIC_KEY, "1"),
            (crate::STICKY_WORKER, "256"),
        ]));
        assert!(matches!(slot, Err(QuicError::Invalid { name: crate::STICKY_WORKER, .. })));
    }

    #[test]
    fn a_reset_key_is_64_hex_digits() {
        let digits = "00ff".repeat(16);
        assert_eq!(hex_key(&digits).unwrap()[..2], [0x00, 0xff]);
        assert_eq!(hex_key(&digits[2..]), None);
        assert_eq!(hex_key(&"zz".repeat(32)), None);
        assert_eq!(hex_key(&"+a".repeat(32)), None);
    }

    #[test]
    fn lengths_out_of_range_are_refused() {
        assert_eq!(StickyCids::new(7, 0, SERVER), Err(QuicError::CidLen(7)));
        assert_eq!(StickyCids::new(21, 0, SERVER), Err(QuicError::CidLen(21)));
    }
}
