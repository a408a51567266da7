//! The small MLP heads that SSL algorithms put on top of an encoder: BYOL's projector and
//! predictor (`_MLP` in InnerEye's `byol_models.py`) and SimCLR's projection (`_Projection`
//! in InnerEye's `simclr_module.py`).
//!
//! Both are `Linear → BatchNorm1d → ReLU → Linear`, PyTorch's `nn.Sequential` indices 0, 1
//! and 3 (the ReLU is index 2 and has no tensors), so tensors are named `model.0.weight`,
//! `model.1.running_mean`, `model.3.weight`, … as in the original state dicts. Initialisation
//! follows PyTorch's defaults, not tch's: a `Linear` weight and bias are drawn from
//! `U(-1/sqrt(fan_in), 1/sqrt(fan_in))` (kaiming-uniform with `a = sqrt(5)`; tch's default
//! kaiming-uniform uses the ReLU gain and is `sqrt(6)` times wider), a `BatchNorm1d` weight
//! is 1 and its bias 0 (tch's default weight is `U(0, 1)`). The BatchNorm is synchronised
//! across processes when the run asks for it (see [`ssl_plugin_api::nn::BatchNorm`]).

use ssl_plugin_api::nn::{BatchNorm, BatchNormConfig};
use ssl_plugin_api::tch::nn;
use ssl_plugin_api::tch::{Device, Tensor};
use ssl_plugin_api::{bail, Collectives, Result};

/// Shape and options of a [`Mlp`].
#[derive(Clone, Copy, Debug)]
pub struct MlpConfig {
    /// Input size.
    pub input_dim: i64,
    /// Size of the hidden (BatchNorm) layer.
    pub hidden_dim: i64,
    /// Output size.
    pub output_dim: i64,
    /// Whether the first `Linear` has a bias.
    pub first_bias: bool,
    /// Whether the last `Linear` has a bias.
    pub last_bias: bool,
    /// Whether the output is L2-normalised along dimension 1 (`F.normalize(x, dim=1)`).
    pub normalize: bool,
}

impl MlpConfig {
    /// BYOL's projector and predictor (`_MLP`): `Linear(in, hidden, bias=False)` →
    /// `BatchNorm1d(hidden)` → `ReLU` → `Linear(hidden, out, bias=True)`.
    pub fn byol(input_dim: i64, hidden_dim: i64, output_dim: i64) -> Self {
        MlpConfig {
            input_dim,
            hidden_dim,
            output_dim,
            first_bias: false,
            last_bias: true,
            normalize: false,
        }
    }

    /// SimCLR's projection (`_Projection`): `Linear(in, hidden, bias=True)` →
    /// `BatchNorm1d(hidden)` → `ReLU` → `Linear(hidden, out, bias=False)` → L2-normalise.
    pub fn simclr(input_dim: i64, hidden_dim: i64, output_dim: i64) -> Self {
        MlpConfig {
            input_dim,
            hidden_dim,
            output_dim,
            first_bias: true,
            last_bias: false,
            normalize: true,
        }
    }
}

/// `Linear → BatchNorm1d → ReLU → Linear` (optionally L2-normalised), with PyTorch's names and
/// initialisation.
pub struct Mlp {
    config: MlpConfig,
    first: nn::Linear,
    bn: BatchNorm,
    last: nn::Linear,
}

/// PyTorch's default `Linear` initialisation: weight and bias in `U(-1/sqrt(in), 1/sqrt(in))`.
pub(crate) fn pytorch_linear(
    path: nn::Path,
    input_dim: i64,
    output_dim: i64,
    bias: bool,
) -> nn::Linear {
    let bound = 1.0 / (input_dim as f64).sqrt();
    let init = nn::Init::Uniform {
        lo: -bound,
        up: bound,
    };
    nn::linear(
        path,
        input_dim,
        output_dim,
        nn::LinearConfig {
            ws_init: init,
            bs_init: Some(init),
            bias,
        },
    )
}

