//! `ColorJitter`: random brightness, contrast, saturation and hue, in random order
//! (torchvision semantics), applied as a whole with probability `p` (`RandomApply`).

use crate::args;
use crate::convert::FloatImage;
use crate::random_grayscale::luma;
use crate::rng::Rng;
use ssl_plugin_api::{bail, Image, Params, Result, Transform};

/// With probability `p` (default 1.0), applies the enabled adjustments in a random order, each
/// followed by a clamp to [0, 1]:
///
/// - brightness `b ~ U(brightness)`: `b · x` (blend with black);
/// - contrast `c ~ U(contrast)`: `c · x + (1 − c) · m`, `m` the mean of the grey image;
/// - saturation `s ~ U(saturation)`: `s · x + (1 − s) · grey(x)`, grey = `0.299 R + 0.587 G +
///   0.114 B`;
/// - hue `h ~ U(hue)`: RGB → HSV, `H = (H + h) mod 1`, HSV → RGB.
///
/// Each of `brightness`, `contrast`, `saturation` is a number `x ≥ 0`, meaning the factor
/// range `[max(0, 1 − x), 1 + x]`, or an explicit `[min, max]`; `hue` is a number `x ≤ 0.5`,
/// meaning `[−x, x]`, or `[min, max]` within [−0.5, 0.5]. Zero (the default) disables an
/// adjustment. One-channel images get brightness and contrast only; other channel counts
/// than 1 and 3 are an error.
#[derive(Clone, Debug)]
pub struct ColorJitter {
    brightness: Option<(f64, f64)>,
    contrast: Option<(f64, f64)>,
    saturation: Option<(f64, f64)>,
    hue: Option<(f64, f64)>,
    p: f64,
}

const NAME: &str = "ColorJitter";

fn factor_range(params: &Params, name: &str) -> Result<Option<(f64, f64)>> {
    let scalar = |x: f64| ((1.0 - x).max(0.0), 1.0 + x);
    if let Some(x) = params.as_json().get(name).and_then(|v| v.as_f64()) {
        if x < 0.0 {
            bail!("{NAME}: parameter `{name}` = {x}: must be non-negative");
        }
    }
    let r = args::range(params, NAME, name, (1.0, 1.0), Some(&scalar))?;
    args::check_bounds(NAME, name, r, 0.0, None)?;
    Ok((r != (1.0, 1.0)).then_some(r))
}

impl ColorJitter {
    /// From parameters: `brightness`, `contrast`, `saturation`, `hue` (all 0 = off) and `p`
    /// (1.0).
    pub fn from_params(params: &Params) -> Result<Self> {
        args::check_known(
            params,
            NAME,
            &["brightness", "contrast", "saturation", "hue", "p"],
        )?;
        if let Some(x) = params.as_json().get("hue").and_then(|v| v.as_f64()) {
            if !(0.0..=0.5).contains(&x) {
                bail!("{NAME}: parameter `hue` = {x}: must be within [0, 0.5]");
            }
        }
        let hue = args::range(params, NAME, "hue", (0.0, 0.0), Some(&|x: f64| (-x, x)))?;
        args::check_bounds(NAME, "hue", hue, -0.5, Some(0.5))?;
        Ok(ColorJitter {
            brightness: factor_range(params, "brightness")?,
            contrast: factor_range(params, "contrast")?,
            saturation: factor_range(params, "saturation")?,
            hue: (hue != (0.0, 0.0)).then_some(hue),
            p: args::probability(params, NAME, "p", 1.0)?,
        })
    }
}

/// The draws of one application of [`ColorJitter`]: the order of the adjustments and their
/// factors (`None` for a disabled one), indexed brightness, contrast, saturation, hue.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct JitterDraw {
    /// A permutation of `0..4`: the adjustments in the order they are applied.
    pub order: [usize; 4],
    /// The factor of each adjustment (hue: the shift in turns), `None` when disabled.
    pub factors: [Option<f32>; 4],
}

impl ColorJitter {
    /// The draws of one application from `rng`: `None` when the image is left as it is
    /// (probability `1 - p`).
    pub fn draw(&self, rng: &mut Rng) -> Option<JitterDraw> {
        if !rng.bernoulli(self.p) {
            return None;
        }
        let order = rng.permutation::<4>();
        let mut draw = |r: Option<(f64, f64)>| r.map(|(lo, hi)| rng.uniform(lo, hi) as f32);
        let factors = [
            draw(self.brightness),
            draw(self.contrast),
            draw(self.saturation),
            draw(self.hue),
        ];
        Some(JitterDraw { order, factors })
    }
}

/// `x ← clamp(f · x)`.
pub fn adjust_brightness(data: &mut [f32], factor: f32) {
    for v in data {
        *v = (*v * factor).clamp(0.0, 1.0);
    }
}

/// `x ← clamp(f · x + (1 − f) · m)`, `m` the mean grey level of the whole image (`channels`
/// is 1 or 3).
pub fn adjust_contrast(data: &mut [f32], channels: usize, factor: f32) {
    let mean = if data.is_empty() {
        0.0
    } else if channels == 3 {
        let sum: f64 = data.chunks_exact(3).map(|px| luma(px) as f64).sum();
        (sum / (data.len() / 3) as f64) as f32
    } else {
        let sum: f64 = data.iter().map(|&v| v as f64).sum();
        (sum / data.len() as f64) as f32
    };
    let offset = (1.0 - factor) * mean;
    for v in data {
        *v = (factor * *v + offset).clamp(0.0, 1.0);
    }
}

