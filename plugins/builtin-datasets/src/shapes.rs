//! `Shapes`: labelled RGB images of simple shapes, drawn procedurally (no files).
//!
//! Every image shows one shape (see [`CLASS_NAMES`]) with a random position, size, rotation
//! and colour on a textured background (a two-colour gradient, optional stripes and pixel
//! noise). Everything is a pure function of `(seed, split, index)`: the same triple gives a
//! byte-identical image, and the label is computed without drawing (see [`Shapes::label`]).
//!
//! Two optional parameters in `[0, 1]` weaken the background: `texture_strength` scales the
//! gradient's colour difference and the stripes' amplitude, `noise` scales the pixel noise.
//! Both default to 1 (the original look); lower values leave the shape as the main content
//! of the image, so that self-supervised training cannot just match backgrounds. They change
//! only amplitudes, never the random draws, so every image keeps its layout and colours.
//!
//! Labels are balanced: each run of four consecutive indices (`4k..4k+4`) holds every class
//! once, in a random order.
//!
//! With `multi_label = true` the dataset is multi-label instead: an image shows any number
//! (0 to 4) of the four shapes, each present with probability ½ independently of the others,
//! and declares them as its findings ([`CLASS_NAMES`]; see [`Shapes::present`]). Each present
//! shape sits in its own quarter of the image (the quarters assigned at random) and is painted
//! in its class's hue ([`MULTI_LABEL_HUES`], jittered) on a dark, greyish background, so the
//! findings are learnable from shape and from colour, by a small encoder in a few epochs. Its
//! samples have no single label and `num_classes` is `None`.

use crate::split::Split;
use ssl_plugin_api::{Dataset, Findings, Image, Params, PluginError, Result, Sample};
use std::f64::consts::{PI, SQRT_2};

/// The class names, indexed by label.
pub const CLASS_NAMES: [&str; 4] = ["circle", "square", "triangle", "cross"];

const NUM_CLASSES: usize = CLASS_NAMES.len();

/// The hue (in `[0, 1)`) of each class's shapes with `multi_label = true`: red circles, green
/// squares, blue triangles, yellow crosses.
pub const MULTI_LABEL_HUES: [f64; NUM_CLASSES] = [0.0, 1.0 / 3.0, 0.62, 0.15];

/// Mixed into the seed so that the splits draw from different streams.
fn stream_constant(split: Split) -> u64 {
    match split {
        Split::Train => 0x5348_4150_4553_5452, // "SHAPESTR"
        Split::Test => 0x5348_4150_4553_5445,  // "SHAPESTE"
    }
}

/// Where and how the shape of one sample is drawn (pixel coordinates, origin at the top-left
/// corner of the image, `x` to the right, `y` down).
#[derive(Clone, Debug, PartialEq)]
pub struct ShapeLayout {
    /// The class (label) of the shape, an index into [`CLASS_NAMES`].
    pub class: usize,
    /// The centre of the shape, `(x, y)`.
    pub center: (f64, f64),
    /// The radius of the circle around the shape (circle radius, or distance from the centre
    /// to the corners of the square, triangle and cross). The whole circle lies inside the image.
    pub radius: f64,
    /// The rotation of the shape, in radians.
    pub rotation: f64,
    /// The fill colour of the shape, RGB (before pixel noise).
    pub color: [u8; 3],
}

/// The procedural shapes dataset. Build it with [`Shapes::new`] or [`Shapes::from_params`].
#[derive(Clone, Debug)]
pub struct Shapes {
    image_size: u32,
    num_samples: usize,
    seed: u64,
    split: Split,
    /// The seed of this (seed, split) stream, already mixed.
    stream: u64,
    /// Scale of the gradient's colour difference and of the stripes, in [0, 1].
    texture_strength: f64,
    /// Scale of the pixel noise, in [0, 1].
    noise: f64,
    /// Several shapes per image, declared as findings (see the module's documentation).
    multi_label: bool,
}

impl Shapes {
    /// Default of the parameter `image_size`.
    pub const DEFAULT_IMAGE_SIZE: u32 = 32;
    /// Smallest accepted `image_size`.
    pub const MIN_IMAGE_SIZE: u32 = 8;
    /// Largest accepted `image_size`.
    pub const MAX_IMAGE_SIZE: u32 = 4096;
    /// Default of the parameter `num_samples`.
    pub const DEFAULT_NUM_SAMPLES: usize = 2000;

    /// A dataset of `num_samples` square RGB images of `image_size` pixels.
    pub fn new(image_size: u32, num_samples: usize, seed: u64, split: Split) -> Result<Self> {
        if image_size < Self::MIN_IMAGE_SIZE {
            return Err(PluginError::msg(format!(
                "parameter `image_size` = {image_size}: must be at least {}",
                Self::MIN_IMAGE_SIZE
            )));
        }
        if image_size > Self::MAX_IMAGE_SIZE {
            return Err(PluginError::msg(format!(
                "parameter `image_size` = {image_size}: must be at most {}",
                Self::MAX_IMAGE_SIZE
            )));
        }
        if num_samples == 0 {
            return Err(PluginError::msg(
                "parameter `num_samples` = 0: must be at least 1",
            ));
        }
        let stream = mix64(seed ^ stream_constant(split));
        Ok(Shapes {
            image_size,
            num_samples,
            seed,
            split,
            stream,
            texture_strength: 1.0,
            noise: 1.0,
            multi_label: false,
        })
    }

    /// The same dataset as a multi-label one (`multi_label = true`, see the module's
    /// documentation) or not.
    pub fn with_multi_label(mut self, multi_label: bool) -> Self {
        self.multi_label = multi_label;
        self
    }

    /// Whether the dataset is multi-label.
    pub fn multi_label(&self) -> bool {
        self.multi_label
    }

