//! `CenterCrop` on a batch: the per-image transform's offsets, as one crop-or-pad of the
//! whole batch.

use crate::batch::check;
use crate::geometry::{Coords, Geometric};
use ssl_builtin_transforms::center_crop as per_image;
use ssl_plugin_api::tch::Tensor;
use ssl_plugin_api::{BatchTransform, Params, Result};

const NAME: &str = "CenterCrop";

/// The central crop of every sample, zero-padded where the images are smaller (exactly the
/// per-image `CenterCrop`).
pub struct CenterCrop {
    inner: per_image::CenterCrop,
}

impl CenterCrop {
    /// From the per-image transform's parameters (`size`).
    pub fn from_params(params: &Params) -> Result<Self> {
        Ok(CenterCrop {
            inner: per_image::CenterCrop::from_params(params)?,
        })
    }

    /// Offsets `(rows, columns)` of the crop in an `height × width` image (negative: padding).
    fn offsets(&self, height: i64, width: i64) -> (i64, i64) {
        let (ch, cw) = self.inner.size();
        (
            per_image::offset(height as usize, ch) as i64,
            per_image::offset(width as usize, cw) as i64,
        )
    }
}

impl BatchTransform for CenterCrop {
    fn apply(&self, batch: &Tensor, seeds: &[u64]) -> Result<Tensor> {
        let (batch, dims) = check(NAME, batch, seeds)?;
        let (ch, cw) = self.inner.size();
        let (ch, cw) = (ch as i64, cw as i64);
        if (ch, cw) == (dims.h, dims.w) {
            return Ok(batch);
        }
        let (oy, ox) = self.offsets(dims.h, dims.w);
        // Negative padding crops; the output is `ch × cw`.
        Ok(batch.constant_pad_nd([-ox, cw - dims.w + ox, -oy, ch - dims.h + oy]))
    }
}

impl Geometric for CenterCrop {
    fn output_size(&self, _height: i64, _width: i64) -> Result<(i64, i64)> {
        let (h, w) = self.inner.size();
        Ok((h as i64, w as i64))
    }

    fn map_back(&self, _seeds: &[u64], height: i64, width: i64, c: Coords) -> Result<Coords> {
        let (oy, ox) = self.offsets(height, width);
        let mut c = Coords {
            x: &c.x + ox as f64,
            y: &c.y + oy as f64,
            ..c
        };
        let outside = c.outside(height, width);
        c.mark_outside(&outside, 0.0);
        Ok(c)
    }
}
