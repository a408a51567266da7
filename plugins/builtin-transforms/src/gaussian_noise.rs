//! `AddGaussianNoise`: additive Gaussian noise kept within the image's range (InnerEye's
//! `AddGaussianNoise`).

use crate::args;
use crate::convert::FloatImage;
use crate::rng::Rng;
use ssl_plugin_api::{bail, Image, Params, Result, Transform};

/// With probability `p_apply` (default 0.5) adds one field of `N(0, std²)` noise (default
/// `std` 0.01), one value per pixel shared by every channel, then clamps to the minimum and
/// maximum of the image before the noise (over all channels), as the original's
/// `clamp(x + randn(H, W) * std, x.min(), x.max())`.
#[derive(Clone, Debug)]
pub struct AddGaussianNoise {
    p_apply: f64,
    std: f64,
}

const NAME: &str = "AddGaussianNoise";

impl AddGaussianNoise {
    /// From parameters: `p_apply` (0.5), `std` (0.01, ≥ 0).
    pub fn from_params(params: &Params) -> Result<Self> {
        args::check_known(params, NAME, &["p_apply", "std"])?;
        let std: f64 = params.get_or("std", 0.01).map_err(|e| e.context(NAME))?;
        if !std.is_finite() || std < 0.0 {
            bail!("{NAME}: parameter `std` = {std}: must be a non-negative number");
        }
        Ok(AddGaussianNoise {
            p_apply: args::probability(params, NAME, "p_apply", 0.5)?,
            std,
        })
    }

    /// The noise field for an image of `pixels` pixels, drawn from `rng` as
    /// [`Transform::apply`] does (the `p_apply` draw first), `None` when no noise is added.
    pub fn draw(&self, rng: &mut Rng, pixels: usize) -> Option<Vec<f32>> {
        if pixels == 0 || !rng.bernoulli(self.p_apply) {
            return None;
        }
        Some(
            (0..pixels)
                .map(|_| (rng.normal() * self.std) as f32)
                .collect(),
        )
    }

    /// The probability of adding noise.
    pub fn p_apply(&self) -> f64 {
        self.p_apply
    }

    /// The standard deviation of the noise.
    pub fn std(&self) -> f64 {
        self.std
    }
}

/// Adds `noise` (one value per pixel) to every channel of `img`, clamped to the image's own
/// `[min, max]`.
pub fn add_noise(img: &mut FloatImage, noise: &[f32]) {
    let c = img.channels;
    assert_eq!(noise.len() * c, img.data.len());
    let (lo, hi) = img
        .data
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    if lo.is_nan() || hi.is_nan() || lo > hi {
        return;
    }
    for (px, &n) in img.data.chunks_exact_mut(c.max(1)).zip(noise) {
        for v in px {
            *v = (*v + n).clamp(lo, hi);
        }
    }
}

impl Transform for AddGaussianNoise {
    fn apply(&self, image: Image, seed: u64) -> Result<Image> {
        let mut img = FloatImage::from_image(image);
        let pixels = if img.data.is_empty() {
            0
        } else {
            img.width * img.height
        };
        if let Some(noise) = self.draw(&mut Rng::new(seed), pixels) {
            add_noise(&mut img, &noise);
        }
        img.into_image()
    }
}
