//! `RandomAffine` on a batch: per-sample matrices drawn on the host as the per-image
//! transform draws them, then one nearest-neighbour gather of the whole batch.

use crate::batch::{check, upload, Dims};
use crate::geometry::{Coords, Geometric};
use ssl_builtin_transforms::random_affine as per_image;
use ssl_builtin_transforms::rng::Rng;
use ssl_plugin_api::tch::{Kind, Tensor};
use ssl_plugin_api::{BatchTransform, Params, Result};

const NAME: &str = "RandomAffine";

/// Random rotation, translation and x-shear of every sample about its centre, nearest
/// sampling, `fill` outside: the per-image `RandomAffine`'s draws and arithmetic (in `f32`,
/// the same operations in the same order), so the outputs are equal.
pub struct RandomAffine {
    inner: per_image::RandomAffine,
}

impl RandomAffine {
    /// From the per-image transform's parameters (`degrees`, `translate`, `shear`, `fill`).
    pub fn from_params(params: &Params) -> Result<Self> {
        Ok(RandomAffine {
            inner: per_image::RandomAffine::from_params(params)?,
        })
    }

    /// The inverse matrices of every sample, row-major `[N, 6]` (`f32`, as the per-image
    /// transform rounds them).
    fn matrices(&self, seeds: &[u64], height: i64, width: i64) -> Vec<f32> {
        let mut v = Vec::with_capacity(seeds.len() * 6);
        for &s in seeds {
            let p = self
                .inner
                .draw(&mut Rng::new(s), width as usize, height as usize);
            v.extend(per_image::inverse_affine_matrix(&p).map(|x| x as f32));
        }
        v
    }
}

impl BatchTransform for RandomAffine {
    fn apply(&self, batch: &Tensor, seeds: &[u64]) -> Result<Tensor> {
        let (batch, dims) = check(NAME, batch, seeds)?;
        let Dims { n, c, h, w } = dims;
        if n == 0 || h == 0 || w == 0 || c == 0 {
            return Ok(batch);
        }
        let device = batch.device();
        let (half_w, half_h) = (0.5 * w as f32, 0.5 * h as f32);
        // `theta.T / [W/2, H/2]`, rounded to f32 as the per-image transform does.
        let mut r = Vec::with_capacity(n as usize * 6);
        for m in self.matrices(seeds, h, w).chunks_exact(6) {
            r.extend([
                m[0] / half_w,
                m[1] / half_w,
                m[2] / half_w,
                m[3] / half_h,
                m[4] / half_h,
                m[5] / half_h,
            ]);
        }
        let r = upload(&r, n, 6, device);
        let col = |k: i64| r.select(1, k).view([-1, 1, 1]);
        let opts = (Kind::Float, device);
        let x = (Tensor::arange(w, opts) - half_w as f64 + 0.5).view([1, 1, w]);
        let y = (Tensor::arange(h, opts) - half_h as f64 + 0.5).view([1, h, 1]);
        let gx = &x * col(0) + &y * col(1) + col(2);
        let gy = &x * col(3) + &y * col(4) + col(5);
        let (wf, hf) = (w as f64, h as f64);
        let ix = (((gx + 1.0) * wf - 1.0) / 2.0).round();
        let iy = (((gy + 1.0) * hf - 1.0) / 2.0).round();
        let valid = ix
            .ge(0.0)
            .logical_and(&ix.lt(wf))
            .logical_and(&iy.ge(0.0))
            .logical_and(&iy.lt(hf));
        let index = (iy.clamp(0.0, hf - 1.0) * wf + ix.clamp(0.0, wf - 1.0))
            .to_kind(Kind::Int64)
            .view([n, 1, h * w])
            .expand([n, c, h * w], false);
        let out = batch
            .reshape([n, c, h * w])
            .gather(2, &index, false)
            .view([n, c, h, w]);
        Ok(out.where_scalarother(&valid.unsqueeze(1), self.inner.fill() as f64))
    }
}

impl Geometric for RandomAffine {
    fn output_size(&self, height: i64, width: i64) -> Result<(i64, i64)> {
        Ok((height, width))
    }

    fn map_back(&self, seeds: &[u64], height: i64, width: i64, c: Coords) -> Result<Coords> {
        let m = upload(
            &self.matrices(seeds, height, width),
            seeds.len() as i64,
            6,
            c.x.device(),
        );
        let col = |k: i64| m.select(1, k).view([-1, 1, 1]);
        let (cx, cy) = ((width - 1) as f64 / 2.0, (height - 1) as f64 / 2.0);
        let (x, y) = (&c.x - cx, &c.y - cy);
        let mut c = Coords {
            x: &x * col(0) + &y * col(1) + col(2) + cx,
            y: &x * col(3) + &y * col(4) + col(5) + cy,
            ..c
        };
        let outside = c.outside(height, width);
        c.mark_outside(&outside, self.inner.fill() as f64);
        Ok(c)
    }
}
