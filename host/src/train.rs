//! SSL training: the host owns the loop. Each step trains the algorithm plugin on two (or
//! more) augmented views of an SSL batch, then the online linear head on detached embeddings
//! of a linear-head batch, then calls the algorithm's after-step hook (BYOL's moving average),
//! in the order of the original. Each epoch ends with validation, one row per metric in
//! `metrics.csv` and TensorBoard, and an atomic checkpoint that `--resume` continues from.

use crate::checkpoint::{self, CheckpointInfo};
use crate::config::{RunConfig, Task};
use crate::data::{batches_of, permutation, seed_of, split_dataset, BatchStream, Pipeline, Source};
use crate::metrics::{class_weights, EpochMetrics};
use crate::optim::{self, Optimizer, OptimizerConfig, OptimizerKind, Param};
use crate::outputs::{utc_timestamp, RunOutputs};
use crate::registry::Registry;
use crate::schedule::LrSchedule;
use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;
use ssl_plugin_api::host::DatasetHandle;
use ssl_plugin_api::tch::{self, nn, Device, Kind, Reduction, Tensor};
use ssl_plugin_api::torch::ForeignAlgorithm;
use ssl_plugin_api::{EncoderSpec, Params, SslAlgorithm};
use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Options of a training run that are not part of the config.
#[derive(Default)]
pub struct RunOptions {
    /// Continue from the output folder's last checkpoint.
    pub resume: bool,
    /// Stop cleanly after this many epochs have been completed (e.g. a time-limited job);
    /// `--resume` continues.
    pub stop_after_epochs: Option<usize>,
}

/// The device of a run: `device` if given, else CUDA when available.
pub fn choose_device(config: &RunConfig) -> Result<Device> {
    crate::device::choose(config.device.as_deref())
}

/// Plugin parameters: the dataset path and split plus the config's table.
fn dataset_params(root: Option<&str>, split: &str, extra: &toml::Table) -> Result<Params> {
    let mut map = serde_json::to_value(extra)?
        .as_object()
        .cloned()
        .unwrap_or_default();
    if let Some(root) = root {
        map.insert("root".into(), Value::String(root.to_string()));
    }
    map.entry("split").or_insert(Value::String(split.into()));
    Params::from_value(Value::Object(map)).map_err(anyhow::Error::msg)
}

/// The linear probe: dropout 0.2 and a linear layer on detached embeddings.
pub struct LinearHead {
    vs: nn::VarStore,
    linear: nn::Linear,
    pub num_classes: usize,
    weights: Option<Tensor>,
}

impl LinearHead {
    /// A head from `dim` features to `num_classes`, with optional class weights for the loss.
    pub fn new(
        dim: i64,
        num_classes: usize,
        weights: Option<Vec<f32>>,
        device: Device,
    ) -> LinearHead {
        let vs = nn::VarStore::new(device);
        let linear = nn::linear(
            vs.root() / "linear",
            dim,
            num_classes as i64,
            Default::default(),
        );
        let weights = weights.map(|w| Tensor::from_slice(&w).to_device(device));
        LinearHead {
            vs,
            linear,
            num_classes,
            weights,
        }
    }

    /// Logits; dropout only in training.
    pub fn forward(&self, embeddings: &Tensor, train: bool) -> Tensor {
        embeddings
            .flatten(1, -1)
            .dropout(0.2, train)
            .apply(&self.linear)
    }

    /// Cross-entropy, class-weighted as PyTorch's (Σ w_y·ce / Σ w_y) when weights are set.
    pub fn loss(&self, logits: &Tensor, targets: &Tensor) -> Tensor {
        logits.log_softmax(-1, Kind::Float).g_nll_loss(
            targets,
            self.weights.as_ref(),
            Reduction::Mean,
            -100,
        )
    }

    /// Trainable tensors, named `linear.weight` / `linear.bias`.
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut vars: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    }
}

pub(crate) fn prefixed(prefix: &str, list: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    list.into_iter()
        .map(|(n, t)| (format!("{prefix}{n}"), t))
        .collect()
}

/// Adds a batch's posteriors (softmax of `logits`), labels and loss to `metrics`.
pub(crate) fn record_batch(
    metrics: &mut EpochMetrics,
    logits: &Tensor,
    batch: &crate::data::Batch,
    loss: &Tensor,
) -> Result<()> {
    let probs = logits
        .detach()
        .softmax(-1, Kind::Float)
        .to_device(Device::Cpu)
        .contiguous()
        .view(-1);
    let probs: Vec<f32> = Vec::<f32>::try_from(&probs)?;
    let targets: Vec<i64> = batch.labels.iter().map(|l| l.unwrap_or(-1)).collect();
    metrics.add_batch(&probs, &targets, loss.double_value(&[]), batch.len());
    Ok(())
}

/// Runs `f` under autocast when mixed precision is on (CUDA only).
fn maybe_autocast<T>(enabled: bool, f: impl FnOnce() -> T) -> T {
    if enabled {
        tch::autocast(true, f)
    } else {
        f()
    }
}

/// Dynamic loss scaling for mixed precision (as torch.cuda.amp.GradScaler): scale the loss,
/// skip steps whose gradients overflowed and halve the scale, double it after 2000 good steps.
struct LossScaler {
    scale: f64,
    good_steps: u32,
}

impl LossScaler {
    fn new() -> Self {
        LossScaler {
            scale: 65536.0,
            good_steps: 0,
        }
    }

