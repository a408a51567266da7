//! SimSiam, "Exploring Simple Siamese Representation Learning" (Chen and He, CVPR 2021),
//! written from the paper's formulas.
//!
//! - Encoder `f` = backbone + projector, a 3-layer MLP with BatchNorm on every layer's output:
//!   `Linear(in, d) → BN → ReLU → Linear(d, d) → BN → ReLU → Linear(d, d) → BN`, no ReLU at
//!   the output, `d` = `projector_dim` (2048). The Linears have no bias (each is followed by a
//!   BatchNorm, which would cancel it) and the output BatchNorm has no affine parameters (as the
//!   authors' code).
//! - Predictor `h`, a bottleneck: `Linear(d, h) → BN → ReLU → Linear(h, d)` (the last with a
//!   bias), `h` = `predictor_hidden` (512).
//! - Loss: `½ D(p1, stopgrad(z2)) + ½ D(p2, stopgrad(z1))`, `D(p, z) = −mean_i cos(p_i, z_i)`,
//!   with `z = f(x)`, `p = h(z)`; it lies in `[−1, 1]`.
//!
//! The paper trains with SGD (momentum 0.9, weight decay 1e-4, base LR 0.05 × batch / 256,
//! cosine decay) and keeps the **predictor's learning rate fixed** at the base LR (not
//! decayed; §4.1 and Table 1 of the paper: decaying it too works, slightly worse). Parameter
//! `fixed_predictor_lr` (true) does so: the predictor's tensors come out of
//! [`parameters`](SslAlgorithm::parameters) with `scheduled = false`, so the host's optimizer
//! steps them at the run's base learning rate while the rest follows the schedule; `false`
//! lets the predictor follow the schedule like the rest.
//!
//! Tensor names: `encoder.*`, `projector.model.{0,1,3,4,6,7}.*` and `predictor.model.{0,1,3}.*`
//! (PyTorch's `nn.Sequential` indices; the ReLUs have no tensors).

use crate::heads::{l2_normalize, prefixed, pytorch_linear, Mlp, MlpConfig};
use crate::{reject_unknown_params, two_views};
use ssl_plugin_api::nn::{BatchNorm, BatchNormConfig};
use ssl_plugin_api::tch::{self, nn, Device, Kind, Tensor};
use ssl_plugin_api::{
    bail, Collectives, Encoder, EncoderSpec, Params, Result, SslAlgorithm, TrainableParam,
};

/// Width of the projector's layers (and of the predictor's input and output) by default.
pub const DEFAULT_PROJECTOR_DIM: i64 = 2048;
/// Hidden size of the predictor's bottleneck by default.
pub const DEFAULT_PREDICTOR_HIDDEN: i64 = 512;

/// The tunable parameters of SimSiam (the paper's values by default).
#[derive(Clone, Copy, Debug, PartialEq)]
struct SimSiamParams {
    projector_dim: i64,
    predictor_hidden: i64,
    fixed_predictor_lr: bool,
}

