//! Built-in SSL algorithms of ssl-host, as InnerEye-DeepLearning trains them:
//!
//! - [`byol`]: BYOL (online network + predictor, EMA target network, symmetric cosine loss);
//! - [`simclr`]: SimCLR (encoder + L2-normalised projection, NT-Xent loss);
//! - [`heads`]: the MLP heads both put on top of the encoder.
//!
//! Each algorithm is built around an encoder from any plugin (an [`EncoderSpec`](ssl_plugin_api::EncoderSpec)); the
//! registered factories build it through the spec, while [`byol::Byol::from_encoders`] and
//! [`simclr::SimClr::from_encoder`] take ready-made encoders (used by the tests).

use ssl_plugin_api::tch::Tensor;
use ssl_plugin_api::{bail, AlgorithmInfo, Params, Plugin, Result};

pub mod byol;
pub mod heads;
pub mod simclr;

pub use byol::Byol;
pub use simclr::SimClr;

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
             NT-Xent loss; `temperature` (0.1)",
            SimClr::new,
        )
        // The original's SimCLR (Lightning Bolts) updates its learning rate after every step.
        .algorithm_info(AlgorithmInfo {
            lr_schedule: "warmup_cosine_step".into(),
            metric_prefix: "simclr".into(),
            scale_lr_with_processes: true,
        })
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
