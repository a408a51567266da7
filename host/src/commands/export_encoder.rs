//! `ssl-host export-encoder`: the embedding encoder of a checkpoint (an SSL run's, or a
//! classifier's) as a plain safetensors file under torchvision's state-dict names, loadable
//! with `model.load_state_dict(safetensors.torch.load_file(path), strict=False)`.

use crate::cli::Cli;
use crate::pretrained::{encoder_from_checkpoint, save_safetensors, torchvision_state};
use crate::registry::Registry;
use anyhow::{Context, Result};
use ssl_plugin_api::tch::Device;
use std::collections::HashMap;
use std::path::PathBuf;

/// `ssl-host export-encoder`.
pub fn run(registry: &Registry, cli: &mut Cli) -> Result<()> {
    let checkpoint = cli
        .take("checkpoint")
        .context("export-encoder needs --checkpoint=PATH (a checkpoint file or a run folder)")?;
    let out = PathBuf::from(
        cli.take("out")
            .context("export-encoder needs --out=encoder.safetensors")?,
    );
    cli.reject_leftovers(&[])?;
    super::embed::output_kind(&out, &["safetensors"])?;
    let (loaded, _) = encoder_from_checkpoint(registry, &PathBuf::from(&checkpoint), Device::Cpu)?;
    let state = torchvision_state(&loaded.encoder, loaded.info.global_step);
    let mut metadata = HashMap::new();
    metadata.insert("format".to_string(), "pt".to_string());
    metadata.insert("ssl_host_encoder".to_string(), loaded.name.clone());
    metadata.insert("encoder_params".to_string(), loaded.params.to_string());
    metadata.insert(
        "source_checkpoint".to_string(),
        loaded.path.display().to_string(),
    );
    metadata.insert(
        "global_step".to_string(),
        loaded.info.global_step.to_string(),
    );
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    save_safetensors(&out, &state, metadata)
        .with_context(|| format!("writing {}", out.display()))?;
    println!(
        "wrote {} tensors of the {} encoder {} (step {} of {}) to {} under torchvision's names",
        state.len(),
        loaded.name,
        loaded.params,
        loaded.info.global_step,
        loaded.path.display(),
        out.display()
    );
    println!(
        "load it with: m = torchvision.models.{}(); m.load_state_dict(safetensors.torch.load_file(\"{}\"), strict=False)  (only torchvision's classifier layer is missing: fc for ResNets, classifier for DenseNets)",
        loaded.name,
        out.display()
    );
    // The encoder's declared small-image option (ResNet's `cifar_stem`), when it was on.
    let small_image_param = registry.encoder(&loaded.name)?.info().small_image_param;
    if let Some(param) = small_image_param {
        if loaded.params.get(&param).and_then(|v| v.as_bool()) == Some(true) {
            println!(
                "this encoder was built with its small-image option `{param}` on: change torchvision's model the same way before loading (ResNet's CIFAR stem: m.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False); the max-pool stays)"
            );
        }
    }
    Ok(())
}
