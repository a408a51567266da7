//! `RandomGrayscale` on a batch: one decision per sample, drawn as the per-image transform
//! draws it.

use crate::batch::{check, check_grey_or_rgb, flags};
use ssl_builtin_transforms::random_grayscale::{self as per_image, LUMA};
use ssl_builtin_transforms::rng::Rng;
use ssl_plugin_api::tch::Tensor;
use ssl_plugin_api::{BatchTransform, Params, Result};

const NAME: &str = "RandomGrayscale";

/// With probability `p` per sample, RGB replaced by its luma in all three channels (exactly
/// the per-image `RandomGrayscale`); one-channel batches pass unchanged.
pub struct RandomGrayscale {
    inner: per_image::RandomGrayscale,
}

impl RandomGrayscale {
    /// From the per-image transform's parameters (`p`).
    pub fn from_params(params: &Params) -> Result<Self> {
        Ok(RandomGrayscale {
            inner: per_image::RandomGrayscale::from_params(params)?,
        })
    }
}

impl BatchTransform for RandomGrayscale {
    fn apply(&self, batch: &Tensor, seeds: &[u64]) -> Result<Tensor> {
        let (batch, dims) = check(NAME, batch, seeds)?;
        check_grey_or_rgb(NAME, dims)?;
        if dims.c == 1 {
            return Ok(batch);
        }
        let p = self.inner.p();
        let grey: Vec<bool> = seeds.iter().map(|&s| Rng::new(s).bernoulli(p)).collect();
        let grey = flags(&grey, batch.device());
        let ch = |k: i64| batch.narrow(1, k, 1);
        let luma = ch(0) * LUMA[0] as f64 + ch(1) * LUMA[1] as f64 + ch(2) * LUMA[2] as f64;
        Ok(luma.expand_as(&batch).where_self(&grey, &batch))
    }
}
