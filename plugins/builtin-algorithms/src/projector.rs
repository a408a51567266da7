//! The deep projector ("expander" in VICReg) of Barlow Twins and VICReg, and the optimizer hints
//! both papers use.
//!
//! For `dims = [d1, ..., dk]` on an encoder of size `d0` it is, as PyTorch's `nn.Sequential`
//! of the original repositories:
//!
//! ```text
//! Linear(d0, d1) → BatchNorm1d(d1) → ReLU → … → Linear(d(k-2), d(k-1)) → BatchNorm1d → ReLU
//!                → Linear(d(k-1), dk, bias=False)
//! ```
//!
//! so tensors are named `projector.{3i}.weight` (the Linear layers), `projector.{3i+1}.*` (the
//! BatchNorms; the ReLUs at `3i+2` have no tensors). The hidden Linear layers have a bias in
//! VICReg and none in Barlow Twins; the last has none in both. Initialisation follows PyTorch's
//! defaults (Linear weight and bias in `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`, BatchNorm weight 1,
//! bias 0), as in [`crate::heads`].

use crate::heads::pytorch_linear;
use ssl_plugin_api::nn::{BatchNorm, BatchNormConfig};
use ssl_plugin_api::tch::nn;
use ssl_plugin_api::tch::{Device, Tensor};
use ssl_plugin_api::{bail, Collectives, Params, Result, TrainableParam};

/// One `Linear` with, except for the last layer, the `BatchNorm1d` and ReLU after it.
struct Layer {
    linear: nn::Linear,
    bn: Option<BatchNorm>,
}

/// `Linear → BatchNorm1d → ReLU` repeated, then a last `Linear` without bias.
pub struct Projector {
    input_dim: i64,
    layers: Vec<Layer>,
}

impl Projector {
    /// A freshly initialised projector from `input_dim` through `dims` (at least one size, all
    /// positive); `hidden_bias` gives the hidden Linear layers a bias.
    pub fn new(input_dim: i64, dims: &[i64], hidden_bias: bool, device: Device) -> Result<Self> {
        if dims.is_empty() || input_dim < 1 || dims.iter().any(|&d| d < 1) {
            bail!("projector: sizes must be positive and at least one, got input {input_dim} and {dims:?}");
        }
        // The store only names and places the tensors; the layers keep (shallow) handles.
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let collectives = Collectives::current();
        let mut layers = Vec::with_capacity(dims.len());
        let mut from = input_dim;
        for (i, &to) in dims.iter().enumerate() {
            let last = i + 1 == dims.len();
            let linear = pytorch_linear(&root / (3 * i), from, to, hidden_bias && !last);
            let bn = (!last).then(|| {
                BatchNorm::new(
                    &root / (3 * i + 1),
                    to,
                    BatchNormConfig::default(),
                    &collectives,
                )
            });
            layers.push(Layer { linear, bn });
            from = to;
        }
        Ok(Projector { input_dim, layers })
    }

    /// Size of the output (the last of `dims`).
    pub fn output_dim(&self) -> i64 {
        self.layers
            .last()
            .map(|l| l.linear.ws.size()[0])
            .unwrap_or(self.input_dim)
    }

    /// Applies the projector to `[N, input_dim]`; `train` selects BatchNorm's batch statistics
    /// (and updates its running buffers).
    pub fn forward(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let size = xs.size();
        if size.len() != 2 || size[1] != self.input_dim {
            bail!(
                "projector: expected input [N, {}], got {size:?}",
                self.input_dim
            );
        }
        if train && size[0] < 2 {
            bail!("projector: BatchNorm1d in training mode needs more than 1 sample per batch, got {size:?}");
        }
        let mut out = xs.shallow_clone();
        for layer in &self.layers {
            out = out.f_linear(&layer.linear.ws, layer.linear.bs.as_ref())?;
            if let Some(bn) = &layer.bn {
                out = bn.forward(&out, train)?.f_relu()?;
            }
        }
        Ok(out)
    }

