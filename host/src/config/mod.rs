//! Run configuration: defaults, named model configs (`--model=NAME`, TOML files in
//! `configs/` or shipped by plugins, or a path to a `.toml` file, which may `extends` another),
//! and `--name=value` overrides, resolved into one typed [`RunConfig`].
//!
//! Every parameter is written once, in the [`RunConfig`] definition below: its doc line, name,
//! type and default. The resolved `config.toml` ([`RunConfig::to_toml`]), `show-config
//! --parameters` ([`parameter_help`]), the typed reading of config files and command-line
//! values, unknown-name suggestions and the defaults all come from it.
//!
//! Parameter names follow InnerEye-DeepLearning's SSL containers. Every top-level parameter
//! can be overridden on the command line; table parameters take dotted names
//! (`--encoder_params.cifar_stem=true`). An unknown name is an error that suggests the
//! closest known one.

mod extends;
mod param;
pub mod schema;

pub use param::{parameter_help, parameters, Kind, Param, ParamType, ParameterInfo};

use crate::optim::OptimizerKind;
use crate::registry::{closest, Registry};
use crate::schedule::LrSchedule;
use anyhow::{anyhow, bail, Context, Result};
use schema::{choices, settings, Fields};
use serde::{Deserialize, Serialize};
use ssl_plugin_api::Params;
use ssl_plugin_api::{DatasetInfo, ImageKind};
use std::path::Path;
use toml::{Table, Value};
/// The built-in named model configs, compiled into the binary from `configs/`.
const BUILTIN_CONFIGS: &[(&str, &str)] = &[
    (
        "ShapesBYOL",
        include_str!("../../../configs/ShapesBYOL.toml"),
    ),
    (
        "ShapesSimCLR",
        include_str!("../../../configs/ShapesSimCLR.toml"),
    ),
    (
        "CIFAR10BYOL",
        include_str!("../../../configs/CIFAR10BYOL.toml"),
    ),
    (
        "CIFAR10SimCLR",
        include_str!("../../../configs/CIFAR10SimCLR.toml"),
    ),
    (
        "CIFAR10CIFAR100BYOL",
        include_str!("../../../configs/CIFAR10CIFAR100BYOL.toml"),
    ),
    (
        "NIH_RSNA_BYOL",
        include_str!("../../../configs/NIH_RSNA_BYOL.toml"),
    ),
    (
        "NIH_RSNA_SimCLR",
        include_str!("../../../configs/NIH_RSNA_SimCLR.toml"),
    ),
    (
        "NIH_COVID_BYOL",
        include_str!("../../../configs/NIH_COVID_BYOL.toml"),
    ),
    (
        "SSLClassifierCIFAR",
        include_str!("../../../configs/SSLClassifierCIFAR.toml"),
    ),
    (
        "CXRImageClassifier",
        include_str!("../../../configs/CXRImageClassifier.toml"),
    ),
];

choices! {
    /// What a run trains (`task`).
    pub enum Task("task") {
        /// Pretrain an encoder by self-supervision, with an online linear head.
        Ssl = "ssl",
        /// Train a classifier on top of a pretrained encoder.
        Classifier = "classifier",
    }
}

choices! {
    /// The learning-rate schedule a run asks for (`lr_schedule`).
    pub enum LrScheduleName("learning-rate schedule") {
        /// The algorithm's (or the classifier's) usual schedule.
        Auto = "auto",
        /// [`LrSchedule::WarmupCosinePerEpoch`].
        WarmupCosineEpoch = "warmup_cosine_epoch",
        /// [`LrSchedule::WarmupCosinePerStep`].
        WarmupCosineStep = "warmup_cosine_step",
        /// [`LrSchedule::Polynomial`].
        Polynomial = "polynomial",
        /// [`LrSchedule::Constant`].
        Constant = "constant",
    }
}

choices! {
    /// Where the augmentations of a run are computed (`augment_on`).
    pub enum AugmentOn("augmentation place") {
        /// In the data-loading threads, image by image.
        Workers = "workers",
        /// Batched, on the training device: workers only read and decode.
        Device = "device",
    }
}

choices! {
    /// How a shuffled training pass orders the samples of a packed dataset (`sample_order`).
    pub enum SampleOrder("sample order") {
        /// A permutation of the whole split, as any dataset.
        Uniform = "uniform",
        /// Shard-grouped: each epoch the shards are shuffled and dealt out to `shard_partitions`
        /// partitions, and each process reads one partition, so it touches about 1/N of the
        /// shards (a dataset in object storage downloads only those).
        Shards = "shards",
    }
}

choices! {
    /// The collectives backend of a distributed run (`dist_backend`).
    pub enum DistBackend("distributed backend") {
        /// NCCL when training on CUDA, Gloo on the CPU.
        Auto = "auto",
        /// Gloo (CPU tensors; also works with CUDA tensors, slower).
        Gloo = "gloo",
        /// NCCL (CUDA only).
        Nccl = "nccl",
    }
}

