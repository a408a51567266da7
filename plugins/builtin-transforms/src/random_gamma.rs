//! `RandomGamma`: one random gamma correction for the whole image (InnerEye's `RandomGamma`).

use crate::args;
use crate::convert::FloatImage;
use crate::rng::Rng;
use ssl_plugin_api::{Image, Params, Result, Transform};

/// Draws `gamma ~ U(scale)` (default `[0.5, 1.5]`) once and maps every value of every channel
/// to `clamp(x^gamma, 0, 1)` (torchvision's `adjust_gamma` on float tensors, gain 1).
/// Negative inputs are treated as 0 (torch would give NaN).
///
/// The original applies the gamma to the first channel of the first slice only (its loop
/// zips the slice and channel ranges), which breaks the identical channels of an expanded
/// X-ray; here every channel gets the same gamma, as its documentation and tests intend.
#[derive(Clone, Debug)]
pub struct RandomGamma {
    scale: (f64, f64),
}

const NAME: &str = "RandomGamma";

impl RandomGamma {
    /// From parameters: `scale` (`[0.5, 1.5]`, values ≥ 0).
    pub fn from_params(params: &Params) -> Result<Self> {
        args::check_known(params, NAME, &["scale"])?;
        let scale = args::range(params, NAME, "scale", (0.5, 1.5), None)?;
        args::check_bounds(NAME, "scale", scale, 0.0, None)?;
        Ok(RandomGamma { scale })
    }

    /// The gamma drawn for `seed` (what [`Transform::apply`] uses).
    pub fn gamma_for_seed(&self, seed: u64) -> f64 {
        Rng::new(seed).uniform(self.scale.0, self.scale.1)
    }
}

/// `x ← clamp(max(x, 0)^gamma, 0, 1)` for every value.
pub fn adjust_gamma(data: &mut [f32], gamma: f32) {
    for v in data {
        *v = v.max(0.0).powf(gamma).clamp(0.0, 1.0);
    }
}

impl Transform for RandomGamma {
    fn apply(&self, image: Image, seed: u64) -> Result<Image> {
        let mut img = FloatImage::from_image(image);
        adjust_gamma(&mut img.data, self.gamma_for_seed(seed) as f32);
        img.into_image()
    }
}