    /// Its state for the checkpoint (`loss_scaler.*`), so a resumed run scales as before.
    fn state(&self) -> Vec<(String, Tensor)> {
        vec![
            ("scale".into(), Tensor::from(self.scale)),
            ("good_steps".into(), Tensor::from(self.good_steps as i64)),
        ]
    }

    /// Restores [`LossScaler::state`]; a checkpoint of a run without mixed precision has
    /// none, and the scaler then starts afresh.
    fn load_state(&mut self, stored: &HashMap<String, Tensor>) -> Result<()> {
        if let (Some(scale), Some(good)) = (
            stored.get("loss_scaler.scale"),
            stored.get("loss_scaler.good_steps"),
        ) {
            self.scale = scale.f_double_value(&[])?;
            self.good_steps = u32::try_from(good.f_int64_value(&[])?)
                .context("loss_scaler.good_steps in the checkpoint")?;
        }
        Ok(())
    }

    /// Unscales gradients in place; false when any is not finite (skip the step).
    fn unscale(&mut self, params: &[Param]) -> bool {
        let mut finite = true;
        tch::no_grad(|| {
            for p in params {
                let mut g = p.tensor.grad();
                if g.defined() {
                    let _ = g.f_div_scalar_(self.scale);
                    if !bool::try_from(g.isfinite().all()).unwrap_or(false) {
                        finite = false;
                    }
                }
            }
        });
        if finite {
            self.good_steps += 1;
            if self.good_steps >= 2000 {
                self.scale *= 2.0;
                self.good_steps = 0;
            }
        } else {
            self.scale /= 2.0;
            self.good_steps = 0;
        }
        finite
    }
}

/// Everything a training run holds.
struct Run {
    config: RunConfig,
    device: Device,
    algorithm: ForeignAlgorithm,
    algorithm_name: String,
    prefix: String,
    params: Vec<Param>,
    optimizer: Box<dyn Optimizer>,
    schedule: LrSchedule,
    head: LinearHead,
    head_optimizer: Box<dyn Optimizer>,
    ssl_train: (Arc<Source>, Vec<usize>),
    ssl_val: (Arc<Source>, Vec<usize>),
    lh_train: (Arc<Source>, Vec<usize>),
    lh_val: (Arc<Source>, Vec<usize>),
    info: CheckpointInfo,
    scaler: Option<LossScaler>,
}

fn to_params(list: Vec<ssl_plugin_api::TrainableParam>) -> Vec<Param> {
    list.into_iter()
        .map(|p| Param {
            name: p.name,
            tensor: p.tensor,
            weight_decay: p.weight_decay,
            lars_adaptation: p.lars_adaptation,
        })
        .collect()
}

fn shallow_params(params: &[Param]) -> Vec<Param> {
    params
        .iter()
        .map(|p| Param {
            name: p.name.clone(),
            tensor: p.tensor.shallow_clone(),
            weight_decay: p.weight_decay,
            lars_adaptation: p.lars_adaptation,
        })
        .collect()
}

/// A warning when a validation split of `samples` gives no batch of `batch_size` with
/// `drop_last` (as the original, a smaller last batch is dropped): its metrics are then NaN
/// every epoch. Returns the warning, printed once at the start of a run.
pub fn warn_if_no_val_batch(
    what: &str,
    samples: usize,
    batch_size: usize,
    batch_param: &str,
    drop_last: bool,
) -> Option<String> {
    if !drop_last || samples >= batch_size {
        return None;
    }
    let warning = format!(
        "warning: the {what} validation split has {samples} samples, fewer than \
         {batch_param}={batch_size}, and drop_last=true drops that one partial batch: its \
         validation metrics will be NaN. Lower {batch_param}, raise val_split, or set \
         drop_last=false."
    );
    eprintln!("{warning}");
    Some(warning)
}

/// Opens split `split` of dataset `name` at `root` with the config's extra parameters, which
/// may be empty (e.g. a test split the dataset does not have).
pub fn open_split(
    registry: &Registry,
    name: &str,
    root: Option<&str>,
    split: &str,
    extra: &toml::Table,
) -> Result<DatasetHandle> {
    let factory = registry.dataset(name)?;
    let params = dataset_params(root, split, extra)?;
    factory.create(&params).map_err(|e| anyhow!("{e}"))
}

/// As [`open_split`], but an empty dataset is an error naming it.
pub fn open_dataset(
    registry: &Registry,
    name: &str,
    root: Option<&str>,
    split: &str,
    extra: &toml::Table,
) -> Result<Arc<DatasetHandle>> {
    let dataset = open_split(registry, name, root, split, extra)?;
    if dataset.is_empty() {
        bail!(
            "dataset `{name}`{} has no samples",
            root.map(|r| format!(" at {r}")).unwrap_or_default()
        );
    }
    Ok(Arc::new(dataset))
}

