//! DenseNet-121 encoder: Huang, Liu, van der Maaten and Weinberger, "Densely Connected
//! Convolutional Networks" (CVPR 2017), laid out exactly as torchvision's
//! `densenet121().features` (growth rate 32, blocks (6, 12, 24, 16), bottleneck size 4,
//! 64 initial features, no dropout), followed by global average pooling and flatten.
//!
//! As the original system's `DenseNet121Encoder`, there is **no** ReLU after `norm5`
//! (torchvision's classifier path applies one; this encoder does not). Output: `[N, 1024]`.
//! Any input from 32 px up works (at 32 px the last dense block sees 1×1 maps; 29 px is the
//! smallest that does).
//!
//! Parameter names and shapes match torchvision's `state_dict()` without `classifier.*`
//! (`features.conv0.weight`, `features.denseblock1.denselayer1.norm1.weight`,
//! `features.transition1.conv.weight`, `features.norm5.running_var`, ...). Initialisation as
//! torchvision's DenseNet: convolutions `kaiming_normal_` with its defaults (mode `fan_in`,
//! gain √2), BatchNorm weight 1 and bias 0.
//!
//! Parameter `cifar_stem` is accepted for symmetry with the ResNets but must be false: the
//! original raises `ValueError` when asked for a CIFAR stem.

use crate::init::sorted_parameters;
use crate::init::{batch_norm, check_input, check_param_names, conv2d, sorted_buffers};
use ssl_plugin_api::nn::BatchNorm;
use ssl_plugin_api::tch::nn::{self, init::FanInOut};
use ssl_plugin_api::tch::{Device, Tensor};
use ssl_plugin_api::{bail, Encoder, Params, Result};

const NAME: &str = "densenet121";
const GROWTH_RATE: i64 = 32;
const BLOCK_CONFIG: [i64; 4] = [6, 12, 24, 16];
const BN_SIZE: i64 = 4;
const NUM_INIT_FEATURES: i64 = 64;
/// Size of a DenseNet-121 embedding.
pub const DENSENET121_DIM: i64 = 1024;
/// Parameters DenseNet-121 accepts.
const PARAMS: &[&str] = &["cifar_stem"];

/// norm1 → ReLU → conv1 (1×1) → norm2 → ReLU → conv2 (3×3): `growth_rate` new channels.
struct DenseLayer {
    norm1: BatchNorm,
    conv1: nn::Conv2D,
    norm2: BatchNorm,
    conv2: nn::Conv2D,
}

impl DenseLayer {
    fn new(p: nn::Path, c_in: i64) -> DenseLayer {
        let mid = BN_SIZE * GROWTH_RATE;
        DenseLayer {
            norm1: batch_norm(&p / "norm1", c_in),
            conv1: conv2d(&p / "conv1", c_in, mid, 1, 1, 0, FanInOut::FanIn),
            norm2: batch_norm(&p / "norm2", mid),
            conv2: conv2d(&p / "conv2", mid, GROWTH_RATE, 3, 1, 1, FanInOut::FanIn),
        }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let x = self.norm1.forward(x, train)?.relu().apply(&self.conv1);
        Ok(self.norm2.forward(&x, train)?.relu().apply(&self.conv2))
    }
}

/// norm → ReLU → conv (1×1, halves the channels) → average pool 2×2.
struct Transition {
    norm: BatchNorm,
    conv: nn::Conv2D,
}

impl Transition {
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        Ok(self
            .norm
            .forward(x, train)?
            .relu()
            .apply(&self.conv)
            .avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None))
    }
}

/// A dense block, followed by its transition (none after the last block).
struct Stage {
    layers: Vec<DenseLayer>,
    transition: Option<Transition>,
}

/// DenseNet-121 features (torchvision layout) with global average pooling: images
/// `[N, 3, H, W]` (H, W ≥ 29; 32 and up in practice) to `[N, 1024]`.
pub struct DenseNet {
    vs: nn::VarStore,
    conv0: nn::Conv2D,
    norm0: BatchNorm,
    stages: Vec<Stage>,
    norm5: BatchNorm,
}

impl DenseNet {
    /// Builds DenseNet-121 on `device`. `cifar_stem` (bool) is accepted but must be false;
    /// unknown parameter names are an error.
    pub fn densenet121(params: &Params, device: Device) -> Result<DenseNet> {
        check_param_names(NAME, params, PARAMS)?;
        if params.get_or("cifar_stem", false)? {
            bail!("densenet121 has no CIFAR stem (parameter `cifar_stem` must be false)");
        }
        let vs = nn::VarStore::new(device);
        let features = vs.root() / "features";
        let fan = FanInOut::FanIn;
        let conv0 = conv2d(&features / "conv0", 3, NUM_INIT_FEATURES, 7, 2, 3, fan);
        let norm0 = batch_norm(&features / "norm0", NUM_INIT_FEATURES);
        let mut channels = NUM_INIT_FEATURES;
        let mut stages = Vec::with_capacity(BLOCK_CONFIG.len());
        for (i, &n_layers) in BLOCK_CONFIG.iter().enumerate() {
            let block = &features / format!("denseblock{}", i + 1);
            let layers = (0..n_layers)
                .map(|l| {
                    let c_in = channels + l * GROWTH_RATE;
                    DenseLayer::new(&block / format!("denselayer{}", l + 1), c_in)
                })
                .collect();
            channels += n_layers * GROWTH_RATE;
            let transition = (i + 1 < BLOCK_CONFIG.len()).then(|| {
                let t = &features / format!("transition{}", i + 1);
                let out = channels / 2;
                let transition = Transition {
                    norm: batch_norm(&t / "norm", channels),
                    conv: conv2d(&t / "conv", channels, out, 1, 1, 0, fan),
                };
                channels = out;
                transition
            });
            stages.push(Stage { layers, transition });
        }
        debug_assert_eq!(channels, DENSENET121_DIM);
        let norm5 = batch_norm(&features / "norm5", channels);
        Ok(DenseNet {
            vs,
            conv0,
            norm0,
            stages,
            norm5,
        })
    }

    /// The variable store holding every parameter and buffer.
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }
}

impl Encoder for DenseNet {
    fn forward(&mut self, images: &Tensor, train: bool) -> Result<Tensor> {
        check_input(NAME, images, self.vs.device())?;
        let size = images.size();
        // The stem divides by 4 (rounding up); the three transitions need 8×8 maps after it.
        let stem = |s: i64| ((s - 1) / 2) / 2 + 1;
        if stem(size[2]) < 8 || stem(size[3]) < 8 {
            bail!("{NAME}: images too small ({size:?}); at least 29×29 pixels are needed");
        }
        let mut x = self
            .norm0
            .forward(&images.apply(&self.conv0), train)?
            .relu()
            .max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        for stage in &self.stages {
            let mut features = vec![x];
            for layer in &stage.layers {
                let new = layer.forward(&Tensor::cat(&features, 1), train)?;
                features.push(new);
            }
            x = Tensor::cat(&features, 1);
            if let Some(transition) = &stage.transition {
                x = transition.forward(&x, train)?;
            }
        }
        let x = self.norm5.forward(&x, train)?;
        Ok(x.adaptive_avg_pool2d([1, 1]).flatten(1, -1))
    }

    fn output_dim(&self) -> i64 {
        DENSENET121_DIM
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        sorted_parameters(&self.vs)
    }

    fn named_buffers(&self) -> Vec<(String, Tensor)> {
        sorted_buffers(&self.vs)
    }
}
