//! `ssl-host check-encoder`: the quickest proof that an encoder plugin works in this host. It
//! makes the encoder, runs a forward pass on a random batch, backpropagates a loss in the
//! host, takes a plain SGD step on the encoder's parameters and reports what changed.

use crate::cli::Cli;
use crate::registry::Registry;
use anyhow::{bail, Context, Result};
use serde_json::Value;
use ssl_plugin_api::tch::{self, Device, Kind, Tensor};
use ssl_plugin_api::{Encoder, Params};

pub fn run(registry: &Registry, cli: &mut Cli) -> Result<()> {
    let name = cli
        .take("encoder")
        .context("check-encoder needs --encoder=NAME (see `ssl-host list`)")?;
    let parse = |v: Option<String>, what: &str, default: i64| -> Result<i64> {
        match v {
            None => Ok(default),
            Some(v) => v
                .parse::<i64>()
                .ok()
                .filter(|&n| n > 0)
                .with_context(|| format!("--{what}={v}: expected a positive whole number")),
        }
    };
    let image_size = parse(cli.take("image_size"), "image_size", 32)?;
    let batch_size = parse(cli.take("batch_size"), "batch_size", 4)?;
    let params = Params::from_value(Value::Object(super::params_from_options(&cli.options)))?;
    cli.options.clear();
    let device = Device::Cpu;
    tch::manual_seed(0);
    let mut encoder = registry.encoder(&name)?.create(&params, device)?;
    let parameters = encoder.named_parameters();
    if parameters.is_empty() {
        bail!("encoder `{name}` reports no parameters");
    }
    let before: Vec<Tensor> = parameters.iter().map(|(_, t)| t.detach().copy()).collect();
    let images = Tensor::rand(
        [batch_size, 3, image_size, image_size],
        (Kind::Float, device),
    );
    let embeddings = encoder
        .forward(&images, true)
        .with_context(|| format!("forward of `{name}`"))?;
    let expected = [batch_size, encoder.output_dim()];
    if embeddings.size() != expected {
        bail!(
            "encoder `{name}` returned shape {:?}, expected {:?} (batch, output_dim)",
            embeddings.size(),
            expected
        );
    }
    let loss = embeddings.square().mean(Kind::Float);
    loss.backward();
    let learning_rate = 0.1;
    let mut without_grad = Vec::new();
    tch::no_grad(|| {
        for (name, tensor) in &parameters {
            let grad = tensor.grad();
            if grad.defined() {
                let mut t = tensor.shallow_clone();
                let _ = t.f_sub_(&(grad * learning_rate));
            } else {
                without_grad.push(name.clone());
            }
        }
    });
    let changed = parameters
        .iter()
        .zip(&before)
        .filter(|((_, t), b)| !t.equal(b))
        .count();
    println!(
        "encoder {name}: output {:?}, loss {:.6}",
        embeddings.size(),
        loss.double_value(&[])
    );
    println!(
        "{changed} of {} parameter tensors changed after one SGD step",
        parameters.len()
    );
    if !without_grad.is_empty() {
        println!("no gradient reached: {}", without_grad.join(", "));
    }
    if changed == 0 {
        bail!("no parameter of encoder `{name}` changed: its parameters are not connected to its output");
    }
    Ok(())
}
