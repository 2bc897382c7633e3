//! What a worker gets under `--quic`: how to mint connection IDs the program routes to it, and
//! its slot's stateless reset key.

use sticky_common::hash::client_hash;

use crate::{
    config::{STICKY_QUIC_CID_LEN, STICKY_QUIC_GENERATION, STICKY_QUIC_KEY, STICKY_QUIC_RESET_KEY},
    identity::hex,
};

/// The `--quic` variables of every worker, from the loader's seed.
#[derive(Debug, Clone, Copy)]
pub(super) struct QuicEnvironment {
    pub(super) cid_len: u8,
    pub(super) seed: u64,
}

impl QuicEnvironment {
    /// The variables for slot `slot`'s worker of socket generation `generation`: the CIDs'
    /// length, the key of their check, the generation, and the slot's reset key. Each slot has its own reset key, the same for all its workers: a
    /// slot's new worker (after a crash) ends its predecessor's connections with stateless
    /// resets their clients accept at once, while a datagram that reached another slot's
    /// worker by mistake gets a reset no client accepts, which ends nothing.
    pub(super) fn for_slot(&self, slot: u32, generation: u8) -> [(&'static str, String); 4] {
        let key = sticky_common::quic::key(self.seed);
        [
            (STICKY_QUIC_CID_LEN, self.cid_len.to_string()),
            (STICKY_QUIC_KEY, key.to_string()),
            (STICKY_QUIC_GENERATION, generation.to_string()),
            (STICKY_QUIC_RESET_KEY, hex(&reset_key(self.seed, slot))),
        ]
    }
}

/// Slot `slot`'s stateless reset key: 32 octets from the seed (which never leaves the loader).
fn reset_key(seed: u64, slot: u32) -> [u8; 32] {
    let mut key = [0; 32];
    for (part, chunk) in (0u32..).zip(key.chunks_exact_mut(8)) {
        let words = [u32::from_be_bytes(*b"RSET"), slot, part];
        chunk.copy_from_slice(&client_hash(seed, &words).to_be_bytes());
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_slot_has_its_own_reset_key_for_good() {
        let quic = QuicEnvironment { cid_len: 20, seed: 42 };
        let [cid_len, key, generation, reset] = quic.for_slot(3, 7);
        assert_eq!(cid_len, (STICKY_QUIC_CID_LEN, "20".into()));
        assert_eq!(generation, (STICKY_QUIC_GENERATION, "7".into()));
        assert_eq!(key, (STICKY_QUIC_KEY, sticky_common::quic::key(42).to_string()));
        assert_eq!(reset.1.len(), 64);
        assert!(reset.1.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(quic.for_slot(3, 8)[3], reset, "the same for the slot's next generation");
        assert_ne!(quic.for_slot(4, 7)[3], reset, "another slot's");
        let other_seed = QuicEnvironment { cid_len: 20, seed: 43 };
        assert_ne!(other_seed.for_slot(3, 7)[3], reset);
    }
}
