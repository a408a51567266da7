//! Helpers shared by the model files: layer constructors with torchvision's initialisation,
//! parameter checks and the split of a `VarStore` into parameters and buffers.

use ssl_plugin_api::nn::{BatchNorm, BatchNormConfig};
use ssl_plugin_api::tch::nn::{self, init::FanInOut, init::NonLinearity, init::NormalOrUniform};
use ssl_plugin_api::tch::{Device, Tensor};
use ssl_plugin_api::{bail, Collectives, Params, Result};

/// A convolution without bias, initialised with Kaiming-normal weights
/// (`std = sqrt(2 / fan)`, torch's `kaiming_normal_(..., nonlinearity="relu")`).
pub(crate) fn conv2d(
    path: nn::Path,
    c_in: i64,
    c_out: i64,
    kernel: i64,
    stride: i64,
    padding: i64,
    fan: FanInOut,
) -> nn::Conv2D {
    let config = nn::ConvConfig {
        stride,
        padding,
        bias: false,
        ws_init: nn::Init::Kaiming {
            dist: NormalOrUniform::Normal,
            fan,
            non_linearity: NonLinearity::ReLU,
        },
        ..Default::default()
    };
    nn::conv2d(path, c_in, c_out, kernel, config)
}

/// A BatchNorm2d as torch's default: weight 1, bias 0, running mean 0 and variance 1,
/// eps 1e-5, momentum 0.1; synchronised across processes when the run asks for it (the
/// process group of [`Collectives::current`]).
pub(crate) fn batch_norm(path: nn::Path, channels: i64) -> BatchNorm {
    BatchNorm::new(
        path,
        channels,
        BatchNormConfig::default(),
        &Collectives::current(),
    )
}

/// Fails, naming them, when `params` holds names other than `allowed`.
pub(crate) fn check_param_names(encoder: &str, params: &Params, allowed: &[&str]) -> Result<()> {
    let Some(map) = params.as_json().as_object() else {
        bail!("{encoder}: parameters must be a table");
    };
    let mut unknown: Vec<&str> = map
        .keys()
        .map(String::as_str)
        .filter(|k| !allowed.contains(k))
        .collect();
    if !unknown.is_empty() {
        unknown.sort_unstable();
        let quoted = |names: &[&str]| {
            names
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        bail!(
            "{encoder}: unknown parameter(s) {} (accepted: {})",
            quoted(&unknown),
            quoted(allowed)
        );
    }
    Ok(())
}

/// Whether a variable name is a BatchNorm running statistic (a buffer, not trained).
fn is_buffer(name: &str) -> bool {
    name.ends_with(".running_mean") || name.ends_with(".running_var")
}

/// The trainable variables of `vs`, sorted by name (shallow clones).
pub(crate) fn sorted_parameters(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    sorted_filter(vs, |n| !is_buffer(n))
}

/// The BatchNorm running statistics of `vs`, sorted by name (shallow clones).
pub(crate) fn sorted_buffers(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    sorted_filter(vs, is_buffer)
}

fn sorted_filter(vs: &nn::VarStore, keep: impl Fn(&str) -> bool) -> Vec<(String, Tensor)> {
    let mut vars: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(n, _)| keep(n))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// Checks that `images` is an `[N, 3, H, W]` batch on `device`, with a readable error
/// (libtorch's own would come from deep inside the first convolution).
pub(crate) fn check_input(encoder: &str, images: &Tensor, device: Device) -> Result<()> {
    let size = images.size();
    if size.len() != 4 || size[1] != 3 {
        bail!("{encoder}: expected images of shape [N, 3, H, W], got {size:?}");
    }
    if images.device() != device {
        bail!(
            "{encoder}: images are on {:?} but the encoder is on {device:?}",
            images.device()
        );
    }
    Ok(())
}
