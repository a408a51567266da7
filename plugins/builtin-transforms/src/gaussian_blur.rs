//! `GaussianBlur`: with probability `p`, a separable Gaussian blur of random sigma
//! (pl_bolts' SimCLR blur, i.e. `cv2.GaussianBlur` with reflect-101 borders).

use crate::args;
use crate::convert::FloatImage;
use crate::rng::Rng;
use ssl_plugin_api::{bail, Image, Params, Result, Transform};

/// With probability `p` (default 0.5) blurs with a `kernel_size × kernel_size` Gaussian
/// (default 3, odd) of `sigma ~ U(sigma)` (default `[0.1, 2.0]`; a single number fixes it),
/// weights `exp(−x² / 2σ²)` normalised to sum 1 as `cv2.getGaussianKernel`, borders
/// reflected without repeating the edge (`cv2.BORDER_REFLECT_101`). All channels alike.
#[derive(Clone, Debug)]
pub struct GaussianBlur {
    kernel_size: usize,
    sigma: (f64, f64),
    p: f64,
}

const NAME: &str = "GaussianBlur";

impl GaussianBlur {
    /// From parameters: `kernel_size` (3), `sigma` (`[0.1, 2.0]`), `p` (0.5).
    pub fn from_params(params: &Params) -> Result<Self> {
        args::check_known(params, NAME, &["kernel_size", "sigma", "p"])?;
        let kernel_size: i64 = params
            .get_or("kernel_size", 3)
            .map_err(|e| e.context(NAME))?;
        if kernel_size < 1 || kernel_size % 2 == 0 || kernel_size > 1001 {
            bail!("{NAME}: parameter `kernel_size` = {kernel_size}: must be an odd integer in 1..=1001");
        }
        let sigma = args::range(params, NAME, "sigma", (0.1, 2.0), Some(&|x: f64| (x, x)))?;
        if sigma.0 <= 0.0 {
            bail!(
                "{NAME}: parameter `sigma` = [{}, {}]: values must be positive",
                sigma.0,
                sigma.1
            );
        }
        Ok(GaussianBlur {
            kernel_size: kernel_size as usize,
            sigma,
            p: args::probability(params, NAME, "p", 0.5)?,
        })
    }
}

impl GaussianBlur {
    /// The (odd) kernel size.
    pub fn kernel_size(&self) -> usize {
        self.kernel_size
    }

    /// The draws of one application from `rng`: `Some(sigma)` when the image is blurred
    /// (probability `p`), `None` when it is left as it is.
    pub fn draw_sigma(&self, rng: &mut Rng) -> Option<f64> {
        if !rng.bernoulli(self.p) {
            return None;
        }
        Some(rng.uniform(self.sigma.0, self.sigma.1))
    }
}

/// The normalised 1-D Gaussian kernel of odd `size` and standard deviation `sigma`.
pub fn gaussian_kernel(size: usize, sigma: f64) -> Vec<f32> {
    let centre = (size as f64 - 1.0) / 2.0;
    let raw: Vec<f64> = (0..size)
        .map(|i| {
            let x = i as f64 - centre;
            (-x * x / (2.0 * sigma * sigma)).exp()
        })
        .collect();
    let sum: f64 = raw.iter().sum();
    raw.iter().map(|&v| (v / sum) as f32).collect()
}

/// Index `i` reflected into `0..n` without repeating the edge (`dcb|abcd|cba`), as
/// `cv2.BORDER_REFLECT_101`; `n == 1` always gives 0.
pub fn reflect101(mut i: isize, n: usize) -> usize {
    let n = n as isize;
    if n == 1 {
        return 0;
    }
    loop {
        if i < 0 {
            i = -i;
        } else if i >= n {
            i = 2 * (n - 1) - i;
        } else {
            return i as usize;
        }
    }
}

/// Convolves `img` with `kernel` along rows, then columns (reflect-101 borders).
pub fn blur_separable(img: &FloatImage, kernel: &[f32]) -> FloatImage {
    let (w, h, c) = (img.width, img.height, img.channels);
    let r = kernel.len() / 2;
    let row_len = img.row_len();
    let mut out = FloatImage::zeros(w, h, c);
    if w == 0 || h == 0 {
        return out;
    }
    // Horizontal pass through a padded copy of each row.
    let mut tmp = vec![0f32; img.data.len()];
    let mut padded = vec![0f32; (w + 2 * r) * c];
    for (src, dst) in img
        .data
        .chunks_exact(row_len)
        .zip(tmp.chunks_exact_mut(row_len))
    {
        for (px, slot) in padded.chunks_exact_mut(c).enumerate() {
            let sx = reflect101(px as isize - r as isize, w);
            slot.copy_from_slice(&src[sx * c..(sx + 1) * c]);
        }
        for (j, v) in dst.iter_mut().enumerate() {
            let mut acc = 0f32;
            for (k, &wk) in kernel.iter().enumerate() {
                acc += wk * padded[j + k * c];
            }
            *v = acc;
        }
    }
    // Vertical pass: whole rows at a time.
    let rows: Vec<usize> = (0..h + 2 * r)
        .map(|y| reflect101(y as isize - r as isize, h))
        .collect();
    for (y, dst) in out.data.chunks_exact_mut(row_len).enumerate() {
        for (k, &wk) in kernel.iter().enumerate() {
            let sy = rows[y + k];
            let src = &tmp[sy * row_len..(sy + 1) * row_len];
            for (d, &s) in dst.iter_mut().zip(src) {
                *d += wk * s;
            }
        }
        for d in dst.iter_mut() {
            *d = d.clamp(0.0, 1.0);
        }
    }
    out
}

impl GaussianBlur {
    /// The blur kernel drawn from `rng` (what [`Transform::apply`] uses), `None` when the
    /// image is left as it is.
    pub fn draw_kernel(&self, rng: &mut Rng) -> Option<Vec<f32>> {
        self.draw_sigma(rng)
            .filter(|_| self.kernel_size > 1)
            .map(|sigma| gaussian_kernel(self.kernel_size, sigma))
    }
}

impl Transform for GaussianBlur {
    fn apply(&self, image: Image, seed: u64) -> Result<Image> {
        let img = FloatImage::from_image(image);
        match self.draw_kernel(&mut Rng::new(seed)) {
            None => img.into_image(),
            Some(kernel) => blur_separable(&img, &kernel).into_image(),
        }
    }
}
