//! A run of geometric steps (`RandomAffine`, `RandomResizedCrop`, `Resize`, `CenterCrop`,
//! `RandomHorizontalFlip`) with their drawn parameters, composed into one map from output
//! pixel to source position and sampled once, bilinearly, at the output size.
//!
//! The separable steps (resample, crop, flip) map rows and columns independently, so their
//! part of the map is two small arrays, one position per output column and per output row;
//! an affine step (only as the first step of a run, i.e. nearest the source) is then applied
//! per pixel. Positions follow the steps exactly: a resample uses PyTorch's `align_corners =
//! False` source position `(d + 0.5) · len / out − 0.5` (clamped below at 0, and its taps
//! clamped to the region, as [`resize_bilinear_region`](crate::resize::resize_bilinear_region)),
//! a crop shifts by its integer offset, a flip mirrors. A run with at most one resample and no
//! affine step therefore gives bit for bit the pixels of the steps; an affine step (nearest
//! sampling in the step) and a second resample are folded into the one bilinear sample.
//!
//! Points outside an image take the fill of the step whose border they cross (the affine
//! step's `fill`, 0 for a padded centre crop), decided at the nearest pixel: where the steps
//! would blend the border into its neighbours, the composed map draws a sharp edge.

use crate::convert::FloatImage;

/// One geometric step with its drawn parameters.
#[derive(Clone, Copy, Debug)]
pub(crate) enum GeoStep {
    /// torchvision's inverse affine matrix (pixel-centred coordinates, output → input) and
    /// the fill; the size is unchanged.
    Affine { m: [f64; 6], fill: f32 },
    /// The region `top, left, height, width` resized bilinearly to the step's output size.
    Resample {
        top: usize,
        left: usize,
        height: usize,
        width: usize,
    },
    /// A crop starting at `(rows, columns)` of the input (negative: zero padding first).
    Crop { offset: (isize, isize) },
    /// A left-right mirror.
    Flip,
}

/// The steps of one run, each with its input size, and the output size.
#[derive(Clone, Debug)]
pub(crate) struct Chain {
    steps: Vec<(GeoStep, (usize, usize))>,
    out: (usize, usize),
}

/// Where an output row or column lands in the input of the run's first step.
#[derive(Clone, Copy, Debug)]
struct AxisPos {
    /// Integer part of the position (start of the last resample's region).
    start: f64,
    /// Position relative to `start`.
    local: f64,
    /// Length of the last resample's region (its taps stay inside), `None` without one.
    len: Option<usize>,
    /// Forward index of the step whose border this position crossed, with its fill.
    outside: Option<(usize, f32)>,
}

/// Two source taps and the weight of the second, or outside with the forward index of the
/// step whose fill applies.
#[derive(Clone, Copy, Debug)]
struct Tap {
    i0: usize,
    i1: usize,
    frac: f32,
    outside: Option<(usize, f32)>,
}

/// A source image: interleaved values of some pixel type and how each becomes `f32`.
pub(crate) trait Texel: Copy + Send + Sync {
    /// The value in [0, 1] (8-bit / 255, 16-bit / 65535, float as is), as `FloatImage`.
    fn unit(self) -> f32;
}

/// `v / 255` for every 8-bit value, as [`FloatImage::from_image`] computes it.
static U8_UNIT: [f32; 256] = {
    let mut t = [0f32; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = i as f32 / 255.0;
        i += 1;
    }
    t
};

impl Texel for u8 {
    #[inline(always)]
    fn unit(self) -> f32 {
        U8_UNIT[self as usize]
    }
}

impl Texel for u16 {
    #[inline(always)]
    fn unit(self) -> f32 {
        self as f32 / 65535.0
    }
}

impl Texel for f32 {
    #[inline(always)]
    fn unit(self) -> f32 {
        self
    }
}

/// Pixels of a source image and its shape.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Source<'a, T> {
    /// Interleaved values.
    pub data: &'a [T],
    /// Height, width, channels.
    pub shape: (usize, usize, usize),
}

impl Chain {
    /// An empty run on an input of `(height, width)`.
    pub fn new(size: (usize, usize)) -> Self {
        Chain {
            steps: Vec::new(),
            out: size,
        }
    }

    /// The current output `(height, width)`.
    pub fn size(&self) -> (usize, usize) {
        self.out
    }