    /// Trainable tensors in PyTorch's order: `0.weight`, (`0.bias`), `1.weight`, `1.bias`,
    /// `3.weight`, …
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut list = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            list.push((format!("{}.weight", 3 * i), layer.linear.ws.shallow_clone()));
            if let Some(b) = &layer.linear.bs {
                list.push((format!("{}.bias", 3 * i), b.shallow_clone()));
            }
            if let Some(bn) = &layer.bn {
                if let (Some(w), Some(b)) = (bn.weight(), bn.bias()) {
                    list.push((format!("{}.weight", 3 * i + 1), w.shallow_clone()));
                    list.push((format!("{}.bias", 3 * i + 1), b.shallow_clone()));
                }
            }
        }
        list
    }

    /// BatchNorm running statistics: `1.running_mean`, `1.running_var`, `4.running_mean`, …
    pub fn named_buffers(&self) -> Vec<(String, Tensor)> {
        let mut list = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            if let Some(bn) = &layer.bn {
                let at = 3 * i + 1;
                list.push((
                    format!("{at}.running_mean"),
                    bn.running_mean().shallow_clone(),
                ));
                list.push((
                    format!("{at}.running_var"),
                    bn.running_var().shallow_clone(),
                ));
            }
        }
        list
    }
}

/// The `projector_dims` parameter (a list of positive sizes), `default` when absent.
pub(crate) fn projector_dims(
    algorithm: &str,
    params: &Params,
    default: &[i64],
) -> Result<Vec<i64>> {
    let dims: Vec<i64> = params.get_or("projector_dims", default.to_vec())?;
    if dims.is_empty() || dims.iter().any(|&d| d < 1) {
        bail!(
            "{algorithm}: parameter `projector_dims` must list at least one positive size, got {dims:?}"
        );
    }
    Ok(dims)
}

/// The optimizer hints of Barlow Twins and VICReg (their LARS' `exclude_bias_and_norm`): no
/// weight decay nor LARS adaptation for 1-D tensors (biases and BatchNorm). The default hints
/// catch the encoder's by name; the projector's BatchNorm (`projector.1.weight`) is caught by
/// its shape.
pub(crate) fn paper_hints(name: String, tensor: Tensor) -> TrainableParam {
    let mut param = TrainableParam::with_default_hints(name, tensor);
    if param.tensor.dim() < 2 {
        param.weight_decay = false;
        param.lars_adaptation = false;
    }
    param
}