impl Run {
    fn build(registry: &Registry, config: RunConfig, device: Device, fresh: bool) -> Result<Run> {
        let seed = config.random_seed;
        // SSL data.
        let ssl_name = config
            .ssl_training_dataset_name
            .clone()
            .ok_or_else(|| anyhow!("`ssl_training_dataset_name` is not set"))?;
        let ssl_dataset = open_dataset(
            registry,
            &ssl_name,
            config.local_dataset.as_deref(),
            "train",
            &config.ssl_dataset_params,
        )?;
        let lh_name = config.linear_head_dataset_name.clone();
        let lh_root = config.linear_head_dataset_path();
        let same = lh_name == ssl_name
            && lh_root == config.local_dataset
            && config.linear_head_dataset_params == config.ssl_dataset_params;
        let lh_dataset = if same {
            Arc::clone(&ssl_dataset)
        } else {
            open_dataset(
                registry,
                &lh_name,
                lh_root.as_deref(),
                "train",
                &config.linear_head_dataset_params,
            )?
        };
        let (num_classes, weights) = head_classes(
            &lh_dataset,
            &lh_name,
            config.use_balanced_binary_loss_for_linear_head,
        )?;

        let (ssl_train_idx, ssl_val_idx) = split_dataset(&ssl_dataset, config.val_split, seed)?;
        let (lh_train_idx, lh_val_idx) = split_dataset(&lh_dataset, config.val_split, seed)?;
        warn_if_no_val_batch(
            "SSL",
            ssl_val_idx.len(),
            config.ssl_training_batch_size,
            "ssl_training_batch_size",
            config.drop_last,
        );
        warn_if_no_val_batch(
            "linear-head",
            lh_val_idx.len(),
            config.linear_head_batch_size,
            "linear_head_batch_size",
            config.drop_last,
        );
        let ssl_pipeline = Arc::new(Pipeline::build(
            registry,
            &config.ssl_augmentations,
            "ssl_augmentations",
        )?);
        let (lh_pipeline, lh_val_pipeline) = linear_head_pipelines(registry, &config)?;
        let source = |dataset: &Arc<DatasetHandle>,
                      pipeline: &Arc<Pipeline>,
                      views,
                      stream: u64,
                      name: &str| {
            let mut source = Source::new(
                Arc::clone(dataset),
                Arc::clone(pipeline),
                views,
                seed_of(&[seed, stream]),
                name,
            );
            source.skip_unreadable = config.skip_unreadable_images;
            Arc::new(source)
        };
        let ssl_train = (
            source(&ssl_dataset, &ssl_pipeline, 2, 1, &ssl_name),
            ssl_train_idx,
        );
        let ssl_val = (
            source(&ssl_dataset, &ssl_pipeline, 2, 2, &ssl_name),
            ssl_val_idx,
        );
        let lh_train = (
            source(&lh_dataset, &lh_pipeline, 1, 3, &lh_name),
            lh_train_idx,
        );
        let lh_val = (
            source(&lh_dataset, &lh_val_pipeline, 1, 4, &lh_name),
            lh_val_idx,
        );

        // Model.
        tch::manual_seed(seed as i64);
        let mut encoder_params = config.encoder_params.clone();
        if config.ssl_encoder.starts_with("resnet") && !encoder_params.contains_key("cifar_stem") {
            // The original: use_7x7_first_conv_in_resnet = not dataset.startswith("CIFAR").
            encoder_params.insert(
                "cifar_stem".into(),
                toml::Value::Boolean(ssl_name.starts_with("CIFAR")),
            );
        }
        let encoder_json = serde_json::to_value(&encoder_params)?;
        let spec = EncoderSpec {
            factory: registry.encoder(&config.ssl_encoder)?.clone(),
            params: Params::from_value(encoder_json.clone()).map_err(anyhow::Error::msg)?,
        };
        let algorithm_params = Params::from_value(serde_json::to_value(&config.algorithm_params)?)
            .map_err(anyhow::Error::msg)?;
        let algorithm = registry
            .algorithm(&config.ssl_training_type)?
            .create(&algorithm_params, &spec, device)
            .map_err(|e| anyhow!("{e}"))?;
        if let (Some(weights), true) = (&config.encoder_init, fresh) {
            // Every encoder inside the algorithm (BYOL: online and target) starts from them.
            let groups = crate::pretrained::encoders_in_state(&algorithm.state());
            if groups.is_empty() {
                bail!(
                    "--encoder_init: the {} algorithm shows no encoder tensors to load into",
                    config.ssl_training_type
                );
            }
            for (prefix, live) in &groups {
                let n = crate::pretrained::load_torchvision_weights(
                    Path::new(weights),
                    live,
                    &format!("the `{}` encoder (`{prefix}`)", config.ssl_encoder),
                )
                .context("--encoder_init")?;
                eprintln!("{prefix}: {n} tensors from {weights}");
            }
        }
        let params = to_params(algorithm.parameters());
        let kind: OptimizerKind = config.optimizer;
        let opt_config = OptimizerConfig {
            kind,
            weight_decay: config.weight_decay,
            momentum: config.momentum,
            ..Default::default()
        };
        let optimizer = optim::build(&opt_config, shallow_params(&params));
        let algorithm_name = config.ssl_training_type.clone();
        let prefix = algorithm_name.to_lowercase();
        let schedule: LrSchedule = match config.lr_schedule.as_str() {
            "auto" if prefix == "simclr" => LrSchedule::WarmupCosinePerStep {
                warmup_epochs: config.warmup_epochs,
            },
            "auto" => LrSchedule::WarmupCosinePerEpoch {
                warmup_epochs: config.warmup_epochs,
            },
            other => other.parse().map_err(|e| anyhow!("lr_schedule: {e}"))?,
        };
        let head = LinearHead::new(algorithm.embedding_dim(), num_classes, weights, device);
        let head_params: Vec<Param> = head
            .named_parameters()
            .into_iter()
            .map(|(name, tensor)| Param {
                name,
                tensor,
                weight_decay: true,
                lars_adaptation: false,
            })
            .collect();
        let head_opt_config = OptimizerConfig {
            kind: OptimizerKind::Adam,
            weight_decay: 1e-4,
            ..Default::default()
        };
        let head_optimizer = optim::build(&head_opt_config, shallow_params(&head_params));

        let mut plugins = BTreeMap::new();
        plugins.insert(
            "ssl-host".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        );
        let mut used: Vec<(&str, String)> = vec![
            ("dataset", ssl_name.clone()),
            ("dataset", lh_name.clone()),
            ("encoder", config.ssl_encoder.clone()),
            ("algorithm", config.ssl_training_type.clone()),
        ];
        let transforms = config
            .ssl_augmentations
            .iter()
            .chain(&config.linear_head_augmentations);
        let transforms = transforms.chain(config.linear_head_val_augmentations.iter().flatten());
        used.extend(transforms.map(|t| ("transform", t.name.clone())));
        for (kind, name) in used {
            if let Some(p) = registry.provenance(kind, &name) {
                plugins.insert(format!("{kind} {name}"), p);
            }
        }
        let info = CheckpointInfo {
            format: checkpoint::FORMAT.into(),
            epochs_done: 0,
            global_step: 0,
            model: config.model.clone(),
            config: config.to_toml(),
            algorithm: algorithm_name.clone(),
            encoder: config.ssl_encoder.clone(),
            encoder_params: encoder_json.to_string(),
            embedding_encoder_prefix: algorithm.embedding_encoder_prefix(),
            plugins,
        };
        let scaler = (config.use_mixed_precision && device != Device::Cpu).then(LossScaler::new);
        if config.use_mixed_precision && device == Device::Cpu {
            eprintln!("note: use_mixed_precision applies on CUDA only; this CPU run uses 32-bit floats (as the original)");
        }
        Ok(Run {
            config,
            device,
            algorithm,
            algorithm_name,
            prefix,
            params,
            optimizer,
            schedule,
            head,
            head_optimizer,
            ssl_train,
            ssl_val,
            lh_train,
            lh_val,
            info,
            scaler,
        })
    }

