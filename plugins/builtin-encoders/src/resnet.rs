//! ResNet encoders: He, Zhang, Ren and Sun, "Deep Residual Learning for Image Recognition"
//! (CVPR 2016), laid out exactly as torchvision's `resnet18` / `resnet50` / `resnet101` (the
//! stride of a Bottleneck on its 3×3 convolution, "ResNet v1.5"), without the `fc` layer.
//!
//! Parameter names and shapes match torchvision's `state_dict()` (`conv1.weight`,
//! `bn1.running_mean`, `layer1.0.conv1.weight`, `layer2.0.downsample.1.weight`, ...), so
//! checkpoints line up with the original. Initialisation as torchvision: convolutions
//! Kaiming-normal with mode `fan_out` and ReLU gain, BatchNorm weight 1 and bias 0.
//!
//! The forward pass is conv1 → bn1 → ReLU → max-pool(3, 2, 1) → layer1..4 → global average
//! pooling → flatten, giving `[N, 512]` (ResNet-18) or `[N, 2048]` (ResNet-50/101).
//!
//! Parameter `cifar_stem` (bool, default false) replaces the 7×7 stride-2 first convolution by
//! a 3×3 stride-1 one (still `conv1.weight`); the max-pool is kept, as in the original system.

use crate::init::sorted_parameters;
use crate::init::{batch_norm, check_input, check_param_names, conv2d, sorted_buffers};
use ssl_plugin_api::nn::BatchNorm;
use ssl_plugin_api::tch::nn::{self, init::FanInOut};
use ssl_plugin_api::tch::{Device, Tensor};
use ssl_plugin_api::{Encoder, Params, Result};

/// Which residual block a ResNet is built from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockKind {
    /// Two 3×3 convolutions (ResNet-18/34), expansion 1.
    Basic,
    /// 1×1 → 3×3 → 1×1 convolutions (ResNet-50/101/152), expansion 4.
    Bottleneck,
}

impl BlockKind {
    /// Output channels of a block relative to its width.
    pub fn expansion(self) -> i64 {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

/// A ResNet architecture: its name, block and number of blocks per stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResNetArch {
    /// The encoder name (`resnet18`).
    pub name: &'static str,
    /// The residual block.
    pub block: BlockKind,
    /// Blocks in layer1..layer4.
    pub layers: [i64; 4],
}

impl ResNetArch {
    /// ResNet-18: BasicBlock ×[2, 2, 2, 2], 512 features.
    pub const RESNET18: ResNetArch = ResNetArch {
        name: "resnet18",
        block: BlockKind::Basic,
        layers: [2, 2, 2, 2],
    };
    /// ResNet-50: Bottleneck ×[3, 4, 6, 3], 2048 features.
    pub const RESNET50: ResNetArch = ResNetArch {
        name: "resnet50",
        block: BlockKind::Bottleneck,
        layers: [3, 4, 6, 3],
    };
    /// ResNet-101: Bottleneck ×[3, 4, 23, 3], 2048 features.
    pub const RESNET101: ResNetArch = ResNetArch {
        name: "resnet101",
        block: BlockKind::Bottleneck,
        layers: [3, 4, 23, 3],
    };