/// `x ← clamp(f · x + (1 − f) · grey(x))` on interleaved RGB.
pub fn adjust_saturation(data: &mut [f32], factor: f32) {
    let keep = 1.0 - factor;
    for px in data.chunks_exact_mut(3) {
        let g = keep * luma(px);
        for v in px {
            *v = (factor * *v + g).clamp(0.0, 1.0);
        }
    }
}

/// `x` rounded towards zero, without a call to libm (which the vectorised hue loop would make
/// for every lane): exact, as `f32::trunc`, including the sign of zero.
#[inline(always)]
fn trunc(x: f32) -> f32 {
    // From 2^23 on every f32 is an integer (and NaN, infinities stay as they are).
    let t = if x.abs() < 8_388_608.0 {
        (x as i32) as f32
    } else {
        x
    };
    t.copysign(x)
}

/// `x % 1.0` (C's `fmod`), without a call to libm; the same bits (NaN for NaN).
#[inline(always)]
fn rem1(x: f32) -> f32 {
    // The fractional part is exact, and fmod keeps the sign of `x`.
    (x - trunc(x)).copysign(x)
}

/// `x.rem_euclid(1.0)`, without a call to libm; the same bits (NaN for NaN).
#[inline(always)]
fn rem_euclid1(x: f32) -> f32 {
    let r = rem1(x);
    if r < 0.0 {
        r + 1.0
    } else {
        r
    }
}

/// `x.floor()`, without a call to libm; the same bits.
#[inline(always)]
fn floor(x: f32) -> f32 {
    let t = trunc(x);
    if t > x {
        t - 1.0
    } else {
        t
    }
}

/// Shifts the hue of interleaved RGB by `shift` turns (torchvision's `_rgb2hsv` /
/// `_hsv2rgb`).
pub fn adjust_hue(data: &mut [f32], shift: f32) {
    for px in data.chunks_exact_mut(3) {
        let (r, g, b) = (px[0], px[1], px[2]);
        let maxc = r.max(g).max(b);
        let minc = r.min(g).min(b);
        let cr = maxc - minc;
        let eqc = maxc == minc;
        let s = cr / if eqc || maxc == 0.0 { 1.0 } else { maxc };
        let crd = if eqc { 1.0 } else { cr };
        let (rc, gc, bc) = ((maxc - r) / crd, (maxc - g) / crd, (maxc - b) / crd);
        let h = if maxc == r {
            bc - gc
        } else if maxc == g {
            2.0 + rc - bc
        } else {
            4.0 + gc - rc
        };
        let h = rem1(h / 6.0 + 1.0);
        let h = rem_euclid1(h + shift);
        let v = maxc;
        let h6 = h * 6.0;
        let i = floor(h6);
        let f = h6 - i;
        let p = (v * (1.0 - s)).clamp(0.0, 1.0);
        let q = (v * (1.0 - s * f)).clamp(0.0, 1.0);
        let t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0);
        let (r, g, b) = match (i as i32).rem_euclid(6) {
            0 => (v, t, p),
            1 => (q, v, p),
            2 => (p, v, t),
            3 => (p, q, v),
            4 => (t, p, v),
            _ => (v, p, q),
        };
        px[0] = r.clamp(0.0, 1.0);
        px[1] = g.clamp(0.0, 1.0);
        px[2] = b.clamp(0.0, 1.0);
    }
}

/// Applies the adjustments of `draw` to interleaved pixels of `channels` (1 or 3) channels;
/// one-channel images get brightness and contrast only.
pub fn apply_draw(data: &mut [f32], channels: usize, draw: &JitterDraw) {
    for &op in &draw.order {
        let Some(f) = draw.factors[op] else { continue };
        match (op, channels) {
            (0, _) => adjust_brightness(data, f),
            (1, _) => adjust_contrast(data, channels, f),
            (2, 3) => adjust_saturation(data, f),
            (3, 3) => adjust_hue(data, f),
            _ => {}
        }
    }
}

impl Transform for ColorJitter {
    fn apply(&self, image: Image, seed: u64) -> Result<Image> {
        let mut img = FloatImage::from_image(image);
        let c = img.channels;
        if c != 1 && c != 3 {
            bail!("{NAME}: expected a 1- or 3-channel image, got {c} channels");
        }
        if let Some(draw) = self.draw(&mut Rng::new(seed)) {
            apply_draw(&mut img.data, c, &draw);
        }
        img.into_image()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_remainders_and_floor_are_the_std_ones() {
        let mut xs: Vec<f32> = vec![
            -0.0,
            0.0,
            1e-30,
            -1e-30,
            8_388_608.5,
            -9e9,
            3e38,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
        ];
        let mut r = Rng::new(11);
        xs.extend((0..100_000).map(|_| r.uniform(-8.0, 8.0) as f32));
        for n in -8..8 {
            let f = n as f32;
            xs.extend([f, f.next_down(), f.next_up(), f + 0.5]);
        }
        // The same bits; any NaN for NaN (its sign bit differs from libm's).
        let same = |a: f32, b: f32| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
        for x in xs {
            assert!(same(rem1(x), x % 1.0), "{x}");
            assert!(same(rem_euclid1(x), x.rem_euclid(1.0)), "{x}");
            assert!(same(floor(x), x.floor()), "{x}");
        }
    }
}
