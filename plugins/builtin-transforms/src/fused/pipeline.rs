//! [`FusedPipeline`]: runs a compiled list on one image. Geometric runs become one
//! [`Chain`] sampled from the current image, the other steps work in place on it.

use super::elastic::{smoothed_field, warp_window, Window};
use super::fast_pow::gamma_in_place;
use super::geometry::{Chain, Source, Texel};
use super::photometric::{grayscale, jitter};
use super::Stage;
use crate::convert::FloatImage;
use crate::expand_channels::expand_to_rgb;
use crate::gaussian_blur::blur_separable;
use crate::gaussian_noise::add_noise;
use crate::random_affine::{inverse_affine_matrix, AffineParams};
use crate::random_erasing::erase;
use crate::random_resized_crop::CropBox;
use crate::rng::Rng;
use ssl_plugin_api::{step_seed, Image, Pixels, Result, Transform};

/// A whole list of this plugin's transforms as one transform (see [the module](super)).
#[derive(Clone, Debug)]
pub struct FusedPipeline {
    stages: Vec<Stage>,
}

/// One geometric step's parameters, as drawn (with what the chain needs).
#[derive(Clone, Copy, Debug)]
enum Drawn {
    Affine(AffineParams, f32),
    Crop(CropBox, (usize, usize)),
    Resize((usize, usize)),
    Center((isize, isize), (usize, usize)),
    Flip(bool),
}

/// The random parameters of one geometric step ([`FusedPipeline::geometry_draws`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum GeometryDraw {
    /// `RandomAffine`: angle, shift, shear.
    Affine(AffineParams),
    /// `RandomResizedCrop`: the crop region.
    Crop(CropBox),
    /// `RandomHorizontalFlip`: whether it mirrors.
    Flip(bool),
}

/// The image between steps: still the decoded input, or the working `f32` image; `grey3`
/// when one channel stands for three identical ones.
struct Work {
    current: Current,
    grey3: bool,
}

enum Current {
    Source(Image),
    Float(FloatImage),
}

impl Work {
    fn size(&self) -> (usize, usize) {
        match &self.current {
            Current::Source(img) => (img.height() as usize, img.width() as usize),
            Current::Float(f) => (f.height, f.width),
        }
    }

    fn channels(&self) -> usize {
        match &self.current {
            Current::Source(img) => img.channels() as usize,
            Current::Float(f) => f.channels,
        }
    }

    /// The working image, converting the input on first use.
    fn float(&mut self) -> &mut FloatImage {
        if let Current::Source(_) = self.current {
            let Current::Source(img) = std::mem::replace(
                &mut self.current,
                Current::Float(FloatImage::zeros(0, 0, 0)),
            ) else {
                unreachable!()
            };
            self.current = Current::Float(FloatImage::from_image(img));
        }
        match &mut self.current {
            Current::Float(f) => f,
            Current::Source(_) => unreachable!(),
        }
    }

    /// Samples `chain` from the current image.
    fn resample(&mut self, chain: &Chain) {
        fn run<T: Texel>(chain: &Chain, data: &[T], shape: (usize, usize, usize)) -> FloatImage {
            chain.sample(Source { data, shape })
        }
        let (h, w) = self.size();
        let shape = (h, w, self.channels());
        let out = match &self.current {
            Current::Source(img) => match img.pixels() {
                Pixels::U8(d) => run(chain, d, shape),
                Pixels::U16(d) => run(chain, d, shape),
                Pixels::F32(d) => run(chain, d, shape),
            },
            Current::Float(f) => run(chain, &f.data, shape),
        };
        self.current = Current::Float(out);
    }

    fn into_image(mut self) -> Result<Image> {
        let grey3 = self.grey3;
        let img = std::mem::replace(self.float(), FloatImage::zeros(0, 0, 0));
        if grey3 {
            expand_to_rgb(&img).into_image()
        } else {
            img.into_image()
        }
    }
}

impl FusedPipeline {
    pub(crate) fn new(stages: Vec<Stage>) -> Self {
        FusedPipeline { stages }
    }

    /// Applies the steps one by one (the reference the fused path is tested against), each
    /// with its seed `step_seed(seed, i)`, as the host does.
    pub fn apply_steps(&self, mut image: Image, seed: u64) -> Result<Image> {
        for (i, stage) in self.stages.iter().enumerate() {
            image = stage.as_transform().apply(image, step_seed(seed, i))?;
        }
        Ok(image)
    }

