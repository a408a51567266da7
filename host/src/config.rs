//! Run configuration: defaults, named model configs (`--model=NAME`, TOML files in
//! `configs/` or shipped by plugins, or a path to a `.toml` file), and `--name=value`
//! overrides, resolved into one typed [`RunConfig`].
//!
//! Parameter names follow InnerEye-DeepLearning's SSL containers. Every top-level parameter
//! can be overridden on the command line; table parameters take dotted names
//! (`--encoder_params.cifar_stem=true`). An unknown name is an error that suggests the
//! closest known one.

use crate::registry::{closest, Registry};
use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use toml::{Table, Value};

/// The built-in named model configs, compiled into the binary from `configs/`.
const BUILTIN_CONFIGS: &[(&str, &str)] = &[
    ("ShapesBYOL", include_str!("../../configs/ShapesBYOL.toml")),
    (
        "ShapesSimCLR",
        include_str!("../../configs/ShapesSimCLR.toml"),
    ),
    (
        "CIFAR10BYOL",
        include_str!("../../configs/CIFAR10BYOL.toml"),
    ),
    (
        "CIFAR10SimCLR",
        include_str!("../../configs/CIFAR10SimCLR.toml"),
    ),
    (
        "CIFAR10CIFAR100BYOL",
        include_str!("../../configs/CIFAR10CIFAR100BYOL.toml"),
    ),
    (
        "NIH_RSNA_BYOL",
        include_str!("../../configs/NIH_RSNA_BYOL.toml"),
    ),
    (
        "NIH_RSNA_SimCLR",
        include_str!("../../configs/NIH_RSNA_SimCLR.toml"),
    ),
    (
        "NIH_COVID_BYOL",
        include_str!("../../configs/NIH_COVID_BYOL.toml"),
    ),
    (
        "SSLClassifierCIFAR",
        include_str!("../../configs/SSLClassifierCIFAR.toml"),
    ),
    (
        "CXRImageClassifier",
        include_str!("../../configs/CXRImageClassifier.toml"),
    ),
];

/// What a parameter holds, for parsing command-line values.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    Str,
    Int,
    Float,
    Bool,
    StrList,
    Table,
    TableList,
}

