//! BYOL, "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning" (Grill et
//! al., NeurIPS 2020), as InnerEye-DeepLearning trains it (`BYOLInnerEye` in
//! `byol_module.py`, `ByolMovingAverageWeightUpdate` in `byol_moving_average.py`).
//!
//! InnerEye specifics, kept here on purpose:
//! - the predictor's hidden layer has **128** units (the paper uses 4096; parameter
//!   `predictor_hidden_dim`); the projector is
//!   `enc_dim → 2048 → 128`;
//! - the loss is `0.5 * (cosine_loss(h1, z2) + cosine_loss(h2, z1))` with
//!   `cosine_loss = -mean(cos)`, so it lies in `[-1, 1]` (not the paper's `2 - 2 cos`);
//! - the target network runs in training mode during training (its BatchNorm uses batch
//!   statistics and updates its running buffers) and only its **parameters** are moved
//!   towards the online network; BatchNorm buffers are never averaged;
//! - `tau` starts at 0.99 (parameter `initial_tau`); the update after optimizer step `k` uses the tau computed after
//!   step `k - 1`, i.e. `1 - 0.01 * (cos(pi * (k - 1) / max_steps) + 1) / 2` (0.99 for the
//!   first);
//! - weight decay (and LARS adaptation) skip names containing `bias` or `bn` — a plain
//!   substring rule, so the heads' BatchNorm weights (`model.1.weight`) do get decay.
//!
//! Tensor names mirror the original state dict, with `online`/`target` for
//! `online_network`/`target_network`: `online.encoder.*`, `online.projector.model.{0,1,3}.*`,
//! `online.predictor.model.{0,1,3}.*`, `target.encoder.*`, `target.projector.*`; and
//! `byol.current_tau`, the tau of the next update, so a resumed run continues the schedule.

use crate::heads::{copy_by_name, pair_by_name, prefixed, Mlp, MlpConfig};
use crate::{reject_unknown_params, two_views};
use ssl_plugin_api::tch::{self, Device, Kind, Tensor};
use ssl_plugin_api::{bail, Encoder, EncoderSpec, Params, Result, SslAlgorithm, TrainableParam};
use std::f64::consts::PI;

/// The tau of the first moving-average update.
pub const INITIAL_TAU: f64 = 0.99;
/// Hidden size of the projector.
pub const PROJECTOR_HIDDEN_DIM: i64 = 2048;
/// Output size of the projector and of the predictor.
pub const PROJECTION_DIM: i64 = 128;
/// Hidden size of the predictor (InnerEye's 128, not the paper's 4096).
pub const PREDICTOR_HIDDEN_DIM: i64 = 128;
/// Name, within [`Byol::state`](SslAlgorithm::state), of the tau tensor.
pub const TAU_STATE_NAME: &str = "byol.current_tau";

/// `-mean_i <a_i / |a_i|, b_i / |b_i|>` over the rows of `a` and `b` (`[N, d]`): -1 when every
/// pair points the same way, 0 when orthogonal. Rows are normalised as `F.normalize` does
/// (norm clamped at 1e-12).
pub fn cosine_loss(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.size() != b.size() || a.dim() != 2 {
        bail!(
            "cosine_loss needs two [N, d] tensors of one shape, got {:?} and {:?}",
            a.size(),
            b.size()
        );
    }
    let a = crate::heads::l2_normalize(a)?;
    let b = crate::heads::l2_normalize(b)?;
    let cos = a
        .f_mul(&b)?
        .f_sum_dim_intlist([-1i64].as_slice(), false, None::<Kind>)?;
    Ok(cos.f_mean(None::<Kind>)?.f_neg()?)
}

/// The tau computed after optimizer step `step` of `max_steps` (used by the next update):
/// `1 - (1 - initial) * (cos(pi * step / max_steps) + 1) / 2`, from `initial` (0.99 in the
/// original) up to 1.
pub fn tau(initial: f64, step: u64, max_steps: u64) -> f64 {
    1.0 - (1.0 - initial) * ((PI * step as f64 / max_steps as f64).cos() + 1.0) / 2.0
}

/// The tunable parameters of BYOL (the original's values by default).
#[derive(Clone, Copy, Debug)]
struct ByolParams {
    initial_tau: f64,
    predictor_hidden_dim: i64,
}