    fn checkpoint_tensors(&self) -> Vec<(String, Tensor)> {
        let mut all = prefixed("algorithm.", self.algorithm.state());
        all.extend(prefixed("linear_head.", self.head.named_parameters()));
        all.extend(prefixed("optimizer.", self.optimizer.state()));
        all.extend(prefixed(
            "linear_head_optimizer.",
            self.head_optimizer.state(),
        ));
        if let Some(scaler) = &self.scaler {
            all.extend(prefixed("loss_scaler.", scaler.state()));
        }
        all
    }

    fn restore(&mut self, stored: &HashMap<String, Tensor>) -> Result<()> {
        checkpoint::restore_into(
            stored,
            "algorithm.",
            &self.algorithm.state(),
            "the algorithm",
        )?;
        checkpoint::restore_into(
            stored,
            "linear_head.",
            &self.head.named_parameters(),
            "the linear head",
        )?;
        let strip = |prefix: &str| -> HashMap<String, Tensor> {
            stored
                .iter()
                .filter_map(|(k, t)| {
                    k.strip_prefix(prefix)
                        .map(|n| (n.to_string(), t.shallow_clone()))
                })
                .collect()
        };
        self.optimizer
            .load_state(&strip("optimizer."))
            .context("restoring the SSL optimizer")?;
        self.head_optimizer
            .load_state(&strip("linear_head_optimizer."))
            .context("restoring the linear-head optimizer")?;
        if let Some(scaler) = &mut self.scaler {
            scaler.load_state(stored)?;
        }
        Ok(())
    }

    /// Batches of the SSL training pass of `epoch` (shuffled by (seed, epoch)).
    fn ssl_train_plan(&self, epoch: usize) -> Vec<Vec<usize>> {
        let idx = &self.ssl_train.1;
        let order: Vec<usize> = permutation(
            idx.len(),
            seed_of(&[self.config.random_seed, epoch as u64, 11]),
        )
        .into_iter()
        .map(|i| idx[i])
        .collect();
        batches_of(
            &order,
            self.config.ssl_training_batch_size,
            self.config.drop_last,
        )
    }

    /// `steps` linear-head batches for `epoch`: the shuffled training split, re-shuffled and
    /// cycled when shorter than the SSL pass, truncated when longer (as the original).
    fn lh_train_plan(&self, epoch: usize, steps: usize) -> Result<Vec<Vec<usize>>> {
        let idx = &self.lh_train.1;
        let mut plan = Vec::new();
        let mut cycle = 0u64;
        while plan.len() < steps {
            let order: Vec<usize> = permutation(
                idx.len(),
                seed_of(&[self.config.random_seed, epoch as u64, 13, cycle]),
            )
            .into_iter()
            .map(|i| idx[i])
            .collect();
            let batches = batches_of(
                &order,
                self.config.linear_head_batch_size,
                self.config.drop_last,
            );
            if batches.is_empty() {
                bail!(
                    "the linear-head training split has {} samples, fewer than linear_head_batch_size={} (drop_last)",
                    idx.len(),
                    self.config.linear_head_batch_size
                );
            }
            plan.extend(batches);
            cycle += 1;
        }
        plan.truncate(steps);
        Ok(plan)
    }

