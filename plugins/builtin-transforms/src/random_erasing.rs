//! `RandomErasing`: torchvision's random rectangle erasing (Zhong et al., "cutout").

use crate::args;
use crate::convert::FloatImage;
use crate::rng::Rng;
use ssl_plugin_api::{bail, Image, Params, Result, Transform};

/// With probability `p` (default 0.5) sets a random rectangle of every channel to `value`
/// (default 0), as torchvision's `RandomErasing.get_params`: up to 10 tries of area
/// `U(scale) · H · W` and aspect ratio `r = exp(U(log ratio))`, `h = round(√(area · r))`,
/// `w = round(√(area / r))`, accepted when `h < H` and `w < W`, with a uniform integer
/// top-left corner; when no try fits the image is left unchanged.
#[derive(Clone, Debug)]
pub struct RandomErasing {
    p: f64,
    scale: (f64, f64),
    ratio: (f64, f64),
    value: f32,
}

const NAME: &str = "RandomErasing";

/// The erased rectangle: top, left, height, width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EraseBox {
    /// First row.
    pub top: usize,
    /// First column.
    pub left: usize,
    /// Number of rows.
    pub height: usize,
    /// Number of columns.
    pub width: usize,
}

impl RandomErasing {
    /// From parameters: `p` (0.5), `scale` (`[0.02, 0.33]`, within [0, 1]), `ratio`
    /// (`[0.3, 3.3]`, positive), `value` (0).
    pub fn from_params(params: &Params) -> Result<Self> {
        args::check_known(params, NAME, &["p", "scale", "ratio", "value"])?;
        let scale = args::range(params, NAME, "scale", (0.02, 0.33), None)?;
        args::check_bounds(NAME, "scale", scale, 0.0, Some(1.0))?;
        let ratio = args::range(params, NAME, "ratio", (0.3, 3.3), None)?;
        if ratio.0 <= 0.0 {
            bail!(
                "{NAME}: parameter `ratio` = [{}, {}]: values must be positive",
                ratio.0,
                ratio.1
            );
        }
        let value: f64 = params.get_or("value", 0.0).map_err(|e| e.context(NAME))?;
        if !value.is_finite() {
            bail!("{NAME}: parameter `value` = {value}: must be a finite number");
        }
        Ok(RandomErasing {
            p: args::probability(params, NAME, "p", 0.5)?,
            scale,
            ratio,
            value: value as f32,
        })
    }

    /// The probability of erasing a rectangle.
    pub fn p(&self) -> f64 {
        self.p
    }

    /// The value written into the rectangle.
    pub fn value(&self) -> f32 {
        self.value
    }

    /// The rectangle to erase in a `height × width` image, drawn from `rng` as
    /// [`Transform::apply`] does (the `p` draw first), `None` when nothing is erased.
    pub fn draw(&self, rng: &mut Rng, height: usize, width: usize) -> Option<EraseBox> {
        if !rng.bernoulli(self.p) {
            return None;
        }
        self.erase_box(rng, height, width)
    }

    /// The rectangle to erase in a `height × width` image (after the `p` draw), `None` when
    /// none of the 10 tries fits.
    pub fn erase_box(&self, rng: &mut Rng, height: usize, width: usize) -> Option<EraseBox> {
        let area = (height * width) as f64;
        let (log_lo, log_hi) = (self.ratio.0.ln(), self.ratio.1.ln());
        for _ in 0..10 {
            let erase_area = area * rng.uniform(self.scale.0, self.scale.1);
            let aspect = rng.uniform(log_lo, log_hi).exp();
            let h = (erase_area * aspect).sqrt().round_ties_even();
            let w = (erase_area / aspect).sqrt().round_ties_even();
            if !(h < height as f64 && w < width as f64) {
                continue;
            }
            let (h, w) = (h as usize, w as usize);
            let top = rng.int_inclusive(0, (height - h) as i64) as usize;
            let left = rng.int_inclusive(0, (width - w) as i64) as usize;
            return Some(EraseBox {
                top,
                left,
                height: h,
                width: w,
            });
        }
        None
    }
}

/// Sets the rectangle `b` of every channel of `img` to `value`.
pub fn erase(img: &mut FloatImage, b: EraseBox, value: f32) {
    let (c, row_len) = (img.channels, img.row_len());
    for y in b.top..b.top + b.height {
        let start = y * row_len + b.left * c;
        img.data[start..start + b.width * c].fill(value);
    }
}

impl Transform for RandomErasing {
    fn apply(&self, image: Image, seed: u64) -> Result<Image> {
        let mut img = FloatImage::from_image(image);
        if let Some(b) = self.draw(&mut Rng::new(seed), img.height, img.width) {
            erase(&mut img, b, self.value);
        }
        img.into_image()
    }
}
