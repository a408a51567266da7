//! Built-in SSL algorithms of ssl-host, as InnerEye-DeepLearning trains them:
//!
//! - [`byol`]: BYOL (online network + predictor, EMA target network, symmetric cosine loss);
//! - [`simclr`]: SimCLR (encoder + L2-normalised projection, NT-Xent loss);
//! - [`moco`]: MoCo v2 (momentum key network, queue of negatives, InfoNCE);
//! - [`simsiam`]: SimSiam (projector, predictor at a fixed learning rate, stop-gradient);
//! - [`barlow_twins`]: Barlow Twins (cross-correlation of batch-normalised embeddings pushed to
//!   the identity);
//! - [`vicreg`]: VICReg (invariance, variance and covariance terms);
//! - [`dino`]: DINO (multi-crop self-distillation from a momentum teacher, centred and
//!   sharpened);
//! - [`heads`]: the MLP heads BYOL and SimCLR put on top of the encoder;
//! - [`projector`]: the deep projector of Barlow Twins and VICReg.
//!
//! On several processes each gathers where its paper does, through
//! [`Collectives`](ssl_plugin_api::Collectives): SimCLR's negatives, Barlow Twins' and VICReg's
//! statistics (the global batch), MoCo's queue (every rank's keys), DINO's centre.
//!
//! Each algorithm is built around an encoder from any plugin (an [`EncoderSpec`](ssl_plugin_api::EncoderSpec)); the
//! registered factories build it through the spec, while [`byol::Byol::from_encoders`] and
//! [`simclr::SimClr::from_encoder`] take ready-made encoders (used by the tests).

use ssl_plugin_api::tch::Tensor;
use ssl_plugin_api::{bail, AlgorithmInfo, Collectives, Params, Plugin, Result};

pub mod barlow_twins;
pub mod byol;
pub mod dino;
pub mod heads;
pub mod moco;
pub mod projector;
pub mod simclr;
pub mod simsiam;
pub mod vicreg;

pub use barlow_twins::BarlowTwins;
pub use byol::Byol;
pub use dino::Dino;
pub use moco::Moco;
pub use simclr::SimClr;
pub use simsiam::SimSiam;
pub use vicreg::VicReg;

/// Referenced by the host so the linker keeps this crate (and its registration).
pub fn link() {}

fn plugin() -> Plugin {
    Plugin::new("builtin-algorithms", env!("CARGO_PKG_VERSION"))
        .algorithm(
            "BYOL",
            "Bootstrap Your Own Latent (Grill et al. 2020) as InnerEye's BYOLInnerEye: \
             projector 2048→128, predictor 128→128, EMA target from tau 0.99; params: \
             initial_tau (0.99), predictor_hidden_dim (128)",
            Byol::new,
        )
        // The original updates BYOL's learning rate once per epoch.
        .algorithm_info(AlgorithmInfo {
            lr_schedule: "warmup_cosine_epoch".into(),
            metric_prefix: "byol".into(),
            scale_lr_with_processes: true,
        })
        .algorithm(
            "SimCLR",
            "SimCLR (Chen et al. 2020) as InnerEye's SimCLRInnerEye: projection 2048→128, \
             NT-Xent loss; params: temperature (0.1), gather_negatives (true: negatives from \
             every process's batch)",
            SimClr::new,
        )
        // The original's SimCLR (Lightning Bolts) updates its learning rate after every step.
        .algorithm_info(AlgorithmInfo {
            lr_schedule: "warmup_cosine_step".into(),
            metric_prefix: "simclr".into(),
            scale_lr_with_processes: true,
        })
        .algorithm(
            "MoCo",
            "MoCo v2 (Chen et al. 2020): momentum key network, queue of negatives, InfoNCE; \
             params: momentum (0.999), queue_size (65536), temperature (0.2), head_dims \
             ([2048, 128]), symmetric (false)",
            Moco::new,
        )
        // The paper's cosine decay, once per epoch (configs set warmup_epochs = 0).
        .algorithm_info(AlgorithmInfo {
            lr_schedule: "warmup_cosine_epoch".into(),
            metric_prefix: "moco".into(),
            scale_lr_with_processes: true,
        })
        .model_config(
            "ShapesMoCo",
            "MoCo v2, ResNet18 on 32×32 Shapes; linear head on Shapes",
            include_str!("../configs/ShapesMoCo.toml"),
        )
        .model_config(
            "CIFAR10MoCo",
            "MoCo v2, ResNet50 on CIFAR10; linear head on CIFAR10",
            include_str!("../configs/CIFAR10MoCo.toml"),
        )
        .algorithm(
            "SimSiam",
            "SimSiam (Chen & He 2021): 3-layer projector, bottleneck predictor, stop-gradient, \
             the predictor at the fixed base learning rate; params: projector_dim (2048), \
             predictor_hidden (512), fixed_predictor_lr (true)",
            SimSiam::new,
        )
        // The paper's cosine decay, once per epoch (configs set warmup_epochs = 0).
        .algorithm_info(AlgorithmInfo {
            lr_schedule: "warmup_cosine_epoch".into(),
            metric_prefix: "simsiam".into(),
            scale_lr_with_processes: true,
        })
        .model_config(
            "ShapesSimSiam",
            "SimSiam, ResNet18 on 32×32 Shapes; linear head on Shapes",
            include_str!("../configs/ShapesSimSiam.toml"),
        )
        .model_config(
            "CIFAR10SimSiam",
            "SimSiam, ResNet50 on CIFAR10; linear head on CIFAR10",
            include_str!("../configs/CIFAR10SimSiam.toml"),
        )
        .algorithm(
            "BarlowTwins",
            "Barlow Twins (Zbontar et al. 2021): projector 8192-8192-8192, cross-correlation \
             loss; params: projector_dims ([8192, 8192, 8192]), lambd (0.0051), scale_loss (1); \
             the paper trains with LARS",
            BarlowTwins::new,
        )
        // The paper warms up then decays the learning rate (cosine) after every step.
        .algorithm_info(AlgorithmInfo {
            lr_schedule: "warmup_cosine_step".into(),
            metric_prefix: "barlowtwins".into(),
            scale_lr_with_processes: true,
        })
        .algorithm(
            "VICReg",
            "VICReg (Bardes et al. 2022): expander 8192-8192-8192, invariance + variance + \
             covariance loss; params: projector_dims ([8192, 8192, 8192]), sim_coeff (25), \
             std_coeff (25), cov_coeff (1); the paper trains with LARS",
            VicReg::new,
        )
        .algorithm_info(AlgorithmInfo {
            lr_schedule: "warmup_cosine_step".into(),
            metric_prefix: "vicreg".into(),
            scale_lr_with_processes: true,
        })
        .model_config(
            "ShapesBarlowTwins",
            "Barlow Twins (projector 512-512-512, LARS), ResNet18 on 32×32 Shapes; linear head on Shapes",
            include_str!("../configs/ShapesBarlowTwins.toml"),
        )
        .model_config(
            "CIFAR10BarlowTwins",
            "Barlow Twins (the paper's projector and LARS), ResNet50 on CIFAR10; linear head on CIFAR10",
            include_str!("../configs/CIFAR10BarlowTwins.toml"),
        )
        .model_config(
            "ShapesVICReg",
            "VICReg (expander 512-512-512, LARS), ResNet18 on 32×32 Shapes; linear head on Shapes",
            include_str!("../configs/ShapesVICReg.toml"),
        )
        .model_config(
            "CIFAR10VICReg",
            "VICReg (the paper's expander and LARS), ResNet50 on CIFAR10; linear head on CIFAR10",
            include_str!("../configs/CIFAR10VICReg.toml"),
        )
        .algorithm(
            "DINO",
            "DINO (Caron et al. 2021): momentum teacher, multi-crop (2 global views, then local \
             ones), centred and sharpened teacher softmax; params: out_dim (65536), hidden_dim \
             (2048), bottleneck_dim (256), norm_last_layer (true), momentum_teacher (0.996), \
             student_temp (0.1), warmup_teacher_temp (0.04), teacher_temp (0.07), \
             warmup_teacher_temp_epochs (30), center_momentum (0.9), freeze_last_layer (1)",
            Dino::new,
        )
        // The paper warms up then decays the learning rate (cosine) after every step.
        .algorithm_info(AlgorithmInfo {
            lr_schedule: "warmup_cosine_step".into(),
            metric_prefix: "dino".into(),
            scale_lr_with_processes: true,
        })
        .model_config(
            "ShapesDINO",
            "DINO (2 global 32 px + 2 local 16 px views, out_dim 1024), ResNet18 on Shapes; linear head on Shapes",
            include_str!("../configs/ShapesDINO.toml"),
        )
        .model_config(
            "CIFAR10DINO",
            "DINO (2 global 32 px + 6 local 16 px views), ResNet50 on CIFAR10; linear head on CIFAR10",
            include_str!("../configs/CIFAR10DINO.toml"),
        )
}

