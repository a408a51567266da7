//! Per-pixel randomness computed on the device: a counter-based generator, so that the value
//! at a pixel is a pure function of (key, field, pixel) — independent of the batch, of the
//! device's random generator and of the other samples.
//!
//! Pixel `k` of a field with key `s` gets splitmix64's `k + 1`-th output for state `s`
//! (`mix(s + (k + 1) · γ)`), computed with wrapping `i64` tensor arithmetic (multiply, xor,
//! logical shifts). The per-image transforms draw their fields from [`Rng`] instead, so the
//! noise *values* differ from theirs; the distribution is the same.
//!
//! [`Rng`]: ssl_builtin_transforms::rng::Rng

use crate::batch::upload_i64;
use ssl_plugin_api::tch::{Device, Kind, Tensor};

const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;
const M1: u64 = 0xBF58_476D_1CE4_E5B9;
const M2: u64 = 0x94D0_49BB_1331_11EB;

/// `z >> s` as an unsigned (logical) shift of the 64 bits of an `i64` tensor.
fn shr(z: &Tensor, s: i64) -> Tensor {
    z.bitwise_right_shift_tensor_scalar(s)
        .bitwise_and(((1u64 << (64 - s)) - 1) as i64)
}

/// splitmix64's output function on every element.
fn mix(z: Tensor) -> Tensor {
    let z = z.bitwise_xor_tensor(&shr(&z, 30)) * M1 as i64;
    let z = z.bitwise_xor_tensor(&shr(&z, 27)) * M2 as i64;
    z.bitwise_xor_tensor(&shr(&z, 31))
}

/// 64 random bits for every pixel of one `height × width` field per key: `[N, H, W]` `i64`.
pub fn bits(keys: &[u64], height: i64, width: i64, device: Device) -> Tensor {
    let keys: Vec<i64> = keys.iter().map(|&k| k as i64).collect();
    let keys = upload_i64(&keys, device).view([-1, 1, 1]);
    let counter =
        (Tensor::arange(height * width, (Kind::Int64, device)) + 1).view([1, height, width]);
    mix(keys + counter * GAMMA as i64)
}

/// 24 of the 64 `bits`, from bit `shift` up, as a uniform `f32` in `[0, 1)`.
fn unit(bits: &Tensor, shift: i64) -> Tensor {
    shr(bits, shift).bitwise_and(0xFF_FFFF).to_kind(Kind::Float) * (1.0 / (1u64 << 24) as f64)
}

/// Two independent uniform fields in `[0, 1)` from one hash per pixel (bits 40..64 and
/// 16..40): `[N, H, W]` each, one pair per key.
pub fn uniform_pair(keys: &[u64], height: i64, width: i64, device: Device) -> (Tensor, Tensor) {
    let b = bits(keys, height, width, device);
    (unit(&b, 40), unit(&b, 16))
}

/// A uniform field in `[0, 1)`: `[N, H, W]`, one field per key.
pub fn uniform(keys: &[u64], height: i64, width: i64, device: Device) -> Tensor {
    unit(&bits(keys, height, width, device), 40)
}

/// A standard normal field (Box–Muller on the two uniforms of [`uniform_pair`]): `[N, H, W]`,
/// one field per key.
pub fn normal(keys: &[u64], height: i64, width: i64, device: Device) -> Tensor {
    let (a, b) = uniform_pair(keys, height, width, device);
    // 1 − U is in (0, 1], so the logarithm is finite.
    let u1 = 1.0f64 - a;
    (u1.log() * -2.0).sqrt() * (b * (2.0 * std::f64::consts::PI)).cos()
}
