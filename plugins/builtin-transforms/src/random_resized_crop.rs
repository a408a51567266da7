//! `RandomResizedCrop`: torchvision's random crop of random area and aspect ratio, resized.

use crate::args;
use crate::convert::FloatImage;
use crate::resize::resize_bilinear_region;
use crate::rng::Rng;
use ssl_plugin_api::{bail, Image, Params, Result, Transform};

/// Crops a random region and resizes it bilinearly (`align_corners=False`, no antialiasing)
/// to `size`. The region is drawn as torchvision's `RandomResizedCrop.get_params`: up to 10
/// tries of area `U(scale) · H · W` and aspect ratio `exp(U(log ratio))`, `w = round(√(area ·
/// r))`, `h = round(√(area / r))`, accepted when `0 < w ≤ W` and `0 < h ≤ H`, with a uniform
/// integer top-left corner; otherwise a central crop with the ratio clamped to `ratio`.
#[derive(Clone, Debug)]
pub struct RandomResizedCrop {
    height: usize,
    width: usize,
    scale: (f64, f64),
    ratio: (f64, f64),
}

const NAME: &str = "RandomResizedCrop";

/// A crop region: top, left, height, width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CropBox {
    /// First row.
    pub top: usize,
    /// First column.
    pub left: usize,
    /// Number of rows.
    pub height: usize,
    /// Number of columns.
    pub width: usize,
}

impl RandomResizedCrop {
    /// From parameters: `size` (required; integer or `[h, w]`), `scale` (`[0.08, 1.0]`),
    /// `ratio` (`[3/4, 4/3]`).
    pub fn from_params(params: &Params) -> Result<Self> {
        args::check_known(params, NAME, &["size", "scale", "ratio"])?;
        let Some((height, width)) = args::size(params, NAME, "size")? else {
            bail!("{NAME}: missing parameter `size`");
        };
        let scale = args::range(params, NAME, "scale", (0.08, 1.0), None)?;
        args::check_bounds(NAME, "scale", scale, 0.0, None)?;
        if scale.1 <= 0.0 {
            bail!(
                "{NAME}: parameter `scale` = [{}, {}]: max must be positive",
                scale.0,
                scale.1
            );
        }
        let ratio = args::range(params, NAME, "ratio", (3.0 / 4.0, 4.0 / 3.0), None)?;
        if ratio.0 <= 0.0 {
            bail!(
                "{NAME}: parameter `ratio` = [{}, {}]: values must be positive",
                ratio.0,
                ratio.1
            );
        }
        Ok(RandomResizedCrop {
            height,
            width,
            scale,
            ratio,
        })
    }

    /// The output size `(height, width)`.
    pub fn size(&self) -> (usize, usize) {
        (self.height, self.width)
    }

    /// The crop region for an `height × width` image, drawn from `rng`.
    pub fn crop_box(&self, rng: &mut Rng, height: usize, width: usize) -> CropBox {
        let area = (height * width) as f64;
        let (log_lo, log_hi) = (self.ratio.0.ln(), self.ratio.1.ln());
        for _ in 0..10 {
            let target_area = area * rng.uniform(self.scale.0, self.scale.1);
            let aspect = rng.uniform(log_lo, log_hi).exp();
            let w = (target_area * aspect).sqrt().round_ties_even();
            let h = (target_area / aspect).sqrt().round_ties_even();
            if w > 0.0 && w <= width as f64 && h > 0.0 && h <= height as f64 {
                let (w, h) = (w as usize, h as usize);
                let top = rng.int_inclusive(0, (height - h) as i64) as usize;
                let left = rng.int_inclusive(0, (width - w) as i64) as usize;
                return CropBox {
                    top,
                    left,
                    height: h,
                    width: w,
                };
            }
        }
        // Fallback: central crop.
        let in_ratio = width as f64 / height as f64;
        let (h, w) = if in_ratio < self.ratio.0 {
            let h = (width as f64 / self.ratio.0).round_ties_even() as usize;
            (h.clamp(1, height), width)
        } else if in_ratio > self.ratio.1 {
            let w = (height as f64 * self.ratio.1).round_ties_even() as usize;
            (height, w.clamp(1, width))
        } else {
            (height, width)
        };
        CropBox {
            top: (height - h) / 2,
            left: (width - w) / 2,
            height: h,
            width: w,
        }
    }
}

impl Transform for RandomResizedCrop {
    fn apply(&self, image: Image, seed: u64) -> Result<Image> {
        let img = FloatImage::from_image(image);
        if img.width == 0 || img.height == 0 {
            bail!(
                "{NAME}: cannot crop an empty {}×{} image",
                img.width,
                img.height
            );
        }
        let mut rng = Rng::new(seed);
        let b = self.crop_box(&mut rng, img.height, img.width);
        resize_bilinear_region(
            &img,
            b.top,
            b.left,
            b.height,
            b.width,
            self.height,
            self.width,
        )
        .into_image()
    }
}