/// Every parameter: name, kind, one-line help.
const SCHEMA: &[(&str, Kind, &str)] = &[
    ("description", Kind::Str, "what this config is for"),
    (
        "task",
        Kind::Str,
        "ssl (train an encoder) or classifier (train a head on a pretrained encoder)",
    ),
    (
        "ssl_training_dataset_name",
        Kind::Str,
        "dataset for SSL encoder training",
    ),
    (
        "linear_head_dataset_name",
        Kind::Str,
        "dataset of the online linear head (or of the classifier)",
    ),
    (
        "ssl_encoder",
        Kind::Str,
        "encoder (resnet18, resnet50, resnet101, densenet121, or a plugin's)",
    ),
    (
        "ssl_training_type",
        Kind::Str,
        "SSL algorithm (BYOL, SimCLR, or a plugin's)",
    ),
    (
        "ssl_training_batch_size",
        Kind::Int,
        "batch size of SSL training",
    ),
    (
        "linear_head_batch_size",
        Kind::Int,
        "batch size of the linear head",
    ),
    (
        "ssl_augmentation_config",
        Kind::Str,
        "augmentation YAML of SSL training (chest X-ray data)",
    ),
    (
        "linear_head_augmentation_config",
        Kind::Str,
        "augmentation YAML of the linear head",
    ),
    (
        "use_balanced_binary_loss_for_linear_head",
        Kind::Bool,
        "class-weighted loss for the linear head",
    ),
    (
        "random_seed",
        Kind::Int,
        "seed of initialisation, splits and augmentations",
    ),
    ("num_epochs", Kind::Int, "number of training epochs"),
    (
        "l_rate",
        Kind::Float,
        "base learning rate of the SSL encoder (classifier: of the head)",
    ),
    ("local_dataset", Kind::Str, "path of the SSL dataset"),
    (
        "extra_local_dataset_paths",
        Kind::StrList,
        "[0]: path of the linear-head dataset",
    ),
    (
        "num_workers",
        Kind::Int,
        "data-loading threads (0: load in the training thread)",
    ),
    (
        "is_debug_model",
        Kind::Bool,
        "1 training and 1 validation batch per epoch",
    ),
    (
        "skip_unreadable_images",
        Kind::Bool,
        "skip images that cannot be read (one warning counts them) instead of failing",
    ),
    (
        "drop_last",
        Kind::Bool,
        "drop incomplete last batches (training and validation)",
    ),
    (
        "learning_rate_linear_head_during_ssl_training",
        Kind::Float,
        "Adam learning rate of the online linear head",
    ),
    (
        "freeze_encoder",
        Kind::Bool,
        "classifier: keep the pretrained encoder fixed",
    ),
    (
        "local_ssl_weights_path",
        Kind::Str,
        "classifier: SSL checkpoint or run folder",
    ),
    (
        "encoder_init",
        Kind::Str,
        "start the encoder from torchvision-named weights (.safetensors)",
    ),
    (
        "use_mixed_precision",
        Kind::Bool,
        "autocast to half precision on CUDA",
    ),
    (
        "output_dir",
        Kind::Str,
        "where the run writes (default outputs/<UTC time>_<model>)",
    ),
    (
        "device",
        Kind::Str,
        "cpu, cuda or cuda:N (default: cuda when available)",
    ),
    (
        "val_split",
        Kind::Float,
        "fraction of each dataset held out for validation",
    ),
    ("optimizer", Kind::Str, "adam, sgd or lars"),
    (
        "gradient_clip_val",
        Kind::Float,
        "clip the global gradient norm of every optimizer step to this value (0: off)",
    ),
    (
        "ssl_view_groups",
        Kind::TableList,
        "SSL view groups: each `count` views through `pipeline` (default: one group of 2 views through ssl_augmentations)",
    ),
    (
        "weight_decay",
        Kind::Float,
        "weight decay of the SSL optimizer",
    ),
    ("momentum", Kind::Float, "momentum of sgd and lars"),
    (
        "lr_schedule",
        Kind::Str,
        "auto, warmup_cosine_epoch, warmup_cosine_step, polynomial or constant",
    ),
    (
        "warmup_epochs",
        Kind::Int,
        "linear warm-up length of the cosine schedules",
    ),
    (
        "encoder_params",
        Kind::Table,
        "parameters of the encoder plugin (e.g. cifar_stem)",
    ),
    (
        "algorithm_params",
        Kind::Table,
        "parameters of the algorithm plugin (e.g. temperature)",
    ),
    (
        "ssl_dataset_params",
        Kind::Table,
        "extra parameters of the SSL dataset plugin",
    ),
    (
        "linear_head_dataset_params",
        Kind::Table,
        "extra parameters of the linear-head dataset plugin",
    ),
    (
        "ssl_augmentations",
        Kind::TableList,
        "SSL view transforms: [[ssl_augmentations]] name = ..., params",
    ),
    (
        "linear_head_augmentations",
        Kind::TableList,
        "linear-head training transforms",
    ),
    (
        "linear_head_val_augmentations",
        Kind::TableList,
        "linear-head validation transforms (default: as training)",
    ),
];

/// One transform of a pipeline: its registered name and its parameters.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TransformSpec {
    /// Registered transform name.
    pub name: String,
    /// Everything else in the table: the transform's parameters.
    #[serde(flatten)]
    pub params: Table,
}

/// `count` views of every SSL sample through one transform pipeline.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ViewGroup {
    /// Views per sample.
    pub count: usize,
    /// The transforms of each view.
    #[serde(default)]
    pub pipeline: Vec<TransformSpec>,
}

