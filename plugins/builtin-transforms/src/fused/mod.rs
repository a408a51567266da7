//! The pipeline compiler of `builtin-transforms`: a whole list of this plugin's transforms
//! run as one transform ([`FusedPipeline`]) that draws exactly what the steps draw and does
//! far less work.
//!
//! What it does differently from the steps (the steps stay the reference):
//!
//! - **One resampling per geometric run.** Consecutive `RandomAffine`, `RandomResizedCrop`,
//!   `Resize`, `CenterCrop` and `RandomHorizontalFlip` steps are composed into one map from
//!   output pixel to source position ([`geometry`]) and sampled once, bilinearly, at the
//!   output size, straight from the decoded 8-bit, 16-bit or float pixels. Without an affine
//!   step and with at most one resize, this is bit for bit what the steps give (CIFAR's crop
//!   and flip, the evaluation `Resize` + `CenterCrop`). With an affine step it is not: the
//!   step samples the full-size image by nearest neighbour and the crop then interpolates
//!   that, while the composed map takes one bilinear sample of the source at the composed
//!   position. One bilinear sample is the better estimate of the same geometric map (no
//!   nearest-neighbour blockiness carried into the crop) and is what makes the path cheap
//!   (no full-size intermediate image); the geometry and every random draw are identical.
//!   An affine step drawn as the identity (angle, shear and shift 0) is left out, since its
//!   nearest sampling then returns the image unchanged.
//! - **Grey stays grey.** After `ExpandChannels` a one-channel image is kept in one channel
//!   standing for three identical ones, and expanded only at the very end; every step treats
//!   identical channels alike, and the ones mixing channels use the same arithmetic
//!   ([`photometric`]), so nothing changes but the work.
//! - **Photometric steps in place** on the working image, without conversions between steps;
//!   `RandomGamma` uses a vectorisable `exp2/log2` ([`fast_pow`], within 2e-6 of `powf`).
//! - **`ElasticTransform` followed by `CenterCrop`**: the displacement fields and the warp are
//!   evaluated only inside the crop ([`elastic`]), with the step's bits.
//!
//! Every step draws from `Rng::new(step_seed(view_seed, i))` with the functions of its own
//! file (`crop_box`, `draw`, ...) at the image size it would see, so the random parameters
//! are the steps' for every seed. A list containing anything else (an unknown name, bad
//! parameters, an affine step after another geometric step of the same run) is not compiled,
//! and images the fused path does not handle (not 1 or 3 channels, empty) go through the steps.

mod elastic;
mod fast_pow;
mod geometry;
mod photometric;
mod pipeline;

pub use pipeline::{FusedPipeline, GeometryDraw};

use crate::{
    AddGaussianNoise, CenterCrop, ColorJitter, ElasticTransform, ExpandChannels, GaussianBlur,
    RandomAffine, RandomErasing, RandomGamma, RandomGrayscale, RandomHorizontalFlip,
    RandomResizedCrop, Resize, ToFloat,
};
use ssl_plugin_api::{Params, Result, Transform, TransformStep};

/// What the compiler says about itself to the host.
pub const DESCRIPTION: &str = "builtin-transforms fused CPU pipeline: each run of geometric \
    steps composed into one bilinear sampling of the source at the output size (bit-identical \
    to the steps without RandomAffine; with it, one bilinear sample replaces nearest-then-\
    bilinear), grey images kept in one channel until the end, photometric steps in place; \
    same random draws as the steps";

/// One step of a compiled list, parsed.
#[derive(Clone, Debug)]
pub(crate) enum Stage {
    ToFloat(ToFloat),
    Expand(ExpandChannels),
    Affine(RandomAffine),
    Crop(RandomResizedCrop),
    Resize(Resize),
    Center(CenterCrop),
    Flip(RandomHorizontalFlip),
    Gamma(RandomGamma),
    Jitter(ColorJitter),
    Grey(RandomGrayscale),
    Blur(GaussianBlur),
    Elastic(ElasticTransform),
    Erase(RandomErasing),
    Noise(AddGaussianNoise),
}

impl Stage {
    /// The step as a stage, `None` for a name this compiler does not know or parameters the
    /// transform refuses (the host reports those when it makes the steps).
    fn parse(step: &TransformStep) -> Option<Stage> {
        let p: &Params = &step.params;
        Some(match step.name.as_str() {
            "ToFloat" => Stage::ToFloat(ToFloat::from_params(p).ok()?),
            "ExpandChannels" => Stage::Expand(ExpandChannels::from_params(p).ok()?),
            "RandomAffine" => Stage::Affine(RandomAffine::from_params(p).ok()?),
            "RandomResizedCrop" => Stage::Crop(RandomResizedCrop::from_params(p).ok()?),
            "Resize" => Stage::Resize(Resize::from_params(p).ok()?),
            "CenterCrop" => Stage::Center(CenterCrop::from_params(p).ok()?),
            "RandomHorizontalFlip" => Stage::Flip(RandomHorizontalFlip::from_params(p).ok()?),
            "RandomGamma" => Stage::Gamma(RandomGamma::from_params(p).ok()?),
            "ColorJitter" => Stage::Jitter(ColorJitter::from_params(p).ok()?),
            "RandomGrayscale" => Stage::Grey(RandomGrayscale::from_params(p).ok()?),
            "GaussianBlur" => Stage::Blur(GaussianBlur::from_params(p).ok()?),
            "ElasticTransform" => Stage::Elastic(ElasticTransform::from_params(p).ok()?),
            "RandomErasing" => Stage::Erase(RandomErasing::from_params(p).ok()?),
            "AddGaussianNoise" => Stage::Noise(AddGaussianNoise::from_params(p).ok()?),
            _ => return None,
        })
    }

    /// Whether the stage belongs to a geometric run.
    fn is_geometric(&self) -> bool {
        matches!(
            self,
            Stage::Affine(_)
                | Stage::Crop(_)
                | Stage::Resize(_)
                | Stage::Center(_)
                | Stage::Flip(_)
        )
    }

    /// The step itself (the reference path).
    fn as_transform(&self) -> &dyn Transform {
        match self {
            Stage::ToFloat(t) => t,
            Stage::Expand(t) => t,
            Stage::Affine(t) => t,
            Stage::Crop(t) => t,
            Stage::Resize(t) => t,
            Stage::Center(t) => t,
            Stage::Flip(t) => t,
            Stage::Gamma(t) => t,
            Stage::Jitter(t) => t,
            Stage::Grey(t) => t,
            Stage::Blur(t) => t,
            Stage::Elastic(t) => t,
            Stage::Erase(t) => t,
            Stage::Noise(t) => t,
        }
    }
}

/// The pipeline compiler: `Some` when every step of `steps` is one of this plugin's
/// transforms with valid parameters and every `RandomAffine` starts its geometric run (comes
/// first or after a non-geometric step); `None` otherwise, and the host applies the steps.
pub fn compile(steps: &[TransformStep]) -> Result<Option<FusedPipeline>> {
    let Some(stages) = steps.iter().map(Stage::parse).collect::<Option<Vec<_>>>() else {
        return Ok(None);
    };
    if stages.is_empty() {
        return Ok(None);
    }
    let affine_inside_run = stages
        .windows(2)
        .any(|w| w[0].is_geometric() && matches!(w[1], Stage::Affine(_)));
    if affine_inside_run {
        return Ok(None);
    }
    Ok(Some(FusedPipeline::new(stages)))
}
