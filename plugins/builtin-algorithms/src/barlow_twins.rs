//! Barlow Twins, "Barlow Twins: Self-Supervised Learning via Redundancy Reduction" (Zbontar,
//! Jing, Misra, LeCun and Deny, ICML 2021), written from the paper and its official repository
//! (facebookresearch/barlowtwins).
//!
//! Both views go through the encoder and a projector of three Linear layers (default
//! 8192-8192-8192, without biases; BatchNorm + ReLU after the first two; parameter
//! `projector_dims`). Each view's embeddings `z` (`[N, d]`) are normalised along the batch as a
//! `BatchNorm1d(d, affine=False)` in training mode does: `(z - mean) / sqrt(var + 1e-5)` with the
//! biased variance. Their cross-correlation `C = z1ᵀ z2 / N` (`[d, d]`) is pushed towards the
//! identity:
//!
//! ```text
//! loss = scale_loss * ( Σ_i (1 - C_ii)² + λ Σ_{i≠j} C_ij² )
//! ```
//!
//! Parameters (`algorithm_params`): `projector_dims` (`[8192, 8192, 8192]`), `lambd` (λ,
//! 0.0051), `scale_loss` (1; the repository's first version scaled the loss by 0.024 and λ
//! differently, a later one dropped the factor).
//!
//! **λ and the projector size.** The paper tunes λ = 0.0051 for its 8192-wide projector, and
//! the official repository keeps `--lambd 0.0051` as the default whatever `--projector` is (as
//! do solo-learn and lightly for their smaller projectors). This file does the same: the
//! default is 0.0051 for every size. λ = 1/d (Tsai et al. 2021, the HSIC reading of Barlow
//! Twins) is the usual alternative for other sizes; set it through `lambd`.
//!
//! Departures, on purpose:
//! - the batch normalisation of the loss always uses the batch's statistics, also for the
//!   validation loss (the projector's BatchNorms do run in evaluation mode there). The original
//!   module tracks running statistics in that last BatchNorm that training never reads and has
//!   no validation loss; they would turn the validation "cross-correlation" into something else;
//!
//! **Several processes** (`torchrun`): the statistics are the global batch's, as the original
//! (which all-reduces `C` and divides by the global batch size). Each rank all-gathers both
//! views' embeddings with gradient and computes the loss of the global batch
//! ([`barlow_twins_loss_across_ranks`]), so every rank holds the same loss `L`; the gather's
//! backward hands rank `r` its slice of `Σ_ranks ∂L/∂z = W · ∂L/∂z_r`, and the host's average
//! of the gradients over the `W` processes gives exactly `∂L/∂θ` of one process training on the
//! global batch. With one process, the local loss, unchanged.
//!
//! The paper trains with LARS (learning rate 0.2 × batch / 256 for weights, weight decay
//! 1.5e-6, biases and BatchNorm excluded from decay and adaptation): the run config chooses the
//! optimizer (`optimizer = "lars"` in the named configs); [`SslAlgorithm::parameters`] carries
//! the exclusions as hints.
//!
//! Tensor names mirror the original state dict with `encoder` for `backbone`: `encoder.*`,
//! `projector.{0,1,3,4,6}.*`.

use crate::heads::prefixed;
use crate::projector::{off_diagonal, paper_hints, projector_dims, Projector};
use crate::{gather_views, reject_unknown_params, two_views};
use ssl_plugin_api::tch::{self, Device, Kind, Tensor};
use ssl_plugin_api::{
    bail, Collectives, Encoder, EncoderSpec, Params, Result, SslAlgorithm, TrainableParam,
};

/// The paper's projector: three layers of 8192.
pub const DEFAULT_PROJECTOR_DIMS: [i64; 3] = [8192, 8192, 8192];
/// The paper's weight of the off-diagonal (redundancy reduction) term, for 8192 dimensions.
pub const DEFAULT_LAMBD: f64 = 0.0051;
/// Factor of the whole loss.
pub const DEFAULT_SCALE_LOSS: f64 = 1.0;
/// The `eps` of `BatchNorm1d`, in the batch normalisation of the loss.
pub const BATCH_NORM_EPS: f64 = 1e-5;

const PARAM_NAMES: [&str; 3] = ["projector_dims", "lambd", "scale_loss"];

/// `(z - mean) / sqrt(var + 1e-5)` along the batch (dimension 0), with the biased variance: a
/// `BatchNorm1d(affine=False)` in training mode.
pub fn batch_normalize(z: &Tensor) -> Result<Tensor> {
    let mean = z.f_mean_dim([0i64].as_slice(), true, None::<Kind>)?;
    let var = z.f_var_correction([0i64].as_slice(), 0, true)?;
    let centred = z.f_sub(&mean)?;
    Ok(centred.f_div(&var.f_add_scalar(BATCH_NORM_EPS)?.f_sqrt()?)?)
}

/// The Barlow Twins loss of two batches of embeddings `[N, d]` (see the module documentation).
pub fn barlow_twins_loss(z1: &Tensor, z2: &Tensor, lambd: f64, scale_loss: f64) -> Result<Tensor> {
    let size = z1.size();
    if size != z2.size() || size.len() != 2 {
        bail!(
            "barlow_twins_loss needs two [N, d] tensors of one shape, got {:?} and {:?}",
            z1.size(),
            z2.size()
        );
    }
    if size[0] < 2 {
        bail!("Barlow Twins needs at least 2 images per view to normalise along the batch, got {size:?}");
    }
    let n = size[0] as f64;
    let c = batch_normalize(z1)?
        .f_tr()?
        .f_mm(&batch_normalize(z2)?)?
        .f_div_scalar(n)?;
    let on_diagonal = c
        .f_diagonal(0, 0, 1)?
        .f_sub_scalar(1.0)?
        .f_square()?
        .f_sum(None::<Kind>)?;
    let off = off_diagonal(&c)?.f_square()?.f_sum(None::<Kind>)?;
    let loss = on_diagonal.f_add(&off.f_mul_scalar(lambd)?)?;
    Ok(loss.f_mul_scalar(scale_loss)?)
}