/// The resolved configuration of a run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// The `--model` name it came from.
    #[serde(skip)]
    pub model: String,
    pub description: String,
    /// `ssl` or `classifier`.
    #[serde(default = "default_task")]
    pub task: String,
    pub ssl_training_dataset_name: Option<String>,
    pub linear_head_dataset_name: String,
    pub ssl_encoder: String,
    pub ssl_training_type: String,
    pub ssl_training_batch_size: usize,
    pub linear_head_batch_size: usize,
    pub ssl_augmentation_config: Option<String>,
    pub linear_head_augmentation_config: Option<String>,
    pub use_balanced_binary_loss_for_linear_head: bool,
    pub random_seed: u64,
    pub num_epochs: usize,
    pub l_rate: f64,
    pub local_dataset: Option<String>,
    pub extra_local_dataset_paths: Vec<String>,
    pub num_workers: usize,
    pub is_debug_model: bool,
    pub drop_last: bool,
    #[serde(default)]
    pub skip_unreadable_images: bool,
    pub learning_rate_linear_head_during_ssl_training: f64,
    pub freeze_encoder: bool,
    pub local_ssl_weights_path: Option<String>,
    #[serde(default)]
    pub encoder_init: Option<String>,
    pub use_mixed_precision: bool,
    pub output_dir: Option<String>,
    pub device: Option<String>,
    pub val_split: f64,
    pub optimizer: String,
    #[serde(default)]
    pub gradient_clip_val: f64,
    pub weight_decay: f64,
    pub momentum: f64,
    pub lr_schedule: String,
    pub warmup_epochs: usize,
    pub encoder_params: Table,
    pub algorithm_params: Table,
    pub ssl_dataset_params: Table,
    pub linear_head_dataset_params: Table,
    pub ssl_augmentations: Vec<TransformSpec>,
    #[serde(default)]
    pub ssl_view_groups: Vec<ViewGroup>,
    pub linear_head_augmentations: Vec<TransformSpec>,
    pub linear_head_val_augmentations: Option<Vec<TransformSpec>>,
}

fn default_task() -> String {
    "ssl".to_string()
}

/// The defaults of every parameter (the original's where it has one).
fn defaults() -> Table {
    let text = r#"
description = ""
task = "ssl"
linear_head_dataset_name = ""
ssl_encoder = "resnet50"
ssl_training_type = "BYOL"
ssl_training_batch_size = 128
linear_head_batch_size = 16
use_balanced_binary_loss_for_linear_head = false
random_seed = 42
num_epochs = 100
l_rate = 1e-4
extra_local_dataset_paths = []
num_workers = 4
is_debug_model = false
drop_last = true
skip_unreadable_images = false
learning_rate_linear_head_during_ssl_training = 1e-4
freeze_encoder = true
use_mixed_precision = false
val_split = 0.1
optimizer = "adam"
gradient_clip_val = 0.0
weight_decay = 1e-6
momentum = 0.9
lr_schedule = "auto"
warmup_epochs = 10
encoder_params = {}
algorithm_params = {}
ssl_dataset_params = {}
linear_head_dataset_params = {}
ssl_augmentations = []
linear_head_augmentations = []
"#;
    text.parse().expect("defaults parse")
}

fn kind_of(name: &str) -> Option<Kind> {
    SCHEMA
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, k, _)| *k)
}

fn unknown(name: &str) -> anyhow::Error {
    let hint = closest(name, SCHEMA.iter().map(|(n, _, _)| *n))
        .map(|c| format!(" (did you mean `{c}`?)"))
        .unwrap_or_default();
    anyhow!("unknown parameter `{name}`{hint}; `ssl-host show-config --model=NAME` lists them")
}

/// Parses a command-line value for a parameter of `kind`.
fn parse_value(name: &str, kind: Kind, text: &str) -> Result<Value> {
    let bad = |what: &str| anyhow!("--{name}={text}: expected {what}");
    Ok(match kind {
        Kind::Str => Value::String(text.to_string()),
        Kind::Int => Value::Integer(
            text.trim()
                .parse::<i64>()
                .map_err(|_| bad("a whole number"))?,
        ),
        Kind::Float => Value::Float(text.trim().parse::<f64>().map_err(|_| bad("a number"))?),
        Kind::Bool => Value::Boolean(match text.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => true,
            "false" | "0" | "no" => false,
            _ => return Err(bad("true or false")),
        }),
        Kind::StrList => {
            let t = text.trim();
            if t.starts_with('[') {
                let parsed: Table = format!("v = {t}")
                    .parse()
                    .map_err(|_| bad("a list like [\"a\", \"b\"]"))?;
                parsed["v"].clone()
            } else if t.is_empty() {
                Value::Array(Vec::new())
            } else {
                Value::Array(
                    t.split(',')
                        .map(|s| Value::String(s.trim().to_string()))
                        .collect(),
                )
            }
        }
        Kind::Table | Kind::TableList => {
            return Err(anyhow!(
                "--{name} is a table; set its entries with --{name}.KEY=value"
            ));
        }
    })
}

/// A value inside a plugin parameter table: TOML literal when it parses, else a string.
fn parse_loose(text: &str) -> Value {
    format!("v = {text}")
        .parse::<Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(text.to_string()))
}

