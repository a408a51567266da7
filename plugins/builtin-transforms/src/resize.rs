//! `Resize`: bilinear resize, shorter side to `size` (torchvision semantics).

use crate::args;
use crate::convert::FloatImage;
use ssl_plugin_api::{bail, Image, Params, Result, Transform};

/// Resizes so that the shorter side becomes `size`, keeping the aspect ratio as torchvision
/// does (`long = int(size * long / short)`), or to exactly `[h, w]` when given a pair.
/// Bilinear with half-pixel centres (`align_corners=False`, no antialiasing). Deterministic.
#[derive(Clone, Debug)]
pub struct Resize {
    size: ResizeTo,
}

#[derive(Clone, Copy, Debug)]
enum ResizeTo {
    Shorter(usize),
    Exact(usize, usize),
}

const NAME: &str = "Resize";

impl Resize {
    /// From parameters: `size` (required): an integer (shorter side) or `[h, w]`.
    pub fn from_params(params: &Params) -> Result<Self> {
        args::check_known(params, NAME, &["size"])?;
        let is_pair = params
            .as_json()
            .get("size")
            .is_some_and(|v| v.as_array().is_some_and(|a| a.len() == 2));
        let Some((h, w)) = args::size(params, NAME, "size")? else {
            bail!("{NAME}: missing parameter `size`");
        };
        let size = if is_pair {
            ResizeTo::Exact(h, w)
        } else {
            ResizeTo::Shorter(h)
        };
        Ok(Resize { size })
    }

    /// A resize of the shorter side to `size`.
    pub fn shorter_side(size: usize) -> Self {
        Resize {
            size: ResizeTo::Shorter(size.max(1)),
        }
    }

    /// The output `(height, width)` for an input of `height × width`.
    pub fn output_size(&self, height: usize, width: usize) -> (usize, usize) {
        match self.size {
            ResizeTo::Exact(h, w) => (h, w),
            ResizeTo::Shorter(size) => {
                let (short, long) = if width <= height {
                    (width, height)
                } else {
                    (height, width)
                };
                let new_long = (((size * long) as f64 / short as f64) as usize).max(1);
                if width <= height {
                    (new_long, size)
                } else {
                    (size, new_long)
                }
            }
        }
    }
}

impl Transform for Resize {
    fn apply(&self, image: Image, _seed: u64) -> Result<Image> {
        let img = FloatImage::from_image(image);
        if img.width == 0 || img.height == 0 {
            bail!(
                "{NAME}: cannot resize an empty {}×{} image",
                img.width,
                img.height
            );
        }
        let (out_h, out_w) = self.output_size(img.height, img.width);
        if (out_h, out_w) == (img.height, img.width) {
            return img.into_image();
        }
        resize_bilinear_region(&img, 0, 0, img.height, img.width, out_h, out_w).into_image()
    }
}

/// Source taps of one output coordinate: the two input indices and the weight of the second.
#[derive(Clone, Copy, Debug)]
struct Tap {
    i0: usize,
    i1: usize,
    frac: f32,
}

/// Taps of `out` output positions sampling `len` inputs starting at `start`, as PyTorch's
/// `upsample_bilinear2d` with `align_corners=False`: `src = (dst + 0.5) * len / out - 0.5`,
/// clamped below at 0; the second tap is clamped to the last input.
fn taps(start: usize, len: usize, out: usize) -> Vec<Tap> {
    let scale = len as f64 / out as f64;
    (0..out)
        .map(|d| {
            let src = ((d as f64 + 0.5) * scale - 0.5).max(0.0);
            let i = (src as usize).min(len - 1);
            let next = if i + 1 < len { i + 1 } else { i };
            Tap {
                i0: start + i,
                i1: start + next,
                frac: (src - i as f64) as f32,
            }
        })
        .collect()
}

/// Bilinearly resizes the `height × width` region of `src` whose top-left corner is
/// `(top, left)` to `out_h × out_w` (PyTorch `F.interpolate(mode="bilinear",
/// align_corners=False)` without antialiasing). The region must lie inside `src`.
pub fn resize_bilinear_region(
    src: &FloatImage,
    top: usize,
    left: usize,
    height: usize,
    width: usize,
    out_h: usize,
    out_w: usize,
) -> FloatImage {
    assert!(top + height <= src.height && left + width <= src.width && height > 0 && width > 0);
    let c = src.channels;
    let row_len = src.row_len();
    let xs = taps(left, width, out_w);
    let ys = taps(top, height, out_h);
    let mut out = FloatImage::zeros(out_w, out_h, c);
    let out_row_len = out.row_len();
    for (oy, ty) in ys.iter().enumerate() {
        let r0 = &src.data[ty.i0 * row_len..(ty.i0 + 1) * row_len];
        let r1 = &src.data[ty.i1 * row_len..(ty.i1 + 1) * row_len];
        let (wy1, wy0) = (ty.frac, 1.0 - ty.frac);
        let dst = &mut out.data[oy * out_row_len..(oy + 1) * out_row_len];
        for (px, tx) in dst.chunks_exact_mut(c).zip(&xs) {
            let (wx1, wx0) = (tx.frac, 1.0 - tx.frac);
            let (a0, a1) = (tx.i0 * c, tx.i1 * c);
            for (k, v) in px.iter_mut().enumerate() {
                let top = wx0 * r0[a0 + k] + wx1 * r0[a1 + k];
                let bottom = wx0 * r1[a0 + k] + wx1 * r1[a1 + k];
                *v = wy0 * top + wy1 * bottom;
            }
        }
    }
    out
}
