//! Encoders outside a training run: restored from an ssl-host checkpoint (an SSL run's
//! embedding encoder: BYOL's target, SimCLR's encoder; or a classifier's encoder), exported
//! under torchvision's state-dict names, or initialised from torchvision-named weights.
//!
//! The built-in encoders already use torchvision's parameter names (`conv1.weight`,
//! `layer1.0.bn1.running_mean`, `features.denseblock1...`), so export is a matter of choosing
//! the tensors; BatchNorm's `num_batches_tracked`, which torchvision keeps and these encoders
//! do not, is written as the checkpoint's step count and ignored on import.

use crate::checkpoint::{self, Checkpoint, CheckpointInfo};
use crate::registry::Registry;
use anyhow::{anyhow, bail, Context, Result};
use ssl_plugin_api::tch::{Device, Tensor};
use ssl_plugin_api::torch::ForeignEncoder;
use ssl_plugin_api::{Encoder, Params};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The `algorithm` of a classifier checkpoint's record.
pub const CLASSIFIER_ALGORITHM: &str = "Classifier";

/// Where the embedding encoder's tensors are inside a checkpoint: `algorithm.<prefix>` for an
/// SSL run (`algorithm.target.encoder.` for BYOL), `encoder.` for a classifier.
pub fn encoder_tensor_prefix(info: &CheckpointInfo) -> String {
    if info.algorithm == CLASSIFIER_ALGORITHM {
        "encoder.".to_string()
    } else {
        format!("algorithm.{}", info.embedding_encoder_prefix)
    }
}

/// The checkpoint file of `path`: the file itself, or a run folder's last checkpoint; a
/// clear error when there is none. A URL (a run URL, or a checkpoint object's) is downloaded
/// into this machine's cache first ([`crate::remote_run::local_checkpoint`]).
pub fn checkpoint_file(path: &Path) -> Result<PathBuf> {
    if let Some(url) = path
        .to_str()
        .filter(|p| crate::storage::ObjectUrl::is_url(p))
    {
        let local = crate::remote_run::local_checkpoint(url)?;
        return if url.starts_with("file:") {
            checkpoint_file(&local)
        } else {
            Ok(local)
        };
    }
    if path.is_dir() {
        let file = crate::checkpoint::last_in(path);
        if !file.exists() {
            bail!(
                "{} is a folder without checkpoints/last.safetensors: not an ssl-host run folder (or its first epoch has not finished)",
                path.display()
            );
        }
        return Ok(file);
    }
    if !path.exists() {
        bail!("checkpoint {} does not exist", path.display());
    }
    Ok(path.to_path_buf())
}

/// An encoder rebuilt from a checkpoint, with where it came from.
pub struct LoadedEncoder {
    /// The encoder, weights and BatchNorm statistics restored.
    pub encoder: ForeignEncoder,
    /// Its registered name (e.g. `resnet18`).
    pub name: String,
    /// Its parameters, as the run resolved them (e.g. `{"cifar_stem": false}`).
    pub params: serde_json::Value,
    /// The checkpoint file.
    pub path: PathBuf,
    /// The checkpoint's record.
    pub info: CheckpointInfo,
}

/// Rebuilds the embedding encoder of the checkpoint at `path` (a file or a run folder): the
/// encoder kind and its parameters come from the checkpoint's record.
pub fn encoder_from_checkpoint(
    registry: &Registry,
    path: &Path,
    device: Device,
) -> Result<(LoadedEncoder, Checkpoint)> {
    let path = checkpoint_file(path)?;
    let stored = checkpoint::load(&path)?;
    let info = stored.info.clone();
    let params: serde_json::Value = serde_json::from_str(&info.encoder_params).map_err(|e| {
        anyhow!(
            "{}: the record's encoder parameters are not JSON: {e}",
            path.display()
        )
    })?;
    let factory = registry.encoder(&info.encoder).with_context(|| {
        format!(
            "{} holds a `{}` encoder, which no loaded plugin provides",
            path.display(),
            info.encoder
        )
    })?;
    let encoder = factory
        .create(&Params::from_value(params.clone())?, device)
        .with_context(|| {
            format!(
                "rebuilding the `{}` encoder of {}",
                info.encoder,
                path.display()
            )
        })?;
    let prefix = encoder_tensor_prefix(&info);
    let live = encoder_tensors(&encoder);
    checkpoint::restore_into(&stored.tensors, &prefix, &live, "the encoder")
        .with_context(|| format!("restoring the encoder from {}", path.display()))?;
    Ok((
        LoadedEncoder {
            encoder,
            name: info.encoder.clone(),
            params,
            path,
            info,
        },
        stored,
    ))
}

/// An encoder's parameters and BatchNorm statistics, by name.
pub fn encoder_tensors(encoder: &dyn Encoder) -> Vec<(String, Tensor)> {
    let mut all = encoder.named_parameters();
    all.extend(encoder.named_buffers());
    all
}

/// Whether `name` is a tensor torchvision has but an ssl-host encoder does not: the final
/// classifier (`fc.*`, `classifier.*`) or BatchNorm's step counter.
fn torchvision_only(name: &str) -> bool {
    name.starts_with("fc.")
        || name.starts_with("classifier.")
        || name.ends_with("num_batches_tracked")
}

