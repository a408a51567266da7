//! `GaussianBlur` on a batch: one sigma per sample, drawn as the per-image transform draws
//! it; a separable blur with per-sample weights over reflect-101 padded images.

use crate::batch::{check, flags, upload, upload_i64};
use ssl_builtin_transforms::gaussian_blur::{self as per_image, gaussian_kernel, reflect101};
use ssl_builtin_transforms::rng::Rng;
use ssl_plugin_api::tch::Tensor;
use ssl_plugin_api::{BatchTransform, Params, Result};

const NAME: &str = "GaussianBlur";

/// With probability `p` per sample, a Gaussian blur of `sigma ~ U(sigma)` with reflect-101
/// borders (cv2), as the per-image `GaussianBlur` (same draws and kernel, taps summed in the
/// same order: equal outputs up to float rounding).
pub struct GaussianBlur {
    inner: per_image::GaussianBlur,
}

impl GaussianBlur {
    /// From the per-image transform's parameters (`kernel_size`, `sigma`, `p`).
    pub fn from_params(params: &Params) -> Result<Self> {
        Ok(GaussianBlur {
            inner: per_image::GaussianBlur::from_params(params)?,
        })
    }
}

/// The reflect-101 padding of `len` indices by `r` on each side, as indices into `0..len`.
fn padded_index(len: i64, r: usize) -> Vec<i64> {
    (0..len as usize + 2 * r)
        .map(|i| reflect101(i as isize - r as isize, len as usize) as i64)
        .collect()
}

impl BatchTransform for GaussianBlur {
    fn apply(&self, batch: &Tensor, seeds: &[u64]) -> Result<Tensor> {
        let (batch, dims) = check(NAME, batch, seeds)?;
        let k = self.inner.kernel_size();
        let sigmas: Vec<Option<f64>> = seeds
            .iter()
            .map(|&s| self.inner.draw_sigma(&mut Rng::new(s)))
            .collect();
        if k == 1 || dims.h == 0 || dims.w == 0 || sigmas.iter().all(Option::is_none) {
            return Ok(batch);
        }
        let device = batch.device();
        let r = k / 2;
        // One kernel per sample (a unit impulse for samples left sharp).
        let mut weights = Vec::with_capacity(seeds.len() * k);
        for s in &sigmas {
            match s {
                Some(sigma) => weights.extend(gaussian_kernel(k, *sigma)),
                None => weights.extend((0..k).map(|i| (i == r) as i32 as f32)),
            }
        }
        let weights = upload(&weights, dims.n, k as i64, device);
        let tap = |i: usize| weights.select(1, i as i64).view([-1, 1, 1, 1]);
        let cols = upload_i64(&padded_index(dims.w, r), device);
        let rows = upload_i64(&padded_index(dims.h, r), device);
        // Horizontal pass, then vertical, each summing the taps in kernel order.
        let padded = batch.index_select(3, &cols);
        let mut tmp = padded.narrow(3, 0, dims.w) * tap(0);
        for i in 1..k {
            tmp += padded.narrow(3, i as i64, dims.w) * tap(i);
        }
        let padded = tmp.index_select(2, &rows);
        let mut out = padded.narrow(2, 0, dims.h) * tap(0);
        for i in 1..k {
            out += padded.narrow(2, i as i64, dims.h) * tap(i);
        }
        let blurred: Vec<bool> = sigmas.iter().map(Option::is_some).collect();
        Ok(out
            .clamp(0.0, 1.0)
            .where_self(&flags(&blurred, device), &batch))
    }
}