/// Applies one `--name=value` override to the merged table.
fn apply_override(table: &mut Table, name: &str, text: &str) -> Result<()> {
    let name = if name == "local_weights_path" {
        "local_ssl_weights_path"
    } else {
        name
    };
    if let Some((top, key)) = name.split_once('.') {
        match kind_of(top) {
            Some(Kind::Table) => {
                let entry = table
                    .entry(top.to_string())
                    .or_insert_with(|| Value::Table(Table::new()));
                let Value::Table(inner) = entry else {
                    bail!("`{top}` is not a table")
                };
                inner.insert(key.to_string(), parse_loose(text));
                return Ok(());
            }
            Some(_) => bail!("--{name}: `{top}` is not a table parameter"),
            None => return Err(unknown(top)),
        }
    }
    let kind = kind_of(name).ok_or_else(|| unknown(name))?;
    table.insert(name.to_string(), parse_value(name, kind, text)?);
    Ok(())
}

/// The TOML text of model `name`: a built-in config, a plugin's, or a `.toml` path.
fn model_text(name: &str, registry: &Registry) -> Result<String> {
    if name.ends_with(".toml") || name.contains('/') {
        return std::fs::read_to_string(name)
            .with_context(|| format!("reading model config {name}"));
    }
    if let Some((_, text)) = BUILTIN_CONFIGS.iter().find(|(n, _)| *n == name) {
        return Ok(text.to_string());
    }
    match registry.model_config(name) {
        Ok(m) => Ok(m.toml.clone()),
        Err(_) => {
            let mut known: Vec<&str> = BUILTIN_CONFIGS.iter().map(|(n, _)| *n).collect();
            let plugin_names = registry.model_config_names();
            known.extend(plugin_names.iter().map(String::as_str));
            let hint = closest(name, known.iter().copied())
                .map(|c| format!(" (did you mean `{c}`?)"))
                .unwrap_or_default();
            bail!(
                "unknown model config `{name}`{hint}; known: {}",
                known.join(", ")
            )
        }
    }
}

/// Names of the built-in model configs.
pub fn builtin_config_names() -> Vec<&'static str> {
    BUILTIN_CONFIGS.iter().map(|(n, _)| *n).collect()
}

/// The built-in model configs with their `description`, for `ssl-host list`.
pub fn builtin_config_descriptions() -> Vec<(String, String)> {
    BUILTIN_CONFIGS
        .iter()
        .map(|(name, text)| {
            let description = text
                .parse::<Table>()
                .ok()
                .and_then(|t| t.get("description")?.as_str().map(str::to_string))
                .unwrap_or_default();
            (name.to_string(), description)
        })
        .collect()
}

