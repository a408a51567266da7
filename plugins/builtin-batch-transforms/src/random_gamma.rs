//! `RandomGamma` on a batch: one gamma per sample, drawn as the per-image transform draws it.

use crate::batch::{check, per_image as column, upload};
use ssl_builtin_transforms::random_gamma as per_image;
use ssl_plugin_api::tch::Tensor;
use ssl_plugin_api::{BatchTransform, Params, Result};

const NAME: &str = "RandomGamma";

/// `x → clamp(max(x, 0)^γ, 0, 1)` with one `γ ~ U(scale)` per sample (the per-image
/// `RandomGamma`'s draw; equal outputs up to float rounding of `pow`).
pub struct RandomGamma {
    inner: per_image::RandomGamma,
}

impl RandomGamma {
    /// From the per-image transform's parameters (`scale`).
    pub fn from_params(params: &Params) -> Result<Self> {
        Ok(RandomGamma {
            inner: per_image::RandomGamma::from_params(params)?,
        })
    }
}

impl BatchTransform for RandomGamma {
    fn apply(&self, batch: &Tensor, seeds: &[u64]) -> Result<Tensor> {
        let (batch, dims) = check(NAME, batch, seeds)?;
        let g: Vec<f32> = seeds
            .iter()
            .map(|&s| self.inner.gamma_for_seed(s) as f32)
            .collect();
        let g = column(&upload(&g, dims.n, 1, batch.device()), 0);
        Ok(batch.clamp_min(0.0).pow(&g).clamp(0.0, 1.0))
    }
}
