//! `ElasticTransform` on a batch: the apply decision drawn on the host as the per-image
//! transform draws it; the random fields from the counter-based generator of
//! [`hash_noise`](crate::hash_noise), smoothed by a convolution with scipy's truncated
//! Gaussian kernel (zeros outside), and one bilinear warp of the batch.

use crate::batch::{check, flags, Dims};
use crate::hash_noise;
use crate::resample::bilinear_zero_outside;
use ssl_builtin_transforms::elastic_transform::{self as per_image, gaussian_kernel1d};
use ssl_builtin_transforms::rng::Rng;
use ssl_plugin_api::tch::{Kind, Tensor};
use ssl_plugin_api::{BatchTransform, Params, Result};

const NAME: &str = "ElasticTransform";

/// With probability `p_apply` per sample, the warp of the per-image `ElasticTransform`:
/// `U(−1, 1)` fields smoothed by a Gaussian of `sigma` (truncated at 4σ, zeros outside, as
/// scipy's `gaussian_filter(mode="constant")`), times `alpha`; bilinear sampling at `(row +
/// dx, col + dy)`, 0 outside. The field values differ from the per-image transform's (same
/// distribution): they are a pure function of (seed, pixel), computed on the device.
pub struct ElasticTransform {
    inner: per_image::ElasticTransform,
}

impl ElasticTransform {
    /// From the per-image transform's parameters (`alpha`, `sigma`, `p_apply`).
    pub fn from_params(params: &Params) -> Result<Self> {
        Ok(ElasticTransform {
            inner: per_image::ElasticTransform::from_params(params)?,
        })
    }

    /// Per sample: whether it is warped, and the keys of its `dx` and `dy` fields.
    fn draws(&self, seeds: &[u64]) -> (Vec<bool>, Vec<u64>) {
        let mut applied = Vec::with_capacity(seeds.len());
        let mut keys = Vec::with_capacity(seeds.len() * 2);
        for &s in seeds {
            let mut rng = Rng::new(s);
            let on = rng.bernoulli(self.inner.p_apply());
            applied.push(on);
            keys.extend(if on {
                [rng.next_u64(), rng.next_u64()]
            } else {
                [0, 0]
            });
        }
        (applied, keys)
    }

    /// The displacement fields `[N, 2, H, W]` (`dx` then `dy`) for `seeds`, in pixels.
    pub fn fields(&self, seeds: &[u64], height: i64, width: i64, device: ssl_plugin_api::tch::Device) -> Tensor {
        let (_, keys) = self.draws(seeds);
        let noise = hash_noise::uniform(&keys, height, width, device) * 2.0 - 1.0;
        let noise = noise.view([seeds.len() as i64, 2, height, width]);
        smooth(&noise, self.inner.sigma()) * self.inner.alpha()
    }
}

/// scipy's `gaussian_filter(field, sigma, mode="constant", cval=0)` of every `[H, W]` plane
/// of `fields` (`[N, K, H, W]`): the truncated 1-D kernel along rows, then along columns,
/// as two convolutions with zero padding. A `sigma` of (nearly) 0 leaves the fields as they
/// are.
pub fn smooth(fields: &Tensor, sigma: f64) -> Tensor {
    if sigma <= 1e-15 {
        return fields.shallow_clone();
    }
    let size = fields.size();
    let (n, k, h, w) = (size[0], size[1], size[2], size[3]);
    let kernel: Vec<f32> = gaussian_kernel1d(sigma).iter().map(|&v| v as f32).collect();
    let len = kernel.len() as i64;
    let r = len / 2;
    let kernel = Tensor::from_slice(&kernel).to_device(fields.device());
    let planes = fields.reshape([n * k, 1, h, w]);
    let down = planes.conv2d(
        &kernel.view([1, 1, len, 1]),
        None::<Tensor>,
        [1, 1],
        [r, 0],
        [1, 1],
        1,
    );
    let across = down.conv2d(
        &kernel.view([1, 1, 1, len]),
        None::<Tensor>,
        [1, 1],
        [0, r],
        [1, 1],
        1,
    );
    across.view([n, k, h, w])
}

/// Samples every image of `batch` at `(row + dx, col + dy)` bilinearly, 0 outside the image
/// (scipy's `map_coordinates(order=1, mode="constant")`); `fields` is `[N, 2, H, W]`.
pub fn warp(batch: &Tensor, fields: &Tensor) -> Tensor {
    let size = batch.size();
    let dims = Dims {
        n: size[0],
        c: size[1],
        h: size[2],
        w: size[3],
    };
    let device = batch.device();
    let rows = Tensor::arange(dims.h, (Kind::Float, device)).view([1, dims.h, 1]);
    let cols = Tensor::arange(dims.w, (Kind::Float, device)).view([1, 1, dims.w]);
    let y = rows + fields.select(1, 0);
    let x = cols + fields.select(1, 1);
    bilinear_zero_outside(batch, dims, &y, &x)
}

impl BatchTransform for ElasticTransform {
    fn apply(&self, batch: &Tensor, seeds: &[u64]) -> Result<Tensor> {
        let (batch, dims) = check(NAME, batch, seeds)?;
        let (applied, _) = self.draws(seeds);
        if !applied.contains(&true) || dims.h == 0 || dims.w == 0 {
            return Ok(batch);
        }
        let device = batch.device();
        let fields = self.fields(seeds, dims.h, dims.w, device);
        Ok(warp(&batch, &fields).where_self(&flags(&applied, device), &batch))
    }
}