impl SimSiamParams {
    const NAMES: [&'static str; 3] = ["projector_dim", "predictor_hidden", "fixed_predictor_lr"];

    fn from_params(params: &Params) -> Result<Self> {
        reject_unknown_params("SimSiam", params, &Self::NAMES)?;
        let projector_dim: i64 = params.get_or("projector_dim", DEFAULT_PROJECTOR_DIM)?;
        if projector_dim < 1 {
            bail!("SimSiam: `projector_dim` must be at least 1, got {projector_dim}");
        }
        let predictor_hidden: i64 = params.get_or("predictor_hidden", DEFAULT_PREDICTOR_HIDDEN)?;
        if predictor_hidden < 1 {
            bail!("SimSiam: `predictor_hidden` must be at least 1, got {predictor_hidden}");
        }
        Ok(SimSiamParams {
            projector_dim,
            predictor_hidden,
            fixed_predictor_lr: params.get_or("fixed_predictor_lr", true)?,
        })
    }
}

/// `D(p, z) = −mean_i <p_i/|p_i|, z_i/|z_i|>` over the rows of `[N, d]` tensors (norms clamped
/// at 1e-12). The caller detaches `z` (SimSiam's stop-gradient).
pub fn negative_cosine(p: &Tensor, z: &Tensor) -> Result<Tensor> {
    if p.size() != z.size() || p.dim() != 2 {
        bail!(
            "SimSiam's D(p, z) needs two [N, d] tensors of one shape, got {:?} and {:?}",
            p.size(),
            z.size()
        );
    }
    let cos = l2_normalize(p)?
        .f_mul(&l2_normalize(z)?)?
        .f_sum_dim_intlist([1i64].as_slice(), false, None::<Kind>)?;
    Ok(cos.f_mean(None::<Kind>)?.f_neg()?)
}

/// SimSiam's 3-layer projector (see the module documentation).
struct Projector {
    linears: [nn::Linear; 3],
    bns: [BatchNorm; 3],
}

impl Projector {
    fn new(input_dim: i64, dim: i64, device: Device) -> Self {
        let vs = nn::VarStore::new(device);
        let model = vs.root() / "model";
        let collectives = Collectives::current();
        let bn = |index: &str, affine: bool| {
            BatchNorm::new(
                &model / index,
                dim,
                BatchNormConfig {
                    affine,
                    ..Default::default()
                },
                &collectives,
            )
        };
        Projector {
            linears: [
                pytorch_linear(&model / "0", input_dim, dim, false),
                pytorch_linear(&model / "3", dim, dim, false),
                pytorch_linear(&model / "6", dim, dim, false),
            ],
            bns: [bn("1", true), bn("4", true), bn("7", false)],
        }
    }

    fn forward(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        if train && xs.size().first().is_some_and(|&n| n < 2) {
            bail!(
                "SimSiam: BatchNorm in training mode needs more than 1 sample per batch, got {:?}",
                xs.size()
            );
        }
        let mut out = xs.shallow_clone();
        for (i, (linear, bn)) in self.linears.iter().zip(&self.bns).enumerate() {
            out = bn.forward(&out.f_linear(&linear.ws, None::<&Tensor>)?, train)?;
            if i < 2 {
                out = out.f_relu()?;
            }
        }
        Ok(out)
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut list = Vec::new();
        for (i, (linear, bn)) in self.linears.iter().zip(&self.bns).enumerate() {
            list.push((format!("model.{}.weight", 3 * i), linear.ws.shallow_clone()));
            if let (Some(w), Some(b)) = (bn.weight(), bn.bias()) {
                list.push((format!("model.{}.weight", 3 * i + 1), w.shallow_clone()));
                list.push((format!("model.{}.bias", 3 * i + 1), b.shallow_clone()));
            }
        }
        list
    }

    fn named_buffers(&self) -> Vec<(String, Tensor)> {
        let mut list = Vec::new();
        for (i, bn) in self.bns.iter().enumerate() {
            let index = 3 * i + 1;
            list.push((
                format!("model.{index}.running_mean"),
                bn.running_mean().shallow_clone(),
            ));
            list.push((
                format!("model.{index}.running_var"),
                bn.running_var().shallow_clone(),
            ));
        }
        list
    }
}

/// SimSiam: one network (encoder, projector) and a predictor, trained so that the prediction
/// from one view matches the (stop-gradient) projection of the other.
pub struct SimSiam {
    encoder: Box<dyn Encoder>,
    projector: Projector,
    predictor: Mlp,
    /// The predictor stays at the base learning rate (`fixed_predictor_lr`).
    fixed_predictor_lr: bool,
}

impl SimSiam {
    /// The registered factory: builds the encoder from `spec`.
    pub fn new(params: &Params, spec: &EncoderSpec, device: Device) -> Result<Self> {
        SimSiamParams::from_params(params)?;
        let encoder = spec.build(device)?;
        Self::from_encoder(params, Box::new(encoder), device)
    }

