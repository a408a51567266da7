//! `RandomHorizontalFlip` on a batch: one flip decision per sample, drawn as the per-image
//! transform draws it.

use crate::batch::{check, flags, upload};
use crate::geometry::{Coords, Geometric};
use ssl_builtin_transforms::horizontal_flip as per_image;
use ssl_builtin_transforms::rng::Rng;
use ssl_plugin_api::tch::Tensor;
use ssl_plugin_api::{BatchTransform, Params, Result};

const NAME: &str = "RandomHorizontalFlip";

/// Mirrors each sample left-right with probability `p` (exactly the per-image
/// `RandomHorizontalFlip` for the same seeds).
pub struct RandomHorizontalFlip {
    inner: per_image::RandomHorizontalFlip,
}

impl RandomHorizontalFlip {
    /// From the per-image transform's parameters (`p`).
    pub fn from_params(params: &Params) -> Result<Self> {
        Ok(RandomHorizontalFlip {
            inner: per_image::RandomHorizontalFlip::from_params(params)?,
        })
    }

    fn draws(&self, seeds: &[u64]) -> Vec<bool> {
        let p = self.inner.p();
        seeds.iter().map(|&s| Rng::new(s).bernoulli(p)).collect()
    }
}

impl BatchTransform for RandomHorizontalFlip {
    fn apply(&self, batch: &Tensor, seeds: &[u64]) -> Result<Tensor> {
        let (batch, _) = check(NAME, batch, seeds)?;
        let flip = flags(&self.draws(seeds), batch.device());
        Ok(batch.flip([3]).where_self(&flip, &batch))
    }
}

impl Geometric for RandomHorizontalFlip {
    fn output_size(&self, height: i64, width: i64) -> Result<(i64, i64)> {
        Ok((height, width))
    }

    fn map_back(&self, seeds: &[u64], _height: i64, width: i64, c: Coords) -> Result<Coords> {
        let f: Vec<f32> = self.draws(seeds).iter().map(|&b| b as i32 as f32).collect();
        let f = upload(&f, f.len() as i64, 1, c.x.device()).view([-1, 1, 1]);
        // x ← x (no flip) or (W − 1) − x (flip).
        let x = &c.x * (1.0f64 - &f * 2.0) + &f * (width - 1) as f64;
        Ok(Coords { x, ..c })
    }
}
