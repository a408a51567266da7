//! Built-in encoders of ssl-host, randomly initialised as in the original system (never
//! pretrained), with torchvision's parameter names so checkpoints line up:
//!
//! | name          | model                                   | output |
//! |---------------|-----------------------------------------|--------|
//! | `resnet18`    | [`ResNet`], BasicBlock [2, 2, 2, 2]     | 512    |
//! | `resnet50`    | [`ResNet`], Bottleneck [3, 4, 6, 3]     | 2048   |
//! | `resnet101`   | [`ResNet`], Bottleneck [3, 4, 23, 3]    | 2048   |
//! | `densenet121` | [`DenseNet`], torchvision `.features`   | 1024   |
//!
//! Every encoder takes one parameter, `cifar_stem` (bool, default false): a 3×3 stride-1
//! first convolution for small images (ResNets only; an error for DenseNet-121). The ResNets
//! declare it as their small-image parameter, so the host turns it on for datasets that
//! declare small images (CIFAR) unless a run sets it.

#![warn(missing_docs)]

pub mod densenet;
mod init;
pub mod resnet;

pub use densenet::DenseNet;
pub use resnet::{ResNet, ResNetArch};

use ssl_plugin_api::{EncoderInfo, Plugin};

/// Referenced by the host so the linker keeps this crate (and its registration).
pub fn link() {}

fn plugin() -> Plugin {
    // The host sets `cifar_stem` to the dataset's `small_images` when a run does not give it.
    let resnet = || EncoderInfo {
        small_image_param: Some("cifar_stem".into()),
    };
    const STEM: &str = "params: cifar_stem (bool, default false: 3x3 stride-1 conv1 instead \
                        of 7x7 stride-2; the max-pool is kept)";
    Plugin::new("builtin-encoders", env!("CARGO_PKG_VERSION"))
        .encoder(
            "resnet18",
            &format!("ResNet-18 (He et al. 2016, torchvision layout, no fc), output 512; {STEM}"),
            ResNet::resnet18,
        )
        .encoder_info(resnet())
        .encoder(
            "resnet50",
            &format!("ResNet-50 (He et al. 2016, torchvision layout, no fc), output 2048; {STEM}"),
            ResNet::resnet50,
        )
        .encoder_info(resnet())
        .encoder(
            "resnet101",
            &format!("ResNet-101 (He et al. 2016, torchvision layout, no fc), output 2048; {STEM}"),
            ResNet::resnet101,
        )
        .encoder_info(resnet())
        .encoder(
            "densenet121",
            "DenseNet-121 (Huang et al. 2017, torchvision .features + global average pooling, \
             no final ReLU), output 1024, input at least 32 px; params: cifar_stem (bool, must \
             be false: densenet121 has no CIFAR stem)",
            DenseNet::densenet121,
        )
}

ssl_plugin_api::register_builtin!(plugin);
