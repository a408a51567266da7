//! `ElasticTransform` evaluated on a window only (the centre crop that follows it), with the
//! same numbers as the step: the displacement fields come from the same noise, smoothed by
//! the same separable Gaussian in the same order of additions (so they are bit for bit the
//! step's fields where they are needed), and the warp is the step's bilinear sample.

use crate::convert::FloatImage;
use crate::elastic_transform::gaussian_kernel1d;

/// A window of an image: first row, first column, height, width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Window {
    /// First row.
    pub top: usize,
    /// First column.
    pub left: usize,
    /// Number of rows.
    pub height: usize,
    /// Number of columns.
    pub width: usize,
}

/// scipy's `gaussian_filter(noise, sigma, mode="constant")` times `alpha`, evaluated on
/// `window` of the `height × width` field only (row-major, `window.height × window.width`).
/// Every value equals the one of [`gaussian_filter`](crate::elastic_transform::gaussian_filter)
/// times `alpha`: the same terms are added in the same order.
pub(crate) fn smoothed_field(
    noise: &[f64],
    height: usize,
    width: usize,
    sigma: f64,
    alpha: f64,
    window: Window,
) -> Vec<f64> {
    let Window {
        top,
        left,
        height: wh,
        width: ww,
    } = window;
    let mut out = vec![0.0; wh * ww];
    if sigma <= 1e-15 {
        for (r, dst) in out.chunks_exact_mut(ww).enumerate() {
            let src = &noise[(top + r) * width + left..][..ww];
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = s * alpha;
            }
        }
        return out;
    }
    let k = gaussian_kernel1d(sigma);
    let r = (k.len() / 2) as isize;
    // Along axis 0 (down the columns), for the window's rows and every column.
    let mut tmp = vec![0.0; wh * width];
    for (i, acc) in tmp.chunks_exact_mut(width).enumerate() {
        let row = (top + i) as isize;
        for (t, &kw) in k.iter().enumerate() {
            let j = row + t as isize - r;
            if j < 0 || j >= height as isize {
                continue;
            }
            let src = &noise[j as usize * width..][..width];
            for (a, &s) in acc.iter_mut().zip(src) {
                *a += kw * s;
            }
        }
    }
    // Along axis 1 (the rows), for the window's columns.
    for (line, dst) in tmp.chunks_exact(width).zip(out.chunks_exact_mut(ww)) {
        for (t, &kw) in k.iter().enumerate() {
            // Output column `left + c` reads `left + c + t - r`, which must lie in the row.
            let shift = t as isize - r;
            let c_lo = (-(left as isize) - shift).max(0) as usize;
            let c_hi = ((width as isize - left as isize - shift).min(ww as isize)).max(0) as usize;
            if c_lo >= c_hi {
                continue;
            }
            // In range: c_lo and c_hi keep `left + c + shift` inside the row.
            let start = (left as isize + shift + c_lo as isize) as usize;
            for (d, &s) in dst[c_lo..c_hi]
                .iter_mut()
                .zip(&line[start..start + (c_hi - c_lo)])
            {
                *d += kw * s;
            }
        }
        for d in dst.iter_mut() {
            *d *= alpha;
        }
    }
    out
}

/// The step's warp ([`warp`](crate::elastic_transform::warp)) of `img`, evaluated on
/// `window` only, given the fields on the window.
pub(crate) fn warp_window(img: &FloatImage, dx: &[f64], dy: &[f64], window: Window) -> FloatImage {
    let (w, h, c) = (img.width, img.height, img.channels);
    let mut out = FloatImage::zeros(window.width, window.height, c);
    if w == 0 || h == 0 {
        return out;
    }
    let row_len = img.row_len();
    let (max_r, max_c) = ((h - 1) as f64, (w - 1) as f64);
    for i in 0..window.height {
        let r = window.top + i;
        for j in 0..window.width {
            let col = window.left + j;
            let k = i * window.width + j;
            let (sr, sc) = (r as f64 + dx[k], col as f64 + dy[k]);
            if !(sr >= 0.0 && sr <= max_r && sc >= 0.0 && sc <= max_c) {
                continue;
            }
            let (r0, c0) = (sr.floor() as usize, sc.floor() as usize);
            let (fr, fc) = (sr - r0 as f64, sc - c0 as f64);
            let (r1, c1) = ((r0 + 1).min(h - 1), (c0 + 1).min(w - 1));
            let weights = [
                (r0, c0, (1.0 - fr) * (1.0 - fc)),
                (r0, c1, (1.0 - fr) * fc),
                (r1, c0, fr * (1.0 - fc)),
                (r1, c1, fr * fc),
            ];
            let dst = &mut out.data[k * c..(k + 1) * c];
            for (ch, v) in dst.iter_mut().enumerate() {
                let t: f64 = weights
                    .iter()
                    .map(|&(y, x, wt)| img.data[y * row_len + x * c + ch] as f64 * wt)
                    .sum();
                *v = t as f32;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elastic_transform::{gaussian_filter, warp};
    use crate::rng::Rng;

    #[test]
    fn the_window_holds_the_bits_of_the_whole_field_and_warp() {
        let (h, w) = (40, 36);
        let mut rng = Rng::new(3);
        let noise: Vec<f64> = (0..h * w).map(|_| rng.next_f64() * 2.0 - 1.0).collect();
        let full: Vec<f64> = gaussian_filter(&noise, h, w, 2.5)
            .into_iter()
            .map(|v| v * 7.0)
            .collect();
        let win = Window {
            top: 3,
            left: 5,
            height: 30,
            width: 28,
        };
        let part = smoothed_field(&noise, h, w, 2.5, 7.0, win);
        for i in 0..win.height {
            for j in 0..win.width {
                let a = full[(win.top + i) * w + win.left + j];
                assert_eq!(a.to_bits(), part[i * win.width + j].to_bits(), "({i}, {j})");
            }
        }
        let img = FloatImage {
            width: w,
            height: h,
            channels: 1,
            data: (0..h * w).map(|i| (i % 17) as f32 / 17.0).collect(),
        };
        let full_dy: Vec<f64> = full.iter().rev().copied().collect();
        let whole = warp(&img, &full, &full_dy);
        let part_dy: Vec<f64> = (0..win.height * win.width)
            .map(|k| full_dy[(win.top + k / win.width) * w + win.left + k % win.width])
            .collect();
        let got = warp_window(&img, &part, &part_dy, win);
        for i in 0..win.height {
            for j in 0..win.width {
                assert_eq!(
                    whole.data[(win.top + i) * w + win.left + j].to_bits(),
                    got.data[i * win.width + j].to_bits()
                );
            }
        }
    }
}