impl Mlp {
    /// A freshly initialised head on `device`.
    pub fn new(config: MlpConfig, device: Device) -> Result<Self> {
        if config.input_dim < 1 || config.hidden_dim < 1 || config.output_dim < 1 {
            bail!("MLP head: sizes must be positive (got {config:?})");
        }
        // The store only names and places the tensors; the head keeps (shallow) handles to them.
        let vs = nn::VarStore::new(device);
        let model = vs.root() / "model";
        let first = pytorch_linear(
            &model / "0",
            config.input_dim,
            config.hidden_dim,
            config.first_bias,
        );
        let bn = BatchNorm::new(
            &model / "1",
            config.hidden_dim,
            BatchNormConfig::default(),
            &Collectives::current(),
        );
        let last = pytorch_linear(
            &model / "3",
            config.hidden_dim,
            config.output_dim,
            config.last_bias,
        );
        Ok(Mlp {
            config,
            first,
            bn,
            last,
        })
    }

    /// The configuration it was built with.
    pub fn config(&self) -> MlpConfig {
        self.config
    }

    /// Applies the head to `[N, input_dim]`; `train` selects BatchNorm's batch statistics (and
    /// updates its running buffers). As PyTorch, training mode refuses a batch of one sample.
    pub fn forward(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let size = xs.size();
        if size.len() != 2 || size[1] != self.config.input_dim {
            bail!(
                "MLP head: expected input [N, {}], got {size:?}",
                self.config.input_dim
            );
        }
        if train && size[0] < 2 {
            bail!("MLP head: BatchNorm1d in training mode needs more than 1 sample per batch, got {size:?}");
        }
        let hidden = self
            .bn
            .forward(&xs.f_linear(&self.first.ws, self.first.bs.as_ref())?, train)?
            .f_relu()?;
        let out = hidden.f_linear(&self.last.ws, self.last.bs.as_ref())?;
        if self.config.normalize {
            l2_normalize(&out)
        } else {
            Ok(out)
        }
    }

    /// Trainable tensors, in PyTorch's order: `model.0.weight`, (`model.0.bias`),
    /// `model.1.weight`, `model.1.bias`, `model.3.weight`, (`model.3.bias`).
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut list = vec![("model.0.weight".to_string(), self.first.ws.shallow_clone())];
        if let Some(b) = &self.first.bs {
            list.push(("model.0.bias".into(), b.shallow_clone()));
        }
        if let (Some(w), Some(b)) = (self.bn.weight(), self.bn.bias()) {
            list.push(("model.1.weight".into(), w.shallow_clone()));
            list.push(("model.1.bias".into(), b.shallow_clone()));
        }
        list.push(("model.3.weight".into(), self.last.ws.shallow_clone()));
        if let Some(b) = &self.last.bs {
            list.push(("model.3.bias".into(), b.shallow_clone()));
        }
        list
    }

    /// BatchNorm running statistics: `model.1.running_mean`, `model.1.running_var`.
    pub fn named_buffers(&self) -> Vec<(String, Tensor)> {
        vec![
            (
                "model.1.running_mean".into(),
                self.bn.running_mean().shallow_clone(),
            ),
            (
                "model.1.running_var".into(),
                self.bn.running_var().shallow_clone(),
            ),
        ]
    }
}

/// `F.normalize(x, p=2, dim=1, eps=1e-12)`: each row divided by `max(|row|, 1e-12)`.
pub fn l2_normalize(xs: &Tensor) -> Result<Tensor> {
    let norm = xs
        .f_norm_scalaropt_dim(2.0, [1i64].as_slice(), true)?
        .f_clamp_min(1e-12)?;
    Ok(xs.f_div(&norm)?)
}

/// Prefixes every name of `list` with `prefix`.
pub(crate) fn prefixed(prefix: &str, list: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    list.into_iter()
        .map(|(name, t)| (format!("{prefix}{name}"), t))
        .collect()
}

/// Copies every tensor of `from` into the tensor of the same name in `to` (in place, without
/// gradient tracking); both lists must hold the same names and shapes.
pub(crate) fn copy_by_name(to: &[(String, Tensor)], from: &[(String, Tensor)]) -> Result<()> {
    let pairs = pair_by_name(to, from)?;
    ssl_plugin_api::tch::no_grad(|| -> Result<()> {
        for (mut dst, src) in pairs {
            dst.f_copy_(&src)?;
        }
        Ok(())
    })
}

