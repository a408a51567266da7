//! `RandomErasing` on a batch: one rectangle per sample, drawn as the per-image transform
//! draws it, written through a mask built on the device.

use crate::batch::{check, per_image as column, upload};
use ssl_builtin_transforms::random_erasing as per_image;
use ssl_builtin_transforms::rng::Rng;
use ssl_plugin_api::tch::{Kind, Tensor};
use ssl_plugin_api::{BatchTransform, Params, Result};

const NAME: &str = "RandomErasing";

/// With probability `p` per sample, a random rectangle of every channel set to `value`
/// (exactly the per-image `RandomErasing` for the same seeds).
pub struct RandomErasing {
    inner: per_image::RandomErasing,
}

impl RandomErasing {
    /// From the per-image transform's parameters (`p`, `scale`, `ratio`, `value`).
    pub fn from_params(params: &Params) -> Result<Self> {
        Ok(RandomErasing {
            inner: per_image::RandomErasing::from_params(params)?,
        })
    }
}

impl BatchTransform for RandomErasing {
    fn apply(&self, batch: &Tensor, seeds: &[u64]) -> Result<Tensor> {
        let (batch, dims) = check(NAME, batch, seeds)?;
        let (h, w) = dims.hw();
        let mut v = Vec::with_capacity(seeds.len() * 4);
        let mut any = false;
        for &s in seeds {
            let mut rng = Rng::new(s);
            let b = if rng.bernoulli(self.inner.p()) {
                self.inner.erase_box(&mut rng, h, w)
            } else {
                None
            };
            any |= b.is_some();
            let b = b.map_or([0, 0, 0, 0], |b| [b.top, b.left, b.height, b.width]);
            v.extend(b.map(|x| x as f32));
        }
        if !any {
            return Ok(batch);
        }
        let device = batch.device();
        let t = upload(&v, dims.n, 4, device);
        let (top, left) = (column(&t, 0), column(&t, 1));
        let (bottom, right) = (&top + column(&t, 2), &left + column(&t, 3));
        let rows = Tensor::arange(dims.h, (Kind::Float, device)).view([1, 1, dims.h, 1]);
        let cols = Tensor::arange(dims.w, (Kind::Float, device)).view([1, 1, 1, dims.w]);
        let inside = rows
            .ge_tensor(&top)
            .logical_and(&rows.lt_tensor(&bottom))
            .logical_and(&cols.ge_tensor(&left))
            .logical_and(&cols.lt_tensor(&right));
        Ok(batch.masked_fill(&inside, self.inner.value() as f64))
    }
}
