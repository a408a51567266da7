//! Batch transforms built into `ssl-host`, registered as the plugin
//! `builtin-batch-transforms`: the built-in image transforms (`builtin-transforms`) applied to
//! a whole `[N, C, H, W]` float batch where the model runs (`augment_on = "device"`), under
//! the same names and parameters, one file each.
//!
//! Randomness: every per-sample scalar (crop box, angle, flip, jitter order and factors,
//! gamma, blur sigma, erased rectangle, apply decisions) is drawn on the host with the
//! per-image transform's own draws ([`ssl_builtin_transforms::rng::Rng`]) from the sample's
//! seed, so a batch transform and its per-image twin draw identical parameters; they are
//! uploaded as one small tensor per transform (no device-to-host reads inside `apply`).
//! Per-pixel randomness (elastic fields, Gaussian noise) comes from a counter-based generator
//! computed on the device ([`hash_noise`]): a pure function of (seed, pixel), independent of
//! the batch, with the per-image transform's distribution but other values.
//!
//! Without per-pixel randomness, outputs equal the per-image transforms' up to float rounding.
//! [`pipeline`] holds the batch pipeline compiler (one sampling grid for a chain of geometric
//! steps). The host calls [`link`] so the linker keeps this crate (and its registration).

#![warn(missing_docs)]

pub mod batch;
pub mod center_crop;
pub mod color_jitter;
pub mod elastic_transform;
pub mod expand_channels;
pub mod gaussian_blur;
pub mod gaussian_noise;
pub mod geometry;
pub mod hash_noise;
pub mod horizontal_flip;
pub mod pipeline;
pub mod random_affine;
pub mod random_erasing;
pub mod random_gamma;
pub mod random_grayscale;
pub mod random_resized_crop;
pub mod resample;
pub mod resize;
pub mod to_float;

pub use center_crop::CenterCrop;
pub use color_jitter::ColorJitter;
pub use elastic_transform::ElasticTransform;
pub use expand_channels::ExpandChannels;
pub use gaussian_blur::GaussianBlur;
pub use gaussian_noise::AddGaussianNoise;
pub use horizontal_flip::RandomHorizontalFlip;
pub use pipeline::CompiledPipeline;
pub use random_affine::RandomAffine;
pub use random_erasing::RandomErasing;
pub use random_gamma::RandomGamma;
pub use random_grayscale::RandomGrayscale;
pub use random_resized_crop::RandomResizedCrop;
pub use resize::Resize;
pub use to_float::ToFloat;

use ssl_plugin_api::Plugin;

/// Called by the host so the linker keeps this crate and its `inventory` registration.
pub fn link() {}

/// The plugin `builtin-batch-transforms`: its batch transforms and its pipeline compiler.
fn plugin() -> Plugin {
    Plugin::new("builtin-batch-transforms", env!("CARGO_PKG_VERSION"))
        .batch_transform(
            "RandomResizedCrop",
            "per-sample torchvision crop boxes (the per-image draws), one separable bilinear \
             resize of the batch",
            RandomResizedCrop::from_params,
        )
        .batch_transform(
            "RandomHorizontalFlip",
            "per-sample left-right flips with probability p",
            RandomHorizontalFlip::from_params,
        )
        .batch_transform(
            "ColorJitter",
            "per-sample brightness/contrast/saturation/hue in a per-sample random order, \
             with probability p",
            ColorJitter::from_params,
        )
        .batch_transform(
            "RandomGrayscale",
            "per-sample luma in all 3 channels with probability p",
            RandomGrayscale::from_params,
        )
        .batch_transform(
            "GaussianBlur",
            "per-sample Gaussian blur of random sigma with probability p, reflect-101 borders",
            GaussianBlur::from_params,
        )
        .batch_transform(
            "Resize",
            "bilinear resize of the batch (shorter side to size, or [h, w])",
            Resize::from_params,
        )
        .batch_transform(
            "CenterCrop",
            "central crop of the batch, zero-padded where smaller",
            CenterCrop::from_params,
        )
        .batch_transform("ToFloat", "identity on a float batch", ToFloat::from_params)
        .batch_transform(
            "ExpandChannels",
            "1 channel expanded to 3 (a view)",
            ExpandChannels::from_params,
        )
        .batch_transform(
            "RandomAffine",
            "per-sample rotation, translation and x-shear, nearest sampling (one gather)",
            RandomAffine::from_params,
        )
        .batch_transform(
            "RandomGamma",
            "per-sample gamma ~ U(scale)",
            RandomGamma::from_params,
        )
        .batch_transform(
            "ElasticTransform",
            "per-sample elastic warp with probability p_apply; fields from a counter-based \
             generator on the device (a function of seed and pixel), smoothed by convolution",
            ElasticTransform::from_params,
        )
        .batch_transform(
            "RandomErasing",
            "per-sample random rectangle set to value with probability p",
            RandomErasing::from_params,
        )
        .batch_transform(
            "AddGaussianNoise",
            "per-sample Gaussian noise with probability p_apply, from a counter-based \
             generator on the device (a function of seed and pixel), clamped to each \
             sample's range",
            AddGaussianNoise::from_params,
        )
        .batch_pipeline_compiler(pipeline::DESCRIPTION, pipeline::compile)
}

ssl_plugin_api::register_builtin!(plugin);
