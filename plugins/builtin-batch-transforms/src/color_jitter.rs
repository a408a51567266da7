//! `ColorJitter` on a batch: per-sample order and factors drawn on the host as the per-image
//! transform draws them; each round applies, to the samples whose next adjustment is a given
//! one, that adjustment (samples gathered into one sub-batch per adjustment and round).

use crate::batch::{check, check_grey_or_rgb, owned_copy, upload, upload_i64};
use ssl_builtin_transforms::color_jitter::{self as per_image, JitterDraw};
use ssl_builtin_transforms::random_grayscale::LUMA;
use ssl_builtin_transforms::rng::Rng;
use ssl_plugin_api::tch::{Device, Tensor};
use ssl_plugin_api::{BatchTransform, Params, Result};

const NAME: &str = "ColorJitter";

/// Random brightness, contrast, saturation and hue in a random order per sample, with
/// probability `p`, as the per-image `ColorJitter` (same draws; equal outputs up to float
/// rounding). One-channel images get brightness and contrast only.
pub struct ColorJitter {
    inner: per_image::ColorJitter,
}

impl ColorJitter {
    /// From the per-image transform's parameters (`brightness`, `contrast`, `saturation`,
    /// `hue`, `p`).
    pub fn from_params(params: &Params) -> Result<Self> {
        Ok(ColorJitter {
            inner: per_image::ColorJitter::from_params(params)?,
        })
    }
}

/// The grey level of each pixel, `[M, 1, H, W]` (the channel itself for one channel).
fn grey(x: &Tensor) -> Tensor {
    if x.size()[1] == 1 {
        return x.shallow_clone();
    }
    let ch = |k: i64| x.narrow(1, k, 1);
    ch(0) * LUMA[0] as f64 + ch(1) * LUMA[1] as f64 + ch(2) * LUMA[2] as f64
}

/// `clamp(f · x)`.
fn brightness(x: &Tensor, f: &Tensor) -> Tensor {
    (x * f).clamp(0.0, 1.0)
}

/// `clamp(f · x + (1 − f) · m)`, `m` the mean grey level of each image.
fn contrast(x: &Tensor, f: &Tensor) -> Tensor {
    let mean = grey(x).mean_dim([1i64, 2, 3].as_slice(), true, None);
    let offset = (1.0f64 - f) * mean;
    (f * x + offset).clamp(0.0, 1.0)
}

/// `clamp(f · x + (1 − f) · grey(x))`.
fn saturation(x: &Tensor, f: &Tensor) -> Tensor {
    let g = (1.0f64 - f) * grey(x);
    (f * x + g).clamp(0.0, 1.0)
}

/// `x mod 1` in `[0, 1)` as Rust's `rem_euclid(1.0)`.
fn wrap01(x: &Tensor) -> Tensor {
    let r = x.fmod(1.0);
    let shifted = &r + 1.0;
    shifted.where_self(&r.lt(0.0), &r)
}

/// Hue shifted by `f` turns: torchvision's `_rgb2hsv`, shift, `_hsv2rgb`.
fn hue(x: &Tensor, f: &Tensor) -> Tensor {
    let (r, g, b) = (x.narrow(1, 0, 1), x.narrow(1, 1, 1), x.narrow(1, 2, 1));
    let maxc = r.maximum(&g).maximum(&b);
    let minc = r.minimum(&g).minimum(&b);
    let cr = &maxc - &minc;
    let eqc = maxc.eq_tensor(&minc);
    let ones = maxc.ones_like();
    let s = &cr / ones.where_self(&eqc.logical_or(&maxc.eq(0.0)), &maxc);
    let crd = ones.where_self(&eqc, &cr);
    let (rc, gc, bc) = (
        (&maxc - &r) / &crd,
        (&maxc - &g) / &crd,
        (&maxc - &b) / &crd,
    );
    let h_r = &bc - &gc;
    let h_g = (&rc + 2.0) - &bc;
    let h_b = (&gc + 4.0) - &rc;
    let h = h_r.where_self(
        &maxc.eq_tensor(&r),
        &h_g.where_self(&maxc.eq_tensor(&g), &h_b),
    );
    let h = (h / 6.0 + 1.0).fmod(1.0);
    let h = wrap01(&(h + f));
    let v = maxc;
    let h6 = h * 6.0;
    let i = h6.floor();
    let frac = &h6 - &i;
    let sector = i.remainder(6.0);
    let p = (&v * (1.0f64 - &s)).clamp(0.0, 1.0);
    let q = (&v * (1.0f64 - &s * &frac)).clamp(0.0, 1.0);
    let t = (&v * (1.0f64 - &s * (1.0f64 - &frac))).clamp(0.0, 1.0);
    let pick = |vals: [&Tensor; 6]| {
        let mut out = vals[5].shallow_clone();
        for k in (0..5).rev() {
            out = vals[k].where_self(&sector.eq(k as f64), &out);
        }
        out.clamp(0.0, 1.0)
    };
    Tensor::cat(
        &[
            pick([&v, &q, &p, &p, &t, &v]),
            pick([&t, &v, &v, &q, &p, &p]),
            pick([&p, &p, &t, &v, &v, &q]),
        ],
        1,
    )
}

/// Applies adjustment `op` (0 brightness, 1 contrast, 2 saturation, 3 hue) with factor
/// `[M, 1, 1, 1]` to `x`.
fn adjust(op: usize, x: &Tensor, f: &Tensor) -> Tensor {
    match op {
        0 => brightness(x, f),
        1 => contrast(x, f),
        2 => saturation(x, f),
        _ => hue(x, f),
    }
}

/// Applies the draws to a working copy of the batch, round by round.
fn apply_draws(
    batch: &Tensor,
    channels: i64,
    draws: &[Option<JitterDraw>],
    device: Device,
) -> Tensor {
    let mut x = owned_copy(batch);
    for round in 0..4 {
        for op in 0..4 {
            if op >= 2 && channels != 3 {
                continue;
            }
            let mut index = Vec::new();
            let mut factor = Vec::new();
            for (i, d) in draws.iter().enumerate() {
                if let Some(d) = d {
                    if let (true, Some(f)) = (d.order[round] == op, d.factors[op]) {
                        index.push(i as i64);
                        factor.push(f);
                    }
                }
            }
            if index.is_empty() {
                continue;
            }
            let index = upload_i64(&index, device);
            let f = upload(&factor, factor.len() as i64, 1, device).view([-1, 1, 1, 1]);
            let sub = x.index_select(0, &index);
            let _ = x.index_copy_(0, &index, &adjust(op, &sub, &f));
        }
    }
    x
}

impl BatchTransform for ColorJitter {
    fn apply(&self, batch: &Tensor, seeds: &[u64]) -> Result<Tensor> {
        let (batch, dims) = check(NAME, batch, seeds)?;
        check_grey_or_rgb(NAME, dims)?;
        let draws: Vec<Option<JitterDraw>> = seeds
            .iter()
            .map(|&s| self.inner.draw(&mut Rng::new(s)))
            .collect();
        if draws.iter().all(Option::is_none) {
            return Ok(batch);
        }
        Ok(apply_draws(&batch, dims.c, &draws, batch.device()))
    }
}