    fn lr_at(&self, epoch: usize, step_in_run: u64, steps_per_epoch: usize) -> f64 {
        self.schedule.lr(
            self.config.l_rate,
            epoch,
            step_in_run as usize,
            steps_per_epoch,
            self.config.num_epochs,
        )
    }

    /// One warning per data source when images were skipped as unreadable since the last
    /// warning (`skip_unreadable_images`): how many, and the first error.
    fn warn_about_skipped_images(&self, warned: &mut [usize; 4]) {
        let sources = [
            (&self.ssl_train.0, "SSL training"),
            (&self.ssl_val.0, "SSL validation"),
            (&self.lh_train.0, "linear-head training"),
            (&self.lh_val.0, "linear-head validation"),
        ];
        for ((source, what), warned) in sources.into_iter().zip(warned.iter_mut()) {
            let (count, first) = source.skipped_report();
            if count > *warned {
                eprintln!(
                    "warning: skipped {count} unreadable image(s) of {} ({what} data); first: {}",
                    source.name,
                    first.unwrap_or_default()
                );
                *warned = count;
            }
        }
    }

    /// One epoch: training then validation; returns its metrics.
    fn epoch(
        &mut self,
        epoch: usize,
        global_step: &mut u64,
        bar: &Progress,
    ) -> Result<Vec<(String, f64)>> {
        let started = Instant::now();
        tch::manual_seed(seed_of(&[self.config.random_seed, epoch as u64, 17]) as i64 & i64::MAX);
        let workers = self.config.num_workers;
        let full_plan = self.ssl_train_plan(epoch);
        let full_steps = full_plan.len();
        if full_steps == 0 {
            bail!(
                "the SSL training split has {} samples, fewer than ssl_training_batch_size={} (drop_last)",
                self.ssl_train.1.len(),
                self.config.ssl_training_batch_size
            );
        }
        let steps = if self.config.is_debug_model {
            1
        } else {
            full_steps
        };
        let max_steps = (full_steps * self.config.num_epochs) as u64;
        let mut ssl_stream = BatchStream::new(
            Arc::clone(&self.ssl_train.0),
            epoch as u64,
            full_plan.into_iter().take(steps).collect(),
            workers,
        );
        let lh_plan = self.lh_train_plan(epoch, steps)?;
        let mut lh_stream = BatchStream::new(
            Arc::clone(&self.lh_train.0),
            epoch as u64,
            lh_plan,
            workers.div_ceil(2),
        );
        let mut lh_metrics = EpochMetrics::new(self.head.num_classes);
        let mut loss_sum = Tensor::zeros([], (Kind::Double, self.device));
        let mut scalar_sums: BTreeMap<String, f64> = BTreeMap::new();
        let mut lr_sum = 0.0;
        let mut images = 0usize;
        bar.start_epoch(epoch, self.config.num_epochs, steps);
        let train_started = Instant::now();
        for step in 0..steps {
            let batch = ssl_stream
                .next()
                .ok_or_else(|| anyhow!("data loader ended early"))??;
            let views = batch.to_device(self.device);
            let lr = self.lr_at(epoch, *global_step, full_steps);
            lr_sum += lr;
            for (name, value) in self.algorithm.scalars().map_err(anyhow::Error::msg)? {
                *scalar_sums.entry(name).or_default() += value;
            }
            let amp = self.scaler.is_some();
            let loss = maybe_autocast(amp, || self.algorithm.training_loss(&views))
                .map_err(|e| anyhow!("{} training step: {e}", self.algorithm_name))?;
            self.optimizer.zero_grad();
            let do_step = match &mut self.scaler {
                Some(scaler) => {
                    (&loss * scaler.scale).backward();
                    scaler.unscale(&self.params)
                }
                None => {
                    loss.backward();
                    true
                }
            };
            if do_step {
                self.optimizer.step(lr)?;
            }
            loss_sum += loss.detach().to_kind(Kind::Double);
            images += batch.len();

            // The online linear head, on detached embeddings of its own batch.
            let lh = lh_stream
                .next()
                .ok_or_else(|| anyhow!("linear-head loader ended early"))??;
            let x = lh.to_device(self.device).remove(0);
            let y = lh.label_tensor(self.device, self.head.num_classes)?;
            let embeddings = tch::no_grad(|| self.algorithm.embed(&x, true))
                .map_err(anyhow::Error::msg)?
                .detach();
            let logits = self.head.forward(&embeddings.to_kind(Kind::Float), true);
            let lh_loss = self.head.loss(&logits, &y);
            self.head_optimizer.zero_grad();
            lh_loss.backward();
            self.head_optimizer
                .step(self.config.learning_rate_linear_head_during_ssl_training)?;
            record_batch(&mut lh_metrics, &logits, &lh, &lh_loss)?;

            *global_step += 1;
            self.algorithm
                .after_optimizer_step(*global_step, max_steps)
                .map_err(anyhow::Error::msg)?;
            let elapsed = train_started.elapsed().as_secs_f64();
            bar.step(step + 1, &loss, images as f64 / elapsed.max(1e-9));
        }
        let train_seconds = train_started.elapsed().as_secs_f64();
        let mut metrics = vec![(
            format!("{}/train/loss", self.prefix),
            loss_sum.double_value(&[]) / steps as f64,
        )];
        metrics.push((
            format!("{}/learning_rate", self.prefix),
            lr_sum / steps as f64,
        ));
        for (name, sum) in scalar_sums {
            metrics.push((name, sum / steps as f64));
        }
        for (name, value) in lh_metrics.compute() {
            let name = if name == "loss" {
                "ssl_online_evaluator/train/loss".to_string()
            } else {
                format!("ssl_online_evaluator/train/online_{name}")
            };
            metrics.push((name, value));
        }
        metrics.extend(self.validate(epoch)?);
        metrics.push((
            "throughput/train_images_per_second".into(),
            images as f64 / train_seconds.max(1e-9),
        ));
        metrics.push(("time/epoch_seconds".into(), started.elapsed().as_secs_f64()));
        Ok(metrics)
    }

