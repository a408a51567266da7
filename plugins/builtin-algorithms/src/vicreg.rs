//! VICReg, "VICReg: Variance-Invariance-Covariance Regularization for Self-Supervised Learning"
//! (Bardes, Ponce and LeCun, ICLR 2022), written from the paper and its official repository
//! (facebookresearch/vicreg).
//!
//! Both views go through the encoder and an expander of three Linear layers (default
//! 8192-8192-8192; BatchNorm + ReLU after the first two, whose Linear layers have a bias; the
//! last has none; parameter `projector_dims`). For the embeddings `x`, `y` (`[N, d]`) of the two
//! views:
//!
//! ```text
//! invariance  s = mean((x - y)²)                                    (F.mse_loss)
//! variance    v(z) = mean_j relu(1 - sqrt(Var(z_j) + 1e-4))          (unbiased Var, torch.var)
//! covariance  c(z) = Σ_{i≠j} Cov(z)_ij² / d,  Cov(z) = (z - z̄)ᵀ(z - z̄) / (N - 1)
//! loss = λ s + μ (v(x) + v(y)) / 2 + ν (c(x) + c(y))
//! ```
//!
//! with λ = `sim_coeff` (25), μ = `std_coeff` (25), ν = `cov_coeff` (1). As in the official code
//! the variance term is the **mean** of the two views' and the covariance term their **sum**
//! (the paper's equation sums both; the coefficients 25/25/1 were tuned with the code).
//!
//! **Several processes** (`torchrun`): as the original, both views' embeddings are all-gathered
//! (with gradient) before the loss, so every term — the invariance too — is the global batch's
//! ([`vicreg_loss_across_ranks`]). Every rank then holds the same loss `L`; the gather's
//! backward hands rank `r` its slice of `Σ_ranks ∂L/∂z = W · ∂L/∂z_r`, and the host's average
//! of the gradients over the `W` processes gives exactly `∂L/∂θ` of one process training on the
//! global batch. With one process, the local loss, unchanged.
//!
//! The paper trains with LARS (learning rate 0.2 × batch / 256, weight decay 1e-6, biases and
//! BatchNorm excluded from decay and adaptation): the run config chooses the optimizer
//! (`optimizer = "lars"` in the named configs); [`SslAlgorithm::parameters`] carries the
//! exclusions as hints.
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

/// The paper's expander: three layers of 8192.
pub const DEFAULT_PROJECTOR_DIMS: [i64; 3] = [8192, 8192, 8192];
/// λ, the weight of the invariance term.
pub const DEFAULT_SIM_COEFF: f64 = 25.0;
/// μ, the weight of the variance term.
pub const DEFAULT_STD_COEFF: f64 = 25.0;
/// ν, the weight of the covariance term.
pub const DEFAULT_COV_COEFF: f64 = 1.0;
/// Added to the variance before its square root.
pub const VARIANCE_EPS: f64 = 1e-4;

const PARAM_NAMES: [&str; 4] = ["projector_dims", "sim_coeff", "std_coeff", "cov_coeff"];

/// The weights of VICReg's three terms.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VicRegCoeffs {
    /// λ: invariance.
    pub sim: f64,
    /// μ: variance.
    pub std: f64,
    /// ν: covariance.
    pub cov: f64,
}

impl Default for VicRegCoeffs {
    fn default() -> Self {
        VicRegCoeffs {
            sim: DEFAULT_SIM_COEFF,
            std: DEFAULT_STD_COEFF,
            cov: DEFAULT_COV_COEFF,
        }
    }
}

/// The three terms of the loss, unweighted: `(invariance, variance, covariance)` with the
/// variance averaged over the two views and the covariance summed (see the module
/// documentation).
pub fn vicreg_terms(x: &Tensor, y: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    let size = x.size();
    if size != y.size() || size.len() != 2 {
        bail!(
            "vicreg_loss needs two [N, d] tensors of one shape, got {:?} and {:?}",
            x.size(),
            y.size()
        );
    }
    if size[0] < 2 {
        bail!(
            "VICReg needs at least 2 images per view for its variance and covariance, got {size:?}"
        );
    }
    let invariance = x.f_sub(y)?.f_square()?.f_mean(None::<Kind>)?;
    let (n, d) = (size[0] as f64, size[1] as f64);
    let mut variance = Vec::with_capacity(2);
    let mut covariance = Vec::with_capacity(2);
    for z in [x, y] {
        let centred = z.f_sub(&z.f_mean_dim([0i64].as_slice(), true, None::<Kind>)?)?;
        let std = centred
            .f_var_correction([0i64].as_slice(), 1, false)?
            .f_add_scalar(VARIANCE_EPS)?
            .f_sqrt()?;
        variance.push(
            std.f_neg()?
                .f_add_scalar(1.0)?
                .f_relu()?
                .f_mean(None::<Kind>)?,
        );
        let cov = centred.f_tr()?.f_mm(&centred)?.f_div_scalar(n - 1.0)?;
        covariance.push(
            off_diagonal(&cov)?
                .f_square()?
                .f_sum(None::<Kind>)?
                .f_div_scalar(d)?,
        );
    }
    let variance = variance[0].f_add(&variance[1])?.f_div_scalar(2.0)?;
    let covariance = covariance[0].f_add(&covariance[1])?;
    Ok((invariance, variance, covariance))
}

