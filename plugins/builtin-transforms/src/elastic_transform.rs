//! `ElasticTransform`: a random smooth displacement field (Simard et al. 2003), as InnerEye's
//! `ElasticTransform` (scipy `gaussian_filter` + `map_coordinates`).

use crate::args;
use crate::convert::FloatImage;
use crate::rng::Rng;
use ssl_plugin_api::{bail, Image, Params, Result, Transform};

/// With probability `p_apply` (default 0.5), draws two fields of `U(-1, 1)` values, one per
/// pixel, smooths each with a Gaussian of standard deviation `sigma` (default 4; scipy's
/// `gaussian_filter`, truncated at 4σ, zeros outside) and scales them by `alpha` (default
/// 35), giving `dx` then `dy`. Output pixel `(row, col)` is the bilinear (order 1) sample of
/// the input at `(row + dx, col + dy)`, 0 where that point lies outside the image (scipy
/// `map_coordinates`, mode `"constant"`). As in the original, `dx` moves along rows
/// (vertically) and `dy` along columns. The same field serves every channel.
#[derive(Clone, Debug)]
pub struct ElasticTransform {
    alpha: f64,
    sigma: f64,
    p_apply: f64,
}

const NAME: &str = "ElasticTransform";

impl ElasticTransform {
    /// From parameters: `alpha` (35, ≥ 0), `sigma` (4, ≥ 0), `p_apply` (0.5).
    pub fn from_params(params: &Params) -> Result<Self> {
        args::check_known(params, NAME, &["alpha", "sigma", "p_apply"])?;
        let number = |name: &str, default: f64| -> Result<f64> {
            let v: f64 = params.get_or(name, default).map_err(|e| e.context(NAME))?;
            if !v.is_finite() || v < 0.0 {
                bail!("{NAME}: parameter `{name}` = {v}: must be a non-negative number");
            }
            Ok(v)
        };
        Ok(ElasticTransform {
            alpha: number("alpha", 35.0)?,
            sigma: number("sigma", 4.0)?,
            p_apply: args::probability(params, NAME, "p_apply", 0.5)?,
        })
    }

    /// The scale of the smoothed fields, in pixels.
    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    /// The standard deviation of the smoothing Gaussian, in pixels.
    pub fn sigma(&self) -> f64 {
        self.sigma
    }

    /// The probability of applying the warp.
    pub fn p_apply(&self) -> f64 {
        self.p_apply
    }
}

/// scipy's `_gaussian_kernel1d(sigma, 0, radius)` with `radius = int(4 σ + 0.5)`: weights
/// `exp(-x² / 2σ²)` for `x` in `-radius..=radius`, normalised to sum 1.
pub fn gaussian_kernel1d(sigma: f64) -> Vec<f64> {
    let radius = (4.0 * sigma + 0.5) as i64;
    let raw: Vec<f64> = (-radius..=radius)
        .map(|x| (-0.5 / (sigma * sigma) * (x * x) as f64).exp())
        .collect();
    let sum: f64 = raw.iter().sum();
    raw.into_iter().map(|v| v / sum).collect()
}

/// scipy's `gaussian_filter(field, sigma, mode="constant", cval=0)` on a row-major
/// `height × width` field: the 1-D kernel along rows, then along columns, zeros outside.
/// A `sigma` of (nearly) 0 leaves the field unchanged, as scipy does.
pub fn gaussian_filter(field: &[f64], height: usize, width: usize, sigma: f64) -> Vec<f64> {
    assert_eq!(field.len(), height * width);
    if sigma <= 1e-15 {
        return field.to_vec();
    }
    let k = gaussian_kernel1d(sigma);
    let r = (k.len() / 2) as isize;
    let correlate = |src: &[f64], len: usize, stride: usize, lines: usize, line_stride: usize| {
        let mut out = vec![0.0; src.len()];
        for line in 0..lines {
            let base = line * line_stride;
            for i in 0..len as isize {
                let mut acc = 0.0;
                for (t, &kw) in k.iter().enumerate() {
                    let j = i + t as isize - r;
                    if j >= 0 && j < len as isize {
                        acc += kw * src[base + j as usize * stride];
                    }
                }
                out[base + i as usize * stride] = acc;
            }
        }
        out
    };
    // Axis 0 (down the columns), then axis 1 (along the rows), as scipy.
    let tmp = correlate(field, height, width, width, 1);
    correlate(&tmp, width, 1, height, width)
}

/// Samples `img` at `(row + dx, col + dy)` for every pixel, bilinearly, with 0 outside
/// `[0, H - 1] × [0, W - 1]` (scipy `map_coordinates(order=1, mode="constant")`).
pub fn warp(img: &FloatImage, dx: &[f64], dy: &[f64]) -> FloatImage {
    let (w, h, c) = (img.width, img.height, img.channels);
    assert!(dx.len() == w * h && dy.len() == w * h);
    let mut out = FloatImage::zeros(w, h, c);
    if w == 0 || h == 0 {
        return out;
    }
    let row_len = img.row_len();
    let (max_r, max_c) = ((h - 1) as f64, (w - 1) as f64);
    for r in 0..h {
        for col in 0..w {
            let k = r * w + col;
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

/// The `U(-1, 1)` noise of one displacement field, `height × width` values drawn from `rng`.
fn noise(rng: &mut Rng, height: usize, width: usize) -> Vec<f64> {
    (0..height * width)
        .map(|_| rng.next_f64() * 2.0 - 1.0)
        .collect()
}

impl ElasticTransform {
    /// The displacement fields `(dx, dy)` for a `height × width` image, drawn from `rng`.
    pub fn fields(&self, rng: &mut Rng, height: usize, width: usize) -> (Vec<f64>, Vec<f64>) {
        let nx = noise(rng, height, width);
        let ny = noise(rng, height, width);
        (
            self.smooth(&nx, height, width),
            self.smooth(&ny, height, width),
        )
    }

    /// The raw noise of the two fields `(dx, dy)` before smoothing, drawn from `rng` as
    /// [`Transform::apply`] does (the `p_apply` draw first); `None` when the image is left as
    /// it is.
    pub fn draw_noise(
        &self,
        rng: &mut Rng,
        height: usize,
        width: usize,
    ) -> Option<(Vec<f64>, Vec<f64>)> {
        if !rng.bernoulli(self.p_apply) || width == 0 || height == 0 {
            return None;
        }
        let nx = noise(rng, height, width);
        let ny = noise(rng, height, width);
        Some((nx, ny))
    }

    /// One displacement field from its raw noise: smoothed, times `alpha`.
    fn smooth(&self, noise: &[f64], height: usize, width: usize) -> Vec<f64> {
        let mut f = gaussian_filter(noise, height, width, self.sigma);
        for v in &mut f {
            *v *= self.alpha;
        }
        f
    }
}

impl Transform for ElasticTransform {
    fn apply(&self, image: Image, seed: u64) -> Result<Image> {
        let img = FloatImage::from_image(image);
        let Some((nx, ny)) = self.draw_noise(&mut Rng::new(seed), img.height, img.width) else {
            return img.into_image();
        };
        let dx = self.smooth(&nx, img.height, img.width);
        let dy = self.smooth(&ny, img.height, img.width);
        warp(&img, &dx, &dy).into_image()
    }
}