    /// Validation: the SSL loss on the validation split (training-strength views) and the
    /// linear head on the first batches of its validation split, each sample once.
    fn validate(&mut self, epoch: usize) -> Result<Vec<(String, f64)>> {
        let _guard = tch::no_grad_guard();
        let workers = self.config.num_workers;
        let mut ssl_plan = batches_of(
            &self.ssl_val.1,
            self.config.ssl_training_batch_size,
            self.config.drop_last,
        );
        if self.config.is_debug_model {
            ssl_plan.truncate(1);
        }
        let val_batches = ssl_plan.len();
        let mut lh_plan = batches_of(
            &self.lh_val.1,
            self.config.linear_head_batch_size,
            self.config.drop_last,
        );
        lh_plan.truncate(val_batches);
        let mut loss_sum = Tensor::zeros([], (Kind::Double, self.device));
        for batch in BatchStream::new(Arc::clone(&self.ssl_val.0), epoch as u64, ssl_plan, workers)
        {
            let views = batch?.to_device(self.device);
            let loss = maybe_autocast(self.scaler.is_some(), || {
                self.algorithm.validation_loss(&views)
            })
            .map_err(anyhow::Error::msg)?;
            loss_sum += loss.to_kind(Kind::Double);
        }
        let mut metrics = vec![(
            format!("{}/val/loss", self.prefix),
            if val_batches == 0 {
                f64::NAN
            } else {
                loss_sum.double_value(&[]) / val_batches as f64
            },
        )];
        let mut lh_metrics = EpochMetrics::new(self.head.num_classes);
        for batch in BatchStream::new(Arc::clone(&self.lh_val.0), epoch as u64, lh_plan, workers) {
            let batch = batch?;
            let x = batch.to_device(self.device).remove(0);
            let y = batch.label_tensor(self.device, self.head.num_classes)?;
            let embeddings = self
                .algorithm
                .embed(&x, false)
                .map_err(anyhow::Error::msg)?;
            let logits = self.head.forward(&embeddings.to_kind(Kind::Float), false);
            let loss = self.head.loss(&logits, &y);
            record_batch(&mut lh_metrics, &logits, &batch, &loss)?;
        }
        for (name, value) in lh_metrics.compute() {
            let name = if name == "loss" {
                "ssl_online_evaluator/val/loss".to_string()
            } else {
                format!("ssl_online_evaluator/val/{name}")
            };
            metrics.push((name, value));
        }
        Ok(metrics)
    }
}

/// Progress: a bar per epoch (step, loss, images/s, ETA) on a terminal; nothing here
/// otherwise (the caller prints one plain line per epoch).
pub(crate) struct Progress {
    bar: std::cell::RefCell<Option<ProgressBar>>,
    interactive: bool,
}

impl Progress {
    pub(crate) fn new() -> Progress {
        Progress {
            bar: std::cell::RefCell::new(None),
            interactive: std::io::stderr().is_terminal(),
        }
    }

    pub(crate) fn start_epoch(&self, epoch: usize, epochs: usize, steps: usize) {
        if !self.interactive {
            return;
        }
        let bar = ProgressBar::new(steps as u64);
        let style = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(format!("epoch {}/{epochs}", epoch + 1));
        if let Some(old) = self.bar.replace(Some(bar)) {
            old.finish_and_clear();
        }
    }

    pub(crate) fn step(&self, step: usize, loss: &Tensor, images_per_second: f64) {
        if let Some(bar) = self.bar.borrow().as_ref() {
            bar.set_position(step as u64);
            bar.set_message(format!(
                "loss {:.4} {:.1} images/s",
                loss.double_value(&[]),
                images_per_second
            ));
        }
    }

    pub(crate) fn finish_epoch(&self) {
        if let Some(bar) = self.bar.borrow_mut().take() {
            bar.finish_and_clear();
        }
    }
}

/// Where a run writes: `output_dir`, or a new folder `outputs/<UTC time>_<model>` (with a
/// `_2`, `_3`, ... suffix when runs start in the same second), created here so that no two
/// runs share it.
pub fn output_dir(config: &RunConfig) -> Result<PathBuf> {
    if let Some(d) = &config.output_dir {
        return Ok(PathBuf::from(d));
    }
    new_folder(
        Path::new("outputs"),
        &format!("{}_{}", utc_timestamp(), config.model),
    )
}

/// Removes, when dropped, a run folder that [`output_dir`] created if it is still empty
/// (the run failed before writing anything), so failed starts leave no empty folders.
pub(crate) struct RemoveIfEmpty(Option<PathBuf>);