choices! {
    /// What a training step with a NaN or infinite loss does (`nan_policy`).
    pub enum NanPolicy("NaN policy") {
        /// Stop the run with an error naming the epoch, the step and the loss; the last
        /// checkpoint stays as it was.
        Stop = "stop",
        /// Do not apply the step (as the mixed-precision loss scaler does with overflowing
        /// gradients) and count it in `steps/skipped_nonfinite`.
        SkipStep = "skip_step",
    }
}

choices! {
    /// The floating-point precision of training (`precision`), with PyTorch Lightning's names
    /// (and its short aliases); see [`crate::engine::precision`].
    pub enum Precision("precision") {
        /// 32-bit floats throughout.
        True32 = "32-true" | "32",
        /// fp16 autocast of the SSL loss, with dynamic loss scaling.
        Mixed16 = "16-mixed" | "16",
        /// bfloat16 autocast of the SSL loss, without loss scaling.
        MixedBf16 = "bf16-mixed" | "bf16",
    }
}

impl LrScheduleName {
    /// The schedule of a fixed choice, with the defaults of [`LrSchedule`]'s `FromStr` (as a
    /// name in `lr_schedule` always had); `None` for `auto`, which the task decides.
    pub fn fixed(self) -> Option<LrSchedule> {
        match self {
            LrScheduleName::Auto => None,
            other => other.as_str().parse().ok(),
        }
    }
}

/// One transform of a pipeline: its registered name and its parameters.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TransformSpec {
    /// Registered transform name.
    pub name: String,
    /// Everything else in the table: the transform's parameters.
    #[serde(flatten)]
    pub params: Table,
}

impl TransformSpec {
    /// The parameters as the plugin receives them.
    pub fn plugin_params(&self) -> Result<Params> {
        let json = serde_json::to_value(&self.params)
            .with_context(|| format!("parameters of transform `{}`", self.name))?;
        Ok(Params::from_value(json)?)
    }
}

/// A group of SSL views: `count` views of each image, each through `pipeline`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ViewGroup {
    /// How many views of each image this group makes.
    pub count: usize,
    /// The transforms of each view.
    #[serde(default)]
    pub pipeline: Vec<TransformSpec>,
}