    /// The same dataset with the background texture scaled: `texture_strength` multiplies the
    /// gradient's colour difference and the stripes' amplitude, `noise` the pixel noise; both
    /// in `[0, 1]` (1 and 1 is the default look, 0 and 0 a flat single-colour background).
    pub fn with_texture(mut self, texture_strength: f64, noise: f64) -> Result<Self> {
        for (name, value) in [("texture_strength", texture_strength), ("noise", noise)] {
            if !(0.0..=1.0).contains(&value) {
                return Err(PluginError::msg(format!(
                    "parameter `{name}` = {value}: must be in [0, 1]"
                )));
            }
        }
        self.texture_strength = texture_strength;
        self.noise = noise;
        Ok(self)
    }

    /// Builds the dataset from its parameters, all optional: `image_size` (default 32, at
    /// least 8), `num_samples` (default 2000), `seed` (default 0), `split` (`"train"`, the
    /// default, or `"test"`), `texture_strength` and `noise` (default 1, in [0, 1]; see
    /// [`Shapes::with_texture`]), `multi_label` (default false; see
    /// [`Shapes::with_multi_label`]). A `root` parameter is accepted and ignored; any other
    /// name is an error listing the accepted ones.
    pub fn from_params(params: &Params) -> Result<Self> {
        crate::csv_table::check_params(
            params,
            "Shapes",
            &[
                "image_size",
                "num_samples",
                "seed",
                "texture_strength",
                "noise",
                "multi_label",
            ],
        )?;
        let image_size = params.get_or("image_size", Self::DEFAULT_IMAGE_SIZE)?;
        let num_samples = params.get_or("num_samples", Self::DEFAULT_NUM_SAMPLES)?;
        let seed = params.get_or("seed", 0u64)?;
        let split = match params.get::<String>("split")? {
            Some(s) => Split::parse(&s)?,
            None => Split::Train,
        };
        let texture_strength = params.get_or("texture_strength", 1.0f64)?;
        let noise = params.get_or("noise", 1.0f64)?;
        let multi_label = params.get_or("multi_label", false)?;
        Ok(Self::new(image_size, num_samples, seed, split)?
            .with_texture(texture_strength, noise)?
            .with_multi_label(multi_label))
    }

    /// The scale of the gradient's colour difference and of the stripes, in [0, 1].
    pub fn texture_strength(&self) -> f64 {
        self.texture_strength
    }

    /// The scale of the pixel noise, in [0, 1].
    pub fn noise(&self) -> f64 {
        self.noise
    }

    /// Width and height of the images, in pixels.
    pub fn image_size(&self) -> u32 {
        self.image_size
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The split.
    pub fn split(&self) -> Split {
        self.split
    }

    fn check_index(&self, index: usize) -> Result<()> {
        if index >= self.num_samples {
            return Err(PluginError::msg(format!(
                "Shapes: index {index} is out of range for a dataset of length {}",
                self.num_samples
            )));
        }
        Ok(())
    }

    /// The label of sample `index`, computed without drawing it; an error for a multi-label
    /// dataset (see [`Shapes::present`]).
    pub fn label(&self, index: usize) -> Result<i64> {
        self.check_index(index)?;
        if self.multi_label {
            return Err(PluginError::msg(
                "Shapes with multi_label = true has findings, not one label per sample",
            ));
        }
        Ok(self.class_of(index) as i64)
    }

    /// Which shapes (indexed as [`CLASS_NAMES`]) sample `index` shows: its findings with
    /// `multi_label = true`, computed without drawing; the one shape of its label otherwise.
    pub fn present(&self, index: usize) -> Result<[bool; NUM_CLASSES]> {
        self.check_index(index)?;
        Ok(self.present_of(index))
    }

    /// [`Shapes::present`] without the range check.
    fn present_of(&self, index: usize) -> [bool; NUM_CLASSES] {
        if self.multi_label {
            let bits = SplitMix64(key(self.stream, FINDINGS_TAG, index as u64)).next_u64();
            std::array::from_fn(|class| (bits >> class) & 1 == 1)
        } else {
            let class = self.class_of(index);
            std::array::from_fn(|c| c == class)
        }
    }

    /// The class of `index` (no range check): a random permutation of the classes per block
    /// of `NUM_CLASSES` consecutive indices.
    fn class_of(&self, index: usize) -> usize {
        let block = (index / NUM_CLASSES) as u64;
        let mut rng = SplitMix64(key(self.stream, LABEL_TAG, block));
        let mut perm: [usize; NUM_CLASSES] = std::array::from_fn(|i| i);
        for i in (1..NUM_CLASSES).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            perm.swap(i, j);
        }
        perm[index % NUM_CLASSES]
    }

    /// The shape layout of sample `index` (what [`Dataset::get`] draws); an error for a
    /// multi-label dataset, whose images show several (see [`Shapes::layouts`]).
    pub fn layout(&self, index: usize) -> Result<ShapeLayout> {
        if self.multi_label {
            return Err(PluginError::msg(
                "Shapes with multi_label = true draws several shapes per image: use `layouts`",
            ));
        }
        Ok(self.layouts(index)?.remove(0))
    }

    /// The layouts of the shapes of sample `index`, in class order: the one shape of a
    /// single-label image, those present in a multi-label one (possibly none).
    pub fn layouts(&self, index: usize) -> Result<Vec<ShapeLayout>> {
        self.check_index(index)?;
        Ok(self
            .scene(index)
            .shapes
            .into_iter()
            .map(|s| s.layout)
            .collect())
    }

    /// Everything random about one image, drawn in a fixed order from its own stream.
    fn scene(&self, index: usize) -> Scene {
        if self.multi_label {
            self.multi_label_scene(index)
        } else {
            self.single_label_scene(index)
        }
    }