    /// Whether the run does nothing.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Appends an affine step (size unchanged). Only the first step of a run may be affine.
    pub fn push_affine(&mut self, m: [f64; 6], fill: f32) {
        debug_assert!(self.steps.is_empty());
        self.steps.push((GeoStep::Affine { m, fill }, self.out));
    }

    /// Appends a resample of `region = (top, left, height, width)` to `out`.
    pub fn push_resample(&mut self, region: (usize, usize, usize, usize), out: (usize, usize)) {
        let (top, left, height, width) = region;
        let step = GeoStep::Resample {
            top,
            left,
            height,
            width,
        };
        self.steps.push((step, self.out));
        self.out = out;
    }

    /// Appends a crop to `out` starting at `offset` (rows, columns).
    pub fn push_crop(&mut self, offset: (isize, isize), out: (usize, usize)) {
        self.steps.push((GeoStep::Crop { offset }, self.out));
        self.out = out;
    }

    /// Appends a left-right mirror.
    pub fn push_flip(&mut self) {
        self.steps.push((GeoStep::Flip, self.out));
    }

    fn affine(&self) -> Option<([f64; 6], f32)> {
        match self.steps.first() {
            Some((GeoStep::Affine { m, fill }, _)) => Some((*m, *fill)),
            _ => None,
        }
    }

    /// Walks the separable steps backwards for output index `d` along rows (`vertical`) or
    /// columns.
    fn axis_pos(&self, d: usize, vertical: bool) -> AxisPos {
        let mut p = AxisPos {
            start: d as f64,
            local: 0.0,
            len: None,
            outside: None,
        };
        for (index, (step, (in_h, in_w))) in self.steps.iter().enumerate().rev() {
            let in_len = if vertical { *in_h } else { *in_w };
            match *step {
                GeoStep::Affine { .. } => {}
                GeoStep::Flip => {
                    if !vertical {
                        let x = in_len as f64 - 1.0 - (p.start + p.local);
                        p = AxisPos {
                            start: x.floor(),
                            local: x - x.floor(),
                            len: None,
                            outside: None,
                        };
                    }
                }
                GeoStep::Crop { offset } => {
                    p.start += if vertical { offset.0 } else { offset.1 } as f64;
                    let x = p.start + p.local;
                    if x < -0.5 || x >= in_len as f64 - 0.5 {
                        p.outside = Some((index, 0.0));
                        return p;
                    }
                }
                GeoStep::Resample {
                    top,
                    left,
                    height,
                    width,
                } => {
                    let (start, len) = if vertical {
                        (top, height)
                    } else {
                        (left, width)
                    };
                    let out_len = if index + 1 < self.steps.len() {
                        let (h, w) = self.steps[index + 1].1;
                        if vertical {
                            h
                        } else {
                            w
                        }
                    } else if vertical {
                        self.out.0
                    } else {
                        self.out.1
                    };
                    let scale = len as f64 / out_len as f64;
                    let src = ((p.start + p.local + 0.5) * scale - 0.5).max(0.0);
                    p = AxisPos {
                        start: start as f64,
                        local: src,
                        len: Some(len),
                        outside: None,
                    };
                }
            }
        }
        p
    }

    /// The taps of output index `d` in a source of `n` values along the axis, without an
    /// affine step.
    fn tap(&self, d: usize, vertical: bool, n: usize) -> Tap {
        let p = self.axis_pos(d, vertical);
        let last = n.saturating_sub(1);
        let (i0, i1, frac) = match p.len {
            // As `resize::taps`: the second tap clamped to the region.
            Some(len) => {
                let i = (p.local as usize).min(len - 1);
                let next = if i + 1 < len { i + 1 } else { i };
                let s = p.start as usize;
                (s + i, s + next, (p.local - i as f64) as f32)
            }
            None => {
                let x = (p.start + p.local).clamp(0.0, last as f64);
                let i = x.floor() as usize;
                (i, (i + 1).min(last), (x - i as f64) as f32)
            }
        };
        Tap {
            i0: i0.min(last),
            i1: i1.min(last),
            frac,
            outside: p.outside,
        }
    }

