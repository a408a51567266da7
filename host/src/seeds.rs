//! The seeds of every random choice of the data path: one mixing function, so that shuffles and
//! augmentations are pure functions of (seed, epoch, sample, view) and do not depend on the
//! number of worker threads or processes.

/// splitmix64: the mixing function behind every seed here (the plugin API's, so that plugins
/// running whole pipelines derive step seeds as the host does).
pub fn mix(a: u64, b: u64) -> u64 {
    ssl_plugin_api::mix_seed(a, b)
}

/// Mixes several values into one seed.
pub fn seed_of(parts: &[u64]) -> u64 {
    parts.iter().fold(0x5EED_u64, |acc, &p| mix(acc, p))
}

/// The random permutation of `0..n` for `seed` (Fisher-Yates over splitmix64).
pub fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut state = seed;
    for i in (1..n).rev() {
        state = mix(state, i as u64);
        let j = (state % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_is_a_permutation_and_seeded() {
        let p = permutation(100, 7);
        let mut s = p.clone();
        s.sort();
        assert_eq!(s, (0..100).collect::<Vec<_>>());
        assert_eq!(p, permutation(100, 7));
        assert_ne!(p, permutation(100, 8));
    }
}