    /// The scene of a single-label image: one shape of the sample's class.
    fn single_label_scene(&self, index: usize) -> Scene {
        let mut rng = SplitMix64(key(self.stream, IMAGE_TAG, index as u64));
        let size = self.image_size as f64;

        // Shape: the circle around it has a diameter of 38%..78% of the image and lies inside.
        let radius = rng.range(0.38, 0.78) * size / 2.0;
        let margin = (0.05 * size).min(1.0);
        let center = (
            rng.range(radius + margin, size - radius - margin),
            rng.range(radius + margin, size - radius - margin),
        );
        let rotation = rng.range(0.0, 2.0 * PI);

        // Colours: a bright shape on a dark background or the reverse, so that they always
        // differ by at least a third of the range in HSV value.
        let bright_shape = rng.unit() < 0.5;
        let (shape_v, bg_v) = if bright_shape {
            ((0.75, 1.0), (0.08, 0.42))
        } else {
            ((0.03, 0.30), (0.62, 0.98))
        };
        let shape_color = hsv(
            rng.unit(),
            rng.range(0.45, 1.0),
            rng.range(shape_v.0, shape_v.1),
        );
        let bg0 = hsv(rng.unit(), rng.range(0.15, 0.9), rng.range(bg_v.0, bg_v.1));
        let bg1 = hsv(rng.unit(), rng.range(0.15, 0.9), rng.range(bg_v.0, bg_v.1));
        let gradient_angle = rng.range(0.0, 2.0 * PI);

        // Texture: optional stripes (brightness modulation) and per-pixel noise.
        let stripes = if rng.unit() < 0.6 {
            Some(Stripes {
                amplitude: rng.range(8.0, 22.0),
                cycles: rng.range(1.5, 5.0),
                angle: rng.range(0.0, 2.0 * PI),
                phase: rng.range(0.0, 2.0 * PI),
            })
        } else {
            None
        };
        let noise_amplitude = rng.range(3.0, 14.0);
        let noise_key = rng.next_u64();

        let class = self.class_of(index);
        Scene {
            shapes: vec![DrawnShape::new(
                ShapeLayout {
                    class,
                    center,
                    radius,
                    rotation,
                    color: shape_color.map(|c| c.round() as u8),
                },
                shape_color,
            )],
            bg0,
            bg1,
            gradient_angle,
            stripes,
            noise_amplitude,
            noise_key,
        }
    }

    /// The scene of a multi-label image: every class's shape is drawn (so that the layouts do
    /// not depend on which are present), each in its own random quarter of the image and in
    /// its class's hue on a dark, greyish background; the present ones are kept.
    fn multi_label_scene(&self, index: usize) -> Scene {
        let mut rng = SplitMix64(key(self.stream, IMAGE_TAG, index as u64));
        let size = self.image_size as f64;
        let half = size / 2.0;
        let margin = (0.05 * size).min(1.0);
        // The largest radius whose circle fits a quarter with a margin on every side.
        let room = half / 2.0 - margin;

        let bg0 = hsv(rng.unit(), rng.range(0.0, 0.3), rng.range(0.05, 0.3));
        let bg1 = hsv(rng.unit(), rng.range(0.0, 0.3), rng.range(0.05, 0.3));
        let gradient_angle = rng.range(0.0, 2.0 * PI);
        let stripes = if rng.unit() < 0.6 {
            Some(Stripes {
                amplitude: rng.range(4.0, 12.0),
                cycles: rng.range(1.5, 5.0),
                angle: rng.range(0.0, 2.0 * PI),
                phase: rng.range(0.0, 2.0 * PI),
            })
        } else {
            None
        };
        let noise_amplitude = rng.range(3.0, 10.0);
        let noise_key = rng.next_u64();

        // Quarters 0..4 (left to right, top to bottom), one per class in a random order.
        let mut quarters: [usize; NUM_CLASSES] = std::array::from_fn(|i| i);
        for i in (1..NUM_CLASSES).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            quarters.swap(i, j);
        }
        let present = self.present_of(index);
        let mut shapes = Vec::new();
        for class in 0..NUM_CLASSES {
            // The circle around the shape fills 55%..85% of the room its quarter leaves.
            let radius = rng.range(0.55, 0.85) * room;
            let (x0, y0) = (
                (quarters[class] % 2) as f64 * half,
                (quarters[class] / 2) as f64 * half,
            );
            let center = (
                x0 + rng.range(radius + margin, half - radius - margin),
                y0 + rng.range(radius + margin, half - radius - margin),
            );
            let rotation = rng.range(0.0, 2.0 * PI);
            let hue = MULTI_LABEL_HUES[class] + rng.range(-0.03, 0.03);
            let color = hsv(hue, rng.range(0.7, 1.0), rng.range(0.8, 1.0));
            if present[class] {
                shapes.push(DrawnShape::new(
                    ShapeLayout {
                        class,
                        center,
                        radius,
                        rotation,
                        color: color.map(|c| c.round() as u8),
                    },
                    color,
                ));
            }
        }
        Scene {
            shapes,
            bg0,
            bg1,
            gradient_angle,
            stripes,
            noise_amplitude,
            noise_key,
        }
    }

    /// Draws sample `index` (no range check).
    fn draw(&self, index: usize) -> Result<Image> {
        let scene = self.scene(index);
        let n = self.image_size as usize;
        let size = n as f64;
        let mut data = Vec::with_capacity(n * n * 3);

        let (gs, gc) = scene.gradient_angle.sin_cos();
        let g_extent = gc.abs() + gs.abs(); // projections of the unit square span ±extent/2
        let stripes = scene.stripes.as_ref().map(|s| {
            let (ss, sc) = s.angle.sin_cos();
            (s, ss, sc)
        });
        let mut coverage = vec![0.0; scene.shapes.len()];
        // The gradient's colour difference, scaled by `texture_strength` (exact at 1).
        let bg_delta: [f64; 3] =
            std::array::from_fn(|c| (scene.bg1[c] - scene.bg0[c]) * self.texture_strength);
        let stripe_scale = self.texture_strength;
        let noise_amplitude = scene.noise_amplitude * self.noise;

        for y in 0..n {
            for x in 0..n {
                let px = x as f64 + 0.5;
                let py = y as f64 + 0.5;
                let (ux, uy) = (px / size - 0.5, py / size - 0.5);

                // Background: gradient, then stripes.
                let t = (0.5 + (ux * gc + uy * gs) / g_extent).clamp(0.0, 1.0);
                let mut stripe = 0.0;
                if let Some((s, ss, sc)) = stripes {
                    stripe = stripe_scale
                        * s.amplitude
                        * (2.0 * PI * s.cycles * (ux * sc + uy * ss) + s.phase).sin();
                }

                for (cover, shape) in coverage.iter_mut().zip(&scene.shapes) {
                    *cover = shape.coverage(px, py);
                }

                let noise = noise_amplitude
                    * signed_unit(mix64(
                        scene.noise_key ^ ((y * n + x) as u64).wrapping_mul(GOLDEN),
                    ));
                #[allow(clippy::needless_range_loop)] // four arrays indexed by channel
                for c in 0..3 {
                    let mut v = scene.bg0[c] + bg_delta[c] * t + stripe;
                    for (cover, shape) in coverage.iter().zip(&scene.shapes) {
                        v = v + (shape.rgb[c] - v) * cover;
                    }
                    let v = v + noise;
                    data.push(v.round().clamp(0.0, 255.0) as u8);
                }
            }
        }
        Image::from_u8(self.image_size, self.image_size, 3, data)
    }
}

