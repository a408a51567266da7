//! `AddGaussianNoise` on a batch: the apply decision drawn on the host as the per-image
//! transform draws it; the noise itself from the counter-based generator of
//! [`hash_noise`](crate::hash_noise), computed on the device.

use crate::batch::{check, per_image as column, upload};
use crate::hash_noise;
use ssl_builtin_transforms::gaussian_noise as per_image;
use ssl_builtin_transforms::rng::Rng;
use ssl_plugin_api::tch::Tensor;
use ssl_plugin_api::{BatchTransform, Params, Result};

const NAME: &str = "AddGaussianNoise";

/// With probability `p_apply` per sample, adds one field of `N(0, std²)` noise shared by all
/// channels and clamps to the sample's own `[min, max]`, as the per-image
/// `AddGaussianNoise`. The noise values differ from the per-image transform's (same
/// distribution): they are a pure function of (seed, pixel), computed on the device.
pub struct AddGaussianNoise {
    inner: per_image::AddGaussianNoise,
}

impl AddGaussianNoise {
    /// From the per-image transform's parameters (`p_apply`, `std`).
    pub fn from_params(params: &Params) -> Result<Self> {
        Ok(AddGaussianNoise {
            inner: per_image::AddGaussianNoise::from_params(params)?,
        })
    }

    /// Per sample: the noise scale (0 when not applied) and the key of its field.
    pub fn draws(&self, seeds: &[u64]) -> (Vec<f32>, Vec<u64>) {
        seeds
            .iter()
            .map(|&s| {
                let mut rng = Rng::new(s);
                if rng.bernoulli(self.inner.p_apply()) {
                    (self.inner.std() as f32, rng.next_u64())
                } else {
                    (0.0, 0)
                }
            })
            .unzip()
    }
}

impl BatchTransform for AddGaussianNoise {
    fn apply(&self, batch: &Tensor, seeds: &[u64]) -> Result<Tensor> {
        let (batch, dims) = check(NAME, batch, seeds)?;
        let (scale, keys) = self.draws(seeds);
        if scale.iter().all(|&s| s == 0.0) || dims.c * dims.h * dims.w == 0 {
            return Ok(batch);
        }
        let device = batch.device();
        let scale = column(&upload(&scale, dims.n, 1, device), 0);
        let noise = hash_noise::normal(&keys, dims.h, dims.w, device).unsqueeze(1) * scale;
        let dims_chw = [1i64, 2, 3];
        let lo = batch.amin(dims_chw.as_slice(), true);
        let hi = batch.amax(dims_chw.as_slice(), true);
        Ok((&batch + noise).clamp_tensor(Some(&lo), Some(&hi)))
    }
}
