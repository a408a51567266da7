//! Classifier runs (`task = "classifier"`, InnerEye's `SSLClassifierContainer`): a linear head
//! (dropout 0.2 + linear) on a pretrained encoder, trained on `linear_head_dataset_name`.
//!
//! - The encoder comes from `local_ssl_weights_path` (an ssl-host checkpoint or run folder:
//!   BYOL's target encoder, SimCLR's encoder, or a classifier's encoder; its kind and
//!   parameters come from the checkpoint), or from torchvision-named weights
//!   (`encoder_init`, with `ssl_encoder` naming the architecture).
//! - `freeze_encoder` (default): no gradients and the encoder always in eval mode, so its
//!   BatchNorm statistics do not move; otherwise everything is fine-tuned.
//! - Adam (lr `l_rate`, betas (0.9, 0.999), eps 1e-4, weight decay 1e-4) and the original's
//!   polynomial schedule `(1 - epoch / num_epochs) ** 1e-4` per epoch.
//! - Metrics `{train,val}/{loss,AccuracyAtThreshold05,AreaUnderRocCurve,AreaUnderPRCurve}`,
//!   checkpoints and `--resume` as SSL runs; after the last epoch, when the dataset has a test
//!   split, `test/*` metrics (written under epoch `num_epochs`).

use crate::checkpoint::{self, CheckpointInfo};
use crate::config::RunConfig;
use crate::data::{batches_of, permutation, seed_of, split_dataset, BatchStream, Pipeline, Source};
use crate::metrics::EpochMetrics;
use crate::optim::{self, Optimizer, OptimizerConfig, OptimizerKind, Param};
use crate::outputs::RunOutputs;
use crate::pretrained::{self, encoder_tensors, CLASSIFIER_ALGORITHM};
use crate::registry::Registry;
use crate::schedule::LrSchedule;
use crate::train::{
    choose_device, end_epoch, head_classes, linear_head_pipelines, metric, open_dataset,
    open_split, prefixed, record_batch, run_folder, warn_if_no_val_batch, write_config_file,
    LinearHead, Progress, RemoveIfEmpty, RunOptions,
};
use anyhow::{anyhow, bail, Context, Result};
use ssl_plugin_api::tch::{self, Device, Kind, Tensor};
use ssl_plugin_api::torch::ForeignEncoder;
use ssl_plugin_api::{Encoder, Params};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// The exponent of the original's polynomial schedule.
const POLYNOMIAL_GAMMA: f64 = 1e-4;

struct ClassifierRun {
    config: RunConfig,
    device: Device,
    encoder: ForeignEncoder,
    frozen: bool,
    head: LinearHead,
    optimizer: Box<dyn Optimizer>,
    schedule: LrSchedule,
    dataset_name: String,
    dataset_root: Option<String>,
    train: (Arc<Source>, Vec<usize>),
    val: (Arc<Source>, Vec<usize>),
    val_pipeline: Arc<Pipeline>,
    info: CheckpointInfo,
}

