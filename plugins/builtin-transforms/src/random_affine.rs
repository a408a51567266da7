//! `RandomAffine`: random rotation, translation and x-shear about the image centre
//! (torchvision 0.11 on tensors, nearest-neighbour sampling).

use crate::args;
use crate::convert::FloatImage;
use crate::rng::Rng;
use ssl_plugin_api::{bail, Image, Params, Result, Transform};

/// Rotates by `angle ~ U(degrees)`, translates by `(round(U(±tx · W)), round(U(±ty · H)))`
/// pixels and shears along x by `shear_x ~ U(shear)` degrees, about the image centre, as
/// torchvision 0.11's `RandomAffine(degrees, translate, shear)` on a tensor: the inverse
/// matrix of `_get_inverse_affine_matrix` (centre 0), a pixel-centred grid normalised by
/// `(W/2, H/2)`, and `grid_sample(mode="nearest", align_corners=False)`, all in `f32`.
/// Pixels mapped from outside the image get `fill`. One transform for all channels.
#[derive(Clone, Debug)]
pub struct RandomAffine {
    degrees: (f64, f64),
    translate: (f64, f64),
    shear: (f64, f64),
    fill: f32,
}

const NAME: &str = "RandomAffine";

/// The parameters of one affine transform (torchvision's `RandomAffine.get_params`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AffineParams {
    /// Rotation in degrees, clockwise (as `F.affine`).
    pub angle: f64,
    /// Horizontal and vertical translation in pixels.
    pub translate: (f64, f64),
    /// Shear along x in degrees.
    pub shear_x: f64,
}

fn symmetric(params: &Params, name: &str) -> Result<(f64, f64)> {
    if let Some(x) = params.as_json().get(name).and_then(|v| v.as_f64()) {
        if x < 0.0 {
            bail!("{NAME}: parameter `{name}` = {x}: a single number must be non-negative");
        }
    }
    args::range(params, NAME, name, (0.0, 0.0), Some(&|x: f64| (-x, x)))
}

impl RandomAffine {
    /// From parameters: `degrees` (0: a number `a` for `[-a, a]`, or `[min, max]`),
    /// `translate` (`[0, 0]`: maximal horizontal and vertical shifts as fractions of the
    /// width and height, in [0, 1]), `shear` (0: x-shear in degrees, a number `s` for
    /// `[-s, s]`, or `[min, max]`), `fill` (0).
    pub fn from_params(params: &Params) -> Result<Self> {
        args::check_known(params, NAME, &["degrees", "translate", "shear", "fill"])?;
        let degrees = symmetric(params, "degrees")?;
        let shear = symmetric(params, "shear")?;
        if shear.0 <= -90.0 || shear.1 >= 90.0 {
            bail!(
                "{NAME}: parameter `shear` = [{}, {}]: must lie strictly within (-90, 90)",
                shear.0,
                shear.1
            );
        }
        // `range` reads a pair as [min, max]; here it is (horizontal, vertical), any order.
        let translate = match params.as_json().get("translate").filter(|v| !v.is_null()) {
            None => (0.0, 0.0),
            Some(v) => {
                let pair = v.as_array().and_then(|a| match a.as_slice() {
                    [h, w] => Some((h.as_f64()?, w.as_f64()?)),
                    _ => None,
                });
                match pair {
                    Some((h, w)) if (0.0..=1.0).contains(&h) && (0.0..=1.0).contains(&w) => (h, w),
                    _ => bail!(
                        "{NAME}: parameter `translate` = {v}: expected [horizontal, vertical] \
                         fractions in [0, 1]"
                    ),
                }
            }
        };
        let fill: f64 = params.get_or("fill", 0.0).map_err(|e| e.context(NAME))?;
        if !fill.is_finite() {
            bail!("{NAME}: parameter `fill` = {fill}: must be a finite number");
        }
        Ok(RandomAffine {
            degrees,
            translate,
            shear,
            fill: fill as f32,
        })
    }