ssl_plugin_api::register_builtin!(plugin);

/// Fails, naming them, when `params` holds keys other than `known`.
pub(crate) fn reject_unknown_params(
    algorithm: &str,
    params: &Params,
    known: &[&str],
) -> Result<()> {
    let unknown: Vec<String> = params
        .as_json()
        .as_object()
        .map(|map| {
            map.keys()
                .filter(|k| !known.contains(&k.as_str()))
                .map(|k| format!("`{k}`"))
                .collect()
        })
        .unwrap_or_default();
    if unknown.is_empty() {
        return Ok(());
    }
    let accepted = if known.is_empty() {
        "it takes no parameters".to_string()
    } else {
        let names: Vec<String> = known.iter().map(|k| format!("`{k}`")).collect();
        format!("known: {}", names.join(", "))
    };
    bail!(
        "{algorithm}: unknown parameter{} {} ({accepted})",
        if unknown.len() > 1 { "s" } else { "" },
        unknown.join(", ")
    )
}

/// The two views of a batch; an error unless there are exactly two of the same batch size.
pub(crate) fn two_views<'a>(
    algorithm: &str,
    views: &'a [Tensor],
) -> Result<(&'a Tensor, &'a Tensor)> {
    let [v1, v2] = views else {
        bail!(
            "{algorithm} needs exactly 2 augmented views per batch, got {}",
            views.len()
        );
    };
    let (n1, n2) = (v1.size().first().copied(), v2.size().first().copied());
    if n1 != n2 {
        bail!(
            "{algorithm}: the two views must hold the same number of images, got shapes {:?} and {:?}",
            v1.size(),
            v2.size()
        );
    }
    Ok((v1, v2))
}

/// Both views' embeddings `[B, d]` of every rank, `([world · B, d], [world · B, d])` in rank
/// order: the global batch, for losses whose statistics the papers take over it (Barlow Twins,
/// VICReg). `with_grad`: differentiable gathers (each rank's embeddings receive their slice of
/// the gradient summed over ranks); without, for validation. Every rank must call it with the
/// same shapes.
pub(crate) fn gather_views(
    collectives: &Collectives,
    a: &Tensor,
    b: &Tensor,
    with_grad: bool,
) -> Result<(Tensor, Tensor)> {
    let gather = |z: &Tensor| {
        if with_grad {
            collectives.all_gather_with_grad(z)
        } else {
            collectives.all_gather(z)
        }
    };
    Ok((gather(a)?, gather(b)?))
}