    /// Samples the run's output from `src` (whose height and width are the run's input size).
    pub fn sample<T: Texel>(&self, src: Source<'_, T>) -> FloatImage {
        let (h, w, c) = src.shape;
        let (out_h, out_w) = self.out;
        let mut out = FloatImage::zeros(out_w, out_h, c);
        if out_h == 0 || out_w == 0 || h == 0 || w == 0 {
            return out;
        }
        match self.affine() {
            None => {
                let xs: Vec<Tap> = (0..out_w).map(|x| self.tap(x, false, w)).collect();
                let ys: Vec<Tap> = (0..out_h).map(|y| self.tap(y, true, h)).collect();
                sample_separable(src, &xs, &ys, &mut out);
            }
            Some((m, fill)) => {
                let xs: Vec<AxisPos> = (0..out_w).map(|x| self.axis_pos(x, false)).collect();
                let ys: Vec<AxisPos> = (0..out_h).map(|y| self.axis_pos(y, true)).collect();
                sample_affine(src, &xs, &ys, m, fill, &mut out);
            }
        }
        out
    }
}

/// The fill of a pixel whose row and column taps may be outside: the step nearest the
/// output wins (the later step overwrote the earlier one's pixels).
#[inline]
fn outside(a: Option<(usize, f32)>, b: Option<(usize, f32)>) -> Option<f32> {
    match (a, b) {
        (None, None) => None,
        (Some((_, f)), None) | (None, Some((_, f))) => Some(f),
        (Some((i, f)), Some((j, g))) => Some(if i >= j { f } else { g }),
    }
}

/// Separable bilinear sampling with the arithmetic of `resize_bilinear_region`, so that one
/// resample gives the same bits.
fn sample_separable<T: Texel>(src: Source<'_, T>, xs: &[Tap], ys: &[Tap], out: &mut FloatImage) {
    let (_, w, c) = src.shape;
    let row_len = w * c;
    let out_row_len = out.row_len();
    let columns_inside = xs.iter().all(|t| t.outside.is_none());
    for (ty, dst) in ys.iter().zip(out.data.chunks_exact_mut(out_row_len)) {
        let r0 = &src.data[ty.i0 * row_len..(ty.i0 + 1) * row_len];
        let r1 = &src.data[ty.i1 * row_len..(ty.i1 + 1) * row_len];
        let wy = (1.0 - ty.frac, ty.frac);
        match (columns_inside && ty.outside.is_none(), c) {
            (true, 1) => row_inside::<T, 1>(dst, r0, r1, xs, wy),
            (true, 3) => row_inside::<T, 3>(dst, r0, r1, xs, wy),
            _ => row_any(dst, r0, r1, xs, ty, c),
        }
    }
}

/// One output row whose taps all lie inside, `C` channels (the common case, unrolled).
#[inline(always)]
fn row_inside<T: Texel, const C: usize>(
    dst: &mut [f32],
    r0: &[T],
    r1: &[T],
    xs: &[Tap],
    (wy0, wy1): (f32, f32),
) {
    for (px, tx) in dst.chunks_exact_mut(C).zip(xs) {
        let (wx1, wx0) = (tx.frac, 1.0 - tx.frac);
        let (a0, a1) = (tx.i0 * C, tx.i1 * C);
        let (p00, p01) = (&r0[a0..a0 + C], &r0[a1..a1 + C]);
        let (p10, p11) = (&r1[a0..a0 + C], &r1[a1..a1 + C]);
        for k in 0..C {
            let top = wx0 * p00[k].unit() + wx1 * p01[k].unit();
            let bottom = wx0 * p10[k].unit() + wx1 * p11[k].unit();
            px[k] = wy0 * top + wy1 * bottom;
        }
    }
}

/// One output row in general: any channel count, taps possibly outside.
fn row_any<T: Texel>(dst: &mut [f32], r0: &[T], r1: &[T], xs: &[Tap], ty: &Tap, c: usize) {
    let (wy1, wy0) = (ty.frac, 1.0 - ty.frac);
    for (px, tx) in dst.chunks_exact_mut(c).zip(xs) {
        if let Some(fill) = outside(tx.outside, ty.outside) {
            px.fill(fill);
            continue;
        }
        let (wx1, wx0) = (tx.frac, 1.0 - tx.frac);
        let (a0, a1) = (tx.i0 * c, tx.i1 * c);
        for (k, v) in px.iter_mut().enumerate() {
            let top = wx0 * r0[a0 + k].unit() + wx1 * r0[a1 + k].unit();
            let bottom = wx0 * r1[a0 + k].unit() + wx1 * r1[a1 + k].unit();
            *v = wy0 * top + wy1 * bottom;
        }
    }
}