    /// SimSiam around a ready-made encoder.
    pub fn from_encoder(
        params: &Params,
        encoder: Box<dyn Encoder>,
        device: Device,
    ) -> Result<Self> {
        let settings = SimSiamParams::from_params(params)?;
        let projector = Projector::new(encoder.output_dim(), settings.projector_dim, device);
        let predictor = Mlp::new(
            MlpConfig::byol(
                settings.projector_dim,
                settings.predictor_hidden,
                settings.projector_dim,
            ),
            device,
        )?;
        Ok(SimSiam {
            encoder,
            projector,
            predictor,
            fixed_predictor_lr: settings.fixed_predictor_lr,
        })
    }

    /// `z = projector(encoder(x))`.
    fn project(&mut self, images: &Tensor, train: bool) -> Result<Tensor> {
        let features = self.encoder.forward(images, train)?;
        self.projector.forward(&features, train)
    }

    fn loss(&mut self, views: &[Tensor], train: bool) -> Result<Tensor> {
        let (v1, v2) = two_views("SimSiam", views)?;
        let z1 = self.project(v1, train)?;
        let z2 = self.project(v2, train)?;
        let p1 = self.predictor.forward(&z1, train)?;
        let p2 = self.predictor.forward(&z2, train)?;
        let sum = negative_cosine(&p1, &z2.f_detach()?)?
            .f_add(&negative_cosine(&p2, &z1.f_detach()?)?)?;
        Ok(sum.f_mul_scalar(0.5)?)
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut list = prefixed("encoder.", self.encoder.named_parameters());
        list.extend(prefixed("projector.", self.projector.named_parameters()));
        list.extend(prefixed("predictor.", self.predictor.named_parameters()));
        list
    }
}

impl SslAlgorithm for SimSiam {
    fn training_loss(&mut self, views: &[Tensor]) -> Result<Tensor> {
        self.loss(views, true)
    }

    fn validation_loss(&mut self, views: &[Tensor]) -> Result<Tensor> {
        tch::no_grad(|| self.loss(views, false))
    }

    /// Encoder, projector and predictor, with the usual hints (no decay on biases and
    /// BatchNorm); with `fixed_predictor_lr`, the predictor's tensors are not scheduled (they
    /// stay at the base learning rate).
    fn parameters(&self) -> Vec<TrainableParam> {
        self.named_parameters()
            .into_iter()
            .map(|(name, tensor)| {
                let mut param = TrainableParam::with_default_hints(name, tensor);
                if self.fixed_predictor_lr && param.name.starts_with("predictor.") {
                    param.scheduled = false;
                }
                param
            })
            .collect()
    }

    /// The backbone's features (no gradients).
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
        list.extend(prefixed("predictor.", self.predictor.named_buffers()));
        list
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negative_cosine_bounds() {
        let a = Tensor::randn([5, 7], (Kind::Float, Device::Cpu));
        let same = negative_cosine(&a, &(&a * 3.0)).unwrap().double_value(&[]);
        let opposite = negative_cosine(&a, &(-&a)).unwrap().double_value(&[]);
        assert!((same + 1.0).abs() < 1e-6, "{same}");
        assert!((opposite - 1.0).abs() < 1e-6, "{opposite}");
        assert!(negative_cosine(&a, &a.narrow(1, 0, 3)).is_err());
    }

    #[test]
    fn projector_names_and_output_bn() {
        let p = Projector::new(6, 16, Device::Cpu);
        let names: Vec<String> = p.named_parameters().into_iter().map(|t| t.0).collect();
        assert_eq!(
            names,
            [
                "model.0.weight",
                "model.1.weight",
                "model.1.bias",
                "model.3.weight",
                "model.4.weight",
                "model.4.bias",
                "model.6.weight"
            ]
        );
        let x = Tensor::randn([8, 6], (Kind::Float, Device::Cpu));
        let z = p.forward(&x, true).unwrap();
        // The output BatchNorm (no affine): zero mean, unit variance per feature, negatives kept.
        let mean = z.mean_dim([0i64].as_slice(), false, Kind::Float);
        assert!(mean.abs().max().double_value(&[]) < 1e-5);
        assert!(z.min().double_value(&[]) < 0.0);
        assert!(SimSiamParams::from_params(
            &Params::from_json(r#"{"predictor_hidden": 0}"#).unwrap()
        )
        .unwrap_err()
        .to_string()
        .contains("`predictor_hidden`"));
    }
}
