//! `AddGaussianNoise` on a batch: the apply decision drawn on the host as the per-image
//! transform draws it; the noise itself from the counter-based generator of
//! [`hash_noise`](crate::hash_noise), computed on the device.

use crate::batch::{check, upload_i64};
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

    /// Per sample: the key of its noise field, `None` when no noise is added.
    pub fn draws(&self, seeds: &[u64]) -> Vec<Option<u64>> {
        seeds
            .iter()
            .map(|&s| {
                let mut rng = Rng::new(s);
                rng.bernoulli(self.inner.p_apply()).then(|| rng.next_u64())
            })
            .collect()
    }
}

impl BatchTransform for AddGaussianNoise {
    fn apply(&self, batch: &Tensor, seeds: &[u64]) -> Result<Tensor> {
        let (batch, dims) = check(NAME, batch, seeds)?;
        let draws = self.draws(seeds);
        if draws.iter().all(Option::is_none) || dims.c * dims.h * dims.w == 0 {
            return Ok(batch);
        }
        // Only the noisy samples get a field.
        let (index, keys): (Vec<i64>, Vec<u64>) = draws
            .iter()
            .enumerate()
            .filter_map(|(i, k)| k.map(|k| (i as i64, k)))
            .unzip();
        let device = batch.device();
        let index = upload_i64(&index, device);
        let x = batch.index_select(0, &index);
        let noise =
            hash_noise::normal(&keys, dims.h, dims.w, device).unsqueeze(1) * self.inner.std();
        let dims_chw = [1i64, 2, 3];
        let lo = x.amin(dims_chw.as_slice(), true);
        let hi = x.amax(dims_chw.as_slice(), true);
        let noisy = (&x + noise).clamp_tensor(Some(&lo), Some(&hi));
        Ok(batch.index_copy(0, &index, &noisy))
    }
}