/// Bilinear sampling through an affine step: the separable positions (in the affine step's
/// output, pixel units) go through the inverse matrix in pixel-centred coordinates as
/// torchvision's grid does (`x + 0.5 − W/2`), then the source is read bilinearly; a point
/// whose nearest pixel is outside takes `fill`.
fn sample_affine<T: Texel>(
    src: Source<'_, T>,
    xs: &[AxisPos],
    ys: &[AxisPos],
    m: [f64; 6],
    fill: f32,
    out: &mut FloatImage,
) {
    let (h, w, c) = src.shape;
    let (half_w, half_h) = (0.5 * w as f64, 0.5 * h as f64);
    // Column part of the source x and y, and row part (with the translation and centre).
    let cols: Vec<(f32, f32)> = xs
        .iter()
        .map(|p| {
            let x = p.start + p.local + 0.5 - half_w;
            ((m[0] * x) as f32, (m[3] * x) as f32)
        })
        .collect();
    let (wf, hf) = (w as f32, h as f32);
    let (max_x, max_y) = (wf - 1.0, hf - 1.0);
    let row_len = w * c;
    let out_row_len = out.row_len();
    for (py, dst) in ys.iter().zip(out.data.chunks_exact_mut(out_row_len)) {
        let y = py.start + py.local + 0.5 - half_h;
        let bx = (m[1] * y + m[2] + half_w - 0.5) as f32;
        let by = (m[4] * y + m[5] + half_h - 0.5) as f32;
        for ((px, &(ax, ay)), pxx) in dst.chunks_exact_mut(c).zip(&cols).zip(xs) {
            if let Some(f) = outside(pxx.outside, py.outside) {
                px.fill(f);
                continue;
            }
            let (sx, sy) = (ax + bx, ay + by);
            if !(sx >= -0.5 && sx < wf - 0.5 && sy >= -0.5 && sy < hf - 0.5) {
                px.fill(fill);
                continue;
            }
            let (sx, sy) = (sx.clamp(0.0, max_x), sy.clamp(0.0, max_y));
            let (x0, y0) = (sx as usize, sy as usize);
            let (fx, fy) = (sx - x0 as f32, sy - y0 as f32);
            let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
            let (r0, r1) = (y0 * row_len, y1 * row_len);
            let (a0, a1) = (x0 * c, x1 * c);
            for (k, v) in px.iter_mut().enumerate() {
                let t = src.data[r0 + a0 + k].unit()
                    + fx * (src.data[r0 + a1 + k].unit() - src.data[r0 + a0 + k].unit());
                let b = src.data[r1 + a0 + k].unit()
                    + fx * (src.data[r1 + a1 + k].unit() - src.data[r1 + a0 + k].unit());
                *v = t + fy * (b - t);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resize::resize_bilinear_region;

    fn ramp(h: usize, w: usize, c: usize) -> Vec<f32> {
        (0..h * w * c).map(|i| (i % 251) as f32 / 251.0).collect()
    }

    #[test]
    fn one_resample_and_a_flip_give_the_bits_of_the_steps() {
        let (h, w, c) = (20, 30, 3);
        let data = ramp(h, w, c);
        let src = FloatImage {
            width: w,
            height: h,
            channels: c,
            data: data.clone(),
        };
        let mut expected = resize_bilinear_region(&src, 3, 5, 11, 17, 32, 32);
        crate::horizontal_flip::flip_horizontal(&mut expected);
        let mut chain = Chain::new((h, w));
        chain.push_resample((3, 5, 11, 17), (32, 32));
        chain.push_flip();
        let got = chain.sample(Source {
            data: &data,
            shape: (h, w, c),
        });
        assert_eq!(got, expected);
    }

    #[test]
    fn a_padded_crop_fills_with_zeros() {
        let data = vec![1.0f32; 4 * 4];
        let mut chain = Chain::new((4, 4));
        chain.push_crop((-1, -1), (6, 6));
        let got = chain.sample(Source {
            data: &data,
            shape: (4, 4, 1),
        });
        let ones = got.data.iter().filter(|&&v| v == 1.0).count();
        assert_eq!(ones, 16);
        assert_eq!(got.data[0], 0.0);
        assert_eq!(got.data[7], 1.0);
    }
}
