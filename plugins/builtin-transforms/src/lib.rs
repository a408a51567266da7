//! Image transforms built into `ssl-host`, registered as the plugin `builtin-transforms`:
//! torchvision-style augmentations working on interleaved `f32` pixels in [0, 1], one file
//! each.
//!
//! - [`RandomResizedCrop`], [`RandomHorizontalFlip`], [`ColorJitter`], [`RandomGrayscale`],
//!   [`GaussianBlur`]: the SimCLR / CIFAR recipe;
//! - [`Resize`], [`CenterCrop`], [`ToFloat`]: deterministic preprocessing;
//! - [`ExpandChannels`], [`RandomAffine`], [`RandomGamma`], [`ElasticTransform`],
//!   [`RandomErasing`], [`AddGaussianNoise`]: InnerEye's chest X-ray augmentations (with
//!   `RandomResizedCrop`, `Resize`, `RandomHorizontalFlip`, `ColorJitter`, `CenterCrop`).
//!   They draw one set of random parameters for the whole image, so identical channels stay
//!   identical.
//!
//! Every transform accepts images of any pixel type (8-bit / 255, 16-bit / 65535, float as
//! is) and returns an `F32` image; all randomness comes from the seed passed to
//! [`Transform::apply`](ssl_plugin_api::Transform::apply) through [`rng::Rng`], so the same
//! image and seed give the same output. Unknown parameter names are rejected.
//!
//! A pipeline compiler ([`fused`]) runs a whole list of these transforms as one, with the
//! same random draws and far less work (one resampling per geometric run, grey images kept in
//! one channel).
//!
//! The host calls [`link`] so the linker keeps this crate (and its registration).

#![warn(missing_docs)]

mod args;
pub mod center_crop;
pub mod color_jitter;
pub mod convert;
pub mod elastic_transform;
pub mod expand_channels;
pub mod fused;
pub mod gaussian_blur;
pub mod gaussian_noise;
pub mod horizontal_flip;
pub mod random_affine;
pub mod random_erasing;
pub mod random_gamma;
pub mod random_grayscale;
pub mod random_resized_crop;
pub mod resize;
pub mod rng;
pub mod to_float;

pub use center_crop::CenterCrop;
pub use color_jitter::ColorJitter;
pub use elastic_transform::ElasticTransform;
pub use expand_channels::ExpandChannels;
pub use fused::FusedPipeline;
pub use gaussian_blur::GaussianBlur;
pub use gaussian_noise::AddGaussianNoise;
pub use horizontal_flip::RandomHorizontalFlip;
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

/// The plugin `builtin-transforms` and its transforms.
fn plugin() -> Plugin {
    Plugin::new("builtin-transforms", env!("CARGO_PKG_VERSION"))
        .transform(
            "RandomResizedCrop",
            "random crop of random area and aspect ratio, bilinearly resized (torchvision); \
             params: size (required, int or [h, w]), scale ([0.08, 1.0]), ratio ([0.75, 1.3333])",
            RandomResizedCrop::from_params,
        )
        .transform(
            "RandomHorizontalFlip",
            "mirror left-right with probability p; params: p (0.5)",
            RandomHorizontalFlip::from_params,
        )
        .transform(
            "ColorJitter",
            "random brightness/contrast/saturation/hue in random order (torchvision), applied \
             with probability p; params: brightness (0), contrast (0), saturation (0), hue (0, \
             <= 0.5), each a number or [min, max]; p (1.0)",
            ColorJitter::from_params,
        )
        .transform(
            "RandomGrayscale",
            "with probability p replace RGB by 0.299R + 0.587G + 0.114B in all 3 channels; \
             params: p (0.1)",
            RandomGrayscale::from_params,
        )
        .transform(
            "GaussianBlur",
            "with probability p a Gaussian blur of sigma ~ U(sigma), reflect-101 borders \
             (cv2); params: kernel_size (3, odd), sigma ([0.1, 2.0] or a number), p (0.5)",
            GaussianBlur::from_params,
        )
        .transform(
            "Resize",
            "bilinear resize of the shorter side to size, keeping the aspect ratio \
             (torchvision), or to exactly [h, w]; params: size (required)",
            Resize::from_params,
        )
        .transform(
            "CenterCrop",
            "central crop (torchvision), zero-padded when the image is smaller; \
             params: size (required, int or [h, w])",
            CenterCrop::from_params,
        )
        .transform(
            "ToFloat",
            "convert to f32 in [0, 1] (u8 / 255, u16 / 65535, f32 unchanged); no params",
            ToFloat::from_params,
        )
        .transform(
            "ExpandChannels",
            "repeat a 1-channel image into 3 identical channels (InnerEye); 3-channel images \
             pass unchanged; no params",
            ExpandChannels::from_params,
        )
        .transform(
            "RandomAffine",
            "random rotation, translation and x-shear about the centre, nearest sampling, \
             torchvision 0.11 on tensors; params: degrees (0: a for [-a, a], or [min, max]), \
             translate ([0, 0]: max horizontal and vertical shift as fractions of width and \
             height), shear (0: x-shear degrees, s for [-s, s], or [min, max]), fill (0)",
            RandomAffine::from_params,
        )
        .transform(
            "RandomGamma",
            "x -> clamp(x^gamma, 0, 1) with one gamma ~ U(scale) for all channels (InnerEye); \
             params: scale ([0.5, 1.5])",
            RandomGamma::from_params,
        )
        .transform(
            "ElasticTransform",
            "with probability p_apply, bilinear warp by Gaussian-smoothed U(-1, 1) fields \
             (scipy gaussian_filter, truncate 4, zeros outside) times alpha, 0 outside the \
             image (InnerEye); params: alpha (35), sigma (4), p_apply (0.5)",
            ElasticTransform::from_params,
        )
        .transform(
            "RandomErasing",
            "with probability p, set a random rectangle of area U(scale)*H*W and aspect \
             ratio log-U(ratio) to value in all channels (torchvision); params: p (0.5), \
             scale ([0.02, 0.33]), ratio ([0.3, 3.3]), value (0)",
            RandomErasing::from_params,
        )
        .transform(
            "AddGaussianNoise",
            "with probability p_apply add N(0, std^2) noise, one field for all channels, \
             clamped to the image's own min and max (InnerEye); params: p_apply (0.5), \
             std (0.01)",
            AddGaussianNoise::from_params,
        )
        .pipeline_compiler(fused::DESCRIPTION, fused::compile)
}

ssl_plugin_api::register_builtin!(plugin);