/// The off-diagonal entries of a square matrix `[d, d]`, as a flat `[d * (d - 1)]` view
/// (row-major order, the diagonal left out).
pub(crate) fn off_diagonal(m: &Tensor) -> Result<Tensor> {
    let size = m.size();
    if size.len() != 2 || size[0] != size[1] {
        bail!("off_diagonal needs a square matrix, got {size:?}");
    }
    let d = size[0];
    // Dropping the last entry of the flattened matrix leaves (d - 1) rows of d + 1 entries,
    // each starting with a diagonal entry.
    Ok(m.f_flatten(0, 1)?
        .f_narrow(0, 0, d * d - 1)?
        .f_view([d - 1, d + 1])?
        .f_narrow(1, 1, d)?
        .f_flatten(0, 1)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssl_plugin_api::tch::Kind;

    #[test]
    fn names_shapes_and_bias() {
        for (hidden_bias, expected) in [
            (
                false,
                vec![
                    ("0.weight", vec![6, 4]),
                    ("1.weight", vec![6]),
                    ("1.bias", vec![6]),
                    ("3.weight", vec![5, 6]),
                    ("4.weight", vec![5]),
                    ("4.bias", vec![5]),
                    ("6.weight", vec![3, 5]),
                ],
            ),
            (
                true,
                vec![
                    ("0.weight", vec![6, 4]),
                    ("0.bias", vec![6]),
                    ("1.weight", vec![6]),
                    ("1.bias", vec![6]),
                    ("3.weight", vec![5, 6]),
                    ("3.bias", vec![5]),
                    ("4.weight", vec![5]),
                    ("4.bias", vec![5]),
                    ("6.weight", vec![3, 5]),
                ],
            ),
        ] {
            let p = Projector::new(4, &[6, 5, 3], hidden_bias, Device::Cpu).unwrap();
            let got: Vec<(String, Vec<i64>)> = p
                .named_parameters()
                .into_iter()
                .map(|(n, t)| (n, t.size()))
                .collect();
            let want: Vec<(String, Vec<i64>)> = expected
                .into_iter()
                .map(|(n, s)| (n.to_string(), s))
                .collect();
            assert_eq!(got, want);
            let buffers: Vec<String> = p.named_buffers().into_iter().map(|b| b.0).collect();
            assert_eq!(
                buffers,
                [
                    "1.running_mean",
                    "1.running_var",
                    "4.running_mean",
                    "4.running_var"
                ]
            );
            assert_eq!(p.output_dim(), 3);
        }
    }

    #[test]
    fn one_layer_is_a_plain_linear() {
        let p = Projector::new(4, &[3], true, Device::Cpu).unwrap();
        let names: Vec<String> = p.named_parameters().into_iter().map(|b| b.0).collect();
        assert_eq!(names, ["0.weight"]);
        assert!(p.named_buffers().is_empty());
        let x = Tensor::randn([2, 4], (Kind::Float, Device::Cpu));
        let w = &p.named_parameters()[0].1;
        let diff = (p.forward(&x, true).unwrap() - x.matmul(&w.tr()))
            .abs()
            .max()
            .double_value(&[]);
        assert!(diff < 1e-6);
    }

    #[test]
    fn forward_checks_shapes_and_batch() {
        let p = Projector::new(4, &[8, 2], false, Device::Cpu).unwrap();
        let x = Tensor::randn([3, 4], (Kind::Float, Device::Cpu));
        assert_eq!(p.forward(&x, true).unwrap().size(), [3, 2]);
        assert!(p.forward(&x.narrow(0, 0, 1), true).is_err());
        assert_eq!(p.forward(&x.narrow(0, 0, 1), false).unwrap().size(), [1, 2]);
        assert!(p
            .forward(&Tensor::randn([3, 5], (Kind::Float, Device::Cpu)), false)
            .is_err());
        assert!(Projector::new(4, &[], false, Device::Cpu).is_err());
        assert!(Projector::new(4, &[8, 0], false, Device::Cpu).is_err());
    }

    #[test]
    fn off_diagonal_leaves_out_the_diagonal() {
        let m = Tensor::arange(9, (Kind::Float, Device::Cpu)).view([3, 3]);
        let off: Vec<f32> = Vec::try_from(off_diagonal(&m).unwrap()).unwrap();
        assert_eq!(off, [1.0, 2.0, 3.0, 5.0, 6.0, 7.0]);
        assert!(off_diagonal(&Tensor::zeros([2, 3], (Kind::Float, Device::Cpu))).is_err());
    }

    #[test]
    fn hints_exclude_every_one_dimensional_tensor() {
        let t = |shape: &[i64]| Tensor::zeros(shape, (Kind::Float, Device::Cpu));
        let p = paper_hints("projector.1.weight".into(), t(&[4]));
        assert!(!p.weight_decay && !p.lars_adaptation);
        let p = paper_hints("projector.0.weight".into(), t(&[4, 2]));
        assert!(p.weight_decay && p.lars_adaptation);
        let p = paper_hints("encoder.layer1.0.bn1.weight".into(), t(&[4]));
        assert!(!p.weight_decay && !p.lars_adaptation);
        let p = paper_hints("encoder.conv1.weight".into(), t(&[4, 3, 3, 3]));
        assert!(p.weight_decay && p.lars_adaptation);
    }
}
