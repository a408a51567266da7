//! The encoders `evaluate` compares, and their features.
//!
//! An encoder is given as one of:
//! - a run folder, a run URL or a checkpoint file (`.safetensors` with ssl-host's record): its
//!   embedding encoder, as `embed` reads it;
//! - a file written by `export-encoder` (torchvision names, with the encoder's name in its
//!   metadata);
//! - `NAME:FILE.safetensors`: torchvision-named weights for the registered encoder `NAME`
//!   (e.g. `resnet50:resnet50-imagenet.safetensors`);
//! - `random:NAME`: encoder `NAME` as initialised, untrained (the baseline every pretrained
//!   encoder should beat).
//!
//! Features are the encoder's output in eval mode on the dataset's evaluation transform,
//! extracted once per encoder and split and kept in the feature cache
//! (`$SSL_HOST_CACHE/features/`), keyed by the encoder file (path, size, modification time),
//! the dataset, its parameters, the split, the transform and the ssl-host version.

use crate::checkpoint::{self, CheckpointInfo};
use crate::commands::embed::{embed_batch, encoder_in_channels, EvalSource};
use crate::pretrained::{encoder_from_checkpoint, encoder_tensors, load_torchvision_weights};
use crate::registry::Registry;
use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};
use ssl_plugin_api::tch::{self, Device, Kind, Tensor};
use ssl_plugin_api::torch::ForeignEncoder;
use ssl_plugin_api::{DatasetInfo, Encoder, Params};
use std::path::{Path, PathBuf};

/// Where an encoder comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum EncoderSource {
    /// A run folder, run URL or checkpoint file.
    Checkpoint(String),
    /// Torchvision-named weights for a registered encoder (its parameters as JSON).
    Weights {
        encoder: String,
        params: serde_json::Value,
        path: PathBuf,
    },
    /// An untrained encoder.
    Random { encoder: String },
}

impl EncoderSource {
    /// Reads an `--encoder` value (see the module doc).
    pub fn parse(text: &str, registry: &Registry) -> Result<EncoderSource> {
        let text = text.trim();
        if text.is_empty() {
            bail!("--encoder is empty: give a run folder, a checkpoint, NAME:WEIGHTS.safetensors or random:NAME");
        }
        if let Some(name) = text.strip_prefix("random:") {
            registry.encoder(name).with_context(|| {
                format!("--encoder={text}: `{name}` is not an encoder any loaded plugin provides")
            })?;
            return Ok(EncoderSource::Random {
                encoder: name.to_string(),
            });
        }
        if crate::storage::ObjectUrl::is_url(text) {
            return Ok(EncoderSource::Checkpoint(text.to_string()));
        }
        if let Some((name, file)) = text.split_once(':') {
            if registry.encoder(name).is_ok() {
                let path = PathBuf::from(file);
                if !path.is_file() {
                    bail!("--encoder={text}: weights file {file} does not exist");
                }
                return Ok(EncoderSource::Weights {
                    encoder: name.to_string(),
                    params: serde_json::json!({}),
                    path,
                });
            }
        }
        let path = Path::new(text);
        if !path.exists() {
            bail!(
                "--encoder={text}: no such run folder or file (an encoder is a run folder or URL, a checkpoint, NAME:WEIGHTS.safetensors or random:NAME)"
            );
        }
        if path.is_file() {
            if let Some((encoder, params)) = exported_encoder(path)? {
                return Ok(EncoderSource::Weights {
                    encoder,
                    params,
                    path: path.to_path_buf(),
                });
            }
        }
        Ok(EncoderSource::Checkpoint(text.to_string()))
    }
}

/// The encoder name and parameters of a file `export-encoder` wrote (no checkpoint record,
/// `ssl_host_encoder` in its metadata); `None` for any other file.
fn exported_encoder(path: &Path) -> Result<Option<(String, serde_json::Value)>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let Ok((_, metadata)) = safetensors::SafeTensors::read_metadata(&bytes) else {
        bail!("{} is not a safetensors file", path.display());
    };
    let Some(map) = metadata.metadata() else {
        return Ok(None);
    };
    let Some(name) = map.get("ssl_host_encoder") else {
        return Ok(None);
    };
    let params = map
        .get("encoder_params")
        .map(|p| serde_json::from_str(p))
        .transpose()
        .map_err(|e| anyhow!("{}: encoder_params is not JSON: {e}", path.display()))?
        .unwrap_or_else(|| serde_json::json!({}));
    Ok(Some((name.clone(), params)))
}

