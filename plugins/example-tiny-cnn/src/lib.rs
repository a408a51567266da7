//! An encoder plugin for ssl-host: `TinyCNN`, two strided convolutions, global average
//! pooling and a linear layer to `dim` features.
//!
//! Build: `cargo build --release -p example-tiny-cnn`, then
//! `ssl-host --plugin target/release/libexample_tiny_cnn.so check-encoder --encoder=TinyCNN`.

use ssl_plugin_api::tch::nn::{self, Module};
use ssl_plugin_api::tch::{Device, Tensor};
use ssl_plugin_api::{bail, Encoder, Params, Plugin, Result};

struct TinyCnn {
    vs: nn::VarStore,
    conv1: nn::Conv2D,
    conv2: nn::Conv2D,
    fc: nn::Linear,
    dim: i64,
}

impl TinyCnn {
    fn new(params: &Params, device: Device) -> Result<Self> {
        let width: i64 = params.get_or("width", 16)?;
        let dim: i64 = params.get_or("dim", 64)?;
        if width < 1 || dim < 1 {
            bail!("TinyCNN: `width` and `dim` must be positive (got width={width}, dim={dim})");
        }
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let conv = nn::ConvConfig {
            stride: 2,
            padding: 1,
            ..Default::default()
        };
        let conv1 = nn::conv2d(&root / "conv1", 3, width, 3, conv);
        let conv2 = nn::conv2d(&root / "conv2", width, 2 * width, 3, conv);
        let fc = nn::linear(&root / "fc", 2 * width, dim, Default::default());
        Ok(TinyCnn {
            vs,
            conv1,
            conv2,
            fc,
            dim,
        })
    }
}

impl Encoder for TinyCnn {
    fn forward(&mut self, images: &Tensor, _train: bool) -> Result<Tensor> {
        let x = images.apply(&self.conv1).relu().apply(&self.conv2).relu();
        let pooled = x.adaptive_avg_pool2d([1, 1]).flatten(1, -1);
        Ok(self.fc.forward(&pooled))
    }

    fn output_dim(&self) -> i64 {
        self.dim
    }

    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut vars: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    }

    fn named_buffers(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }
}

fn plugin() -> Plugin {
    Plugin::new("example-tiny-cnn", env!("CARGO_PKG_VERSION")).encoder(
        "TinyCNN",
        "two strided 3x3 convolutions, average pooling, linear to `dim` (default 64); `width` (16)",
        TinyCnn::new,
    )
}

ssl_plugin_api::export_plugin!(plugin);