/// The VICReg loss of two batches of embeddings `[N, d]`: `λ s + μ v + ν c`.
pub fn vicreg_loss(x: &Tensor, y: &Tensor, coeffs: VicRegCoeffs) -> Result<Tensor> {
    let (s, v, c) = vicreg_terms(x, y)?;
    Ok(s.f_mul_scalar(coeffs.sim)?
        .f_add(&v.f_mul_scalar(coeffs.std)?)?
        .f_add(&c.f_mul_scalar(coeffs.cov)?)?)
}

/// The VICReg loss of the global batch: every rank's `x` and `y` (`[N, d]`, one shape on every
/// rank) gathered, then [`vicreg_loss`] (see the module documentation for why the host's
/// gradient averaging then gives the one-process gradient). `with_grad`: differentiable gathers
/// (training); without, for validation. With one process, exactly [`vicreg_loss`].
pub fn vicreg_loss_across_ranks(
    x: &Tensor,
    y: &Tensor,
    coeffs: VicRegCoeffs,
    collectives: &Collectives,
    with_grad: bool,
) -> Result<Tensor> {
    if collectives.world_size() == 1 {
        return vicreg_loss(x, y, coeffs);
    }
    if x.size() != y.size() || x.dim() != 2 {
        bail!(
            "vicreg_loss needs two [N, d] tensors of one shape, got {:?} and {:?}",
            x.size(),
            y.size()
        );
    }
    let (x, y) = gather_views(collectives, x, y, with_grad)?;
    vicreg_loss(&x, &y, coeffs)
}

/// VICReg: an encoder and an expander trained for invariant, non-collapsed (variance) and
/// decorrelated (covariance) embeddings.
pub struct VicReg {
    encoder: Box<dyn Encoder>,
    projector: Projector,
    coeffs: VicRegCoeffs,
    /// The process group whose global batch the statistics are taken over.
    collectives: Collectives,
}

impl VicReg {
    /// The registered factory: builds the encoder from `spec`.
    pub fn new(params: &Params, spec: &EncoderSpec, device: Device) -> Result<Self> {
        reject_unknown_params("VICReg", params, &PARAM_NAMES)?;
        let encoder = spec.build(device)?;
        Self::from_encoder(params, Box::new(encoder), device)
    }

    /// VICReg around a ready-made encoder, in the process group of [`Collectives::current`].
    pub fn from_encoder(
        params: &Params,
        encoder: Box<dyn Encoder>,
        device: Device,
    ) -> Result<Self> {
        reject_unknown_params("VICReg", params, &PARAM_NAMES)?;
        let dims = projector_dims("VICReg", params, &DEFAULT_PROJECTOR_DIMS)?;
        let coeff = |name: &str, default: f64| -> Result<f64> {
            let value: f64 = params.get_or(name, default)?;
            if !(value.is_finite() && value >= 0.0) {
                bail!("VICReg: parameter `{name}` must be a number ≥ 0, got {value}");
            }
            Ok(value)
        };
        let coeffs = VicRegCoeffs {
            sim: coeff("sim_coeff", DEFAULT_SIM_COEFF)?,
            std: coeff("std_coeff", DEFAULT_STD_COEFF)?,
            cov: coeff("cov_coeff", DEFAULT_COV_COEFF)?,
        };
        let projector = Projector::new(encoder.output_dim(), &dims, true, device)?;
        Ok(VicReg {
            encoder,
            projector,
            coeffs,
            collectives: Collectives::current(),
        })
    }

    /// The weights of the three terms.
    pub fn coeffs(&self) -> VicRegCoeffs {
        self.coeffs
    }

    /// `expander(encoder(x))`.
    pub fn project(&mut self, images: &Tensor, train: bool) -> Result<Tensor> {
        let features = self.encoder.forward(images, train)?;
        self.projector.forward(&features, train)
    }

    fn loss(&mut self, views: &[Tensor], train: bool) -> Result<Tensor> {
        let (v1, v2) = two_views("VICReg", views)?;
        let x = self.project(v1, train)?;
        let y = self.project(v2, train)?;
        vicreg_loss_across_ranks(&x, &y, self.coeffs, &self.collectives, train)
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut list = prefixed("encoder.", self.encoder.named_parameters());
        list.extend(prefixed("projector.", self.projector.named_parameters()));
        list
    }
}

impl SslAlgorithm for VicReg {
    fn training_loss(&mut self, views: &[Tensor]) -> Result<Tensor> {
        self.loss(views, true)
    }

    /// Encoder and expander in evaluation mode; the variance and covariance are the batch's.
    fn validation_loss(&mut self, views: &[Tensor]) -> Result<Tensor> {
        tch::no_grad(|| self.loss(views, false))
    }

    /// Encoder and expander; biases and BatchNorm tensors (every 1-D tensor) get neither weight
    /// decay nor LARS adaptation, as the paper's LARS.
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