/// The encoder of a new classifier run: from an ssl-host checkpoint or torchvision weights.
/// Returns it with its name and (resolved) parameters.
fn pretrained_encoder(
    registry: &Registry,
    config: &RunConfig,
    device: Device,
) -> Result<(ForeignEncoder, String, serde_json::Value)> {
    match (&config.local_ssl_weights_path, &config.encoder_init) {
        (Some(_), Some(_)) => bail!(
            "give either --local_ssl_weights_path (an ssl-host checkpoint) or --encoder_init (torchvision weights), not both"
        ),
        (Some(path), None) => {
            let (loaded, _) = pretrained::encoder_from_checkpoint(registry, Path::new(path), device)
                .context("--local_ssl_weights_path")?;
            if !config.ssl_encoder.is_empty() && config.ssl_encoder != loaded.name {
                bail!(
                    "{} holds a `{}` encoder, not the `{}` asked for with ssl_encoder (leave ssl_encoder empty to take the checkpoint's)",
                    loaded.path.display(),
                    loaded.name,
                    config.ssl_encoder
                );
            }
            eprintln!(
                "encoder: {} {} from {} ({} run, {} epochs)",
                loaded.name,
                loaded.params,
                loaded.path.display(),
                loaded.info.algorithm,
                loaded.info.epochs_done
            );
            Ok((loaded.encoder, loaded.name, loaded.params))
        }
        (None, Some(weights)) => {
            if config.ssl_encoder.is_empty() {
                bail!("--encoder_init needs --ssl_encoder=NAME (the architecture of the weights)");
            }
            let (encoder, params) = build_encoder(registry, config, device)?;
            let n = pretrained::load_torchvision_weights(
                Path::new(weights),
                &encoder_tensors(&encoder),
                &format!("the `{}` encoder", config.ssl_encoder),
            )
            .context("--encoder_init")?;
            eprintln!("encoder: {} {params} with {n} tensors from {weights}", config.ssl_encoder);
            Ok((encoder, config.ssl_encoder.clone(), params))
        }
        (None, None) => bail!(
            "a classifier needs a pretrained encoder: --local_ssl_weights_path=CHECKPOINT (an ssl-host checkpoint or run folder) or --encoder_init=WEIGHTS.safetensors with --ssl_encoder=NAME"
        ),
    }
}

/// A fresh encoder of `ssl_encoder` with `encoder_params` (an encoder's declared small-image
/// parameter, ResNet's `cifar_stem`, follows the dataset's declared `small_images` unless given,
/// as the original does for CIFAR).
fn build_encoder(
    registry: &Registry,
    config: &RunConfig,
    device: Device,
) -> Result<(ForeignEncoder, serde_json::Value)> {
    let factory = registry.encoder(&config.ssl_encoder)?;
    let mut params = config.encoder_params.clone();
    if let Some(param) = factory.info().small_image_param {
        if !params.contains_key(&param) {
            let small = registry
                .dataset(&config.linear_head_dataset_name)?
                .info()
                .small_images;
            params.insert(param, toml::Value::Boolean(small));
        }
    }
    let json = serde_json::to_value(&params)?;
    let encoder = factory
        .create(
            &Params::from_value(json.clone()).map_err(anyhow::Error::from)?,
            device,
        )
        .map_err(|e| anyhow!("creating encoder `{}`: {e:#}", config.ssl_encoder))?;
    Ok((encoder, json))
}