    /// The draws of the geometric run starting at `first` on an input of `size`, each with
    /// its step index and input size, and the index after the run.
    fn run_draws(&self, first: usize, size: (usize, usize), seed: u64) -> (Vec<Drawn>, usize) {
        let mut draws = Vec::new();
        let (mut h, mut w) = size;
        let mut i = first;
        while let Some(stage) = self.stages.get(i).filter(|s| s.is_geometric()) {
            let mut rng = Rng::new(step_seed(seed, i));
            let d = match stage {
                Stage::Affine(a) => Drawn::Affine(a.draw(&mut rng, w, h), a.fill()),
                Stage::Crop(c) => Drawn::Crop(c.crop_box(&mut rng, h, w), c.size()),
                Stage::Resize(r) => Drawn::Resize(r.output_size(h, w)),
                Stage::Center(c) => Drawn::Center(c.offsets(h, w), c.size()),
                Stage::Flip(f) => Drawn::Flip(f.draw(&mut rng)),
                _ => unreachable!("only geometric stages form a run"),
            };
            (h, w) = match d {
                Drawn::Crop(_, out) | Drawn::Resize(out) | Drawn::Center(_, out) => out,
                Drawn::Affine(..) | Drawn::Flip(_) => (h, w),
            };
            draws.push(d);
            i += 1;
        }
        (draws, i)
    }

    /// The random geometric parameters this pipeline draws for a view with `seed` of an
    /// image of `size` (height, width), with the index of the step that draws each: what the
    /// fused path uses, for comparison with the steps' own draws.
    pub fn geometry_draws(&self, seed: u64, size: (usize, usize)) -> Vec<(usize, GeometryDraw)> {
        let mut out = Vec::new();
        let mut size = size;
        let mut i = 0;
        while i < self.stages.len() {
            if !self.stages[i].is_geometric() {
                i += 1;
                continue;
            }
            let (draws, next) = self.run_draws(i, size, seed);
            for (k, d) in draws.into_iter().enumerate() {
                match d {
                    Drawn::Affine(p, _) => out.push((i + k, GeometryDraw::Affine(p))),
                    Drawn::Crop(b, out_size) => {
                        out.push((i + k, GeometryDraw::Crop(b)));
                        size = out_size;
                    }
                    Drawn::Flip(f) => out.push((i + k, GeometryDraw::Flip(f))),
                    Drawn::Resize(s) | Drawn::Center(_, s) => size = s,
                }
            }
            i = next;
        }
        out
    }

    /// The geometric run starting at `first` composed into a chain on an input of `size`;
    /// returns the chain and the index after the run.
    fn chain(&self, first: usize, size: (usize, usize), seed: u64) -> (Chain, usize) {
        let (draws, next) = self.run_draws(first, size, seed);
        let mut chain = Chain::new(size);
        for d in draws {
            let (h, w) = chain.size();
            match d {
                Drawn::Affine(p, fill) => {
                    // Nearest sampling by the identity leaves the image as it is.
                    if p.angle != 0.0 || p.shear_x != 0.0 || p.translate != (0.0, 0.0) {
                        chain.push_affine(inverse_affine_matrix(&p), fill);
                    }
                }
                Drawn::Crop(b, out) => {
                    chain.push_resample((b.top, b.left, b.height, b.width), out);
                }
                Drawn::Resize(out) => {
                    if out != (h, w) {
                        chain.push_resample((0, 0, h, w), out);
                    }
                }
                Drawn::Center(offset, out) => {
                    if out != (h, w) {
                        chain.push_crop(offset, out);
                    }
                }
                Drawn::Flip(true) => chain.push_flip(),
                Drawn::Flip(false) => {}
            }
        }
        (chain, next)
    }

