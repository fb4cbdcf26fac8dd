//! Seeds. Every random choice of a run derives from the run seed, a tag naming its use, and the
//! round or step it belongs to, which is what makes a resumed run end where an uninterrupted one
//! does. Parts are mixed with SplitMix64 rather than summed or xor-ed, so seeds made for
//! different uses, rounds, steps or samples do not collide.

/// The curriculum's random selection (random strategy, soft sampling), per round.
pub const SELECT: u64 = 1;
/// Entropy scoring's sampling, per round.
pub const SCORE: u64 = 2;
/// The shuffle of a round's selection, per round and pass.
pub const SHUFFLE: u64 = 3;
/// An optimizer step's streams (dropout, GRPO's rollouts), per step.
pub const STEP: u64 = 4;

/// A seed derived from several parts (SplitMix64 over each in turn).
pub fn mix(parts: &[u64]) -> u64 {
    let mut h: u64 = 0x6A09_E667_F3BC_C908;
    for &p in parts {
        h = h.wrapping_add(p).wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = h;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        h = z ^ (z >> 31);
    }
    h
}

/// The seed of completion `k` of a prompt whose seed is `seed`. Completion 0 uses the prompt's
/// own seed, so one sample per prompt is the plain case.
pub fn of_sample(seed: u64, k: usize) -> u64 {
    if k == 0 { seed } else { mix(&[seed, k as u64]) }
}

/// A stable 64-bit hash of a sample id under `seed` (FNV-1a), so a sample's seed does not
/// depend on its position in the pool or its batch.
pub fn of_id(seed: u64, id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for b in id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_seeds_are_stable_and_distinct() {
        assert_eq!(of_id(1, "a"), of_id(1, "a"));
        assert_ne!(of_id(1, "a"), of_id(1, "b"));
        assert_ne!(of_id(1, "a"), of_id(2, "a"));
    }

    #[test]
    fn mixed_parts_do_not_collide_where_sums_would() {
        assert_ne!(mix(&[1, 2]), mix(&[2, 1]));
        assert_ne!(mix(&[SCORE, 0, 1]), mix(&[SHUFFLE, 0, 0]));
        assert_eq!(of_sample(7, 0), 7);
        assert_ne!(of_sample(7, 1), of_sample(7, 2));
    }
}