impl ClassifierRun {
    fn build(
        registry: &Registry,
        mut config: RunConfig,
        device: Device,
        stored: Option<&checkpoint::Checkpoint>,
    ) -> Result<ClassifierRun> {
        let seed = config.random_seed;
        tch::manual_seed(seed as i64);
        let (encoder, encoder_name, encoder_params) = match stored {
            // A resumed run: the encoder is in the classifier's own checkpoint.
            Some(c) => {
                config.ssl_encoder = c.info.encoder.clone();
                let params: serde_json::Value = serde_json::from_str(&c.info.encoder_params)?;
                let encoder = registry
                    .encoder(&c.info.encoder)?
                    .create(
                        &Params::from_value(params.clone()).map_err(anyhow::Error::from)?,
                        device,
                    )
                    .map_err(|e| anyhow!("creating encoder `{}`: {e:#}", c.info.encoder))?;
                (encoder, c.info.encoder.clone(), params)
            }
            None => pretrained_encoder(registry, &config, device)?,
        };
        config.ssl_encoder = encoder_name.clone();
        if let serde_json::Value::Object(map) = &encoder_params {
            config.encoder_params = serde_json::from_value(serde_json::Value::Object(map.clone()))?;
        }

        let name = config.linear_head_dataset_name.clone();
        let root = config.linear_head_dataset_path();
        let dataset = open_dataset(
            registry,
            &name,
            root.as_deref(),
            "train",
            &config.linear_head_dataset_params,
        )?;
        let (num_classes, weights) = head_classes(
            &dataset,
            &name,
            config.use_balanced_binary_loss_for_linear_head,
        )?;
        let (train_idx, val_idx) = split_dataset(&dataset, config.val_split, seed)?;
        warn_if_no_val_batch(
            &format!("`{name}`"),
            val_idx.len(),
            config.linear_head_batch_size,
            "linear_head_batch_size",
            config.drop_last,
        );
        let (train_pipeline, val_pipeline) = linear_head_pipelines(registry, &config)?;
        let source = |pipeline: &Arc<Pipeline>, stream: u64| {
            let mut source = Source::new(
                Arc::clone(&dataset),
                Arc::clone(pipeline),
                1,
                seed_of(&[seed, stream]),
                &name,
            );
            source.skip_unreadable = config.skip_unreadable_images;
            Arc::new(source)
        };
        let train = (source(&train_pipeline, 3), train_idx);
        let val = (source(&val_pipeline, 4), val_idx);

        let frozen = config.freeze_encoder;
        let head = LinearHead::new(encoder.output_dim(), num_classes, weights, device);
        // Every trained tensor gets weight decay (Adam over `self.parameters()` in the original).
        let decayed = |(name, tensor): (String, Tensor)| Param {
            name,
            tensor,
            weight_decay: true,
            lars_adaptation: false,
        };
        let mut params: Vec<Param> = prefixed("linear_head.", head.named_parameters())
            .into_iter()
            .map(decayed)
            .collect();
        if frozen {
            for (_, t) in encoder.named_parameters() {
                let _ = t.shallow_clone().set_requires_grad(false);
            }
        } else {
            params.extend(
                prefixed("encoder.", encoder.named_parameters())
                    .into_iter()
                    .map(decayed),
            );
        }
        let optimizer = optim::build(
            &OptimizerConfig {
                kind: OptimizerKind::Adam,
                weight_decay: 1e-4,
                eps: 1e-4,
                ..Default::default()
            },
            params,
        );
        let schedule = match config.lr_schedule.as_str() {
            "auto" => LrSchedule::Polynomial {
                gamma: POLYNOMIAL_GAMMA,
            },
            other => other.parse().map_err(|e| anyhow!("lr_schedule: {e}"))?,
        };

        let mut plugins = BTreeMap::new();
        plugins.insert(
            "ssl-host".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        );
        let transforms = config
            .linear_head_augmentations
            .iter()
            .chain(config.linear_head_val_augmentations.iter().flatten())
            .map(|t| ("transform", t.name.clone()));
        let used = [("dataset", name.clone()), ("encoder", encoder_name.clone())];
        for (kind, n) in used.into_iter().chain(transforms) {
            if let Some(p) = registry.provenance(kind, &n) {
                plugins.insert(format!("{kind} {n}"), p);
            }
        }
        let info = CheckpointInfo {
            format: checkpoint::FORMAT.into(),
            epochs_done: 0,
            global_step: 0,
            model: config.model.clone(),
            config: config.to_toml(),
            algorithm: CLASSIFIER_ALGORITHM.into(),
            encoder: encoder_name,
            encoder_params: encoder_params.to_string(),
            embedding_encoder_prefix: "encoder.".into(),
            plugins,
        };
        Ok(ClassifierRun {
            config,
            device,
            encoder,
            frozen,
            head,
            optimizer,
            schedule,
            dataset_name: name,
            dataset_root: root,
            train,
            val,
            val_pipeline,
            info,
        })
    }

    fn checkpoint_tensors(&self) -> Vec<(String, Tensor)> {
        let mut all = prefixed("encoder.", encoder_tensors(&self.encoder));
        all.extend(prefixed("linear_head.", self.head.named_parameters()));
        all.extend(prefixed("optimizer.", self.optimizer.state()));
        all
    }

    fn restore(&mut self, stored: &HashMap<String, Tensor>) -> Result<()> {
        checkpoint::restore_into(
            stored,
            "encoder.",
            &encoder_tensors(&self.encoder),
            "the encoder",
        )?;
        checkpoint::restore_into(
            stored,
            "linear_head.",
            &self.head.named_parameters(),
            "the classifier head",
        )?;
        let state: HashMap<String, Tensor> = stored
            .iter()
            .filter_map(|(k, t)| {
                k.strip_prefix("optimizer.")
                    .map(|n| (n.to_string(), t.shallow_clone()))
            })
            .collect();
        self.optimizer
            .load_state(&state)
            .context("restoring the classifier optimizer")
    }