impl Dataset for Shapes {
    fn len(&self) -> usize {
        self.num_samples
    }

    fn num_classes(&self) -> Option<usize> {
        (!self.multi_label).then_some(NUM_CLASSES)
    }

    fn get(&self, index: usize) -> Result<Sample> {
        self.check_index(index)?;
        let image = self.draw(index)?;
        Ok(Sample::new(
            image,
            (!self.multi_label).then(|| self.class_of(index) as i64),
            format!("shapes-{}-{index}", self.split.as_str()),
        ))
    }

    fn targets(&self) -> Result<Vec<Option<i64>>> {
        Ok((0..self.num_samples)
            .map(|i| (!self.multi_label).then(|| self.class_of(i) as i64))
            .collect())
    }

    fn findings(&self) -> Result<Option<Findings>> {
        if !self.multi_label {
            return Ok(None);
        }
        let values = (0..self.num_samples)
            .flat_map(|i| self.present_of(i).map(i8::from))
            .collect();
        let names = CLASS_NAMES.iter().map(|n| n.to_string()).collect();
        Findings::new(names, values).map(Some)
    }
}

struct Stripes {
    amplitude: f64,
    cycles: f64,
    angle: f64,
    phase: f64,
}

/// A shape as [`Shapes::draw`] paints it.
struct DrawnShape {
    layout: ShapeLayout,
    /// The fill colour, RGB in [0, 255] (before rounding).
    rgb: [f64; 3],
    /// The sine and cosine of the rotation.
    sin_cos: (f64, f64),
}

impl DrawnShape {
    fn new(layout: ShapeLayout, rgb: [f64; 3]) -> DrawnShape {
        let sin_cos = layout.rotation.sin_cos();
        DrawnShape {
            layout,
            rgb,
            sin_cos,
        }
    }

    /// The part of the pixel at `(px, py)` the shape covers, from its signed distance (in
    /// pixels), anti-aliased over a pixel.
    fn coverage(&self, px: f64, py: f64) -> f64 {
        let (rs, rc) = self.sin_cos;
        let (cx, cy) = self.layout.center;
        let (dx, dy) = (px - cx, py - cy);
        let (lx, ly) = (dx * rc + dy * rs, -dx * rs + dy * rc);
        (0.5 - shape_sdf(self.layout.class, lx, ly, self.layout.radius)).clamp(0.0, 1.0)
    }
}

struct Scene {
    /// The shapes, painted in this order.
    shapes: Vec<DrawnShape>,
    bg0: [f64; 3],
    bg1: [f64; 3],
    gradient_angle: f64,
    stripes: Option<Stripes>,
    noise_amplitude: f64,
    noise_key: u64,
}

// ---------------------------------------------------------------------------------------------
// Geometry: signed distances (negative inside) in the shape's own frame, all shapes scaled so
// that their corners (or rim) lie on the circle of radius `r`.

/// Half-width of a cross arm, relative to its half-length.
const CROSS_ARM_WIDTH: f64 = 0.32;

fn shape_sdf(class: usize, x: f64, y: f64, r: f64) -> f64 {
    match class {
        0 => x.hypot(y) - r,
        1 => sd_box(x, y, r / SQRT_2, r / SQRT_2),
        2 => sd_equilateral_triangle(x, y, r * 3f64.sqrt() / 2.0),
        _ => {
            let a = r / (1.0 + CROSS_ARM_WIDTH * CROSS_ARM_WIDTH).sqrt();
            let b = CROSS_ARM_WIDTH * a;
            sd_box(x, y, a, b).min(sd_box(x, y, b, a))
        }
    }
}

/// Axis-aligned box of half-sizes `(bx, by)`.
fn sd_box(x: f64, y: f64, bx: f64, by: f64) -> f64 {
    let (qx, qy) = (x.abs() - bx, y.abs() - by);
    qx.max(0.0).hypot(qy.max(0.0)) + qx.max(qy).min(0.0)
}

/// Equilateral triangle of half-side `h`, centroid at the origin, one corner on `+y`
/// (after Inigo Quilez's 2D distance functions).
fn sd_equilateral_triangle(x: f64, y: f64, h: f64) -> f64 {
    let k = 3f64.sqrt();
    let mut px = x.abs() - h;
    let mut py = y + h / k;
    if px + k * py > 0.0 {
        (px, py) = ((px - k * py) / 2.0, (-k * px - py) / 2.0);
    }
    px -= px.clamp(-2.0 * h, 0.0);
    let len = px.hypot(py);
    if py > 0.0 {
        -len
    } else {
        len
    }
}

/// HSV (all in [0, 1]) to RGB in [0, 255].
fn hsv(h: f64, s: f64, v: f64) -> [f64; 3] {
    let h6 = (h.rem_euclid(1.0)) * 6.0;
    let sector = (h6.floor() as usize) % 6;
    let f = h6 - h6.floor();
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    let (r, g, b) = match sector {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    };
    [r * 255.0, g * 255.0, b * 255.0]
}