impl RunConfig {
    /// Defaults, then the model config `model`, then `overrides` in order.
    pub fn resolve(
        model: &str,
        overrides: &[(String, String)],
        registry: &Registry,
    ) -> Result<RunConfig> {
        let mut table = defaults();
        let text = model_text(model, registry)?;
        let mut file: Table = text
            .parse()
            .map_err(|e| anyhow!("model config `{model}` is not valid TOML: {e}"))?;
        // A dataset named on the command line in place of the config's own: the config's
        // parameters were written for its dataset (e.g. Shapes' `num_samples`), not this one.
        for (name_key, params_key) in [
            ("ssl_training_dataset_name", "ssl_dataset_params"),
            ("linear_head_dataset_name", "linear_head_dataset_params"),
        ] {
            let own = file
                .get(name_key)
                .and_then(Value::as_str)
                .map(str::to_string);
            let given = overrides.iter().rev().find(|(n, _)| n == name_key);
            let has_params = file
                .get(params_key)
                .and_then(Value::as_table)
                .is_some_and(|t| !t.is_empty());
            if let (Some(own), Some((_, given)), true) = (own, given, has_params) {
                if &own != given {
                    eprintln!(
                        "note: {params_key} of model config `{model}` are for `{own}`; \
                         `{given}` gets only those given as --{params_key}.NAME=VALUE"
                    );
                    file.remove(params_key);
                }
            }
        }
        for (name, value) in file {
            let name = if name == "local_weights_path" {
                "local_ssl_weights_path".to_string()
            } else {
                name
            };
            if kind_of(&name).is_none() {
                return Err(unknown(&name).context(format!("in model config `{model}`")));
            }
            table.insert(name, value);
        }
        for (name, value) in overrides {
            apply_override(&mut table, name, value)?;
        }
        let mut config: RunConfig =
            Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| {
                    anyhow!("invalid configuration for `{model}`: {}", e.message())
                })?;
        config.model = model
            .trim_end_matches(".toml")
            .rsplit('/')
            .next()
            .unwrap_or(model)
            .to_string();
        config.expand_augmentation_yaml()?;
        config.validate()?;
        Ok(config)
    }

    /// Turns `ssl_augmentation_config` / `linear_head_augmentation_config` (the original's
    /// augmentation YAML; the linear head falls back to the SSL one, as the original) into the
    /// transform lists they stand for, unless the lists are given explicitly. The resolved
    /// config (and so `config.toml` and a resumed run) holds the expanded lists.
    fn expand_augmentation_yaml(&mut self) -> Result<()> {
        let ssl_yaml = self.ssl_augmentation_config.clone();
        let lh_yaml = self
            .linear_head_augmentation_config
            .clone()
            .or_else(|| ssl_yaml.clone());
        if let Some(path) = &ssl_yaml {
            if self.ssl_augmentations.is_empty() {
                let expand = self
                    .ssl_training_dataset_name
                    .as_deref()
                    .is_some_and(is_cxr_dataset);
                let (text, source) = read_augmentation_yaml(path)?;
                self.ssl_augmentations =
                    crate::augmentation_yaml::cxr_pipelines(&text, &source, expand)?.train;
            }
        }
        if let Some(path) = &lh_yaml {
            if self.linear_head_augmentations.is_empty() {
                let expand = is_cxr_dataset(&self.linear_head_dataset_name);
                let (text, source) = read_augmentation_yaml(path)?;
                let pipelines = crate::augmentation_yaml::cxr_pipelines(&text, &source, expand)?;
                self.linear_head_augmentations = pipelines.train;
                if self.linear_head_val_augmentations.is_none() {
                    self.linear_head_val_augmentations = Some(pipelines.val_without_augmentation);
                }
            }
        }
        Ok(())
    }

    /// The config stored with a run (`stored`, resolved TOML), with `overrides` applied on top:
    /// how `--resume` continues a run (e.g. with more `--num_epochs`).
    pub fn resume(stored: &str, model: &str, overrides: &[(String, String)]) -> Result<RunConfig> {
        let mut table: Table = stored
            .parse()
            .map_err(|e| anyhow!("stored config is invalid: {e}"))?;
        for (name, value) in overrides {
            apply_override(&mut table, name, value)?;
        }
        let mut config: RunConfig = Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| anyhow!("invalid configuration: {}", e.message()))?;
        config.model = model.to_string();
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        let positive = [
            ("ssl_training_batch_size", self.ssl_training_batch_size),
            ("linear_head_batch_size", self.linear_head_batch_size),
            ("num_epochs", self.num_epochs),
        ];
        for (name, value) in positive {
            if value == 0 {
                bail!("`{name}` must be at least 1");
            }
        }
        if !self.ssl_view_groups.is_empty() && !self.ssl_augmentations.is_empty() {
            bail!("give the SSL views either as [[ssl_augmentations]] (one group of 2 views) or as [[ssl_view_groups]], not both");
        }
        if let Some(i) = self.ssl_view_groups.iter().position(|g| g.count == 0) {
            bail!("`ssl_view_groups[{i}].count` must be at least 1");
        }
        if self.gradient_clip_val.is_nan() || self.gradient_clip_val < 0.0 {
            bail!(
                "`gradient_clip_val` must be 0 (off) or positive, got {}",
                self.gradient_clip_val
            );
        }
        if !(0.0..1.0).contains(&self.val_split) {
            bail!("`val_split` must be in [0, 1), got {}", self.val_split);
        }
        if self.l_rate.is_nan() || self.l_rate < 0.0 {
            bail!(
                "`l_rate` must be a non-negative number, got {}",
                self.l_rate
            );
        }
        if self.linear_head_dataset_name.is_empty() {
            bail!("`linear_head_dataset_name` is not set");
        }
        match self.task.as_str() {
            "ssl" => {
                if self.ssl_encoder.is_empty() {
                    bail!("`ssl_encoder` is not set (resnet18, resnet50, resnet101, densenet121, or a plugin's)");
                }
            }
            // Its encoder is checked when the run starts (show-config works without one).
            "classifier" => {}
            other => bail!("`task` must be `ssl` or `classifier`, got `{other}`"),
        }
        // As the original asserts: chest X-rays come in many sizes and one channel, so their
        // pipelines must come from an augmentation config (or be listed explicitly).
        if let Some(name) = self.ssl_training_dataset_name.as_deref() {
            if is_cxr_dataset(name) && self.view_groups().iter().any(|g| g.pipeline.is_empty()) {
                bail!("`{name}` needs `ssl_augmentation_config` (e.g. cxr_ssl_encoder_augmentations.yaml) or [[ssl_augmentations]]");
            }
        }
        if is_cxr_dataset(&self.linear_head_dataset_name)
            && self.linear_head_augmentations.is_empty()
        {
            bail!(
                "`{}` needs `linear_head_augmentation_config` (e.g. cxr_linear_head_augmentations.yaml) or [[linear_head_augmentations]]",
                self.linear_head_dataset_name
            );
        }
        Ok(())
    }

    /// The SSL view groups: `ssl_view_groups`, or one group of 2 views through
    /// `ssl_augmentations` (the original's two views).
    pub fn view_groups(&self) -> Vec<ViewGroup> {
        if self.ssl_view_groups.is_empty() {
            vec![ViewGroup {
                count: 2,
                pipeline: self.ssl_augmentations.clone(),
            }]
        } else {
            self.ssl_view_groups.clone()
        }
    }

    /// The linear-head dataset path: `extra_local_dataset_paths[0]`, or `local_dataset` when
    /// both datasets have the same name (as the original).
    pub fn linear_head_dataset_path(&self) -> Option<String> {
        match self.extra_local_dataset_paths.first() {
            Some(p) => Some(p.clone()),
            None if self.task == "classifier"
                || self.ssl_training_dataset_name.as_deref()
                    == Some(self.linear_head_dataset_name.as_str()) =>
            {
                self.local_dataset.clone()
            }
            None => None,
        }
    }

    /// The resolved config as TOML (what `show-config` prints and `config.toml` holds).
    pub fn to_toml(&self) -> String {
        let mut text = format!("# ssl-host resolved config of model `{}`\n", self.model);
        text.push_str(&toml::to_string(self).expect("config serializes"));
        text
    }

    /// Reads a resolved config back (from `config.toml` or a checkpoint).
    pub fn from_resolved_toml(text: &str, model: &str) -> Result<RunConfig> {
        let mut config: RunConfig = toml::from_str(text)
            .map_err(|e| anyhow!("stored config is invalid: {}", e.message()))?;
        config.model = model.to_string();
        Ok(config)
    }
}

