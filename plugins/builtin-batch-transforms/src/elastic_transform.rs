//! `ElasticTransform` on a batch: the apply decision drawn on the host as the per-image
//! transform draws it; the random fields from the counter-based generator of
//! [`hash_noise`](crate::hash_noise), smoothed by a convolution with scipy's truncated
//! Gaussian kernel (zeros outside), and one bilinear warp of the batch.

use crate::batch::{check, upload, upload_i64, Dims};
use crate::hash_noise;
use crate::resample::bilinear_zero_outside;
use ssl_builtin_transforms::elastic_transform::{self as per_image, gaussian_kernel1d};
use ssl_builtin_transforms::rng::Rng;
use ssl_plugin_api::tch::{Device, Kind, Tensor};
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

    /// Per sample: the key of its fields, `None` when it is not warped.
    fn draws(&self, seeds: &[u64]) -> Vec<Option<u64>> {
        seeds
            .iter()
            .map(|&s| {
                let mut rng = Rng::new(s);
                rng.bernoulli(self.inner.p_apply()).then(|| rng.next_u64())
            })
            .collect()
    }

    /// The displacement fields `[N, 2, H, W]` (`dx` then `dy`, in pixels) of samples whose
    /// fields have the keys `keys`: one hash per pixel gives both `U(−1, 1)` values.
    fn fields_of(&self, keys: &[u64], height: i64, width: i64, device: Device) -> Tensor {
        let (a, b) = hash_noise::uniform_pair(keys, height, width, device);
        let noise = Tensor::stack(&[a, b], 1) * 2.0 - 1.0;
        smooth(&noise, self.inner.sigma()) * self.inner.alpha()
    }

    /// The displacement fields `[N, 2, H, W]` (`dx` then `dy`, in pixels) for `seeds`, as
    /// if every sample were warped.
    pub fn fields(&self, seeds: &[u64], height: i64, width: i64, device: Device) -> Tensor {
        let keys: Vec<u64> = seeds
            .iter()
            .map(|&s| {
                let mut rng = Rng::new(s);
                rng.bernoulli(1.0);
                rng.next_u64()
            })
            .collect();
        self.fields_of(&keys, height, width, device)
    }
}

/// The `len × len` matrix of the truncated kernel `k` (zeros outside): row `i` holds
/// `k[j − i + r]` at column `j`, so `T · f` correlates `f` with `k` with zero padding.
fn band_matrix(k: &[f64], len: i64, device: Device) -> Tensor {
    let r = (k.len() / 2) as i64;
    let mut m = vec![0f32; (len * len) as usize];
    for i in 0..len {
        for j in (i - r).max(0)..(i + r + 1).min(len) {
            m[(i * len + j) as usize] = k[(j - i + r) as usize] as f32;
        }
    }
    upload(&m, len, len, device)
}

/// scipy's `gaussian_filter(field, sigma, mode="constant", cval=0)` of every `[H, W]` plane
/// of `fields` (`[N, K, H, W]`): the truncated 1-D kernel along rows, then along columns,
/// zeros outside, as two matrix products with banded matrices (`O(H·W·(H + W))` per plane,
/// fast on any BLAS for crop-sized fields). A `sigma` of (nearly) 0 leaves the fields as
/// they are.
pub fn smooth(fields: &Tensor, sigma: f64) -> Tensor {
    if sigma <= 1e-15 {
        return fields.shallow_clone();
    }
    let size = fields.size();
    let (h, w) = (size[2], size[3]);
    let k = gaussian_kernel1d(sigma);
    let down = band_matrix(&k, h, fields.device()).matmul(fields);
    down.matmul(&band_matrix(&k, w, fields.device()).tr())
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
        let draws = self.draws(seeds);
        if draws.iter().all(Option::is_none) || dims.h == 0 || dims.w == 0 {
            return Ok(batch);
        }
        // Only the warped samples get fields and a warp.
        let (index, keys): (Vec<i64>, Vec<u64>) = draws
            .iter()
            .enumerate()
            .filter_map(|(i, k)| k.map(|k| (i as i64, k)))
            .unzip();
        let device = batch.device();
        let index = upload_i64(&index, device);
        let fields = self.fields_of(&keys, dims.h, dims.w, device);
        let warped = warp(&batch.index_select(0, &index), &fields);
        Ok(batch.index_copy(0, &index, &warped))
    }
}