    /// Features of a batch: without gradients and in eval mode when the encoder is frozen.
    fn features(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        let features = if self.frozen || !train {
            tch::no_grad(|| self.encoder.forward(x, false))
                .map_err(anyhow::Error::from)?
                .detach()
        } else {
            self.encoder.forward(x, true).map_err(anyhow::Error::from)?
        };
        Ok(features.to_kind(Kind::Float))
    }

    fn epoch(
        &mut self,
        epoch: usize,
        global_step: &mut u64,
        bar: &Progress,
    ) -> Result<Vec<(String, f64)>> {
        let started = Instant::now();
        tch::manual_seed(seed_of(&[self.config.random_seed, epoch as u64, 17]) as i64 & i64::MAX);
        let idx = &self.train.1;
        let order: Vec<usize> = permutation(
            idx.len(),
            seed_of(&[self.config.random_seed, epoch as u64, 11]),
        )
        .into_iter()
        .map(|i| idx[i])
        .collect();
        let mut plan = batches_of(
            &order,
            self.config.linear_head_batch_size,
            self.config.drop_last,
        );
        if plan.is_empty() {
            bail!(
                "the training split of `{}` has {} samples, fewer than linear_head_batch_size={} (drop_last)",
                self.dataset_name,
                idx.len(),
                self.config.linear_head_batch_size
            );
        }
        // The schedule sees the whole epoch's length, also when a debug run takes one step.
        let full_steps = plan.len();
        if self.config.is_debug_model {
            plan.truncate(1);
        }
        let steps = plan.len();
        let (schedule, l_rate, num_epochs) =
            (self.schedule, self.config.l_rate, self.config.num_epochs);
        let lr_at = move |step_in_run: u64| {
            schedule.lr(l_rate, epoch, step_in_run as usize, full_steps, num_epochs)
        };
        // Logged: the epoch's mean rate, as SSL runs log theirs.
        let mut lr_sum = 0.0;
        let mut metrics = EpochMetrics::new(self.head.num_classes);
        let mut images = 0usize;
        bar.start_epoch(epoch, self.config.num_epochs, steps);
        let train_started = Instant::now();
        let stream = BatchStream::new(
            Arc::clone(&self.train.0),
            epoch as u64,
            plan,
            self.config.num_workers,
        );
        for (step, batch) in stream.enumerate() {
            let batch = batch?;
            let x = batch.to_device(self.device).remove(0);
            let y = batch.label_tensor(self.device, self.head.num_classes)?;
            let features = self.features(&x, true)?;
            let logits = self.head.forward(&features, true);
            let loss = self.head.loss(&logits, &y);
            self.optimizer.zero_grad();
            loss.backward();
            let lr = lr_at(*global_step);
            lr_sum += lr;
            self.optimizer.step(lr)?;
            *global_step += 1;
            images += batch.len();
            record_batch(&mut metrics, &logits, &batch, &loss)?;
            let elapsed = train_started.elapsed().as_secs_f64();
            bar.step(step + 1, &loss, images as f64 / elapsed.max(1e-9));
        }
        let train_seconds = train_started.elapsed().as_secs_f64();
        let mut out: Vec<(String, f64)> = metrics
            .compute()
            .into_iter()
            .map(|(n, v)| (format!("train/{n}"), v))
            .collect();
        out.push(("train/learning_rate".into(), lr_sum / steps as f64));
        let mut val_plan = batches_of(
            &self.val.1,
            self.config.linear_head_batch_size,
            self.config.drop_last,
        );
        if self.config.is_debug_model {
            val_plan.truncate(1);
        }
        out.extend(self.evaluate(Arc::clone(&self.val.0), epoch, val_plan, "val")?);
        out.push((
            "throughput/train_images_per_second".into(),
            images as f64 / train_seconds.max(1e-9),
        ));
        out.push(("time/epoch_seconds".into(), started.elapsed().as_secs_f64()));
        Ok(out)
    }

