//! sticky's QUIC connection IDs, which the program routes by (`--quic`), and how it finds one in
//! a datagram.
//!
//! A worker mints every connection ID (CID) it issues in this layout, after QUIC-LB's
//! plaintext CIDs (draft-ietf-quic-load-balancers): `cid_len` octets (8 to 20, `--quic-cid-len`),
//!
//! | octet | content |
//! |---|---|
//! | 0 | config rotation bits [`CONFIG_ROTATION`] (top three), then five random bits |
//! | 1 | server ID, first octet: the worker's slot |
//! | 2 | server ID, second octet: the slot's socket generation ([`socket_index`]) |
//! | 3, 4 | check: [`check`] of the octets before it, big-endian |
//! | 5 … | nonce: random |
//!
//! The program reads the destination CID of every datagram: after a long header's explicit
//! length, or at octet 1 of a short header, where it is `cid_len` octets. A CID of that length
//! whose first five octets pass the check is routed to its slot's socket; any other datagram
//! goes by the client's address, as plain UDP does (a client's Initial packets carry a CID
//! the client chose, so all of them, and its 0-RTT packets, reach one worker). A short-header
//! datagram whose CID is not sticky's, or names no live slot, is counted as unroutable.

/// The config rotation bits of sticky's CIDs: the three top bits of octet 0. QUIC-LB reserves
/// `0b111` for unroutable CIDs; sticky uses `0b010`.
pub const CONFIG_ROTATION: u8 = 0b010;
/// The shortest CID sticky mints: its five routing octets and three of nonce.
pub const MIN_CID_LEN: u8 = 8;
/// The longest CID QUIC v1 allows.
pub const MAX_CID_LEN: u8 = 20;
/// The CID length sticky assumes in short headers unless told (`--quic-cid-len`).
pub const DEFAULT_CID_LEN: u8 = 20;
/// The octets of a CID the program reads: the first, the server ID and the check.
pub const ROUTING_OCTETS: usize = 5;
/// The octets of a datagram the program reads: a long header up to its destination CID's
/// routing octets (first octet, version, length: 11), which also covers a short header's,
/// rounded up to whole 8-octet words (the program may read any word of them, and the verifier
/// refuses a read of one the helper did not fill). Every QUIC packet is longer.
pub const HEADER_OCTETS: usize = 16;

/// The key of the check, from the loader's seed (the seed itself stays out of the CIDs).
pub fn key(seed: u64) -> u16 {
    crate::hash::client_hash(seed, &[u32::from_be_bytes(*b"QUIC")]) as u16
}

/// What a CID names: a slot and its socket generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerId {
    /// The worker slot.
    pub slot: u8,
    /// The slot's socket generation.
    pub generation: u8,
}

/// Where a datagram goes, as its header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Its destination CID is sticky's: to the server it names.
    Cid(ServerId),
    /// A long header whose CID is not sticky's (an Initial, a 0-RTT): by the client's address.
    Address,
    /// A short header whose CID is not sticky's: by the client's address, and counted.
    Unroutable,
}

/// The check octets of a CID whose first three octets are `first` and `id`, under `key` (from
/// the loader's seed): a CID that sticky did not mint passes with odds of 1 in 65,536.
#[inline(always)]
pub fn check(key: u16, first: u8, id: ServerId) -> u16 {
    let server = u16::from_be_bytes([id.slot, id.generation]);
    (server ^ key).rotate_left(5) ^ u16::from(first).wrapping_mul(0x0101) ^ key
}

/// The socket-array index a CID naming `id` goes to, given its slot's `current` generation:
/// the slot's own index for the current generation, its draining index for the one before,
/// none for any other (a generation that is gone, or a slot out of range).
#[inline(always)]
pub fn socket_index(id: ServerId, current: u8) -> Option<u32> {
    let slot = u32::from(id.slot);
    if slot >= crate::MAX_SLOTS {
        None
    } else if id.generation == current {
        Some(slot)
    } else if id.generation == current.wrapping_sub(1) {
        Some(crate::DRAINING_INDEX + slot)
    } else {
        None
    }
}

/// The routing octets of a CID for `id`, with `random` in octet 0's five free bits.
pub fn routing_octets(key: u16, id: ServerId, random: u8) -> [u8; ROUTING_OCTETS] {
    let first = CONFIG_ROTATION << 5 | random & 0x1f;
    let [high, low] = check(key, first, id).to_be_bytes();
    [first, id.slot, id.generation, high, low]
}

