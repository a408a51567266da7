//! Resampling shared by the geometric batch transforms: a separable bilinear resize with the
//! taps of the per-image transforms (exact), and bilinear sampling at arbitrary points.

use crate::batch::{upload, Dims};
use ssl_plugin_api::tch::{Kind, Tensor};

/// The source taps of one output axis, as the per-image `resize_bilinear_region` computes
/// them (PyTorch's `upsample_bilinear2d`, `align_corners=False`): first and second input
/// index and their weights.
#[derive(Clone, Debug, Default)]
pub struct Taps {
    /// First input index of each output position.
    pub i0: Vec<f32>,
    /// Second input index (clamped to the last input).
    pub i1: Vec<f32>,
    /// Weight of the first index.
    pub w0: Vec<f32>,
    /// Weight of the second index.
    pub w1: Vec<f32>,
}

impl Taps {
    /// Appends the taps of `out` positions sampling `len` inputs from `start`: `src = (dst +
    /// 0.5) · len / out − 0.5`, clamped below at 0; the second tap is clamped to the last
    /// input (in `f64`, as the per-image transform).
    pub fn push(&mut self, start: usize, len: usize, out: usize) {
        let scale = len as f64 / out as f64;
        for d in 0..out {
            let src = ((d as f64 + 0.5) * scale - 0.5).max(0.0);
            let i = (src as usize).min(len - 1);
            let next = if i + 1 < len { i + 1 } else { i };
            let frac = (src - i as f64) as f32;
            self.i0.push((start + i) as f32);
            self.i1.push((start + next) as f32);
            self.w0.push(1.0 - frac);
            self.w1.push(frac);
        }
    }
}

/// Bilinear resize of one region per sample: `rows` and `cols` hold the taps of every
/// sample one after another (`rows_per` = output height, `cols_per` = output width per
/// sample), or of one sample shared by all (`shared = true`). Computed as the per-image
/// transform does (the two columns of each row blended first, then the two rows), so the
/// result matches it to float rounding.
pub fn resize_separable(
    batch: &Tensor,
    dims: Dims,
    rows: &Taps,
    cols: &Taps,
    out_h: i64,
    out_w: i64,
) -> Tensor {
    let device = batch.device();
    let samples = rows.i0.len() as i64 / out_h;
    let table = |t: &Taps, len: i64| {
        let mut v = Vec::with_capacity(t.i0.len() * 4);
        for part in [&t.i0, &t.i1, &t.w0, &t.w1] {
            v.extend_from_slice(part);
        }
        upload(&v, 4, samples * len, device).view([4, samples, len])
    };
    let r = table(rows, out_h);
    let c = table(cols, out_w);
    let (n, ch, w) = (dims.n, dims.c, dims.w);
    let row_index = |k: i64| {
        r.get(k)
            .to_kind(Kind::Int64)
            .view([samples, 1, out_h, 1])
            .expand([n, ch, out_h, w], false)
    };
    let col_index = |k: i64| {
        c.get(k)
            .to_kind(Kind::Int64)
            .view([samples, 1, 1, out_w])
            .expand([n, ch, out_h, out_w], false)
    };
    let r0 = batch.gather(2, &row_index(0), false);
    let r1 = batch.gather(2, &row_index(1), false);
    let (a0, a1) = (col_index(0), col_index(1));
    let wx0 = c.get(2).view([samples, 1, 1, out_w]);
    let wx1 = c.get(3).view([samples, 1, 1, out_w]);
    let wy0 = r.get(2).view([samples, 1, out_h, 1]);
    let wy1 = r.get(3).view([samples, 1, out_h, 1]);
    let top = &wx0 * r0.gather(3, &a0, false) + &wx1 * r0.gather(3, &a1, false);
    let bottom = &wx0 * r1.gather(3, &a0, false) + &wx1 * r1.gather(3, &a1, false);
    wy0 * top + wy1 * bottom
}

/// Samples `batch` `[N, C, H, W]` bilinearly at rows `y` and columns `x` (`[N, H', W']`
/// pixel coordinates, pixel centres at integers), 0 where the point lies outside `[0, H − 1]
/// × [0, W − 1]` (scipy's `map_coordinates(order=1, mode="constant")`). Inside, the taps are
/// inside pixels, so the border sampler gives the same values.
pub fn bilinear_zero_outside(batch: &Tensor, dims: Dims, y: &Tensor, x: &Tensor) -> Tensor {
    let (hm, wm) = ((dims.h - 1) as f64, (dims.w - 1) as f64);
    let inside = y
        .ge(0.0)
        .logical_and(&y.le(hm))
        .logical_and(&x.ge(0.0))
        .logical_and(&x.le(wm));
    bilinear_border(batch, dims, y, x) * inside.unsqueeze(1).to_kind(Kind::Float)
}

/// Samples `batch` bilinearly at pixel coordinates `x`, `y` (`[N, H', W']`) with
/// coordinates clamped to the image (`grid_sample(mode="bilinear", padding_mode="border",
/// align_corners=False)`, one kernel).
pub fn bilinear_border(batch: &Tensor, dims: Dims, y: &Tensor, x: &Tensor) -> Tensor {
    let gx = (x * 2.0 + 1.0) / dims.w as f64 - 1.0;
    let gy = (y * 2.0 + 1.0) / dims.h as f64 - 1.0;
    let grid = Tensor::stack(&[gx, gy], -1);
    // interpolation 0 = bilinear, padding 1 = border.
    batch.grid_sampler(&grid, 0, 1, false)
}