// ---------------------------------------------------------------------------------------------
// Randomness: splitmix64, keyed by (stream, purpose, number).

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
const LABEL_TAG: u64 = 0x4C41_4245_4C53_0001; // "LABELS"
const IMAGE_TAG: u64 = 0x494D_4147_4553_0002; // "IMAGES"
const FINDINGS_TAG: u64 = 0x4649_4E44_494E_0003; // "FINDIN"

/// The splitmix64 finaliser: a bijective 64-bit mix.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The seed of the random stream for `n` under `tag` in `stream`.
fn key(stream: u64, tag: u64, n: u64) -> u64 {
    mix64(stream ^ mix64(n.wrapping_mul(GOLDEN) ^ tag))
}

/// Maps 64 random bits to [-1, 1).
fn signed_unit(bits: u64) -> f64 {
    (bits >> 11) as f64 * (2.0 / (1u64 << 53) as f64) - 1.0
}

struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN);
        mix64(self.0)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [lo, hi).
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Uniform in 0..n (n > 0), by multiply-shift.
    fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssl_plugin_api::Pixels;

    fn params(json: &str) -> Params {
        Params::from_json(json).unwrap()
    }

    fn shapes(json: &str) -> Shapes {
        Shapes::from_params(&params(json)).unwrap()
    }

    fn bytes(sample: &Sample) -> Vec<u8> {
        match sample.image().pixels() {
            Pixels::U8(v) => v.to_vec(),
            other => panic!("expected u8 pixels, got {other:?}"),
        }
    }

    fn err(json: &str) -> String {
        Shapes::from_params(&params(json))
            .unwrap_err()
            .message()
            .to_string()
    }

    #[test]
    fn defaults() {
        let d = shapes("{}");
        assert_eq!(d.len(), 2000);
        assert_eq!(d.image_size(), 32);
        assert_eq!(d.seed(), 0);
        assert_eq!(d.split(), Split::Train);
        assert_eq!(d.num_classes(), Some(CLASS_NAMES.len()));
        assert_eq!(CLASS_NAMES.len(), 4);
    }

    #[test]
    fn same_seed_and_index_give_identical_images() {
        let a = shapes(r#"{"seed": 7, "num_samples": 50}"#);
        let b = shapes(r#"{"seed": 7, "num_samples": 50, "root": "/nowhere"}"#);
        for i in [0, 1, 17, 49] {
            let (sa, sb) = (a.get(i).unwrap(), b.get(i).unwrap());
            assert_eq!(bytes(&sa), bytes(&sb), "index {i}");
            assert_eq!(sa.label(), sb.label());
            assert_eq!(sa.id(), sb.id());
            // Drawing twice from the same object is identical too.
            assert_eq!(bytes(&a.get(i).unwrap()), bytes(&sa));
        }
        assert_eq!(a.targets().unwrap(), b.targets().unwrap());
    }

    #[test]
    fn different_indices_and_seeds_give_different_images() {
        let a = shapes(r#"{"seed": 7, "num_samples": 50}"#);
        let c = shapes(r#"{"seed": 8, "num_samples": 50}"#);
        let images: Vec<Vec<u8>> = (0..50).map(|i| bytes(&a.get(i).unwrap())).collect();
        for i in 0..images.len() {
            for j in i + 1..images.len() {
                assert_ne!(images[i], images[j], "indices {i} and {j}");
            }
            assert_ne!(
                images[i],
                bytes(&c.get(i).unwrap()),
                "seeds 7 and 8 at index {i}"
            );
        }
    }

    #[test]
    fn image_size_is_honoured() {
        for size in [8u32, 32, 45, 64] {
            let d = shapes(&format!(r#"{{"image_size": {size}, "num_samples": 3}}"#));
            for i in 0..3 {
                let s = d.get(i).unwrap();
                let img = s.image();
                assert_eq!((img.width(), img.height(), img.channels()), (size, size, 3));
                assert_eq!(bytes(&s).len(), (size * size * 3) as usize);
            }
        }
    }

    #[test]
    fn labels_match_targets_and_are_balanced() {
        let d = shapes(r#"{"seed": 3, "num_samples": 202}"#);
        let targets = d.targets().unwrap();
        assert_eq!(targets.len(), 202);
        let mut counts = [0usize; 4];
        for (i, t) in targets.iter().enumerate() {
            let s = d.get(i).unwrap();
            assert_eq!(s.label(), *t, "index {i}");
            assert_eq!(Some(d.label(i).unwrap()), *t);
            let t = t.expect("Shapes is labelled");
            assert!((0..4).contains(&t), "label {t}");
            counts[t as usize] += 1;
        }
        for (class, &n) in counts.iter().enumerate() {
            assert!(
                (45..=56).contains(&n),
                "class {class} has {n} of 202 samples: {counts:?}"
            );
        }
        // Labels are shuffled, not a fixed cycle.
        let cycle: Vec<_> = (0..40).map(|i| Some((i % 4) as i64)).collect();
        assert_ne!(targets[..40], cycle[..]);
        // The layout draws the class of the label.
        for (i, t) in targets.iter().enumerate().take(20) {
            assert_eq!(Some(d.layout(i).unwrap().class as i64), *t);
        }
    }

    #[test]
    fn train_and_test_splits_differ() {
        let train = shapes(r#"{"seed": 5, "num_samples": 40}"#);
        let test = shapes(r#"{"seed": 5, "num_samples": 40, "split": "test"}"#);
        assert_eq!(test.split(), Split::Test);
        assert_ne!(train.targets().unwrap(), test.targets().unwrap());
        for i in 0..40 {
            let (a, b) = (train.get(i).unwrap(), test.get(i).unwrap());
            assert_ne!(bytes(&a), bytes(&b), "index {i}");
            assert_eq!(a.id(), format!("shapes-train-{i}"));
            assert_eq!(b.id(), format!("shapes-test-{i}"));
        }
    }

    #[test]
    fn bad_parameters_are_rejected_with_their_name() {
        let e = err(r#"{"num_sample": 5}"#);
        assert!(
            e.contains("unknown parameter `num_sample`") && e.contains("num_samples"),
            "{e}"
        );
        let e = err(r#"{"image_size": 7}"#);
        assert!(e.contains("image_size") && e.contains("at least 8"), "{e}");
        assert!(Shapes::from_params(&params(r#"{"image_size": 8}"#)).is_ok());
        let e = err(r#"{"image_size": -3}"#);
        assert!(e.contains("image_size"), "{e}");
        let e = err(r#"{"image_size": 100000}"#);
        assert!(e.contains("image_size"), "{e}");
        let e = err(r#"{"split": "val"}"#);
        assert!(e.contains("split") && e.contains("val"), "{e}");
        let e = err(r#"{"num_samples": 0}"#);
        assert!(e.contains("num_samples"), "{e}");
        let e = err(r#"{"num_samples": "many"}"#);
        assert!(e.contains("num_samples"), "{e}");
        let e = err(r#"{"seed": -1}"#);
        assert!(e.contains("seed"), "{e}");
        // `root` is accepted whatever it holds.
        assert!(Shapes::from_params(&params(r#"{"root": "/data/shapes"}"#)).is_ok());
    }

    #[test]
    fn out_of_range_index_is_an_error() {
        let d = shapes(r#"{"num_samples": 10}"#);
        assert!(d.get(9).is_ok());
        let e = d.get(10).unwrap_err();
        assert!(
            e.message().contains("10") && e.message().contains("length 10"),
            "{e}"
        );
        let e = d.get(12345).unwrap_err();
        assert!(
            e.message().contains("12345") && e.message().contains("10"),
            "{e}"
        );
        assert!(d.layout(10).is_err());
        assert!(d.label(10).is_err());
    }

    #[test]
    fn shapes_stay_inside_the_frame_with_the_requested_size() {
        for size in [8u32, 32, 100] {
            let d = shapes(&format!(r#"{{"image_size": {size}, "num_samples": 300}}"#));
            let s = size as f64;
            for i in 0..300 {
                let l = d.layout(i).unwrap();
                let diameter = 2.0 * l.radius / s;
                assert!(
                    (0.35..=0.80).contains(&diameter),
                    "index {i}: diameter {diameter}"
                );
                let (x, y) = l.center;
                assert!(
                    x - l.radius >= 0.0 && x + l.radius <= s,
                    "index {i}: x {x}, r {}",
                    l.radius
                );
                assert!(
                    y - l.radius >= 0.0 && y + l.radius <= s,
                    "index {i}: y {y}, r {}",
                    l.radius
                );
            }
        }
    }

    fn mean_color(img: &[u8], size: usize, inside: impl Fn(f64, f64) -> bool) -> Option<[f64; 3]> {
        let mut sum = [0.0; 3];
        let mut n = 0.0;
        for y in 0..size {
            for x in 0..size {
                if inside(x as f64 + 0.5, y as f64 + 0.5) {
                    for c in 0..3 {
                        sum[c] += img[(y * size + x) * 3 + c] as f64;
                    }
                    n += 1.0;
                }
            }
        }
        (n > 0.0).then(|| sum.map(|s| s / n))
    }

    #[test]
    fn the_shape_is_drawn_at_its_centre() {
        let size = 32usize;
        let d = shapes(r#"{"seed": 11, "num_samples": 200}"#);
        let mut distinct = 0;
        for i in 0..200 {
            let l = d.layout(i).unwrap();
            let img = bytes(&d.get(i).unwrap());
            let (cx, cy) = l.center;
            let r = (0.2 * l.radius).max(1.5);
            let centre = mean_color(&img, size, |x, y| (x - cx).hypot(y - cy) <= r).unwrap();
            let s = size as f64;
            let corners = mean_color(&img, size, |x, y| {
                (x < 2.0 || x > s - 2.0) && (y < 2.0 || y > s - 2.0)
            })
            .unwrap();
            let diff: f64 = (0..3).map(|c| (centre[c] - corners[c]).abs()).sum();
            // The centre also looks like the declared shape colour.
            let to_shape: f64 = (0..3).map(|c| (centre[c] - l.color[c] as f64).abs()).sum();
            if diff > 60.0 && to_shape < 30.0 {
                distinct += 1;
            }
        }
        assert!(
            distinct >= 190,
            "only {distinct} of 200 samples show the shape at its centre"
        );
    }

    /// The area painted in the shape colour matches the geometry of the class, so the class
    /// (not just some blob) is drawn, at the declared size.
    #[test]
    fn painted_area_matches_the_class() {
        let d = shapes(r#"{"seed": 2, "image_size": 64, "num_samples": 120}"#);
        let w = CROSS_ARM_WIDTH;
        let area_factor = [
            PI,
            2.0,
            3.0 * 3f64.sqrt() / 4.0,
            (8.0 * w - 4.0 * w * w) / (1.0 + w * w),
        ];
        let mut good = 0;
        let mut worst = Vec::new();
        for i in 0..120 {
            let l = d.layout(i).unwrap();
            let img = bytes(&d.get(i).unwrap());
            let painted = img
                .chunks(3)
                .filter(|p| (0..3).all(|c| (p[c] as f64 - l.color[c] as f64).abs() <= 15.5))
                .count() as f64;
            let expected = area_factor[l.class] * l.radius * l.radius;
            let ratio = painted / expected;
            if (0.8..=1.15).contains(&ratio) {
                good += 1;
            } else {
                worst.push((i, CLASS_NAMES[l.class], ratio));
            }
        }
        assert!(
            good >= 114,
            "only {good} of 120 samples paint the expected area; off: {worst:?}"
        );
    }

    /// FNV-1a over the bytes of the first `n` images.
    fn fingerprint(d: &Shapes, n: usize) -> u64 {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for i in 0..n {
            for b in bytes(&d.get(i).unwrap()) {
                h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
            }
        }
        h
    }

    /// Pixels outside the circle around the shape (with a pixel of margin), as RGB triples.
    fn background_pixels(d: &Shapes, index: usize) -> Vec<[f64; 3]> {
        let n = d.image_size() as usize;
        let l = d.layout(index).unwrap();
        let img = bytes(&d.get(index).unwrap());
        let mut out = Vec::new();
        for y in 0..n {
            for x in 0..n {
                let (px, py) = (x as f64 + 0.5, y as f64 + 0.5);
                if (px - l.center.0).hypot(py - l.center.1) > l.radius + 1.5 {
                    let p = &img[(y * n + x) * 3..(y * n + x) * 3 + 3];
                    out.push([p[0] as f64, p[1] as f64, p[2] as f64]);
                }
            }
        }
        out
    }

    /// Mean over channels of the standard deviation of the background pixels.
    fn background_spread(d: &Shapes, index: usize) -> f64 {
        let px = background_pixels(d, index);
        let n = px.len() as f64;
        (0..3)
            .map(|c| {
                let mean = px.iter().map(|p| p[c]).sum::<f64>() / n;
                (px.iter().map(|p| (p[c] - mean).powi(2)).sum::<f64>() / n).sqrt()
            })
            .sum::<f64>()
            / 3.0
    }

    /// The images of the default options are pinned: a change to the drawing code must leave
    /// them byte for byte (runs and their metrics depend on them).
    #[test]
    fn default_images_are_pinned() {
        let d = shapes(r#"{"seed": 4, "num_samples": 8}"#);
        let weak =
            shapes(r#"{"seed": 4, "num_samples": 8, "texture_strength": 0.3, "noise": 0.3}"#);
        assert_eq!(fingerprint(&d, 8), 0xf5c70600e2c96ef);
        assert_eq!(fingerprint(&weak, 8), 0x8a18b6cbd17d89f7);
        let explicit = shapes(r#"{"seed": 4, "num_samples": 8, "multi_label": false}"#);
        assert_eq!(fingerprint(&explicit, 8), 0xf5c70600e2c96ef);
        assert_eq!(d.findings().unwrap(), None);
    }

    #[test]
    fn texture_parameters_default_to_the_original_look() {
        let d = shapes(r#"{"seed": 4, "num_samples": 12}"#);
        assert_eq!((d.texture_strength(), d.noise()), (1.0, 1.0));
        let explicit =
            shapes(r#"{"seed": 4, "num_samples": 12, "texture_strength": 1, "noise": 1.0}"#);
        assert_eq!(fingerprint(&d, 12), fingerprint(&explicit, 12));
        let weaker = shapes(r#"{"seed": 4, "num_samples": 12, "texture_strength": 0.5}"#);
        assert_ne!(fingerprint(&d, 12), fingerprint(&weaker, 12));
    }

    #[test]
    fn zero_texture_and_noise_give_a_flat_background() {
        let d = shapes(r#"{"seed": 9, "num_samples": 40, "texture_strength": 0, "noise": 0}"#);
        for i in 0..40 {
            let px = background_pixels(&d, i);
            assert!(px.len() > 50, "index {i}: {} background pixels", px.len());
            assert!(
                px.iter().all(|p| p == &px[0]),
                "index {i}: background is not flat"
            );
        }
    }

    #[test]
    fn weaker_texture_keeps_layout_labels_and_colours_and_lowers_background_spread() {
        let full = shapes(r#"{"seed": 6, "num_samples": 60}"#);
        let weak =
            shapes(r#"{"seed": 6, "num_samples": 60, "texture_strength": 0.3, "noise": 0.3}"#);
        let flat = shapes(r#"{"seed": 6, "num_samples": 60, "texture_strength": 0, "noise": 0}"#);
        assert_eq!(full.targets().unwrap(), weak.targets().unwrap());
        let (mut weaker, mut sum_full, mut sum_weak) = (0, 0.0, 0.0);
        for i in 0..60 {
            assert_eq!(
                full.layout(i).unwrap(),
                weak.layout(i).unwrap(),
                "index {i}"
            );
            assert_ne!(bytes(&full.get(i).unwrap()), bytes(&weak.get(i).unwrap()));
            let (a, b, c) = (
                background_spread(&full, i),
                background_spread(&weak, i),
                background_spread(&flat, i),
            );
            assert_eq!(c, 0.0, "index {i}");
            assert!(b > 0.0, "index {i}: a weak texture is still a texture");
            if b < a {
                weaker += 1;
            }
            sum_full += a;
            sum_weak += b;
        }
        assert!(weaker >= 57, "only {weaker} of 60 backgrounds got smoother");
        assert!(
            sum_weak < 0.5 * sum_full,
            "spread {sum_weak} versus {sum_full}"
        );
        // Noise alone: only the pixel noise is gone, the gradient and stripes remain.
        let no_noise = shapes(r#"{"seed": 6, "num_samples": 60, "noise": 0}"#);
        let spread: f64 = (0..60).map(|i| background_spread(&no_noise, i)).sum();
        assert!(
            spread > 0.0 && spread < sum_full,
            "{spread} versus {sum_full}"
        );
    }

    #[test]
    fn texture_parameters_out_of_range_are_rejected_with_their_name() {
        for (json, name) in [
            (r#"{"texture_strength": 1.5}"#, "texture_strength"),
            (r#"{"texture_strength": -0.1}"#, "texture_strength"),
            (r#"{"noise": 2}"#, "noise"),
            (r#"{"noise": -1}"#, "noise"),
            (r#"{"noise": "none"}"#, "noise"),
        ] {
            let e = err(json);
            assert!(e.contains(name), "{json}: {e}");
        }
        assert!(Shapes::from_params(&params(r#"{"texture_strength": 0, "noise": 1}"#)).is_ok());
    }

    fn multi_label(json: &str) -> Shapes {
        let d = shapes(json);
        assert!(d.multi_label());
        d
    }

    #[test]
    fn multi_label_images_declare_the_shapes_they_show() {
        let d = multi_label(r#"{"seed": 3, "num_samples": 400, "multi_label": true}"#);
        assert_eq!(d.num_classes(), None);
        assert_eq!(d.targets().unwrap(), vec![None; 400]);
        assert_eq!(d.get(0).unwrap().label(), None);
        assert!(d.label(0).is_err());
        assert!(d.layout(0).unwrap_err().message().contains("layouts"));
        let findings = d
            .findings()
            .unwrap()
            .expect("a multi-label dataset has findings");
        assert_eq!(findings.names(), CLASS_NAMES);
        assert_eq!(findings.len(), 400);
        let (mut counts, mut shown) = ([0usize; 4], [0usize; 5]);
        for i in 0..400 {
            let present = d.present(i).unwrap();
            let row = findings.of(i);
            for k in 0..4 {
                assert_eq!(
                    row[k],
                    i8::from(present[k]),
                    "index {i}, {}",
                    CLASS_NAMES[k]
                );
                counts[k] += usize::from(present[k]);
            }
            let classes: Vec<usize> = d.layouts(i).unwrap().iter().map(|l| l.class).collect();
            let expected: Vec<usize> = (0..4).filter(|&k| present[k]).collect();
            assert_eq!(classes, expected, "index {i}");
            shown[classes.len()] += 1;
        }
        // Each finding is present in about half the images, and 0 to 4 shapes all occur.
        for (k, &n) in counts.iter().enumerate() {
            assert!((170..=230).contains(&n), "{} in {n} of 400", CLASS_NAMES[k]);
        }
        assert!(shown.iter().all(|&n| n > 0), "{shown:?}");
        // The single-label dataset of the same seed keeps its own labels.
        let single = shapes(r#"{"seed": 3, "num_samples": 400}"#);
        assert_eq!(single.findings().unwrap(), None);
        assert!(single.targets().unwrap().iter().all(Option::is_some));
        assert_eq!(single.present(5).unwrap().iter().filter(|&&p| p).count(), 1);
    }

    /// The hue of an RGB pixel, in [0, 1).
    fn hue(p: &[u8]) -> f64 {
        let [r, g, b] = [p[0], p[1], p[2]].map(|v| v as f64);
        let (max, min) = (r.max(g).max(b), r.min(g).min(b));
        if max == min {
            return 0.0;
        }
        let h = if max == r {
            (g - b) / (max - min)
        } else if max == g {
            2.0 + (b - r) / (max - min)
        } else {
            4.0 + (r - g) / (max - min)
        };
        (h / 6.0).rem_euclid(1.0)
    }

    #[test]
    fn multi_label_shapes_sit_in_their_own_quarters() {
        let d = multi_label(r#"{"seed": 8, "num_samples": 200, "multi_label": true}"#);
        let half = 16.0;
        for i in 0..200 {
            let mut quarters = Vec::new();
            for l in d.layouts(i).unwrap() {
                let (x, y) = l.center;
                let q = ((x / half) as usize, (y / half) as usize);
                let (x0, y0) = (q.0 as f64 * half, q.1 as f64 * half);
                assert!(
                    x - l.radius >= x0 && x + l.radius <= x0 + half,
                    "index {i}: x {x}, r {}",
                    l.radius
                );
                assert!(
                    y - l.radius >= y0 && y + l.radius <= y0 + half,
                    "index {i}: y {y}, r {}",
                    l.radius
                );
                assert!(l.radius > 3.0, "index {i}: radius {}", l.radius);
                quarters.push(q);
            }
            let n = quarters.len();
            quarters.sort();
            quarters.dedup();
            assert_eq!(quarters.len(), n, "index {i}: two shapes share a quarter");
        }
    }

    /// The findings are in the pixels: counting the bright pixels of each class's hue tells
    /// which shapes an image shows.
    #[test]
    fn multi_label_findings_are_visible_in_the_pixels() {
        let d = multi_label(r#"{"seed": 5, "num_samples": 200, "multi_label": true}"#);
        let (mut right, mut total) = (0, 0);
        for i in 0..200 {
            let img = bytes(&d.get(i).unwrap());
            let present = d.present(i).unwrap();
            for (k, &shown) in present.iter().enumerate() {
                let painted = img
                    .chunks(3)
                    .filter(|p| p.iter().any(|&c| c > 150))
                    .filter(|p| {
                        let dh = (hue(p) - MULTI_LABEL_HUES[k]).abs();
                        dh.min(1.0 - dh) < 0.05
                    })
                    .count();
                if (painted >= 5) == shown {
                    right += 1;
                }
                total += 1;
            }
        }
        assert!(
            right * 100 >= total * 98,
            "the pixels tell only {right} of {total} findings"
        );
    }

    #[test]
    fn multi_label_must_be_a_boolean() {
        let e = err(r#"{"multi_label": "yes"}"#);
        assert!(e.contains("multi_label"), "{e}");
    }

    #[test]
    fn triangle_and_cross_distances_have_the_right_sign() {
        let r = 10.0;
        for class in 0..4 {
            assert!(shape_sdf(class, 0.0, 0.0, r) < 0.0, "class {class} centre");
            assert!(shape_sdf(class, 0.0, 0.0, r) >= -r, "class {class} centre");
            // Everything lies within the circle of radius r, and touches it.
            for k in 0..360 {
                let a = k as f64 * PI / 180.0;
                assert!(
                    shape_sdf(class, 1.01 * r * a.cos(), 1.01 * r * a.sin(), r) > 0.0,
                    "class {class} angle {k}"
                );
            }
            let touches = (0..3600).any(|k| {
                let a = k as f64 * PI / 1800.0;
                shape_sdf(class, 0.999 * r * a.cos(), 0.999 * r * a.sin(), r) <= 0.0
            });
            assert!(touches, "class {class} does not reach its radius");
        }
        // Triangle corner on +y, flat side below.
        assert!(sd_equilateral_triangle(0.0, 9.9, 10.0 * 3f64.sqrt() / 2.0) < 0.0);
        assert!(sd_equilateral_triangle(0.0, -5.1, 10.0 * 3f64.sqrt() / 2.0) > 0.0);
        assert!(sd_equilateral_triangle(0.0, -4.9, 10.0 * 3f64.sqrt() / 2.0) < 0.0);
    }
}