/// The chest X-ray datasets of the original, whose pipelines start by expanding the one grey
/// channel to three.
pub const CXR_DATASETS: [&str; 4] = ["RSNAKaggleCXR", "NIHCXR", "CheXpert", "CovidDataset"];

fn is_cxr_dataset(name: &str) -> bool {
    CXR_DATASETS.contains(&name)
}

/// The text of an augmentation YAML and the name to show in its errors: the file at `path`
/// when it exists, else a built-in one of that file name (`configs/*.yaml`).
fn read_augmentation_yaml(path: &str) -> Result<(String, String)> {
    let file = Path::new(path);
    if file.exists() {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading augmentation config {path}"))?;
        return Ok((text, path.to_string()));
    }
    let name = file.file_name().and_then(|n| n.to_str()).unwrap_or(path);
    match crate::augmentation_yaml::builtin_yaml(name) {
        Some(text) => Ok((text.to_string(), format!("{name} (built in)"))),
        None => bail!(
            "augmentation config `{path}` not found (built-in ones: cxr_ssl_encoder_augmentations.yaml, cxr_linear_head_augmentations.yaml)"
        ),
    }
}

/// One line per parameter with its help, for `show-config --help`-like listings.
pub fn parameter_help() -> String {
    SCHEMA
        .iter()
        .map(|(n, _, h)| format!("  --{n:<48} {h}\n"))
        .collect()
}