impl ByolParams {
    const NAMES: [&'static str; 2] = ["initial_tau", "predictor_hidden_dim"];

    fn from_params(params: &Params) -> Result<Self> {
        reject_unknown_params("BYOL", params, &Self::NAMES)?;
        let initial_tau: f64 = params.get_or("initial_tau", INITIAL_TAU)?;
        if !(0.0..=1.0).contains(&initial_tau) {
            bail!("BYOL: `initial_tau` must be in [0, 1], got {initial_tau}");
        }
        let predictor_hidden_dim: i64 =
            params.get_or("predictor_hidden_dim", PREDICTOR_HIDDEN_DIM)?;
        if predictor_hidden_dim < 1 {
            bail!("BYOL: `predictor_hidden_dim` must be at least 1, got {predictor_hidden_dim}");
        }
        Ok(ByolParams {
            initial_tau,
            predictor_hidden_dim,
        })
    }
}

/// An encoder with a projector: `projector(encoder(x))` (the original's
/// `SiameseArm.forward_until_predictor`).
struct Arm {
    encoder: Box<dyn Encoder>,
    projector: Mlp,
}

impl Arm {
    fn project(&mut self, images: &Tensor, train: bool) -> Result<Tensor> {
        let features = self.encoder.forward(images, train)?;
        self.projector.forward(&features, train)
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut list = prefixed("encoder.", self.encoder.named_parameters());
        list.extend(prefixed("projector.", self.projector.named_parameters()));
        list
    }

    fn named_buffers(&self) -> Vec<(String, Tensor)> {
        let mut list = prefixed("encoder.", self.encoder.named_buffers());
        list.extend(prefixed("projector.", self.projector.named_buffers()));
        list
    }
}

/// BYOL: an online network (encoder, projector, predictor) trained to predict the projections
/// of a target network (encoder, projector) that follows it by exponential moving average.
pub struct Byol {
    online: Arm,
    predictor: Mlp,
    target: Arm,
    /// (target, online) parameter pairs that the moving average updates.
    ema_pairs: Vec<(Tensor, Tensor)>,
    /// The tau of the first update (the schedule's start).
    initial_tau: f64,
    /// The tau of the next update: a 0-dim f64 CPU tensor, checkpointed and restored in place.
    current_tau: Tensor,
}

impl Byol {
    /// The registered factory: builds the online and the target encoder from `spec`.
    pub fn new(params: &Params, spec: &EncoderSpec, device: Device) -> Result<Self> {
        ByolParams::from_params(params)?;
        let online = spec.build(device)?;
        let target = spec.build(device)?;
        Self::from_encoders(params, Box::new(online), Box::new(target), device)
    }

    /// BYOL around two encoders of the same architecture: `target`'s parameters and buffers
    /// are overwritten with `online`'s, so both networks start identical.
    pub fn from_encoders(
        params: &Params,
        online: Box<dyn Encoder>,
        target: Box<dyn Encoder>,
        device: Device,
    ) -> Result<Self> {
        let settings = ByolParams::from_params(params)?;
        let dim = online.output_dim();
        if target.output_dim() != dim {
            bail!(
                "BYOL: the online and target encoders differ in output size ({dim} versus {})",
                target.output_dim()
            );
        }
        let projector = MlpConfig::byol(dim, PROJECTOR_HIDDEN_DIM, PROJECTION_DIM);
        let predictor = MlpConfig::byol(
            PROJECTION_DIM,
            settings.predictor_hidden_dim,
            PROJECTION_DIM,
        );
        let online = Arm {
            encoder: online,
            projector: Mlp::new(projector, device)?,
        };
        let target = Arm {
            encoder: target,
            projector: Mlp::new(projector, device)?,
        };
        // deepcopy(online_network), minus the predictor.
        copy_by_name(&target.named_parameters(), &online.named_parameters())?;
        copy_by_name(&target.named_buffers(), &online.named_buffers())?;
        let ema_pairs = pair_by_name(&target.named_parameters(), &online.named_parameters())?;
        Ok(Byol {
            online,
            predictor: Mlp::new(predictor, device)?,
            target,
            ema_pairs,
            initial_tau: settings.initial_tau,
            current_tau: Tensor::f_full(
                [0i64; 0].as_slice(),
                settings.initial_tau,
                (Kind::Double, Device::Cpu),
            )?,
        })
    }

    /// The tau the next moving-average update will use.
    pub fn current_tau(&self) -> Result<f64> {
        Ok(self.current_tau.f_double_value(&[])?)
    }