/// One encoder to evaluate.
pub struct EvalEncoder {
    /// Its name in tables and plots (unique among the encoders of one evaluation).
    pub label: String,
    /// The `--encoder` value.
    pub spec: String,
    /// The encoder, on the evaluation's device, in eval mode when used.
    pub encoder: ForeignEncoder,
    /// The registered encoder name (e.g. `resnet18`).
    pub name: String,
    /// The checkpoint's record, for an encoder from a run (the leakage check reads it).
    pub record: Option<CheckpointInfo>,
    /// The run folder, when the encoder was given as one (its kept encoders are evaluated
    /// over training).
    pub run_folder: Option<PathBuf>,
    /// What identifies its weights in the feature cache.
    pub cache_key: String,
}

/// The parameters of a fresh encoder `name` for data described by `info`: the encoder's
/// small-image option set from the dataset, as training sets it.
fn fresh_params(registry: &Registry, name: &str, info: &DatasetInfo) -> Result<Params> {
    let mut params = serde_json::Map::new();
    if let Some(param) = registry.encoder(name)?.info().small_image_param {
        params.insert(param, serde_json::Value::Bool(info.small_images));
    }
    Ok(Params::from_value(serde_json::Value::Object(params))?)
}

/// A file's identity for the cache: path, size and modification time.
fn file_key(path: &Path) -> String {
    let meta = std::fs::metadata(path).ok();
    let size = meta.as_ref().map(|m| m.len()).unwrap_or(0);
    let modified = meta
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    format!("{}|{size}|{modified}", path.display())
}

impl EvalEncoder {
    /// Loads the encoder `spec` on `device`; `info` describes the evaluation's data (for an
    /// untrained encoder's small-image stem); `seed` initialises an untrained one.
    pub fn load(
        spec: &str,
        registry: &Registry,
        device: Device,
        info: &DatasetInfo,
        seed: u64,
    ) -> Result<EvalEncoder> {
        let source = EncoderSource::parse(spec, registry)?;
        let encoder = match source {
            EncoderSource::Random { encoder } => {
                let params = fresh_params(registry, &encoder, info)?;
                tch::manual_seed(seed as i64);
                let made = registry
                    .encoder(&encoder)?
                    .create(&params, device)
                    .with_context(|| format!("--encoder={spec}"))?;
                EvalEncoder {
                    label: spec.to_string(),
                    spec: spec.to_string(),
                    encoder: made,
                    cache_key: format!("random|{encoder}|{}|{seed}", params.to_json_string()),
                    name: encoder,
                    record: None,
                    run_folder: None,
                }
            }
            EncoderSource::Weights {
                encoder,
                params,
                path,
            } => {
                let params = if params.as_object().is_some_and(|m| !m.is_empty()) {
                    Params::from_value(params)?
                } else {
                    fresh_params(registry, &encoder, info)?
                };
                let made = registry
                    .encoder(&encoder)?
                    .create(&params, device)
                    .with_context(|| format!("--encoder={spec}"))?;
                let live = encoder_tensors(&made);
                load_torchvision_weights(&path, &live, &format!("encoder `{encoder}`"))
                    .with_context(|| format!("--encoder={spec}"))?;
                EvalEncoder {
                    label: stem(&path),
                    spec: spec.to_string(),
                    encoder: made,
                    cache_key: format!("weights|{encoder}|{}", file_key(&path)),
                    name: encoder,
                    record: None,
                    run_folder: None,
                }
            }
            EncoderSource::Checkpoint(text) => {
                let (loaded, _) = encoder_from_checkpoint(registry, Path::new(&text), device)
                    .with_context(|| format!("--encoder={spec}"))?;
                let given = Path::new(&text);
                let run_folder = given.is_dir().then(|| given.to_path_buf());
                let label = match &run_folder {
                    Some(dir) => dir
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_else(|| text.clone()),
                    None if crate::storage::ObjectUrl::is_url(&text) => text
                        .trim_end_matches('/')
                        .rsplit('/')
                        .next()
                        .unwrap_or(&text)
                        .to_string(),
                    None => stem(given),
                };
                EvalEncoder {
                    label,
                    spec: spec.to_string(),
                    cache_key: format!("checkpoint|{}", file_key(&loaded.path)),
                    encoder: loaded.encoder,
                    name: loaded.name,
                    record: Some(loaded.info),
                    run_folder,
                }
            }
        };
        Ok(encoder)
    }