/// Pairs the tensors of `a` with those of `b` by name (shallow clones, in `a`'s order),
/// checking that the two lists hold the same names and shapes.
pub(crate) fn pair_by_name(
    a: &[(String, Tensor)],
    b: &[(String, Tensor)],
) -> Result<Vec<(Tensor, Tensor)>> {
    if a.len() != b.len() {
        bail!(
            "two networks built from one spec differ: {} tensors versus {}",
            a.len(),
            b.len()
        );
    }
    let mut pairs = Vec::with_capacity(a.len());
    for (name, ta) in a {
        let Some((_, tb)) = b.iter().find(|(n, _)| n == name) else {
            bail!("two networks built from one spec differ: `{name}` is missing from the second");
        };
        if ta.size() != tb.size() {
            bail!(
                "two networks built from one spec differ: `{name}` has shape {:?} versus {:?}",
                ta.size(),
                tb.size()
            );
        }
        pairs.push((ta.shallow_clone(), tb.shallow_clone()));
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssl_plugin_api::tch::Kind;

    #[test]
    fn byol_mlp_names_and_init() {
        let mlp = Mlp::new(MlpConfig::byol(16, 32, 8), Device::Cpu).unwrap();
        let names: Vec<String> = mlp.named_parameters().into_iter().map(|p| p.0).collect();
        assert_eq!(
            names,
            [
                "model.0.weight",
                "model.1.weight",
                "model.1.bias",
                "model.3.weight",
                "model.3.bias"
            ]
        );
        let params = mlp.named_parameters();
        let bn_w = &params[1].1;
        let bn_b = &params[2].1;
        assert_eq!(bn_w.min().double_value(&[]), 1.0);
        assert_eq!(bn_w.max().double_value(&[]), 1.0);
        assert_eq!(bn_b.abs().max().double_value(&[]), 0.0);
        // PyTorch's Linear bound 1/sqrt(fan_in), not tch's sqrt(6/fan_in).
        let w0 = &params[0].1;
        assert!(w0.abs().max().double_value(&[]) <= 1.0 / 4.0);
        assert!(w0.abs().max().double_value(&[]) > 0.2);
        let w3 = &params[3].1;
        assert!(w3.abs().max().double_value(&[]) <= 1.0 / 32f64.sqrt());
        assert!(params.iter().all(|p| p.1.requires_grad()));
        assert!(mlp.named_buffers().iter().all(|b| !b.1.requires_grad()));
    }

    #[test]
    fn simclr_mlp_names() {
        let mlp = Mlp::new(MlpConfig::simclr(16, 32, 8), Device::Cpu).unwrap();
        let names: Vec<String> = mlp.named_parameters().into_iter().map(|p| p.0).collect();
        assert_eq!(
            names,
            [
                "model.0.weight",
                "model.0.bias",
                "model.1.weight",
                "model.1.bias",
                "model.3.weight"
            ]
        );
    }

    #[test]
    fn forward_checks_shapes_and_batch() {
        let mlp = Mlp::new(MlpConfig::byol(4, 8, 2), Device::Cpu).unwrap();
        let x = Tensor::randn([3, 4], (Kind::Float, Device::Cpu));
        assert_eq!(mlp.forward(&x, true).unwrap().size(), [3, 2]);
        assert!(mlp.forward(&x.narrow(0, 0, 1), true).is_err());
        assert_eq!(
            mlp.forward(&x.narrow(0, 0, 1), false).unwrap().size(),
            [1, 2]
        );
        let bad = Tensor::randn([3, 5], (Kind::Float, Device::Cpu));
        assert!(mlp.forward(&bad, false).is_err());
    }

    #[test]
    fn training_forward_updates_running_stats() {
        let mlp = Mlp::new(MlpConfig::byol(4, 8, 2), Device::Cpu).unwrap();
        let x = Tensor::randn([6, 4], (Kind::Float, Device::Cpu));
        let mean = mlp.named_buffers()[0].1.copy();
        let _ = mlp.forward(&x, false).unwrap();
        assert!(mlp.named_buffers()[0].1.equal(&mean));
        let _ = mlp.forward(&x, true).unwrap();
        assert!(!mlp.named_buffers()[0].1.equal(&mean));
    }
}