settings! {
    /// The resolved configuration of a run. Each field is a parameter (`--name=value`), with
    /// the original's default where it has one.
    #[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    pub struct RunConfig as dyn Param {
        hidden {
            /// The `--model` name it came from.
            #[serde(skip)]
            model: String = String::new(),
        }
        /// what this config is for
        description: String = String::new(),
        /// ssl (train an encoder) or classifier (train a head on a pretrained encoder)
        task: Task = Task::Ssl,
        /// dataset for SSL encoder training
        ssl_training_dataset_name: Option<String> = None,
        /// dataset of the online linear head (or of the classifier)
        linear_head_dataset_name: String = String::new(),
        /// encoder (resnet18, resnet50, resnet101, densenet121, or a plugin's)
        ssl_encoder: String = "resnet50".into(),
        /// SSL algorithm (BYOL, SimCLR, or a plugin's)
        ssl_training_type: String = "BYOL".into(),
        /// batch size of SSL training
        ssl_training_batch_size: usize = 128,
        /// batch size of the linear head
        linear_head_batch_size: usize = 16,
        /// augmentation YAML of SSL training (chest X-ray data)
        ssl_augmentation_config: Option<String> = None,
        /// augmentation YAML of the linear head
        linear_head_augmentation_config: Option<String> = None,
        /// class-weighted loss for the linear head
        use_balanced_binary_loss_for_linear_head: bool = false,
        /// seed of initialisation, splits and augmentations
        random_seed: u64 = 42,
        /// number of training epochs
        num_epochs: usize = 100,
        /// base learning rate of the SSL encoder (classifier: of the head)
        l_rate: f64 = 1e-4,
        /// the SSL dataset: a folder, a URL of a packed dataset (s3://, az://, gs://, https://) or a dataset_catalogue name (alias: azure_dataset_id)
        local_dataset: Option<String> = None,
        /// [0]: the linear-head dataset, as local_dataset (alias: extra_azure_dataset_ids)
        extra_local_dataset_paths: Vec<String> = Vec::new(),
        /// data-loading threads (0: load in the training thread)
        num_workers: usize = 4,
        /// 1 training and 1 validation batch per epoch
        is_debug_model: bool = false,
        /// drop incomplete last batches (training and validation)
        drop_last: bool = true,
        /// skip images that cannot be read (one warning counts them) instead of failing; in training and validation the next readable image takes a skipped one's place, so batches keep their size
        skip_unreadable_images: bool = false,
        /// Adam learning rate of the online linear head
        learning_rate_linear_head_during_ssl_training: f64 = 1e-4,
        /// kNN monitor: each epoch, weighted cosine kNN (k 200, temperature 0.1) of the linear-head validation split against its training split (knn/val/top1, top5)
        knn_monitor: bool = true,
        /// classifier: keep the pretrained encoder fixed
        freeze_encoder: bool = true,
        /// classifier: SSL checkpoint, run folder or run URL (alias: local_weights_path)
        local_ssl_weights_path: Option<String> = None,
        /// start the encoder from torchvision-named weights (.safetensors)
        encoder_init: Option<String> = None,
        /// the original's name for precision = 16-mixed (on a CPU run it is ignored with a note, as the original)
        use_mixed_precision: bool = false,
        /// SSL training precision, as Lightning: 32-true, 16-mixed (fp16 autocast and loss scaling) or bf16-mixed (bf16 autocast), on CUDA and on the CPU; aliases 32, 16, bf16 (default: 32-true, or 16-mixed with use_mixed_precision)
        precision: Option<Precision> = None,
        /// where the run writes: a folder (default outputs/<UTC time>_<model>), or a run URL (s3://, az://, gs://, https://) that a staging folder on this machine is uploaded to
        output_dir: Option<String> = None,
        /// cpu, cuda or cuda:N (default: cuda when available)
        device: Option<String> = None,
        /// fraction of each dataset held out for validation
        val_split: f64 = 0.1,
        /// optimizer of the SSL encoder
        optimizer: OptimizerKind = OptimizerKind::Adam,
        /// weight decay of the SSL optimizer
        weight_decay: f64 = 1e-6,
        /// momentum of sgd and lars
        momentum: f64 = 0.9,
        /// clip the global gradient norm of every optimizer step to this value (0: off)
        gradient_clip_val: f64 = 0.0,
        /// learning-rate schedule (auto: the algorithm's, or polynomial for classifiers)
        lr_schedule: LrScheduleName = LrScheduleName::Auto,
        /// linear warm-up length of the cosine schedules
        warmup_epochs: usize = 10,
        /// parameters of the encoder plugin (e.g. cifar_stem)
        encoder_params: Table = Table::new(),
        /// parameters of the algorithm plugin (e.g. temperature)
        algorithm_params: Table = Table::new(),
        /// extra parameters of the SSL dataset plugin
        ssl_dataset_params: Table = Table::new(),
        /// extra parameters of the linear-head dataset plugin
        linear_head_dataset_params: Table = Table::new(),
        /// SSL view transforms: [[ssl_augmentations]] name = ..., params
        ssl_augmentations: Vec<TransformSpec> = Vec::new(),
        /// SSL view groups: each `count` views through `pipeline` (default: one group of 2 views through ssl_augmentations)
        ssl_view_groups: Vec<ViewGroup> = Vec::new(),
        /// linear-head training transforms
        linear_head_augmentations: Vec<TransformSpec> = Vec::new(),
        /// linear-head validation transforms (default: as training)
        linear_head_val_augmentations: Option<Vec<TransformSpec>> = None,
        /// where augmentations run: workers (CPU threads, per image) or device (batched where the model runs)
        augment_on: AugmentOn = AugmentOn::Workers,
        /// augment_on = device: workers resize every image to this square size first (0: keep sizes; needed when a dataset's images differ in size)
        device_input_size: usize = 0,
        /// run each augmentation list as one compiled transform when a plugin offers one (false: step by step, the reference)
        fuse_augmentations: bool = true,
        /// also keep every K-th epoch's encoder (small: the embedding encoder only) as checkpoints/encoder-epoch-NNNN.safetensors beside the resumable last checkpoint, for evaluating quality over training (0: off)
        save_checkpoint_every_n_epochs: usize = 0,
        /// also write a checkpoint every N optimizer steps, mid-epoch (0: only after each epoch), for jobs that can be killed without warning
        checkpoint_every_n_steps: usize = 0,
        /// a NaN or infinite loss: stop (error naming epoch, step and loss; the last checkpoint stays) or skip_step (the step is not applied and counted in steps/skipped_nonfinite)
        nan_policy: NanPolicy = NanPolicy::Stop,
        /// distributed runs (torchrun): the collectives backend (auto: nccl on CUDA, gloo on CPU)
        dist_backend: DistBackend = DistBackend::Auto,
        /// distributed runs: seconds a collective waits for the other processes before the run stops with an error naming the missing ranks
        dist_timeout: usize = 300,
        /// distributed runs: before every collective, compare its number, operation, dtype and shape across processes and stop at the first that differs, naming what each process issued (slower; as TORCH_DISTRIBUTED_DEBUG=DETAIL)
        dist_debug: bool = false,
        /// distributed runs: BatchNorm layers of encoders and heads use statistics over all processes in training
        sync_batchnorm: bool = true,
        /// distributed runs: multiply l_rate by the number of processes (as the original; the online linear head's rate is not scaled)
        scale_lr_by_world_size: bool = true,
        /// where datasets in object storage (s3://, az://, gs://, https:// roots) are cached, shared by runs and by the processes of a node (default: $SSL_HOST_CACHE, else ~/.cache/ssl-host)
        cache_dir: Option<String> = None,
        /// the cache's size limit in GB: least recently used shards are removed beyond it
        cache_limit_gb: f64 = 100.0,
        /// a TOML file of named datasets ([datasets] NAME = "URL or folder"): local_dataset, azure_dataset_id and their extra_ lists may give a NAME (default: $SSL_HOST_DATASET_CATALOGUE)
        dataset_catalogue: Option<String> = None,
        /// shuffled training passes over a packed dataset: uniform (a permutation of the split) or shards (each process reads its own shards, about 1/N of them, see docs)
        sample_order: SampleOrder = SampleOrder::Uniform,
        /// sample_order = shards: the number of partitions the shards are dealt to (0: the number of processes); a 1-process run with N partitions and N times the batch equals an N-process run
        shard_partitions: usize = 0,
        /// the original's name for the SSL run a classifier starts from: a run URL (s3://, az://, gs://, https://) or folder, or a run name under runs_location; sets local_ssl_weights_path
        pretraining_run_recovery_id: Option<String> = None,
        /// where pretraining_run_recovery_id finds a run by name: a URL or folder holding runs (default: $SSL_HOST_RUNS)
        runs_location: Option<String> = None,
        /// seconds a request to object storage is retried with back-off before it fails: a dataset read stops the run with an error naming the URL; a failed upload of run outputs stops it too, its outputs kept in the staging folder
        storage_retry_seconds: f64 = 180.0,
    }
}