    /// The encoders kept over the training of its run folder
    /// (`checkpoints/encoder-epoch-NNNN.safetensors`, `save_checkpoint_every_n_epochs`), with
    /// their epochs, in order; empty for an encoder not given as a run folder.
    pub fn kept_encoders(&self) -> Vec<(usize, PathBuf)> {
        let Some(dir) = &self.run_folder else {
            return Vec::new();
        };
        let Ok(entries) = std::fs::read_dir(dir.join("checkpoints")) else {
            return Vec::new();
        };
        let mut kept: Vec<(usize, PathBuf)> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let epoch = name
                    .strip_prefix("encoder-epoch-")?
                    .strip_suffix(".safetensors")?
                    .parse()
                    .ok()?;
                Some((epoch, e.path()))
            })
            .collect();
        kept.sort();
        kept
    }
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Makes the labels of `encoders` unique (`name`, `name (2)`, ...).
pub fn unique_labels(encoders: &mut [EvalEncoder]) {
    let mut seen: Vec<String> = Vec::new();
    for e in encoders.iter_mut() {
        let base = e.label.clone();
        let mut label = base.clone();
        let mut n = 2;
        while seen.contains(&label) {
            label = format!("{base} ({n})");
            n += 1;
        }
        seen.push(label.clone());
        e.label = label;
    }
}

/// How features are extracted: batches, loader threads, device and the feature cache.
pub struct Extraction {
    pub batch_size: usize,
    pub workers: usize,
    pub device: Device,
    /// The feature cache folder; `None`: no cache.
    pub cache: Option<PathBuf>,
}

impl Extraction {
    /// The features `[n, d]` (float32, CPU) of every sample of `source`, in dataset order, from
    /// the cache when it holds them under the key of `encoder_key` and `data_key`; `what` labels
    /// the progress bar.
    pub fn extract(
        &self,
        encoder: &mut dyn Encoder,
        encoder_key: &str,
        source: EvalSource,
        data_key: &str,
        what: &str,
    ) -> Result<Tensor> {
        let (batch_size, workers, device, cache) = (
            self.batch_size,
            self.workers,
            self.device,
            self.cache.as_deref(),
        );
        let key = {
            let mut h = Sha256::new();
            h.update(encoder_key.as_bytes());
            h.update(b"\n");
            h.update(data_key.as_bytes());
            h.update(b"\n");
            h.update(env!("CARGO_PKG_VERSION").as_bytes());
            format!("{:x}", h.finalize())
        };
        let n = source.dataset.len() as i64;
        let cached = cache.map(|dir| dir.join(format!("{}.safetensors", &key[..32])));
        if let Some(path) = cached.as_ref().filter(|p| p.is_file()) {
            match Tensor::read_safetensors(path) {
                Ok(tensors) => {
                    if let Some((_, t)) = tensors.into_iter().find(|(name, _)| name == "features") {
                        if t.dim() == 2 && t.size()[0] == n {
                            return Ok(t);
                        }
                    }
                    eprintln!(
                        "warning: the cached features {} do not fit the data; extracting again",
                        path.display()
                    );
                }
                Err(e) => eprintln!(
                    "warning: the cached features {} are unreadable ({e}); extracting again",
                    path.display()
                ),
            }
        }
        let dim = encoder.output_dim();
        let mut parts = Vec::new();
        for batch in source.stream(batch_size, workers, what) {
            let batch = batch?;
            let images = batch.images(device)?;
            let out = embed_batch(encoder, &images)?;
            if out.size()[1] != dim {
                bail!(
                    "the encoder gave {} features per image but says its output has {dim}",
                    out.size()[1]
                );
            }
            parts.push(out.to_device(Device::Cpu).to_kind(Kind::Float));
        }
        let features = if parts.is_empty() {
            Tensor::zeros([0, dim], (Kind::Float, Device::Cpu))
        } else {
            Tensor::cat(&parts, 0)
        };
        if let Some(path) = &cached {
            let write = || -> Result<()> {
                let dir = path.parent().expect("the cache file has a folder");
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                let partial = path.with_extension("partial");
                Tensor::write_safetensors(&[("features", &features)], &partial)
                    .map_err(|e| anyhow!("writing {}: {e}", partial.display()))?;
                std::fs::rename(&partial, path)
                    .with_context(|| format!("renaming {} into place", partial.display()))?;
                Ok(())
            };
            // The cache is an optimisation: a full disk costs the next evaluation time, not this one.
            if let Err(e) = write() {
                eprintln!("warning: features not cached: {e:#}");
            }
        }
        Ok(features)
    }
}

/// The number of channels images must have for `encoder` (3 for an RGB encoder fed grey
/// images), for [`EvalSource::expand_to`].
pub fn expand_to(encoder: &dyn Encoder) -> Option<usize> {
    encoder_in_channels(encoder).filter(|&c| c > 1)
}

/// The record of the checkpoint at `path` (for kept encoders).
pub fn record_of(path: &Path) -> Result<CheckpointInfo> {
    checkpoint::read_info(path)
}
