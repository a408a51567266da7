//! A tiny encoder for the tests: `[N, 3, 4, 4]` → flatten → `fc` → `bn1` → ReLU → `[N, dim]`,
//! with torchvision-like names (`fc.weight`, `bn1.running_mean`, ...).

#![allow(dead_code)] // each test file uses a different part

use ssl_plugin_api::tch::nn;
use ssl_plugin_api::tch::{Device, Kind, Tensor};
use ssl_plugin_api::{Encoder, Result};

pub mod parity;

/// Images per view in the tests' batches.
pub const BATCH: i64 = 6;

pub struct TinyEncoder {
    fc: nn::Linear,
    bn: nn::BatchNorm,
    bn_name: String,
    dim: i64,
}

impl TinyEncoder {
    pub fn new(dim: i64, device: Device) -> Self {
        Self::with_bn_name(dim, "bn1", device)
    }

    /// With the BatchNorm called `bn_name` instead of `bn1` (`norm0`, `downsample.1`, ...).
    pub fn with_bn_name(dim: i64, bn_name: &str, device: Device) -> Self {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let fc = nn::linear(&root / "fc", 48, dim, Default::default());
        let bn = nn::batch_norm1d(
            &root / "bn",
            dim,
            nn::BatchNormConfig {
                ws_init: nn::Init::Const(1.0),
                ..Default::default()
            },
        );
        TinyEncoder {
            fc,
            bn,
            bn_name: bn_name.into(),
            dim,
        }
    }

    pub fn boxed(dim: i64) -> Box<dyn Encoder> {
        Box::new(Self::new(dim, Device::Cpu))
    }
}

impl Encoder for TinyEncoder {
    fn forward(&mut self, images: &Tensor, train: bool) -> Result<Tensor> {
        Ok(images
            .flatten(1, -1)
            .linear(&self.fc.ws, self.fc.bs.as_ref())
            .apply_t(&self.bn, train)
            .relu())
    }
    fn output_dim(&self) -> i64 {
        self.dim
    }
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let bn = &self.bn_name;
        let some = |t: &Option<Tensor>| t.as_ref().unwrap().shallow_clone();
        vec![
            ("fc.weight".into(), self.fc.ws.shallow_clone()),
            ("fc.bias".into(), some(&self.fc.bs)),
            (format!("{bn}.weight"), some(&self.bn.ws)),
            (format!("{bn}.bias"), some(&self.bn.bs)),
        ]
    }
    fn named_buffers(&self) -> Vec<(String, Tensor)> {
        let bn = &self.bn_name;
        vec![
            (
                format!("{bn}.running_mean"),
                self.bn.running_mean.shallow_clone(),
            ),
            (
                format!("{bn}.running_var"),
                self.bn.running_var.shallow_clone(),
            ),
        ]
    }
}

/// Two random views of `BATCH` images.
pub fn views() -> Vec<Tensor> {
    (0..2)
        .map(|_| Tensor::rand([BATCH, 3, 4, 4], (Kind::Float, Device::Cpu)))
        .collect()
}

/// Copies of a list of named tensors (not sharing storage).
pub fn snapshot(list: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    list.iter()
        .map(|(n, t)| (n.clone(), t.detach().copy()))
        .collect()
}

/// The tensor called `name`.
pub fn find<'a>(list: &'a [(String, Tensor)], name: &str) -> &'a Tensor {
    &list
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no tensor `{name}` among {:?}", names(list)))
        .1
}

pub fn names(list: &[(String, Tensor)]) -> Vec<String> {
    list.iter().map(|(n, _)| n.clone()).collect()
}

/// Plain SGD over `params` with gradients from `loss`.
pub fn sgd_step(loss: &Tensor, params: &[Tensor], lr: f64) {
    for p in params {
        let mut g = p.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
    loss.backward();
    ssl_plugin_api::tch::no_grad(|| {
        for p in params {
            let g = p.grad();
            if g.defined() {
                let mut p = p.shallow_clone();
                let _ = p.f_sub_(&(g * lr)).unwrap();
            }
        }
    });
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}
