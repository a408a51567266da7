//! How a view's seed becomes the seed of each step of its pipeline: part of the contract, so
//! that a plugin running a whole pipeline at once (a pipeline compiler, a batch pipeline)
//! draws exactly what the steps would draw one by one.

/// splitmix64 of `a` combined with `b`: the host's mixing function for every seed of the
/// data path.
pub fn mix_seed(a: u64, b: u64) -> u64 {
    let mut z = a ^ b
        .wrapping_add(0x9E37_79B9_7F4A_7C15)
        .wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The seed the host gives step `position` (0-based) of a pipeline applied to a view whose
/// seed is `view_seed`.
pub fn step_seed(view_seed: u64, position: usize) -> u64 {
    mix_seed(view_seed, position as u64)
}
