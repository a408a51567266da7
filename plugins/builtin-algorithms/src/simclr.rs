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
//! On several processes (`torchrun`), the negatives of each row are the projections of every
//! rank's batch, as bolts' loss under DDP ([`nt_xent_loss_across_ranks`]); parameter
//! `gather_negatives = false` keeps them local.
//!
//! Tensor names mirror the original state dict: `encoder.*`, `projection.model.{0,1,3}.*`.

use crate::heads::{prefixed, Mlp, MlpConfig};
use crate::{reject_unknown_params, two_views};
use ssl_plugin_api::tch::{self, Device, Kind, Tensor};
use ssl_plugin_api::{
    bail, Collectives, Encoder, EncoderSpec, Params, Result, SslAlgorithm, TrainableParam,
};

/// Temperature when the `temperature` parameter is absent.
pub const DEFAULT_TEMPERATURE: f64 = 0.1;
/// Hidden size of the projection.
pub const PROJECTION_HIDDEN_DIM: i64 = 2048;
/// Output size of the projection.
pub const PROJECTION_DIM: i64 = 128;
/// The `eps` of bolts' `nt_xent_loss`.
const EPS: f64 = 1e-6;
/// Parameters SimCLR accepts.
const PARAMS: &[&str] = &["temperature", "gather_negatives"];

/// Bolts 0.4's NT-Xent loss on one process, for two batches of projections `[B, d]` (unit
/// rows):
///
/// `out = cat[z1, z2]`, `sim = exp(out @ out.T / T)`,
/// `neg = clamp(sim.sum(-1) - e^(1/T), min=1e-6)`, `pos = exp(sum(z1 * z2, -1) / T)` repeated
/// for both halves, `loss = -mean(log(pos / (neg + 1e-6)))`.
pub fn nt_xent_loss(z1: &Tensor, z2: &Tensor, temperature: f64) -> Result<Tensor> {
    check_pair(z1, z2)?;
    let out = Tensor::f_cat(&[z1, z2], 0)?;
    nt_xent_with_keys(z1, z2, &out, &out, temperature)
}

/// Bolts 0.4's NT-Xent loss under DDP: as [`nt_xent_loss`], with the similarities of this
/// rank's rows `out = cat[z1, z2]` taken against the keys of every rank,
/// `out_dist = cat[all_gather(z1), all_gather(z2)]` (`[2 · world · B, d]`), so each row has
/// `2 · world · B - 2` negatives; positives are local and the loss is the mean over this
/// rank's rows. `with_grad`: the gathers are differentiable (bolts' `SyncFunction`: every
/// rank's projections receive the gradients of every rank's loss); without, for validation.
/// On one process, exactly [`nt_xent_loss`]. Every rank must call it with the same `B`.
pub fn nt_xent_loss_across_ranks(
    z1: &Tensor,
    z2: &Tensor,
    temperature: f64,
    collectives: &Collectives,
    with_grad: bool,
) -> Result<Tensor> {
    if collectives.world_size() == 1 {
        return nt_xent_loss(z1, z2, temperature);
    }
    check_pair(z1, z2)?;
    let gather = |z: &Tensor| {
        if with_grad {
            collectives.all_gather_with_grad(z)
        } else {
            collectives.all_gather(z)
        }
    };
    let out = Tensor::f_cat(&[z1, z2], 0)?;
    let out_dist = Tensor::f_cat(&[gather(z1)?, gather(z2)?], 0)?;
    nt_xent_with_keys(z1, z2, &out, &out_dist, temperature)
}

fn check_pair(z1: &Tensor, z2: &Tensor) -> Result<()> {
    if z1.size() != z2.size() || z1.dim() != 2 {
        bail!(
            "nt_xent_loss needs two [B, d] tensors of one shape, got {:?} and {:?}",
            z1.size(),
            z2.size()
        );
    }
    Ok(())
}

/// The loss of the rows `out = cat[z1, z2]` against the keys `out_dist` (`out` itself on one
/// process, every rank's rows on several).
fn nt_xent_with_keys(
    z1: &Tensor,
    z2: &Tensor,
    out: &Tensor,
    out_dist: &Tensor,
    temperature: f64,
) -> Result<Tensor> {
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
    /// Negatives from every rank (`gather_negatives`), through `collectives`.
    gather_negatives: bool,
    collectives: Collectives,
}

impl SimClr {
    /// The registered factory: builds the encoder from `spec`. Parameters: `temperature`
    /// (positive, default 0.1), `gather_negatives` (default true: on several processes, the
    /// negatives come from every rank's batch).
    pub fn new(params: &Params, spec: &EncoderSpec, device: Device) -> Result<Self> {
        reject_unknown_params("SimCLR", params, PARAMS)?;
        let encoder = spec.build(device)?;
        Self::from_encoder(params, Box::new(encoder), device)
    }

    /// SimCLR around a ready-made encoder, in the process group of [`Collectives::current`].
    pub fn from_encoder(
        params: &Params,
        encoder: Box<dyn Encoder>,
        device: Device,
    ) -> Result<Self> {
        reject_unknown_params("SimCLR", params, PARAMS)?;
        let temperature: f64 = params.get_or("temperature", DEFAULT_TEMPERATURE)?;
        if !(temperature.is_finite() && temperature > 0.0) {
            bail!("SimCLR: parameter `temperature` must be positive, got {temperature}");
        }
        let gather_negatives: bool = params.get_or("gather_negatives", true)?;
        let config = MlpConfig::simclr(encoder.output_dim(), PROJECTION_HIDDEN_DIM, PROJECTION_DIM);
        Ok(SimClr {
            encoder,
            projection: Mlp::new(config, device)?,
            temperature,
            gather_negatives,
            collectives: Collectives::current(),
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
        if self.gather_negatives {
            nt_xent_loss_across_ranks(&z1, &z2, self.temperature, &self.collectives, train)
        } else {
            nt_xent_loss(&z1, &z2, self.temperature)
        }
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
                    scheduled: true,
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