    /// Loss and metrics of `plan` (head in eval mode), named `<what>/<metric>`.
    fn evaluate(
        &mut self,
        source: Arc<Source>,
        epoch: usize,
        plan: Vec<Vec<usize>>,
        what: &str,
    ) -> Result<Vec<(String, f64)>> {
        let _guard = tch::no_grad_guard();
        let mut metrics = EpochMetrics::new(self.head.num_classes);
        for batch in BatchStream::new(source, epoch as u64, plan, self.config.num_workers) {
            let batch = batch?;
            let x = batch.to_device(self.device).remove(0);
            let y = batch.label_tensor(self.device, self.head.num_classes)?;
            let features = self.features(&x, false)?;
            let logits = self.head.forward(&features, false);
            let loss = self.head.loss(&logits, &y);
            record_batch(&mut metrics, &logits, &batch, &loss)?;
        }
        Ok(metrics
            .compute()
            .into_iter()
            .map(|(n, v)| (format!("{what}/{n}"), v))
            .collect())
    }

    /// `test/*` metrics on the dataset's test split (CIFAR's 10000), or nothing when it has none.
    fn test(&mut self, registry: &Registry) -> Result<Vec<(String, f64)>> {
        let test = open_split(
            registry,
            &self.dataset_name,
            self.dataset_root.as_deref(),
            "test",
            &self.config.linear_head_dataset_params,
        )
        .context("the test split")?;
        if test.is_empty() {
            return Ok(Vec::new());
        }
        let test = Arc::new(test);
        let mut source = Source::new(
            Arc::clone(&test),
            Arc::clone(&self.val_pipeline),
            1,
            seed_of(&[self.config.random_seed, 5]),
            &format!("{} (test)", self.dataset_name),
        );
        source.skip_unreadable = self.config.skip_unreadable_images;
        let order: Vec<usize> = (0..test.len()).collect();
        // Every test sample once: the last, incomplete batch is kept.
        let plan = batches_of(&order, self.config.linear_head_batch_size, false);
        self.evaluate(Arc::new(source), self.config.num_epochs, plan, "test")
    }
}

/// Trains a classifier; returns the output folder.
pub fn train(registry: &Registry, mut config: RunConfig, options: &RunOptions) -> Result<PathBuf> {
    let device = choose_device(&config)?;
    if config.use_mixed_precision && device != Device::Cpu {
        eprintln!("note: classifier runs train in 32-bit floats; use_mixed_precision is ignored");
    }
    let (dir, stored) = run_folder(&config, options.resume)?;
    let _cleanup = RemoveIfEmpty::new(&config, &dir);
    let checkpoint_path = dir.join("checkpoints").join("last.safetensors");
    if let Some(c) = &stored {
        if c.info.algorithm != CLASSIFIER_ALGORITHM {
            bail!(
                "--resume: {} is a checkpoint of a {} run, not of a classifier",
                checkpoint_path.display(),
                c.info.algorithm
            );
        }
    }
    config.output_dir = Some(dir.display().to_string());
    let mut run = ClassifierRun::build(registry, config, device, stored.as_ref())?;
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
    for epoch in start_epoch..last {
        let metrics = run.epoch(epoch, &mut global_step, &progress);
        progress.finish_epoch();
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
        eprintln!(
            "epoch {}/{epochs}: classifier train loss {:.4}, val loss {:.4}, val accuracy {:.3}, {:.1} images/s, {:.1}s",
            epoch + 1,
            get("train/loss"),
            get("val/loss"),
            get("val/AccuracyAtThreshold05"),
            get("throughput/train_images_per_second"),
            get("time/epoch_seconds"),
        );
    }
    if last == epochs {
        let test = run.test(registry).with_context(|| {
            format!(
                "training finished and its checkpoint and metrics are saved in {}, but the \
                 test split could not be evaluated; `--output_dir={} --resume` retries only \
                 the test evaluation",
                dir.display(),
                dir.display()
            )
        })?;
        if !test.is_empty() {
            outputs.write_epoch(epochs, &test)?;
            let accuracy = metric(&test, "test/AccuracyAtThreshold05");
            eprintln!("test split: accuracy {accuracy:.3} (test/* in metrics.csv)");
        }
    }
    Ok(dir)
}
