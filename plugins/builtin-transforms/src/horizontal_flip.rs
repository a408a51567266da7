//! `RandomHorizontalFlip`: mirror left-right with probability `p`.

use crate::args;
use crate::convert::FloatImage;
use crate::rng::Rng;
use ssl_plugin_api::{Image, Params, Result, Transform};

/// Mirrors the image left-right with probability `p` (default 0.5).
#[derive(Clone, Debug)]
pub struct RandomHorizontalFlip {
    p: f64,
}

const NAME: &str = "RandomHorizontalFlip";

impl RandomHorizontalFlip {
    /// From parameters: `p` (0.5).
    pub fn from_params(params: &Params) -> Result<Self> {
        args::check_known(params, NAME, &["p"])?;
        Ok(RandomHorizontalFlip {
            p: args::probability(params, NAME, "p", 0.5)?,
        })
    }

    /// Whether the image is mirrored, drawn from `rng` (what [`Transform::apply`] uses).
    pub fn draw(&self, rng: &mut Rng) -> bool {
        rng.bernoulli(self.p)
    }

    /// The probability of a flip.
    pub fn p(&self) -> f64 {
        self.p
    }
}

/// Mirrors `img` left-right in place.
pub fn flip_horizontal(img: &mut FloatImage) {
    let c = img.channels;
    let w = img.width;
    if w < 2 {
        return;
    }
    let row_len = img.row_len();
    for row in img.data.chunks_exact_mut(row_len) {
        for x in 0..w / 2 {
            let (a, b) = (x * c, (w - 1 - x) * c);
            for k in 0..c {
                row.swap(a + k, b + k);
            }
        }
    }
}

impl Transform for RandomHorizontalFlip {
    fn apply(&self, image: Image, seed: u64) -> Result<Image> {
        let mut img = FloatImage::from_image(image);
        if self.draw(&mut Rng::new(seed)) {
            flip_horizontal(&mut img);
        }
        img.into_image()
    }
}