/// The Barlow Twins loss of the global batch: every rank's `z1` and `z2` (`[N, d]`, one shape on
/// every rank) gathered, then [`barlow_twins_loss`] (see the module documentation for why the
/// host's gradient averaging then gives the one-process gradient). `with_grad`: differentiable
/// gathers (training); without, for validation. With one process, exactly [`barlow_twins_loss`].
pub fn barlow_twins_loss_across_ranks(
    z1: &Tensor,
    z2: &Tensor,
    lambd: f64,
    scale_loss: f64,
    collectives: &Collectives,
    with_grad: bool,
) -> Result<Tensor> {
    if collectives.world_size() == 1 {
        return barlow_twins_loss(z1, z2, lambd, scale_loss);
    }
    if z1.size() != z2.size() || z1.dim() != 2 {
        bail!(
            "barlow_twins_loss needs two [N, d] tensors of one shape, got {:?} and {:?}",
            z1.size(),
            z2.size()
        );
    }
    let (z1, z2) = gather_views(collectives, z1, z2, with_grad)?;
    barlow_twins_loss(&z1, &z2, lambd, scale_loss)
}

/// Barlow Twins: an encoder and a projector trained so that the cross-correlation of two views'
/// embeddings is the identity.
pub struct BarlowTwins {
    encoder: Box<dyn Encoder>,
    projector: Projector,
    lambd: f64,
    scale_loss: f64,
    /// The process group whose global batch the statistics are taken over.
    collectives: Collectives,
}

impl BarlowTwins {
    /// The registered factory: builds the encoder from `spec`.
    pub fn new(params: &Params, spec: &EncoderSpec, device: Device) -> Result<Self> {
        reject_unknown_params("BarlowTwins", params, &PARAM_NAMES)?;
        let encoder = spec.build(device)?;
        Self::from_encoder(params, Box::new(encoder), device)
    }

    /// Barlow Twins around a ready-made encoder, in the process group of
    /// [`Collectives::current`].
    pub fn from_encoder(
        params: &Params,
        encoder: Box<dyn Encoder>,
        device: Device,
    ) -> Result<Self> {
        reject_unknown_params("BarlowTwins", params, &PARAM_NAMES)?;
        let dims = projector_dims("BarlowTwins", params, &DEFAULT_PROJECTOR_DIMS)?;
        let lambd: f64 = params.get_or("lambd", DEFAULT_LAMBD)?;
        if !(lambd.is_finite() && lambd >= 0.0) {
            bail!("BarlowTwins: parameter `lambd` must be a number ≥ 0, got {lambd}");
        }
        let scale_loss: f64 = params.get_or("scale_loss", DEFAULT_SCALE_LOSS)?;
        if !(scale_loss.is_finite() && scale_loss > 0.0) {
            bail!("BarlowTwins: parameter `scale_loss` must be positive, got {scale_loss}");
        }
        let projector = Projector::new(encoder.output_dim(), &dims, false, device)?;
        Ok(BarlowTwins {
            encoder,
            projector,
            lambd,
            scale_loss,
            collectives: Collectives::current(),
        })
    }

    /// λ, the weight of the off-diagonal term.
    pub fn lambd(&self) -> f64 {
        self.lambd
    }

    /// The factor of the whole loss.
    pub fn scale_loss(&self) -> f64 {
        self.scale_loss
    }

    /// `projector(encoder(x))`.
    pub fn project(&mut self, images: &Tensor, train: bool) -> Result<Tensor> {
        let features = self.encoder.forward(images, train)?;
        self.projector.forward(&features, train)
    }

    fn loss(&mut self, views: &[Tensor], train: bool) -> Result<Tensor> {
        let (v1, v2) = two_views("BarlowTwins", views)?;
        let z1 = self.project(v1, train)?;
        let z2 = self.project(v2, train)?;
        barlow_twins_loss_across_ranks(
            &z1,
            &z2,
            self.lambd,
            self.scale_loss,
            &self.collectives,
            train,
        )
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut list = prefixed("encoder.", self.encoder.named_parameters());
        list.extend(prefixed("projector.", self.projector.named_parameters()));
        list
    }
}

impl SslAlgorithm for BarlowTwins {
    fn training_loss(&mut self, views: &[Tensor]) -> Result<Tensor> {
        self.loss(views, true)
    }

    /// Encoder and projector in evaluation mode; the loss still normalises along the batch.
    fn validation_loss(&mut self, views: &[Tensor]) -> Result<Tensor> {
        tch::no_grad(|| self.loss(views, false))
    }

    /// Encoder and projector; biases and BatchNorm tensors (every 1-D tensor) get neither
    /// weight decay nor LARS adaptation, as the paper's LARS.
    fn parameters(&self) -> Vec<TrainableParam> {
        self.named_parameters()
            .into_iter()
            .map(|(name, tensor)| paper_hints(name, tensor))
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
        list.extend(prefixed("projector.", self.projector.named_buffers()));
        list
    }
}