    /// The value of pixels mapped from outside the image.
    pub fn fill(&self) -> f32 {
        self.fill
    }

    /// The transform drawn from `rng` for a `width × height` image, in torchvision's order:
    /// angle, horizontal shift, vertical shift, shear.
    pub fn draw(&self, rng: &mut Rng, width: usize, height: usize) -> AffineParams {
        let angle = rng.uniform(self.degrees.0, self.degrees.1);
        let max_dx = self.translate.0 * width as f64;
        let max_dy = self.translate.1 * height as f64;
        let tx = rng.uniform(-max_dx, max_dx).round_ties_even();
        let ty = rng.uniform(-max_dy, max_dy).round_ties_even();
        let shear_x = rng.uniform(self.shear.0, self.shear.1);
        AffineParams {
            angle,
            translate: (tx, ty),
            shear_x,
        }
    }
}

/// torchvision's `_get_inverse_affine_matrix` with centre `(0, 0)`, scale 1 and y-shear 0:
/// the 2 × 3 matrix taking output coordinates (relative to the image centre) to input ones.
pub fn inverse_affine_matrix(p: &AffineParams) -> [f64; 6] {
    let rot = p.angle.to_radians();
    let sx = p.shear_x.to_radians();
    let sy = 0.0f64;
    let (tx, ty) = p.translate;
    let a = (rot - sy).cos() / sy.cos();
    let b = -(rot - sy).cos() * sx.tan() / sy.cos() - rot.sin();
    let c = (rot - sy).sin() / sy.cos();
    let d = -(rot - sy).sin() * sx.tan() / sy.cos() + rot.cos();
    let mut m = [d, -b, 0.0, -c, a, 0.0];
    m[2] += m[0] * -tx + m[1] * -ty;
    m[5] += m[3] * -tx + m[4] * -ty;
    m
}

/// Applies the affine transform `p` to `img` as torchvision's tensor `F.affine` with nearest
/// interpolation; pixels that come from outside the image get `fill`.
pub fn affine(img: &FloatImage, p: &AffineParams, fill: f32) -> FloatImage {
    let (w, h, c) = (img.width, img.height, img.channels);
    let m = inverse_affine_matrix(p).map(|v| v as f32);
    let (half_w, half_h) = (0.5 * w as f32, 0.5 * h as f32);
    // `theta.T / [W/2, H/2]`, as `_gen_affine_grid`.
    let (r00, r10, r20) = (m[0] / half_w, m[1] / half_w, m[2] / half_w);
    let (r01, r11, r21) = (m[3] / half_h, m[4] / half_h, m[5] / half_h);
    let (wf, hf) = (w as f32, h as f32);
    let mut out = FloatImage::zeros(w, h, c);
    let row_len = img.row_len();
    for (i, out_row) in out.data.chunks_exact_mut(row_len).enumerate() {
        let y = i as f32 - half_h + 0.5;
        for (j, px) in out_row.chunks_exact_mut(c).enumerate() {
            let x = j as f32 - half_w + 0.5;
            let gx = x * r00 + y * r10 + r20;
            let gy = x * r01 + y * r11 + r21;
            // grid_sample's un-normalisation (align_corners=False), then nearest.
            let ix = (((gx + 1.0) * wf - 1.0) / 2.0).round_ties_even();
            let iy = (((gy + 1.0) * hf - 1.0) / 2.0).round_ties_even();
            if ix >= 0.0 && ix < wf && iy >= 0.0 && iy < hf {
                let start = iy as usize * row_len + ix as usize * c;
                px.copy_from_slice(&img.data[start..start + c]);
            } else {
                px.fill(fill);
            }
        }
    }
    out
}

impl Transform for RandomAffine {
    fn apply(&self, image: Image, seed: u64) -> Result<Image> {
        let img = FloatImage::from_image(image);
        if img.width == 0 || img.height == 0 || img.channels == 0 {
            return img.into_image();
        }
        let p = self.draw(&mut Rng::new(seed), img.width, img.height);
        affine(&img, &p, self.fill).into_image()
    }
}
