//! `CenterCrop`: torchvision's centre crop, padding with zeros when the image is smaller.

use crate::args;
use crate::convert::FloatImage;
use ssl_plugin_api::{bail, Image, Params, Result, Transform};

/// Crops the central `h × w` region (top = `round((H - h) / 2)`, Python rounding, likewise
/// left). Where the image is smaller than the crop, it is first padded with zeros
/// (`(h - H) // 2` above, the rest below; likewise left/right), as torchvision does.
/// Deterministic.
#[derive(Clone, Debug)]
pub struct CenterCrop {
    height: usize,
    width: usize,
}

const NAME: &str = "CenterCrop";

/// Offset of the crop inside the source along one axis: positive = crop starts inside the
/// source, negative = zero padding before the source.
pub fn offset(src: usize, crop: usize) -> isize {
    if crop > src {
        -(((crop - src) / 2) as isize)
    } else {
        ((src - crop) as f64 / 2.0).round_ties_even() as isize
    }
}

impl CenterCrop {
    /// From parameters: `size` (required): an integer (square) or `[h, w]`.
    pub fn from_params(params: &Params) -> Result<Self> {
        args::check_known(params, NAME, &["size"])?;
        let Some((height, width)) = args::size(params, NAME, "size")? else {
            bail!("{NAME}: missing parameter `size`");
        };
        Ok(CenterCrop { height, width })
    }

    /// A crop to `height × width`.
    pub fn new(height: usize, width: usize) -> Self {
        CenterCrop { height, width }
    }

    /// The output `(height, width)`.
    pub fn size(&self) -> (usize, usize) {
        (self.height, self.width)
    }

    /// Where the crop starts inside a `height × width` image: `(rows, columns)`, negative
    /// where zero padding comes before the image.
    pub fn offsets(&self, height: usize, width: usize) -> (isize, isize) {
        (offset(height, self.height), offset(width, self.width))
    }
}

impl Transform for CenterCrop {
    fn apply(&self, image: Image, _seed: u64) -> Result<Image> {
        let img = FloatImage::from_image(image);
        if (img.height, img.width) == (self.height, self.width) {
            return img.into_image();
        }
        let c = img.channels;
        let (oy, ox) = self.offsets(img.height, img.width);
        let mut out = FloatImage::zeros(self.width, self.height, c);
        let out_row = out.row_len();
        let in_row = img.row_len();
        // Output columns that fall inside the source.
        let x_start = (-ox).max(0) as usize;
        let x_end = ((img.width as isize - ox).min(self.width as isize)).max(0) as usize;
        if x_start >= x_end {
            return out.into_image();
        }
        for y in 0..self.height {
            let sy = y as isize + oy;
            if sy < 0 || sy >= img.height as isize {
                continue;
            }
            let sx = (x_start as isize + ox) as usize;
            let n = (x_end - x_start) * c;
            let src = &img.data[sy as usize * in_row + sx * c..][..n];
            out.data[y * out_row + x_start * c..][..n].copy_from_slice(src);
        }
        out.into_image()
    }
}
