//! From a client address to its worker slot: mask, hash, table lookup, fallback. The eBPF
//! program and userspace dispatch both call [`pick_slot`], so a client maps to the same slot
//! in either.

use core::net::IpAddr;

use crate::{DispatchConfig, MAX_SLOTS, TABLE_SIZE, Table, hash::client_hash};

/// A client's source address as the program reads it: words in network byte order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// An IPv4 address (also a v4-mapped IPv6 one: the IPv4 client it stands for).
    V4(u32),
    /// An IPv6 address.
    V6([u32; 4]),
}

impl Client {
    /// The index of this client's entry in the [`Table`]: its address masked to the configured
    /// prefix, hashed with the seed.
    #[inline(always)]
    pub fn table_index(&self, config: &DispatchConfig) -> usize {
        let hash = match *self {
            Client::V4(address) => client_hash(config.seed, &[address & config.v4_mask]),
            Client::V6(address) => {
                let mut masked = [0; 4];
                for i in 0..4 {
                    masked[i] = address[i] & config.v6_mask[i];
                }
                client_hash(config.seed, &masked)
            }
        };
        hash as usize & (TABLE_SIZE - 1)
    }

    /// The address as the trusted-proxy trie keys it: an IPv6 address as it is, an IPv4 one
    /// v4-mapped (`::ffff:a.b.c.d`), so that one trie holds both families. A prefix of an IPv4
    /// network is then 96 + its length.
    #[inline(always)]
    pub fn trie_words(&self) -> [u32; 4] {
        match *self {
            Client::V4(address) => [0, 0, 0xffffu32.to_be(), address],
            Client::V6(address) => address,
        }
    }
}

impl From<IpAddr> for Client {
    /// The client as the program would read it from a packet of `address`.
    fn from(address: IpAddr) -> Self {
        let address = match address {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        match address {
            IpAddr::V4(v4) => Client::V4(u32::from_ne_bytes(v4.octets())),
            IpAddr::V6(v6) => {
                let octets = v6.octets();
                let word = |i: usize| {
                    u32::from_ne_bytes([octets[i], octets[i + 1], octets[i + 2], octets[i + 3]])
                };
                Client::V6([word(0), word(4), word(8), word(12)])
            }
        }
    }
}

/// Where a client's connection goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// Its own slot, from the table.
    Hashed(u32),
    /// Its slot `from` was not live: the next live one, `to`.
    Fallback {
        /// The client's own slot, which has no socket.
        from: u32,
        /// The slot that takes the connection.
        to: u32,
    },
    /// No slot was live.
    None,
}

/// The slot for `client`: its table entry's slot if `live` says it can take the connection,
/// or else the next slot (below `config.slots`) that can.
#[inline(always)]
pub fn pick_slot(
    client: &Client,
    config: &DispatchConfig,
    table: &Table,
    mut live: impl FnMut(u32) -> bool,
) -> Pick {
    let slot = u32::from(table[client.table_index(config)]);
    if live(slot) {
        return Pick::Hashed(slot);
    }
    // A bounded loop, as the verifier wants it.
    for step in 1..MAX_SLOTS {
        if step >= config.slots {
            break;
        }
        let other = (slot + step) % config.slots;
        if live(other) {
            return Pick::Fallback { from: slot, to: other };
        }
    }
    Pick::None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slot_is_the_table_entry_or_the_next_live_one() {
        let config = DispatchConfig::new(3, 32, 128, 4);
        let table: Table = [2; TABLE_SIZE];
        let client = Client::from(IpAddr::from([10, 0, 0, 1]));
        assert_eq!(pick_slot(&client, &config, &table, |_| true), Pick::Hashed(2));
        let fallback = pick_slot(&client, &config, &table, |slot| slot == 0);
        assert_eq!(fallback, Pick::Fallback { from: 2, to: 0 });
        assert_eq!(pick_slot(&client, &config, &table, |_| false), Pick::None);
    }

    #[test]
    fn a_v4_mapped_address_is_its_ipv4_client() {
        let v4 = Client::from(IpAddr::from([192, 0, 2, 7]));
        let mapped = Client::from("::ffff:192.0.2.7".parse::<IpAddr>().unwrap());
        assert_eq!(mapped, v4);
        assert_eq!(v4, Client::V4(u32::from_ne_bytes([192, 0, 2, 7])));
        assert!(matches!(Client::from("2001:db8::1".parse::<IpAddr>().unwrap()), Client::V6(_)));
    }
}