/// The parameter a name given in a file or on the command line stands for (aliases).
fn canonical(name: &str) -> &str {
    match name {
        "local_weights_path" => "local_ssl_weights_path",
        // The original's Azure ML names: a URL, a folder or a catalogue name here.
        "azure_dataset_id" => "local_dataset",
        "extra_azure_dataset_ids" => "extra_local_dataset_paths",
        _ => name,
    }
}

/// The kind of command-line value parameter `name` takes; `None` for an unknown name.
fn kind_of(name: &str) -> Option<Kind> {
    RunConfig::default().field(name).map(|p| p.kind())
}

fn unknown(name: &str) -> anyhow::Error {
    let names = <RunConfig as Fields<dyn Param>>::names();
    let hint = closest(name, names.into_iter())
        .map(|c| format!(" (did you mean `{c}`?)"))
        .unwrap_or_default();
    anyhow!("unknown parameter `{name}`{hint}; `ssl-host show-config --parameters` lists them")
}

/// Applies one `--name=value` override to the merged table. The value is checked against the
/// parameter's type here, so the error quotes it as given.
fn apply_override(table: &mut Table, name: &str, text: &str) -> Result<()> {
    let name = canonical(name);
    if let Some((top, key)) = name.split_once('.') {
        match kind_of(top) {
            Some(Kind::Table) => {
                let entry = table
                    .entry(top.to_string())
                    .or_insert_with(|| Value::Table(Table::new()));
                let Value::Table(inner) = entry else {
                    bail!("`{top}` is not a table")
                };
                inner.insert(key.to_string(), param::parse_loose(text));
                return Ok(());
            }
            Some(_) => bail!("--{name}: `{top}` is not a table parameter"),
            None => return Err(unknown(top)),
        }
    }
    let kind = kind_of(name).ok_or_else(|| unknown(name))?;
    let value = param::parse_value(name, kind, text).map_err(|e| anyhow!(e))?;
    let mut probe = RunConfig::default();
    if let Some(param) = probe.field_mut(name) {
        param
            .set(value.clone())
            .map_err(|e| anyhow!("--{name}={text}: {e}"))?;
    }
    table.insert(name.to_string(), value);
    Ok(())
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
    /// Defaults, then the model config `model` (with the configs it `extends`), then
    /// `overrides` in order.
    pub fn resolve(
        model: &str,
        overrides: &[(String, String)],
        registry: &Registry,
    ) -> Result<RunConfig> {
        let mut table = Table::new();
        let mut file = extends::load(model, registry)?;
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
            let name = canonical(&name).to_string();
            if kind_of(&name).is_none() {
                return Err(unknown(&name).context(format!("in model config `{model}`")));
            }
            table.insert(name, value);
        }
        for (name, value) in overrides {
            apply_override(&mut table, name, value)?;
        }
        let mut config = param::from_table(table)
            .map_err(|e| anyhow!("invalid configuration for `{model}`: {e}"))?;
        config.model = model
            .trim_end_matches(".toml")
            .rsplit('/')
            .next()
            .unwrap_or(model)
            .to_string();
        config.expand_augmentation_yaml(registry)?;
        config.validate()?;
        config.check_pipelines(registry)?;
        Ok(config)
    }

    /// Turns `ssl_augmentation_config` / `linear_head_augmentation_config` (the original's
    /// augmentation YAML; the linear head falls back to the SSL one, as the original) into the
    /// transform lists they stand for, unless the lists (or, for SSL, `ssl_view_groups`) are
    /// given explicitly. Every transform is created once through `registry` to check its
    /// values. The resolved config (and so `config.toml` and a resumed run) holds the expanded
    /// lists.
    fn expand_augmentation_yaml(&mut self, registry: &Registry) -> Result<()> {
        let ssl_yaml = self.ssl_augmentation_config.clone();
        let lh_yaml = self
            .linear_head_augmentation_config
            .clone()
            .or_else(|| ssl_yaml.clone());
        if let Some(path) = &ssl_yaml {
            if self.ssl_augmentations.is_empty() && self.ssl_view_groups.is_empty() {
                let expand = self.ssl_dataset_info(registry).image_kind == ImageKind::Grey;
                let (text, source) = read_augmentation_yaml(path)?;
                let pipelines = crate::augmentation_yaml::cxr_pipelines(&text, &source, expand)?;
                pipelines.check(&source, registry)?;
                self.ssl_augmentations = pipelines.train;
            }
        }
        if let Some(path) = &lh_yaml {
            if self.linear_head_augmentations.is_empty() {
                let expand = self.linear_head_dataset_info(registry).image_kind == ImageKind::Grey;
                let (text, source) = read_augmentation_yaml(path)?;
                let pipelines = crate::augmentation_yaml::cxr_pipelines(&text, &source, expand)?;
                pipelines.check(&source, registry)?;
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
    /// The defaults with `overrides`, unchecked: what a process knows of a run before it has
    /// the run's config (e.g. the `device` and `dist_*` parameters to join the other processes
    /// with, when it cannot read the checkpoint of the run being resumed).
    pub fn from_overrides(overrides: &[(String, String)]) -> Result<RunConfig> {
        let mut table = Table::new();
        for (name, value) in overrides {
            apply_override(&mut table, name, value)?;
        }
        param::from_table(table).map_err(|e| anyhow!("invalid configuration: {e}"))
    }

    pub fn resume(stored: &str, model: &str, overrides: &[(String, String)]) -> Result<RunConfig> {
        let mut table: Table = stored
            .parse()
            .map_err(|e| anyhow!("stored config is invalid: {e}"))?;
        for (name, value) in overrides {
            apply_override(&mut table, name, value)?;
        }
        let mut config =
            param::from_table(table).map_err(|e| anyhow!("invalid configuration: {e}"))?;
        config.model = model.to_string();
        config.validate()?;
        Ok(config)
    }

    /// As the original asserts for chest X-rays: a dataset whose images come in many sizes
    /// (it declares `varying_sizes`) needs pipelines that give them one size, from an
    /// augmentation config or listed explicitly.
    fn check_pipelines(&self, registry: &Registry) -> Result<()> {
        if let Some(name) = self.ssl_training_dataset_name.as_deref() {
            if self.ssl_dataset_info(registry).varying_sizes
                && self.ssl_augmentations.is_empty()
                && self.ssl_view_groups.is_empty()
            {
                bail!("`{name}` has images of many sizes: it needs `ssl_augmentation_config` (e.g. cxr_ssl_encoder_augmentations.yaml), [[ssl_augmentations]] or [[ssl_view_groups]]");
            }
        }
        if self.linear_head_dataset_info(registry).varying_sizes
            && self.linear_head_augmentations.is_empty()
        {
            bail!(
                "`{}` has images of many sizes: it needs `linear_head_augmentation_config` (e.g. cxr_linear_head_augmentations.yaml) or [[linear_head_augmentations]]",
                self.linear_head_dataset_name
            );
        }
        Ok(())
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
        if !(0.0..1.0).contains(&self.val_split) {
            bail!("`val_split` must be in [0, 1), got {}", self.val_split);
        }
        if self.l_rate.is_nan() || self.l_rate < 0.0 {
            bail!(
                "`l_rate` must be a non-negative number, got {}",
                self.l_rate
            );
        }
        if !self.gradient_clip_val.is_finite() || self.gradient_clip_val < 0.0 {
            bail!(
                "`gradient_clip_val` must be 0 (off) or a positive number, got {}",
                self.gradient_clip_val
            );
        }
        if self.linear_head_dataset_name.is_empty() {
            bail!("`linear_head_dataset_name` is not set");
        }
        match self.task {
            Task::Ssl => {
                if self.ssl_encoder.is_empty() {
                    bail!("`ssl_encoder` is not set (resnet18, resnet50, resnet101, densenet121, or a plugin's)");
                }
            }
            // Its encoder is checked when the run starts (show-config works without one).
            Task::Classifier => {}
        }
        if !self.ssl_view_groups.is_empty() && !self.ssl_augmentations.is_empty() {
            bail!(
                "both `ssl_view_groups` and `ssl_augmentations` are given: list the views once, \
                 as [[ssl_view_groups]] (each with a `count` and a [[ssl_view_groups.pipeline]]) \
                 or as [[ssl_augmentations]] (one group of 2 views); a config that `extends` \
                 one with [[ssl_augmentations]] drops them with `ssl_augmentations = []`"
            );
        }
        for (i, group) in self.ssl_view_groups.iter().enumerate() {
            if group.count == 0 {
                bail!("`ssl_view_groups[{i}].count` must be at least 1");
            }
        }
        match self.precision {
            Some(precision) if self.use_mixed_precision && precision != Precision::Mixed16 => {
                bail!(
                    "`use_mixed_precision = true` (the original's name for precision = 16-mixed) \
                     and `precision = {precision}` disagree: give only `precision`"
                )
            }
            _ => Ok(()),
        }
    }

    /// The linear-head dataset path: `extra_local_dataset_paths[0]`, or `local_dataset` when
    /// both datasets have the same name (as the original).
    pub fn linear_head_dataset_path(&self) -> Option<String> {
        match self.extra_local_dataset_paths.first() {
            Some(p) => Some(p.clone()),
            None if self.task == Task::Classifier
                || self.ssl_training_dataset_name.as_deref()
                    == Some(self.linear_head_dataset_name.as_str()) =>
            {
                self.local_dataset.clone()
            }
            None => None,
        }
    }

    /// What the SSL training dataset declares, for this run's folder and parameters (a
    /// dataset may read its declaration from its data, as `Packed` does); the defaults when
    /// there is none.
    pub fn ssl_dataset_info(&self, registry: &Registry) -> DatasetInfo {
        match &self.ssl_training_dataset_name {
            Some(name) => dataset_info(
                registry,
                name,
                self.local_dataset.as_deref(),
                &self.ssl_dataset_params,
                &crate::shards::StoreSettings::from_config(self),
            ),
            None => DatasetInfo::default(),
        }
    }

    /// What the linear-head dataset declares, as [`Self::ssl_dataset_info`].
    pub fn linear_head_dataset_info(&self, registry: &Registry) -> DatasetInfo {
        dataset_info(
            registry,
            &self.linear_head_dataset_name,
            self.linear_head_dataset_path().as_deref(),
            &self.linear_head_dataset_params,
            &crate::shards::StoreSettings::from_config(self),
        )
    }

    /// The resolved config as TOML (what `show-config` prints and `config.toml` holds).
    pub fn to_toml(&self) -> String {
        let mut text = format!("# ssl-host resolved config of model `{}`\n", self.model);
        text.push_str(&toml::to_string(self).expect("config serializes"));
        text
    }

    /// Reads a resolved config back (from `config.toml` or a checkpoint). Parameters added
    /// since it was written take their defaults.
    pub fn from_resolved_toml(text: &str, model: &str) -> Result<RunConfig> {
        let table: Table = text
            .parse()
            .map_err(|e| anyhow!("stored config is invalid: {e}"))?;
        let mut config =
            param::from_table(table).map_err(|e| anyhow!("stored config is invalid: {e}"))?;
        config.model = model.to_string();
        Ok(config)
    }

    /// The SSL view groups: `ssl_view_groups` when given, else one group of 2 views through
    /// `ssl_augmentations` (the two views of BYOL and SimCLR).
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
}

/// What dataset `name` at `root` with parameters `extra` declares: its answer for those
/// parameters, else its static declaration (when it cannot answer, e.g. its folder is missing:
/// the error comes when the run opens it), else the defaults when no loaded plugin offers it.
fn dataset_info(
    registry: &Registry,
    name: &str,
    root: Option<&str>,
    extra: &Table,
    store: &crate::shards::StoreSettings,
) -> DatasetInfo {
    let Ok(factory) = registry.dataset(name) else {
        return DatasetInfo::default();
    };
    // A URL or catalogue name: what the packed copy declares (its index, fetched once).
    let resolved = root.and_then(|r| {
        crate::shards::resolve(Some(r), store)
            .ok()
            .and_then(|r| r.root)
    });
    crate::datasets::dataset_params(resolved.as_deref().or(root), "train", extra)
        .ok()
        .and_then(|params| factory.info_for(&params).ok())
        .unwrap_or_else(|| factory.info())
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

    fn o(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn simclr_configs_that_extend_their_byol_twins_resolve_as_before() {
        // The files as they were before they extended their BYOL twins.
        let r = registry();
        for name in ["ShapesSimCLR", "CIFAR10SimCLR", "NIH_RSNA_SimCLR"] {
            let before = format!(
                "{}/src/config/testdata/{name}.before-extends.toml",
                env!("CARGO_MANIFEST_DIR")
            );
            let mut old = RunConfig::resolve(&before, &[], &r).unwrap();
            let new = RunConfig::resolve(name, &[], &r).unwrap();
            old.model = new.model.clone();
            assert_eq!(old, new, "{name}");
            assert_eq!(old.to_toml(), new.to_toml(), "{name}");
            assert!(new.description.starts_with("SimCLR"), "its own description");
            let text = BUILTIN_CONFIGS.iter().find(|(n, _)| *n == name).unwrap().1;
            assert!(text.contains("extends = "), "{name} extends its twin");
        }
    }

    #[test]
    fn choices_are_typed_and_their_errors_list_them() {
        let r = registry();
        let c = RunConfig::resolve(
            "ShapesBYOL",
            &o(&[
                ("task", "classifier"),
                ("optimizer", "lars"),
                ("lr_schedule", "constant"),
            ]),
            &r,
        )
        .unwrap();
        assert_eq!(c.task, Task::Classifier);
        assert_eq!(c.optimizer, OptimizerKind::Lars);
        assert_eq!(c.lr_schedule, LrScheduleName::Constant);
        assert_eq!(c.lr_schedule.fixed(), Some(LrSchedule::Constant));
        assert_eq!(LrScheduleName::Auto.fixed(), None);
        for (name, value, choices) in [
            ("task", "pretrain", "ssl, classifier"),
            ("optimizer", "nadam", "adam, adamw, sgd, lars"),
            (
                "lr_schedule",
                "cosine",
                "auto, warmup_cosine_epoch, warmup_cosine_step, polynomial, constant",
            ),
        ] {
            let err = RunConfig::resolve("ShapesBYOL", &o(&[(name, value)]), &r)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("--{name}={value}")) && err.contains(choices),
                "{err}"
            );
        }
        // In a config file the error names the parameter too.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.toml");
        std::fs::write(&path, "extends = \"ShapesBYOL\"\noptimizer = \"nadam\"\n").unwrap();
        let err = RunConfig::resolve(path.to_str().unwrap(), &[], &r)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "`optimizer`: unknown optimizer `nadam` (choices: adam, adamw, sgd, lars)"
            ),
            "{err}"
        );
    }

    #[test]
    fn precision_takes_lightnings_names_and_aliases_and_refuses_a_conflict() {
        let r = registry();
        let precision = |pairs: &[(&str, &str)]| {
            RunConfig::resolve("ShapesBYOL", &o(pairs), &r).map(|c| c.precision)
        };
        assert_eq!(precision(&[]).unwrap(), None, "unset by default (32-true)");
        for (given, expected) in [
            ("32-true", Precision::True32),
            ("32", Precision::True32),
            ("16-mixed", Precision::Mixed16),
            ("16", Precision::Mixed16),
            ("bf16-mixed", Precision::MixedBf16),
            ("bf16", Precision::MixedBf16),
        ] {
            assert_eq!(
                precision(&[("precision", given)]).unwrap(),
                Some(expected),
                "{given}"
            );
        }
        let err = precision(&[("precision", "bf16-true")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown precision `bf16-true` (choices: 32-true, 16-mixed, bf16-mixed)"),
            "{err}"
        );
        // The original's flag means 16-mixed: with it, only 16-mixed may be given too.
        assert_eq!(
            precision(&[("use_mixed_precision", "true"), ("precision", "16")]).unwrap(),
            Some(Precision::Mixed16)
        );
        for other in ["bf16-mixed", "32-true"] {
            let err = precision(&[("use_mixed_precision", "true"), ("precision", other)])
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("`use_mixed_precision = true`")
                    && err.contains(&format!("`precision = {other}`")),
                "{err}"
            );
        }
        // A config file may write Lightning's numbers; the resolved config writes the name.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(&path, "extends = \"ShapesBYOL\"\nprecision = 16\n").unwrap();
        let c = RunConfig::resolve(path.to_str().unwrap(), &[], &r).unwrap();
        assert_eq!(c.precision, Some(Precision::Mixed16));
        assert!(c.to_toml().contains("precision = \"16-mixed\""));
        let back = RunConfig::from_resolved_toml(&c.to_toml(), "p").unwrap();
        assert_eq!(back.precision, Some(Precision::Mixed16));
    }

    #[test]
    fn a_config_file_may_extend_a_named_config_and_override_it() {
        let r = registry();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mine.toml");
        std::fs::write(
            &path,
            "extends = \"ShapesBYOL\"\nnum_epochs = 2\nlocal_weights_path = \"w\"\n\
             [ssl_dataset_params]\nnum_samples = 10\n",
        )
        .unwrap();
        let c = RunConfig::resolve(path.to_str().unwrap(), &o(&[("l_rate", "0.5")]), &r).unwrap();
        let base = RunConfig::resolve("ShapesBYOL", &[], &r).unwrap();
        assert_eq!(c.model, "mine");
        assert_eq!((c.num_epochs, c.l_rate), (2, 0.5));
        assert_eq!(c.local_ssl_weights_path.as_deref(), Some("w"));
        assert_eq!(c.description, "", "the description is not inherited");
        assert_eq!(c.ssl_dataset_params["num_samples"].as_integer(), Some(10));
        assert_eq!(
            c.ssl_dataset_params["image_size"], base.ssl_dataset_params["image_size"],
            "tables merge key by key"
        );
        assert_eq!(c.ssl_augmentations, base.ssl_augmentations);
    }

    #[test]
    fn view_groups_default_to_two_views_of_ssl_augmentations() {
        let r = registry();
        let c = RunConfig::resolve("ShapesBYOL", &[], &r).unwrap();
        assert!(c.ssl_view_groups.is_empty());
        assert_eq!(
            c.view_groups(),
            [ViewGroup {
                count: 2,
                pipeline: c.ssl_augmentations.clone()
            }]
        );
    }

    #[test]
    fn view_groups_are_read_checked_and_round_trip() {
        let r = registry();
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        let groups = "\n[[ssl_view_groups]]\ncount = 1\n\
             [[ssl_view_groups.pipeline]]\nname = \"RandomResizedCrop\"\nsize = 32\n\
             [[ssl_view_groups]]\ncount = 1\n\
             [[ssl_view_groups.pipeline]]\nname = \"RandomResizedCrop\"\nsize = 24\n\
             [[ssl_view_groups.pipeline]]\nname = \"RandomHorizontalFlip\"\n";
        let good = write(
            "good.toml",
            &format!("extends = \"ShapesSimCLR\"\nssl_augmentations = []\n{groups}"),
        );
        let c = RunConfig::resolve(&good, &[], &r).unwrap();
        let groups_of = c.view_groups();
        assert_eq!(groups_of.len(), 2);
        assert_eq!(groups_of[1].count, 1);
        assert_eq!(
            groups_of[1].pipeline[0].params["size"].as_integer(),
            Some(24)
        );
        assert_eq!(groups_of[1].pipeline[1].name, "RandomHorizontalFlip");
        let back = RunConfig::from_resolved_toml(&c.to_toml(), "good").unwrap();
        assert_eq!(back, c);

        let both = write(
            "both.toml",
            &format!("extends = \"ShapesSimCLR\"\n{groups}"),
        );
        let err = RunConfig::resolve(&both, &[], &r).unwrap_err().to_string();
        assert!(
            err.contains("both `ssl_view_groups` and `ssl_augmentations`"),
            "{err}"
        );
        let zero = write(
            "zero.toml",
            "extends = \"ShapesSimCLR\"\nssl_augmentations = []\n\
             [[ssl_view_groups]]\ncount = 0\n",
        );
        let err = RunConfig::resolve(&zero, &[], &r).unwrap_err().to_string();
        assert!(
            err.contains("`ssl_view_groups[0].count` must be at least 1"),
            "{err}"
        );
        let typo = write(
            "typo.toml",
            "extends = \"ShapesSimCLR\"\nssl_augmentations = []\n\
             [[ssl_view_groups]]\ncounts = 2\n",
        );
        let err = RunConfig::resolve(&typo, &[], &r).unwrap_err().to_string();
        assert!(
            err.contains("`ssl_view_groups`") && err.contains("counts"),
            "{err}"
        );
    }

    #[test]
    fn configs_stored_before_new_parameters_still_load() {
        let r = registry();
        let c = RunConfig::resolve("ShapesBYOL", &[], &r).unwrap();
        let old: String = c
            .to_toml()
            .lines()
            .filter(|l| !l.starts_with("gradient_clip_val") && !l.starts_with("ssl_view_groups"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(
            RunConfig::from_resolved_toml(&old, "ShapesBYOL").unwrap(),
            c
        );
        let resumed = RunConfig::resume(&old, "ShapesBYOL", &o(&[("num_epochs", "30")])).unwrap();
        assert_eq!(resumed.num_epochs, 30);
        assert_eq!(resumed.gradient_clip_val, 0.0);
        let err = RunConfig::from_resolved_toml("num_epoch = 3\n", "x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("did you mean `num_epochs`"), "{err}");
    }

    #[test]
    fn new_parameters_take_command_line_values() {
        let r = registry();
        let c = RunConfig::resolve("ShapesBYOL", &o(&[("gradient_clip_val", "1.5")]), &r).unwrap();
        assert_eq!(c.gradient_clip_val, 1.5);
        let e = RunConfig::resolve("ShapesBYOL", &o(&[("gradient_clip_val", "-1")]), &r)
            .unwrap_err()
            .to_string();
        assert!(e.contains("gradient_clip_val"), "{e}");
        let err = RunConfig::resolve("ShapesBYOL", &o(&[("ssl_view_groups", "2")]), &r)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--ssl_view_groups is a table"), "{err}");
    }
}