    /// Size of the embedding: 512 × expansion.
    pub fn output_dim(&self) -> i64 {
        512 * self.block.expansion()
    }
}

/// Parameters a ResNet accepts.
const PARAMS: &[&str] = &["cifar_stem"];

/// One residual block: its convolutions with their BatchNorms (ReLU between them) and the
/// optional projection of the shortcut.
struct Block {
    convs: Vec<(nn::Conv2D, BatchNorm)>,
    downsample: Option<(nn::Conv2D, BatchNorm)>,
}

impl Block {
    fn new(p: nn::Path, kind: BlockKind, c_in: i64, width: i64, stride: i64) -> Block {
        let c_out = width * kind.expansion();
        let fan = FanInOut::FanOut;
        let specs: Vec<(i64, i64, i64, i64, i64)> = match kind {
            // (in, out, kernel, stride, padding)
            BlockKind::Basic => vec![(c_in, width, 3, stride, 1), (width, width, 3, 1, 1)],
            BlockKind::Bottleneck => vec![
                (c_in, width, 1, 1, 0),
                (width, width, 3, stride, 1),
                (width, c_out, 1, 1, 0),
            ],
        };
        let convs = specs
            .into_iter()
            .enumerate()
            .map(|(i, (ci, co, k, s, pad))| {
                let conv = conv2d(&p / format!("conv{}", i + 1), ci, co, k, s, pad, fan);
                let bn = batch_norm(&p / format!("bn{}", i + 1), co);
                (conv, bn)
            })
            .collect();
        let downsample = (stride != 1 || c_in != c_out).then(|| {
            let d = &p / "downsample";
            (
                conv2d(&d / 0, c_in, c_out, 1, stride, 0, fan),
                batch_norm(&d / 1, c_out),
            )
        });
        Block { convs, downsample }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let last = self.convs.len() - 1;
        let mut out = x.shallow_clone();
        for (i, (conv, bn)) in self.convs.iter().enumerate() {
            out = bn.forward(&out.apply(conv), train)?;
            if i < last {
                out = out.relu();
            }
        }
        let identity = match &self.downsample {
            Some((conv, bn)) => bn.forward(&x.apply(conv), train)?,
            None => x.shallow_clone(),
        };
        Ok((out + identity).relu())
    }
}

/// A ResNet encoder (torchvision layout, no `fc`): images `[N, 3, H, W]` to `[N, 512]` or
/// `[N, 2048]`.
pub struct ResNet {
    arch: ResNetArch,
    vs: nn::VarStore,
    conv1: nn::Conv2D,
    bn1: BatchNorm,
    layers: Vec<Vec<Block>>,
}

impl ResNet {
    /// Builds `arch` on `device` from its parameters (`cifar_stem`, bool, default false);
    /// unknown parameter names are an error.
    pub fn new(arch: ResNetArch, params: &Params, device: Device) -> Result<ResNet> {
        check_param_names(arch.name, params, PARAMS)?;
        let cifar_stem: bool = params.get_or("cifar_stem", false)?;
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let (kernel, stride, padding) = if cifar_stem { (3, 1, 1) } else { (7, 2, 3) };
        let conv1 = conv2d(
            &root / "conv1",
            3,
            64,
            kernel,
            stride,
            padding,
            FanInOut::FanOut,
        );
        let bn1 = batch_norm(&root / "bn1", 64);
        let mut c_in = 64;
        let mut layers = Vec::with_capacity(4);
        for (stage, &blocks) in arch.layers.iter().enumerate() {
            let width = 64 << stage;
            let stride = if stage == 0 { 1 } else { 2 };
            let p = &root / format!("layer{}", stage + 1);
            let mut layer = Vec::with_capacity(blocks as usize);
            for b in 0..blocks {
                let s = if b == 0 { stride } else { 1 };
                layer.push(Block::new(&p / b, arch.block, c_in, width, s));
                c_in = width * arch.block.expansion();
            }
            layers.push(layer);
        }
        Ok(ResNet {
            arch,
            vs,
            conv1,
            bn1,
            layers,
        })
    }

    /// ResNet-18 (512 features).
    pub fn resnet18(params: &Params, device: Device) -> Result<ResNet> {
        ResNet::new(ResNetArch::RESNET18, params, device)
    }

    /// ResNet-50 (2048 features).
    pub fn resnet50(params: &Params, device: Device) -> Result<ResNet> {
        ResNet::new(ResNetArch::RESNET50, params, device)
    }

    /// ResNet-101 (2048 features).
    pub fn resnet101(params: &Params, device: Device) -> Result<ResNet> {
        ResNet::new(ResNetArch::RESNET101, params, device)
    }

    /// The architecture.
    pub fn arch(&self) -> ResNetArch {
        self.arch
    }

    /// The variable store holding every parameter and buffer.
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }
}

impl Encoder for ResNet {
    fn forward(&mut self, images: &Tensor, train: bool) -> Result<Tensor> {
        check_input(self.arch.name, images, self.vs.device())?;
        let mut x = self
            .bn1
            .forward(&images.apply(&self.conv1), train)?
            .relu()
            .max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        for layer in &self.layers {
            for block in layer {
                x = block.forward(&x, train)?;
            }
        }
        Ok(x.adaptive_avg_pool2d([1, 1]).flatten(1, -1))
    }

    fn output_dim(&self) -> i64 {
        self.arch.output_dim()
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        sorted_parameters(&self.vs)
    }

    fn named_buffers(&self) -> Vec<(String, Tensor)> {
        sorted_buffers(&self.vs)
    }
}
