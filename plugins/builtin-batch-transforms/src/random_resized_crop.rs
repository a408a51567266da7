//! `RandomResizedCrop` on a batch: per-sample crop boxes drawn on the host exactly as the
//! per-image transform draws them, then one separable bilinear resize of every box.

use crate::batch::{check, upload, Dims};
use crate::geometry::{Coords, Geometric};
use crate::resample::{resize_separable, Taps};
use ssl_builtin_transforms::random_resized_crop as per_image;
use ssl_builtin_transforms::rng::Rng;
use ssl_plugin_api::tch::Tensor;
use ssl_plugin_api::{bail, BatchTransform, Params, Result};

const NAME: &str = "RandomResizedCrop";

/// torchvision's random resized crop of every sample (same parameters, draws and
/// interpolation as the per-image `RandomResizedCrop`; equal to it up to float rounding).
pub struct RandomResizedCrop {
    inner: per_image::RandomResizedCrop,
}

impl RandomResizedCrop {
    /// From the per-image transform's parameters (`size`, `scale`, `ratio`).
    pub fn from_params(params: &Params) -> Result<Self> {
        Ok(RandomResizedCrop {
            inner: per_image::RandomResizedCrop::from_params(params)?,
        })
    }

    fn boxes(&self, seeds: &[u64], dims: Dims) -> Result<Vec<per_image::CropBox>> {
        if dims.h == 0 || dims.w == 0 {
            bail!("{NAME}: cannot crop empty {}×{} images", dims.w, dims.h);
        }
        let (h, w) = dims.hw();
        Ok(seeds
            .iter()
            .map(|&s| self.inner.crop_box(&mut Rng::new(s), h, w))
            .collect())
    }
}

impl BatchTransform for RandomResizedCrop {
    fn apply(&self, batch: &Tensor, seeds: &[u64]) -> Result<Tensor> {
        let (batch, dims) = check(NAME, batch, seeds)?;
        let (out_h, out_w) = self.inner.size();
        let (mut rows, mut cols) = (Taps::default(), Taps::default());
        for b in self.boxes(seeds, dims)? {
            rows.push(b.top, b.height, out_h);
            cols.push(b.left, b.width, out_w);
        }
        if dims.n == 0 {
            return Ok(batch.narrow(2, 0, 0).narrow(3, 0, 0));
        }
        Ok(resize_separable(
            &batch,
            dims,
            &rows,
            &cols,
            out_h as i64,
            out_w as i64,
        ))
    }
}

/// `x ← clamp((x + 0.5) · len / out − 0.5, 0, len − 1) + start` with per-sample `len`,
/// `start` (`[N, 1, 1]`) and output length `out`: the resize map of one axis.
pub(crate) fn resize_axis(x: &Tensor, start: &Tensor, len: &Tensor, out: i64) -> Tensor {
    let src = (x + 0.5) * (len / out as f64) - 0.5;
    src.clamp_min(0.0).minimum(&(len - 1.0)) + start
}

impl Geometric for RandomResizedCrop {
    fn output_size(&self, _height: i64, _width: i64) -> Result<(i64, i64)> {
        let (h, w) = self.inner.size();
        Ok((h as i64, w as i64))
    }

    fn map_back(&self, seeds: &[u64], height: i64, width: i64, c: Coords) -> Result<Coords> {
        let dims = Dims {
            n: seeds.len() as i64,
            c: 1,
            h: height,
            w: width,
        };
        let mut v = Vec::with_capacity(seeds.len() * 4);
        for b in self.boxes(seeds, dims)? {
            v.extend([b.top, b.left, b.height, b.width].map(|x| x as f32));
        }
        let t = upload(&v, dims.n, 4, c.x.device());
        let col = |k: i64| t.select(1, k).view([-1, 1, 1]);
        let (out_h, out_w) = self.inner.size();
        Ok(Coords {
            x: resize_axis(&c.x, &col(1), &col(3), out_w as i64),
            y: resize_axis(&c.y, &col(0), &col(2), out_h as i64),
            ..c
        })
    }
}