/// Writes `text` to `path` atomically: a temporary file in the same folder, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    // A fixed name: a write interrupted by a kill leaves one temp file that the next write
    // replaces (each run has its own folder, so no two processes share it).
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    {
        let mut file =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        file.write_all(bytes)
            .with_context(|| format!("writing {}", tmp.display()))?;
        file.sync_all()
            .with_context(|| format!("syncing {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        Registry::load(&[]).unwrap()
    }

    #[test]
    fn overrides_apply_and_are_typed() {
        let r = registry();
        let overrides = vec![
            ("num_epochs".to_string(), "3".to_string()),
            ("l_rate".to_string(), "0.01".to_string()),
            ("is_debug_model".to_string(), "True".to_string()),
            ("encoder_params.cifar_stem".to_string(), "false".to_string()),
            ("extra_local_dataset_paths".to_string(), "a,b".to_string()),
            ("local_weights_path".to_string(), "ckpt".to_string()),
        ];
        let c = RunConfig::resolve("ShapesBYOL", &overrides, &r).unwrap();
        assert_eq!(c.num_epochs, 3);
        assert_eq!(c.l_rate, 0.01);
        assert!(c.is_debug_model);
        assert_eq!(
            c.encoder_params.get("cifar_stem"),
            Some(&Value::Boolean(false))
        );
        assert_eq!(c.extra_local_dataset_paths, vec!["a", "b"]);
        assert_eq!(c.local_ssl_weights_path.as_deref(), Some("ckpt"));
        assert_eq!(c.model, "ShapesBYOL");
    }

    #[test]
    fn another_dataset_does_not_inherit_the_configs_dataset_params() {
        let r = registry();
        let kept = RunConfig::resolve("ShapesSimCLR", &[], &r).unwrap();
        assert!(kept.ssl_dataset_params.contains_key("num_samples"));
        assert!(kept.linear_head_dataset_params.contains_key("num_samples"));
        let o = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        let other = RunConfig::resolve(
            "ShapesSimCLR",
            &o(&[
                ("ssl_training_dataset_name", "ImageFolderUnlabelled"),
                ("ssl_dataset_params.x", "1"),
            ]),
            &r,
        )
        .unwrap();
        assert_eq!(
            other.ssl_dataset_params.keys().collect::<Vec<_>>(),
            ["x"],
            "only the parameters given for it"
        );
        // The linear head still reads Shapes with the config's parameters.
        assert_eq!(
            other.linear_head_dataset_params,
            kept.linear_head_dataset_params
        );
        // Naming the config's own dataset again changes nothing.
        let same = RunConfig::resolve(
            "ShapesSimCLR",
            &o(&[("linear_head_dataset_name", "Shapes")]),
            &r,
        )
        .unwrap();
        assert_eq!(
            same.linear_head_dataset_params,
            kept.linear_head_dataset_params
        );
    }

    #[test]
    fn unknown_and_malformed_names_are_errors() {
        let r = registry();
        let err = RunConfig::resolve("ShapesBYOL", &[("num_epoch".into(), "3".into())], &r)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown parameter `num_epoch`")
                && err.contains("did you mean `num_epochs`"),
            "{err}"
        );
        let err = RunConfig::resolve("ShapesBYOL", &[("num_epochs".into(), "three".into())], &r)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--num_epochs=three: expected a whole number"),
            "{err}"
        );
        let err = RunConfig::resolve("ShapesBYOL", &[("val_split".into(), "1.5".into())], &r)
            .unwrap_err()
            .to_string();
        assert!(err.contains("val_split"), "{err}");
        let err = RunConfig::resolve("ShapesBYOl", &[], &r)
            .unwrap_err()
            .to_string();
        assert!(err.contains("did you mean `ShapesBYOL`"), "{err}");
    }

    #[test]
    fn resolved_config_round_trips_through_toml() {
        let r = registry();
        let c = RunConfig::resolve("ShapesSimCLR", &[], &r).unwrap();
        let back = RunConfig::from_resolved_toml(&c.to_toml(), "ShapesSimCLR").unwrap();
        assert_eq!(c, back);
    }

    #[test]
    fn linear_head_path_defaults_to_local_dataset_for_the_same_dataset() {
        let r = registry();
        let c =
            RunConfig::resolve("ShapesBYOL", &[("local_dataset".into(), "/d".into())], &r).unwrap();
        assert_eq!(c.linear_head_dataset_path().as_deref(), Some("/d"));
        let c = RunConfig::resolve(
            "ShapesBYOL",
            &[
                ("local_dataset".into(), "/d".into()),
                ("extra_local_dataset_paths".into(), "/e".into()),
            ],
            &r,
        )
        .unwrap();
        assert_eq!(c.linear_head_dataset_path().as_deref(), Some("/e"));
    }
}