    /// `ElasticTransform` (stage `i`) followed by the centre crop `next`, evaluated inside the
    /// crop only; `false` (nothing done) when the crop does not fit inside the image.
    fn elastic_then_crop(
        &self,
        work: &mut Work,
        e: &crate::ElasticTransform,
        crop: &crate::CenterCrop,
        seed_elastic: u64,
    ) -> bool {
        let (h, w) = work.size();
        let (ch, cw) = crop.size();
        let (oy, ox) = crop.offsets(h, w);
        if oy < 0 || ox < 0 || ch > h || cw > w {
            return false;
        }
        let window = Window {
            top: oy as usize,
            left: ox as usize,
            height: ch,
            width: cw,
        };
        let img = work.float();
        let out = match e.draw_noise(&mut Rng::new(seed_elastic), h, w) {
            Some((nx, ny)) => {
                let dx = smoothed_field(&nx, h, w, e.sigma(), e.alpha(), window);
                let dy = smoothed_field(&ny, h, w, e.sigma(), e.alpha(), window);
                warp_window(img, &dx, &dy, window)
            }
            None => crop_window(img, window),
        };
        *img = out;
        true
    }
}

/// The `window` of `img`, copied.
fn crop_window(img: &FloatImage, window: Window) -> FloatImage {
    let c = img.channels;
    let mut out = FloatImage::zeros(window.width, window.height, c);
    let n = window.width * c;
    for (r, dst) in out.data.chunks_exact_mut(n.max(1)).enumerate() {
        let start = (window.top + r) * img.row_len() + window.left * c;
        dst.copy_from_slice(&img.data[start..start + n]);
    }
    out
}

impl Transform for FusedPipeline {
    fn apply(&self, image: Image, seed: u64) -> Result<Image> {
        let channels = image.channels();
        if !(channels == 1 || channels == 3) || image.width() == 0 || image.height() == 0 {
            return self.apply_steps(image, seed);
        }
        let mut work = Work {
            current: Current::Source(image),
            grey3: false,
        };
        let mut i = 0;
        while i < self.stages.len() {
            let stage = &self.stages[i];
            if stage.is_geometric() {
                let (chain, next) = self.chain(i, work.size(), seed);
                if !chain.is_empty() {
                    work.resample(&chain);
                }
                i = next;
                continue;
            }
            let mut rng = Rng::new(step_seed(seed, i));
            match stage {
                Stage::ToFloat(_) => {}
                Stage::Expand(_) => {
                    if work.channels() == 1 {
                        work.grey3 = true;
                    }
                }
                Stage::Gamma(g) => {
                    let gamma = g.gamma_for_seed(step_seed(seed, i)) as f32;
                    gamma_in_place(&mut work.float().data, gamma);
                }
                Stage::Jitter(j) => {
                    if let Some(draw) = j.draw(&mut rng) {
                        let grey3 = work.grey3;
                        let img = work.float();
                        jitter(&mut img.data, img.channels, grey3, &draw);
                    }
                }
                Stage::Grey(g) => {
                    if (work.grey3 || work.channels() == 3) && g.draw(&mut rng) {
                        let grey3 = work.grey3;
                        let img = work.float();
                        grayscale(&mut img.data, img.channels, grey3);
                    }
                }
                Stage::Blur(b) => {
                    if let Some(kernel) = b.draw_kernel(&mut rng) {
                        let img = work.float();
                        *img = blur_separable(img, &kernel);
                    }
                }
                Stage::Elastic(e) => {
                    if let Some(Stage::Center(crop)) = self.stages.get(i + 1) {
                        if self.elastic_then_crop(&mut work, e, crop, step_seed(seed, i)) {
                            i += 2;
                            continue;
                        }
                    }
                    let (h, w) = work.size();
                    if let Some((nx, ny)) = e.draw_noise(&mut rng, h, w) {
                        let all = Window {
                            top: 0,
                            left: 0,
                            height: h,
                            width: w,
                        };
                        let dx = smoothed_field(&nx, h, w, e.sigma(), e.alpha(), all);
                        let dy = smoothed_field(&ny, h, w, e.sigma(), e.alpha(), all);
                        let img = work.float();
                        *img = warp_window(img, &dx, &dy, all);
                    }
                }
                Stage::Erase(e) => {
                    let (h, w) = work.size();
                    if let Some(b) = e.draw(&mut rng, h, w) {
                        erase(work.float(), b, e.value());
                    }
                }
                Stage::Noise(n) => {
                    let (h, w) = work.size();
                    if let Some(noise) = n.draw(&mut rng, h * w) {
                        add_noise(work.float(), &noise);
                    }
                }
                _ => unreachable!("geometric stages are handled above"),
            }
            i += 1;
        }
        work.into_image()
    }
}
