//! `Resize` on a batch: the same bilinear resize for every sample (the per-image transform's
//! output size and taps).

use crate::batch::{check, upload};
use crate::geometry::{Coords, Geometric};
use crate::random_resized_crop::resize_axis;
use crate::resample::{resize_separable, Taps};
use ssl_builtin_transforms::resize as per_image;
use ssl_plugin_api::tch::{Kind, Tensor};
use ssl_plugin_api::{bail, BatchTransform, Params, Result};

const NAME: &str = "Resize";

/// Bilinear resize of every sample (shorter side to `size`, or exactly `[h, w]`), as the
/// per-image `Resize`; equal to it up to float rounding.
pub struct Resize {
    inner: per_image::Resize,
}

impl Resize {
    /// From the per-image transform's parameters (`size`).
    pub fn from_params(params: &Params) -> Result<Self> {
        Ok(Resize {
            inner: per_image::Resize::from_params(params)?,
        })
    }
}

impl BatchTransform for Resize {
    fn apply(&self, batch: &Tensor, seeds: &[u64]) -> Result<Tensor> {
        let (batch, dims) = check(NAME, batch, seeds)?;
        let (out_h, out_w) = self.output_size(dims.h, dims.w)?;
        if (out_h, out_w) == (dims.h, dims.w) || dims.n == 0 {
            return Ok(batch);
        }
        let (mut rows, mut cols) = (Taps::default(), Taps::default());
        rows.push(0, dims.h as usize, out_h as usize);
        cols.push(0, dims.w as usize, out_w as usize);
        Ok(resize_separable(&batch, dims, &rows, &cols, out_h, out_w))
    }
}

impl Geometric for Resize {
    fn output_size(&self, height: i64, width: i64) -> Result<(i64, i64)> {
        if height == 0 || width == 0 {
            bail!("{NAME}: cannot resize empty {width}×{height} images");
        }
        let (h, w) = self.inner.output_size(height as usize, width as usize);
        Ok((h as i64, w as i64))
    }

    fn map_back(&self, _seeds: &[u64], height: i64, width: i64, c: Coords) -> Result<Coords> {
        let (out_h, out_w) = self.output_size(height, width)?;
        let t = upload(&[height as f32, width as f32], 1, 2, c.x.device());
        let zero = Tensor::zeros([1, 1, 1], (Kind::Float, c.x.device()));
        Ok(Coords {
            x: resize_axis(&c.x, &zero, &t.select(1, 1).view([1, 1, 1]), out_w),
            y: resize_axis(&c.y, &zero, &t.select(1, 0).view([1, 1, 1]), out_h),
            ..c
        })
    }
}