impl RemoveIfEmpty {
    /// Guards `dir` when the run did not name its folder (`output_dir` unset).
    pub(crate) fn new(config: &RunConfig, dir: &Path) -> Self {
        RemoveIfEmpty(config.output_dir.is_none().then(|| dir.to_path_buf()))
    }
}

impl Drop for RemoveIfEmpty {
    fn drop(&mut self) {
        if let Some(dir) = &self.0 {
            // `remove_dir` removes empty folders only.
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Creates and returns `parent/base`, or `parent/base_2`, `_3`, ... when taken.
fn new_folder(parent: &Path, base: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    for n in 1.. {
        let dir = parent.join(if n == 1 {
            base.to_string()
        } else {
            format!("{base}_{n}")
        });
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
    }
    unreachable!("the suffixes are unbounded")
}

/// The number of classes of a head's labelled dataset and, when `balanced`, the class weights
/// of its loss (from all its labels, as the original).
pub(crate) fn head_classes(
    dataset: &DatasetHandle,
    name: &str,
    balanced: bool,
) -> Result<(usize, Option<Vec<f32>>)> {
    let num_classes = dataset.num_classes().ok_or_else(|| {
        anyhow!("dataset `{name}` is unlabelled, but a linear head or classifier needs labels")
    })?;
    if !balanced {
        return Ok((num_classes, None));
    }
    let targets: Vec<i64> = dataset
        .targets()
        .map_err(anyhow::Error::msg)?
        .into_iter()
        .map(|t| t.unwrap_or(-1))
        .collect();
    let weights = class_weights(&targets, num_classes)
        .with_context(|| format!("class weights of `{name}`"))?;
    Ok((num_classes, Some(weights)))
}

/// The linear head's training pipeline and its validation one (the training one unless
/// `linear_head_val_augmentations` is set).
pub(crate) fn linear_head_pipelines(
    registry: &Registry,
    config: &RunConfig,
) -> Result<(Arc<Pipeline>, Arc<Pipeline>)> {
    let train = Arc::new(Pipeline::build(
        registry,
        &config.linear_head_augmentations,
        "linear_head_augmentations",
    )?);
    let val = match &config.linear_head_val_augmentations {
        Some(specs) => Arc::new(Pipeline::build(
            registry,
            specs,
            "linear_head_val_augmentations",
        )?),
        None => Arc::clone(&train),
    };
    Ok((train, val))
}

/// The output folder of a run and, with `resume`, its last checkpoint; a new run never
/// starts over a folder that holds one.
pub(crate) fn run_folder(
    config: &RunConfig,
    resume: bool,
) -> Result<(PathBuf, Option<checkpoint::Checkpoint>)> {
    let dir = output_dir(config)?;
    let checkpoint_path = dir.join("checkpoints").join("last.safetensors");
    if resume {
        if !checkpoint_path.exists() {
            bail!("--resume: no checkpoint at {}", checkpoint_path.display());
        }
        let stored = checkpoint::load(&checkpoint_path)?;
        return Ok((dir, Some(stored)));
    }
    if checkpoint_path.exists() {
        bail!(
            "{} already holds a run (checkpoints/last.safetensors); continue it with --resume or choose another --output_dir",
            dir.display()
        );
    }
    Ok((dir, None))
}

/// `config.toml`: the resolved config, then the plugins used as comments.
pub(crate) fn write_config_file(
    dir: &Path,
    config: &RunConfig,
    plugins: &BTreeMap<String, String>,
) -> Result<()> {
    let mut text = config.to_toml();
    text.push_str("\n# plugins used:\n");
    for (what, provenance) in plugins {
        text.push_str(&format!("#   {what}: {provenance}\n"));
    }
    crate::atomic_file::write_atomic(&dir.join("config.toml"), text.as_bytes())
}

/// The end of an epoch: its metrics to `metrics.csv` and TensorBoard, then the checkpoint
/// (its record updated to `epoch + 1` epochs and `global_step` steps) written atomically.
pub(crate) fn end_epoch(
    outputs: &mut RunOutputs,
    info: &mut checkpoint::CheckpointInfo,
    config: &RunConfig,
    tensors: &[(String, Tensor)],
    (epoch, global_step): (usize, u64),
    metrics: &[(String, f64)],
) -> Result<()> {
    outputs.write_epoch(epoch, metrics)?;
    info.epochs_done = epoch + 1;
    info.global_step = global_step;
    info.config = config.to_toml();
    checkpoint::save(&outputs.checkpoint_path(), tensors, info)
}

/// The value of metric `name`, NaN when absent.
pub(crate) fn metric(metrics: &[(String, f64)], name: &str) -> f64 {
    metrics
        .iter()
        .find(|(k, _)| k == name)
        .map_or(f64::NAN, |(_, v)| *v)
}

/// Trains; returns the output folder.
pub fn train(registry: &Registry, mut config: RunConfig, options: &RunOptions) -> Result<PathBuf> {
    if config.task == Task::Classifier {
        return crate::classifier::train(registry, config, options);
    }
    let device = choose_device(&config)?;
    let (dir, stored) = run_folder(&config, options.resume)?;
    let _cleanup = RemoveIfEmpty::new(&config, &dir);
    let checkpoint_path = dir.join("checkpoints").join("last.safetensors");
    config.output_dir = Some(dir.display().to_string());
    let mut run = Run::build(registry, config, device, stored.is_none())?;
    let (start_epoch, mut global_step) = match &stored {
        Some(c) => {
            run.restore(&c.tensors)
                .with_context(|| format!("resuming from {}", checkpoint_path.display()))?;
            (c.info.epochs_done, c.info.global_step)
        }
        None => (0, 0),
    };
    let mut outputs = RunOutputs::open(&dir, start_epoch)?;
    write_config_file(&dir, &run.config, &run.info.plugins)?;
    let epochs = run.config.num_epochs;
    let last = options.stop_after_epochs.map_or(epochs, |n| n.min(epochs));
    let progress = Progress::new();
    if start_epoch >= epochs {
        eprintln!("{}: all {epochs} epochs are done already", dir.display());
    }
    let mut warned_skipped = [0usize; 4];
    for epoch in start_epoch..last {
        let metrics = run.epoch(epoch, &mut global_step, &progress);
        progress.finish_epoch();
        run.warn_about_skipped_images(&mut warned_skipped);
        let metrics = metrics?;
        let tensors = run.checkpoint_tensors();
        end_epoch(
            &mut outputs,
            &mut run.info,
            &run.config,
            &tensors,
            (epoch, global_step),
            &metrics,
        )?;
        let get = |n: &str| metric(&metrics, n);
        let line = format!(
            "epoch {}/{epochs}: {} train loss {:.4}, val loss {:.4}, linear head val accuracy {:.3}, {:.1} images/s, {:.1}s",
            epoch + 1,
            run.prefix,
            get(&format!("{}/train/loss", run.prefix)),
            get(&format!("{}/val/loss", run.prefix)),
            get("ssl_online_evaluator/val/AccuracyAtThreshold05"),
            get("throughput/train_images_per_second"),
            get("time/epoch_seconds"),
        );
        eprintln!("{line}");
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::{new_folder, prefixed, warn_if_no_val_batch, LossScaler, RemoveIfEmpty};
    use ssl_plugin_api::tch::Tensor;
    use std::collections::HashMap;

    #[test]
    fn the_loss_scaler_state_survives_a_checkpoint() {
        let mut scaler = LossScaler::new();
        scaler.scale = 1024.0;
        scaler.good_steps = 77;
        let stored: HashMap<String, Tensor> = prefixed("loss_scaler.", scaler.state())
            .into_iter()
            .collect();
        let mut resumed = LossScaler::new();
        resumed.load_state(&stored).unwrap();
        assert_eq!((resumed.scale, resumed.good_steps), (1024.0, 77));
        // A checkpoint without it (a run in 32-bit floats) leaves a fresh scaler.
        let mut fresh = LossScaler::new();
        fresh.load_state(&HashMap::new()).unwrap();
        assert_eq!((fresh.scale, fresh.good_steps), (65536.0, 0));
    }

    #[test]
    fn a_created_run_folder_is_removed_only_while_empty() {
        let tmp = tempfile::tempdir().unwrap();
        let config = crate::config::RunConfig::resolve(
            "ShapesBYOL",
            &[],
            &crate::registry::Registry::load(&[]).unwrap(),
        )
        .unwrap();
        assert!(config.output_dir.is_none());
        let empty = new_folder(tmp.path(), "failed").unwrap();
        drop(RemoveIfEmpty::new(&config, &empty));
        assert!(!empty.exists());
        let used = new_folder(tmp.path(), "used").unwrap();
        std::fs::write(used.join("metrics.csv"), "epoch,name,value\n").unwrap();
        drop(RemoveIfEmpty::new(&config, &used));
        assert!(used.join("metrics.csv").exists());
        // A folder the user named is left alone, empty or not.
        let mut named = config.clone();
        named.output_dir = Some("x".into());
        let mine = new_folder(tmp.path(), "mine").unwrap();
        drop(RemoveIfEmpty::new(&named, &mine));
        assert!(mine.exists());
    }

    #[test]
    fn runs_started_in_the_same_second_get_their_own_folders() {
        let tmp = tempfile::tempdir().unwrap();
        let parent = tmp.path().join("outputs");
        let first = new_folder(&parent, "20261128T101500Z_ShapesBYOL").unwrap();
        let second = new_folder(&parent, "20261128T101500Z_ShapesBYOL").unwrap();
        let third = new_folder(&parent, "20261128T101500Z_ShapesBYOL").unwrap();
        assert_eq!(first, parent.join("20261128T101500Z_ShapesBYOL"));
        assert_eq!(second, parent.join("20261128T101500Z_ShapesBYOL_2"));
        assert_eq!(third, parent.join("20261128T101500Z_ShapesBYOL_3"));
        assert!(first.is_dir() && second.is_dir() && third.is_dir());
    }

    #[test]
    fn a_validation_split_smaller_than_a_batch_is_warned_about_with_drop_last_only() {
        let warning = warn_if_no_val_batch("SSL", 3, 8, "ssl_training_batch_size", true)
            .expect("3 samples, batches of 8, drop_last: no batch");
        assert!(warning.contains("3 samples"), "{warning}");
        assert!(warning.contains("ssl_training_batch_size=8"), "{warning}");
        assert_eq!(
            warn_if_no_val_batch("SSL", 3, 8, "ssl_training_batch_size", false),
            None
        );
        assert_eq!(
            warn_if_no_val_batch("SSL", 8, 8, "ssl_training_batch_size", true),
            None
        );
    }
}
