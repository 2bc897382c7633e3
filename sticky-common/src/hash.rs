//! The seeded client hash, computed identically by the eBPF program and user space.

const MULTIPLIER: u64 = 0x9e37_79b9_7f4a_7c15;

/// Hashes the (already masked) words of a client address with `seed`.
///
/// IPv4 addresses are one word, IPv6 addresses four. The words are mixed one at a time and the
/// result goes through murmur3's 64-bit finalizer, so neighbouring addresses spread evenly.
#[inline(always)]
pub fn client_hash(seed: u64, words: &[u32]) -> u64 {
    let mut h = seed ^ (words.len() as u64).wrapping_mul(MULTIPLIER);
    for &word in words {
        h = (h ^ u64::from(word)).wrapping_mul(MULTIPLIER).rotate_left(31);
    }
    finalize(h)
}

/// The score of `slot` for table entry `entry`, pseudo-random per seed, slot and entry: the
/// table builder ranks each slot's entries by it, to choose which entries a slot gives up or
/// takes within its quota (the loader's `kernel/table.rs` says how).
#[inline(always)]
pub fn slot_score(seed: u64, entry: u32, slot: u32) -> u64 {
    finalize(seed ^ (u64::from(entry) << 32 | u64::from(slot)).wrapping_mul(MULTIPLIER))
}

/// murmur3's fmix64: every input bit affects every output bit.
#[inline(always)]
fn finalize(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neighbouring_addresses_spread_over_buckets() {
        let mut buckets = [0u32; 8];
        for i in 0..8192u32 {
            let address = u32::from_be_bytes([127, 0, (i >> 8) as u8, i as u8]).to_be();
            buckets[(client_hash(1, &[address]) % 8) as usize] += 1;
        }
        for count in buckets {
            assert!((900..=1150).contains(&count), "{buckets:?}");
        }
    }

    #[test]
    fn seed_and_length_change_the_hash() {
        assert_ne!(client_hash(1, &[5]), client_hash(2, &[5]));
        assert_ne!(client_hash(1, &[5]), client_hash(1, &[5, 0, 0, 0]));
    }
}