/// The encoder's state under torchvision's names: parameters, running statistics, and a
/// `num_batches_tracked` (= `steps`) next to every BatchNorm's `running_mean`.
pub fn torchvision_state(encoder: &dyn Encoder, steps: u64) -> Vec<(String, Tensor)> {
    let mut state = encoder_tensors(encoder);
    let counters: Vec<(String, Tensor)> = state
        .iter()
        .filter_map(|(name, _)| name.strip_suffix(".running_mean"))
        .map(|bn| {
            (
                format!("{bn}.num_batches_tracked"),
                Tensor::from(steps as i64),
            )
        })
        .collect();
    state.extend(counters);
    state.sort_by(|a, b| a.0.cmp(&b.0));
    state
}

/// Loads torchvision-named weights from the safetensors file `path` into `live` (an encoder's
/// parameters and BatchNorm statistics by name, see [`encoder_tensors`]), for
/// `--encoder_init`. Extra `fc.*` / `classifier.*` / `num_batches_tracked` tensors are
/// ignored; any missing or mis-shaped name is an error listing them all. Returns how many
/// tensors were loaded.
pub fn load_torchvision_weights(
    path: &Path,
    live: &[(String, Tensor)],
    what: &str,
) -> Result<usize> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let file = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
        anyhow!(
            "{} is not a readable safetensors file (truncated or corrupt?): {e:?}",
            path.display()
        )
    })?;
    let mut stored: BTreeMap<String, Tensor> = BTreeMap::new();
    for (name, view) in file.tensors() {
        let kind = checkpoint::dtype_to_kind(view.dtype())
            .with_context(|| format!("{}: tensor `{name}`", path.display()))?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        stored.insert(name, Tensor::from_data_size(view.data(), &shape, kind));
    }
    let mut missing = Vec::new();
    let mut misshaped = Vec::new();
    for (name, tensor) in live {
        match stored.get(name) {
            None => missing.push(name.clone()),
            Some(t) if t.size() != tensor.size() => misshaped.push(format!(
                "{name} (file {:?}, {what} {:?})",
                t.size(),
                tensor.size()
            )),
            Some(_) => {}
        }
    }
    if !missing.is_empty() || !misshaped.is_empty() {
        let mut message = format!("{} does not fit {what}:", path.display());
        let list = |names: &[String]| {
            let shown: Vec<&str> = names.iter().take(8).map(String::as_str).collect();
            let more = names.len().saturating_sub(shown.len());
            format!(
                "{}{}",
                shown.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            )
        };
        if !missing.is_empty() {
            message.push_str(&format!(
                "\n  missing ({}): {}",
                missing.len(),
                list(&missing)
            ));
        }
        if !misshaped.is_empty() {
            message.push_str(&format!(
                "\n  wrong shape ({}): {}",
                misshaped.len(),
                list(&misshaped)
            ));
        }
        bail!("{message}");
    }
    let known: HashMap<&str, ()> = live.iter().map(|(n, _)| (n.as_str(), ())).collect();
    let ignored: Vec<&String> = stored
        .keys()
        .filter(|n| !known.contains_key(n.as_str()) && !torchvision_only(n))
        .collect();
    if !ignored.is_empty() {
        eprintln!(
            "warning: {} has {} tensor(s) {what} does not use (first: {})",
            path.display(),
            ignored.len(),
            ignored[0]
        );
    }
    ssl_plugin_api::tch::no_grad(|| {
        for (name, tensor) in live {
            let source = &stored[name];
            let mut target = tensor.shallow_clone();
            target.copy_(&source.to_device(tensor.device()).to_kind(tensor.kind()));
        }
    });
    Ok(live.len())
}

/// Writes `tensors` as a plain safetensors file (readable by `safetensors.torch.load_file`),
/// atomically, with string `metadata`.
pub fn save_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: HashMap<String, String>,
) -> Result<()> {
    checkpoint::save_with_metadata(path, tensors, metadata)
}

/// The encoders inside an SSL algorithm's state, by prefix: every name with a path segment
/// `encoder` is split after it (`online.encoder.conv1.weight` -> `online.encoder.` +
/// `conv1.weight`). BYOL gives `online.encoder.` and `target.encoder.`, SimCLR `encoder.`.
pub fn encoders_in_state(state: &[(String, Tensor)]) -> BTreeMap<String, Vec<(String, Tensor)>> {
    let mut groups: BTreeMap<String, Vec<(String, Tensor)>> = BTreeMap::new();
    for (name, tensor) in state {
        let at = if name.starts_with("encoder.") {
            Some(0)
        } else {
            name.find(".encoder.").map(|i| i + 1)
        };
        if let Some(at) = at {
            let split = at + "encoder.".len();
            groups
                .entry(name[..split].to_string())
                .or_default()
                .push((name[split..].to_string(), tensor.shallow_clone()));
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoders_are_found_by_path_segment() {
        let t = || Tensor::from(1.0f32);
        let state = vec![
            ("online.encoder.conv1.weight".to_string(), t()),
            ("online.projector.model.0.weight".to_string(), t()),
            ("target.encoder.bn1.running_mean".to_string(), t()),
            ("encoder.fc.x".to_string(), t()),
            ("myencoder.y".to_string(), t()),
        ];
        let groups = encoders_in_state(&state);
        let keys: Vec<&str> = groups.keys().map(String::as_str).collect();
        assert_eq!(keys, ["encoder.", "online.encoder.", "target.encoder."]);
        assert_eq!(groups["online.encoder."][0].0, "conv1.weight");
        assert_eq!(groups["encoder."][0].0, "fc.x");
    }
}