    /// `predictor(projector(encoder(x)))` of the online network.
    fn online_forward(&mut self, images: &Tensor, train: bool) -> Result<Tensor> {
        let projection = self.online.project(images, train)?;
        self.predictor.forward(&projection, train)
    }

    /// The symmetric loss of the original's `shared_step`.
    fn loss(&mut self, views: &[Tensor], train: bool) -> Result<Tensor> {
        let (v1, v2) = two_views("BYOL", views)?;
        let h1 = self.online_forward(v1, train)?;
        let h2 = self.online_forward(v2, train)?;
        let (z1, z2) = tch::no_grad(|| -> Result<(Tensor, Tensor)> {
            Ok((
                self.target.project(v1, train)?,
                self.target.project(v2, train)?,
            ))
        })?;
        let sum = cosine_loss(&h1, &z2)?.f_add(&cosine_loss(&h2, &z1)?)?;
        Ok(sum.f_mul_scalar(0.5)?)
    }

    fn online_parameters(&self) -> Vec<(String, Tensor)> {
        let mut list = prefixed("online.", self.online.named_parameters());
        list.extend(prefixed(
            "online.predictor.",
            self.predictor.named_parameters(),
        ));
        list
    }
}

impl SslAlgorithm for Byol {
    fn training_loss(&mut self, views: &[Tensor]) -> Result<Tensor> {
        self.loss(views, true)
    }

    fn validation_loss(&mut self, views: &[Tensor]) -> Result<Tensor> {
        tch::no_grad(|| self.loss(views, false))
    }

    /// The online network only (the target is never optimised). Names containing `bias` or
    /// `bn` get neither weight decay nor LARS adaptation.
    fn parameters(&self) -> Vec<TrainableParam> {
        self.online_parameters()
            .into_iter()
            .map(|(name, tensor)| {
                let decay = !(name.contains("bias") || name.contains("bn"));
                TrainableParam {
                    name,
                    tensor,
                    weight_decay: decay,
                    lars_adaptation: decay,
                    scheduled: true,
                }
            })
            .collect()
    }

    /// Moves the target's parameters towards the online ones with the current tau, then
    /// computes the tau of the next update from `step`.
    fn after_optimizer_step(&mut self, step: u64, max_steps: u64) -> Result<()> {
        if max_steps == 0 {
            bail!("BYOL: the moving average needs the number of steps of the run, got 0");
        }
        let tau_now = self.current_tau()?;
        tch::no_grad(|| -> Result<()> {
            for (target, online) in &mut self.ema_pairs {
                let mixed = target
                    .f_mul_scalar(tau_now)?
                    .f_add(&online.f_mul_scalar(1.0 - tau_now)?)?;
                target.f_copy_(&mixed)?;
            }
            Ok(())
        })?;
        let _ = self
            .current_tau
            .f_fill_(tau(self.initial_tau, step, max_steps))?;
        Ok(())
    }

    /// The target encoder's features (no gradients).
    fn embed(&mut self, images: &Tensor, train: bool) -> Result<Tensor> {
        tch::no_grad(|| self.target.encoder.forward(images, train))
    }

    fn embedding_dim(&self) -> i64 {
        self.target.encoder.output_dim()
    }

    fn embedding_encoder_prefix(&self) -> String {
        "target.encoder.".into()
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut list = self.online_parameters();
        list.extend(prefixed("online.", self.online.named_buffers()));
        list.extend(prefixed(
            "online.predictor.",
            self.predictor.named_buffers(),
        ));
        list.extend(prefixed("target.", self.target.named_parameters()));
        list.extend(prefixed("target.", self.target.named_buffers()));
        list.push((TAU_STATE_NAME.into(), self.current_tau.shallow_clone()));
        list
    }

    /// `byol/tau`: the tau the next moving-average update will use. The host reads scalars
    /// before each step, so this is the original's "tau before this step's update"; it lives in
    /// the checkpointed state, so a resumed run logs the same values as an uninterrupted one.
    fn scalars(&self) -> Result<Vec<(String, f64)>> {
        Ok(vec![("byol/tau".into(), self.current_tau()?)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tau_schedule_ends() {
        assert!((tau(0.99, 0, 10) - 0.99).abs() < 1e-15);
        assert!((tau(0.99, 10, 10) - 1.0).abs() < 1e-15);
        assert!((tau(0.99, 5, 10) - 0.995).abs() < 1e-15);
        assert!((tau(0.9, 5, 10) - 0.95).abs() < 1e-15);
    }
}
