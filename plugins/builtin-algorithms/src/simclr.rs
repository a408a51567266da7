//! SimCLR, "A Simple Framework for Contrastive Learning of Visual Representations" (Chen et
//! al., ICML 2020), as InnerEye-DeepLearning trains it: PyTorch Lightning Bolts 0.4's
//! `SimCLR` with InnerEye's encoder and projection (`SimCLRInnerEye` in `simclr_module.py`).
//!
//! InnerEye specifics, kept here on purpose:
//! - the projection is `Linear(enc_dim, 2048, bias=True) → BatchNorm1d → ReLU →
//!   Linear(2048, 128, bias=False)`, then L2-normalised;
//! - the temperature defaults to **0.1** (bolts' default; InnerEye never sets it);
//! - the loss is bolts' `nt_xent_loss`, whose denominator subtracts `e^(1/T)` for the
//!   self-similarity (exact only for unit vectors) and still includes the positive pair;
//! - the optimiser takes every parameter with weight decay (bolts' `exclude_bn_bias=False`).
//!
//! Tensor names mirror the original state dict: `encoder.*`, `projection.model.{0,1,3}.*`.

use crate::heads::{prefixed, Mlp, MlpConfig};
use crate::{reject_unknown_params, two_views};
use ssl_plugin_api::tch::{self, Device, Kind, Tensor};
use ssl_plugin_api::{bail, Encoder, EncoderSpec, Params, Result, SslAlgorithm, TrainableParam};

/// Temperature when the `temperature` parameter is absent.
pub const DEFAULT_TEMPERATURE: f64 = 0.1;
/// Hidden size of the projection.
pub const PROJECTION_HIDDEN_DIM: i64 = 2048;
/// Output size of the projection.
pub const PROJECTION_DIM: i64 = 128;
/// The `eps` of bolts' `nt_xent_loss`.
const EPS: f64 = 1e-6;

/// Bolts 0.4's NT-Xent loss on one process, for two batches of projections `[B, d]` (unit
/// rows):
///
/// `out = cat[z1, z2]`, `sim = exp(out @ out.T / T)`,
/// `neg = clamp(sim.sum(-1) - e^(1/T), min=1e-6)`, `pos = exp(sum(z1 * z2, -1) / T)` repeated
/// for both halves, `loss = -mean(log(pos / (neg + 1e-6)))`.
pub fn nt_xent_loss(z1: &Tensor, z2: &Tensor, temperature: f64) -> Result<Tensor> {
    if z1.size() != z2.size() || z1.dim() != 2 {
        bail!(
            "nt_xent_loss needs two [B, d] tensors of one shape, got {:?} and {:?}",
            z1.size(),
            z2.size()
        );
    }
    let out = Tensor::f_cat(&[z1, z2], 0)?;
    // All-gather point: with several processes, `out_dist` is the concatenation of every
    // rank's z1 followed by every rank's z2 (bolts' SyncFunction: all-gather forward,
    // all-reduce and slice this rank's part backward), so negatives come from all ranks. On
    // one process it is `out` itself.
    let out_dist = out.shallow_clone();
    let sim = out
        .f_mm(&out_dist.f_tr()?)?
        .f_div_scalar(temperature)?
        .f_exp()?;
    let self_similarity = (1.0 / temperature).exp();
    let neg = sim
        .f_sum_dim_intlist([-1i64].as_slice(), false, None::<Kind>)?
        .f_sub_scalar(self_similarity)?
        .f_clamp_min(EPS)?;
    let pos = z1
        .f_mul(z2)?
        .f_sum_dim_intlist([-1i64].as_slice(), false, None::<Kind>)?
        .f_div_scalar(temperature)?
        .f_exp()?;
    let pos = Tensor::f_cat(&[&pos, &pos], 0)?;
    let ratio = pos.f_div(&neg.f_add_scalar(EPS)?)?;
    Ok(ratio.f_log()?.f_mean(None::<Kind>)?.f_neg()?)
}

/// SimCLR: an encoder and a projection trained so that two views of an image project close
/// together and away from every other image of the batch.
pub struct SimClr {
    encoder: Box<dyn Encoder>,
    projection: Mlp,
    temperature: f64,
}

impl SimClr {
    /// The registered factory: builds the encoder from `spec`. Parameter: `temperature`
    /// (positive, default 0.1).
    pub fn new(params: &Params, spec: &EncoderSpec, device: Device) -> Result<Self> {
        reject_unknown_params("SimCLR", params, &["temperature"])?;
        let encoder = spec.build(device)?;
        Self::from_encoder(params, Box::new(encoder), device)
    }

    /// SimCLR around a ready-made encoder.
    pub fn from_encoder(
        params: &Params,
        encoder: Box<dyn Encoder>,
        device: Device,
    ) -> Result<Self> {
        reject_unknown_params("SimCLR", params, &["temperature"])?;
        let temperature: f64 = params.get_or("temperature", DEFAULT_TEMPERATURE)?;
        if !(temperature.is_finite() && temperature > 0.0) {
            bail!("SimCLR: parameter `temperature` must be positive, got {temperature}");
        }
        let config = MlpConfig::simclr(encoder.output_dim(), PROJECTION_HIDDEN_DIM, PROJECTION_DIM);
        Ok(SimClr {
            encoder,
            projection: Mlp::new(config, device)?,
            temperature,
        })
    }

    /// The temperature of the loss.
    pub fn temperature(&self) -> f64 {
        self.temperature
    }

    /// `projection(encoder(x))`: unit-norm rows of size 128.
    pub fn project(&mut self, images: &Tensor, train: bool) -> Result<Tensor> {
        let features = self.encoder.forward(images, train)?;
        self.projection.forward(&features, train)
    }

    fn loss(&mut self, views: &[Tensor], train: bool) -> Result<Tensor> {
        let (v1, v2) = two_views("SimCLR", views)?;
        let z1 = self.project(v1, train)?;
        let z2 = self.project(v2, train)?;
        nt_xent_loss(&z1, &z2, self.temperature)
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut list = prefixed("encoder.", self.encoder.named_parameters());
        list.extend(prefixed("projection.", self.projection.named_parameters()));
        list
    }
}

impl SslAlgorithm for SimClr {
    fn training_loss(&mut self, views: &[Tensor]) -> Result<Tensor> {
        self.loss(views, true)
    }

    fn validation_loss(&mut self, views: &[Tensor]) -> Result<Tensor> {
        tch::no_grad(|| self.loss(views, false))
    }

    /// Encoder and projection, all with weight decay (one group, as the original); names
    /// containing `bias` or `bn` are not LARS-adapted.
    fn parameters(&self) -> Vec<TrainableParam> {
        self.named_parameters()
            .into_iter()
            .map(|(name, tensor)| {
                let lars = !(name.contains("bias") || name.contains("bn"));
                TrainableParam {
                    name,
                    tensor,
                    weight_decay: true,
                    lars_adaptation: lars,
                }
            })
            .collect()
    }

    /// The encoder's features (no gradients).
    fn embed(&mut self, images: &Tensor, train: bool) -> Result<Tensor> {
        tch::no_grad(|| self.encoder.forward(images, train))
    }

    fn embedding_dim(&self) -> i64 {
        self.encoder.output_dim()
    }

    fn embedding_encoder_prefix(&self) -> String {
        "encoder.".into()
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut list = self.named_parameters();
        list.extend(prefixed("encoder.", self.encoder.named_buffers()));
        list.extend(prefixed("projection.", self.projection.named_buffers()));
        list
    }
}