/// The server a CID's routing octets name, if sticky minted it.
#[inline(always)]
pub fn server_id(key: u16, octets: &[u8; ROUTING_OCTETS]) -> Option<ServerId> {
    let id = ServerId { slot: octets[1], generation: octets[2] };
    let ours = octets[0] >> 5 == CONFIG_ROTATION
        && check(key, octets[0], id) == u16::from_be_bytes([octets[3], octets[4]]);
    ours.then_some(id)
}

/// Where a datagram whose first octets are `header` goes, with short-header CIDs `cid_len`
/// octets long.
#[inline(always)]
pub fn route(header: &[u8; HEADER_OCTETS], cid_len: u8, key: u16) -> Route {
    let long = header[0] & 0x80 != 0;
    // Constant indexes: the program reads them from the stack without variable offsets, which
    // the verifier refuses without CAP_PERFMON.
    let h = header;
    let (octets, len) = match long {
        true => ([h[6], h[7], h[8], h[9], h[10]], h[5]),
        false => ([h[1], h[2], h[3], h[4], h[5]], cid_len),
    };
    // The QUIC bit (0x40) is not looked at: peers that agree to grease it (RFC 9287, which
    // quinn does by default) clear it in about half their packets.
    match server_id(key, &octets) {
        Some(id) if len == cid_len => Route::Cid(id),
        _ if long => Route::Address,
        _ => Route::Unroutable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: u16 = 0xbeef;

    fn short(cid: &[u8]) -> [u8; HEADER_OCTETS] {
        let mut header = [0; HEADER_OCTETS];
        header[0] = 0x40;
        header[1..1 + ROUTING_OCTETS].copy_from_slice(&cid[..ROUTING_OCTETS]);
        header
    }

    #[test]
    fn a_minted_cid_routes_to_its_server_in_either_header() {
        let id = ServerId { slot: 7, generation: 3 };
        let cid = routing_octets(KEY, id, 0x15);
        assert_eq!(cid[0] >> 5, CONFIG_ROTATION);
        assert_eq!(server_id(KEY, &cid), Some(id));
        assert_eq!(route(&short(&cid), 20, KEY), Route::Cid(id));
        let mut long = [0; HEADER_OCTETS];
        long[..6].copy_from_slice(&[0xc0, 0, 0, 0, 1, 20]);
        long[6..11].copy_from_slice(&cid);
        assert_eq!(route(&long, 20, KEY), Route::Cid(id));
        // Another length than sticky's is a client's CID.
        long[5] = 8;
        assert_eq!(route(&long, 20, KEY), Route::Address);
    }

    #[test]
    fn other_cids_go_by_address_and_short_ones_are_counted() {
        let id = ServerId { slot: 1, generation: 0 };
        let mut cid = routing_octets(KEY, id, 0);
        assert_eq!(server_id(KEY ^ 1, &cid), None, "another key");
        cid[4] ^= 1;
        assert_eq!(route(&short(&cid), 20, KEY), Route::Unroutable, "a wrong check");
        let mut initial = [0; HEADER_OCTETS];
        initial[..11].copy_from_slice(&[0xc3, 0, 0, 0, 1, 8, 0x5a, 0x11, 0x22, 0x33, 0x44]);
        assert_eq!(route(&initial, 20, KEY), Route::Address);
        let mut greased = short(&routing_octets(KEY, id, 0));
        greased[0] &= !0x40;
        assert_eq!(route(&greased, 20, KEY), Route::Cid(id), "a greased QUIC bit");
        assert_eq!(route(&[0; HEADER_OCTETS], 20, KEY), Route::Unroutable);
    }

    #[test]
    fn the_current_generation_has_the_slot_and_the_one_before_drains() {
        let id = |slot, generation| ServerId { slot, generation };
        assert_eq!(socket_index(id(3, 7), 7), Some(3));
        assert_eq!(socket_index(id(3, 6), 7), Some(crate::DRAINING_INDEX + 3));
        assert_eq!(socket_index(id(3, 5), 7), None, "gone");
        assert_eq!(socket_index(id(3, 8), 7), None, "not yet");
        assert_eq!(socket_index(id(3, 255), 0), Some(crate::DRAINING_INDEX + 3), "wrapped");
        assert_eq!(socket_index(id(200, 0), 0), None, "no such slot");
    }

    #[test]
    fn random_cids_rarely_pass() {
        // Every first octet with the rotation bits, every server ID: one check value each.
        let mut passing = 0u32;
        for first in 0x40..0x60u8 {
            for check in 0..=u16::MAX {
                let [high, low] = check.to_be_bytes();
                passing += u32::from(server_id(KEY, &[first, 3, 9, high, low]).is_some());
            }
        }
        assert_eq!(passing, 32);
    }
}
