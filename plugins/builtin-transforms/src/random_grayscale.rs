//! `RandomGrayscale`: replace RGB by its luma with probability `p`, keeping 3 channels.

use crate::args;
use crate::convert::FloatImage;
use crate::rng::Rng;
use ssl_plugin_api::{bail, Image, Params, Result, Transform};

/// Luma weights of R, G and B (ITU-R 601-2, as PIL's `convert("L")`).
pub const LUMA: [f32; 3] = [0.299, 0.587, 0.114];

/// With probability `p` (default 0.1, as torchvision) replaces each RGB pixel by its luma
/// `0.299 R + 0.587 G + 0.114 B`, written to all three channels. One-channel images are
/// already grey and pass through (converted to `F32`); other channel counts are an error.
#[derive(Clone, Debug)]
pub struct RandomGrayscale {
    p: f64,
}

const NAME: &str = "RandomGrayscale";

impl RandomGrayscale {
    /// From parameters: `p` (0.1).
    pub fn from_params(params: &Params) -> Result<Self> {
        args::check_known(params, NAME, &["p"])?;
        Ok(RandomGrayscale {
            p: args::probability(params, NAME, "p", 0.1)?,
        })
    }

    /// Whether an RGB image turns grey, drawn from `rng` (what [`Transform::apply`] uses).
    pub fn draw(&self, rng: &mut Rng) -> bool {
        rng.bernoulli(self.p)
    }

    /// The probability of turning an image grey.
    pub fn p(&self) -> f64 {
        self.p
    }
}

/// The luma of one RGB pixel.
#[inline]
pub fn luma(px: &[f32]) -> f32 {
    LUMA[0] * px[0] + LUMA[1] * px[1] + LUMA[2] * px[2]
}

/// Replaces every pixel of interleaved RGB by its luma, in all three channels.
pub fn to_grey(data: &mut [f32]) {
    for px in data.chunks_exact_mut(3) {
        let l = luma(px);
        px.fill(l);
    }
}

impl Transform for RandomGrayscale {
    fn apply(&self, image: Image, seed: u64) -> Result<Image> {
        let mut img = FloatImage::from_image(image);
        match img.channels {
            1 => {}
            3 => {
                if self.draw(&mut Rng::new(seed)) {
                    to_grey(&mut img.data);
                }
            }
            c => bail!("{NAME}: expected a 1- or 3-channel image, got {c} channels"),
        }
        img.into_image()
    }
}
