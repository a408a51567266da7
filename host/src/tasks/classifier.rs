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
//! - On a multi-label dataset (one that declares findings), a multi-label head: one output per
//!   finding, binary cross-entropy without the unknown entries, and the metrics
//!   `{train,val,test}/{loss,auroc/<finding>,auprc/<finding>,auroc_macro,auprc_macro}`
//!   ([`crate::metrics::FindingMetrics`]). The checkpoint then also holds the findings' names
//!   ([`FINDINGS_TENSOR`]), so that `predict` knows the head is multi-label.

use crate::checkpoint::{self, prefixed, under, Checkpoint, CheckpointInfo};
use crate::config::RunConfig;
use crate::datasets::{open_dataset, open_split};
use crate::engine::precision::{self, Precision};
use crate::engine::{
    EpochSteps, FinalEvaluation, OptimizerSlot, StepPath, StepReport, Task, TrainSummary,
};
use crate::loader::{BatchStream, Seeds, Source, ViewGroup};
use crate::metrics::HeadMetrics;
use crate::optim::{OptimizerConfig, OptimizerKind, Param};
use crate::pretrained::{self, encoder_tensors, CLASSIFIER_ALGORITHM};
use crate::registry::Registry;
use crate::sampler::{Order, Sampler};
use crate::schedule::LrSchedule;
use crate::seeds::seed_of;
use crate::shards::StoreSettings;
use crate::split::split_dataset;
use crate::tasks::linear_head::{
    head_labels, linear_head_pipelines, HeadLabels, LinearHead, PendingBatches,
};
use crate::tasks::shuffled_order;
use crate::tasks::{encoder_params, plugins_used, transforms_used, warn_if_no_val_batch, Data};
use anyhow::{anyhow, bail, Context, Result};
use ssl_plugin_api::tch::{self, Device, Kind, Tensor};
use ssl_plugin_api::torch::ForeignEncoder;
use ssl_plugin_api::{Encoder, Params};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// The exponent of the original's polynomial schedule.
const POLYNOMIAL_GAMMA: f64 = 1e-4;
/// The seed streams of the loaders (part of every augmentation seed; do not change).
const TRAIN: u64 = 3;
const VAL: u64 = 4;
const TEST: u64 = 5;
/// The shuffle stream of the training sampler.
const SHUFFLE: u64 = 11;
/// The checkpoint tensor of a multi-label classifier naming its findings, in output order: the
/// names' UTF-8 bytes, each followed by a newline (uint8).
pub const FINDINGS_TENSOR: &str = "linear_head_findings";

/// The [`FINDINGS_TENSOR`] of `names`.
pub fn findings_tensor(names: &[String]) -> Tensor {
    let text: String = names.iter().map(|n| format!("{n}\n")).collect();
    Tensor::from_slice(text.as_bytes())
}

/// The findings' names stored in a [`FINDINGS_TENSOR`].
pub fn findings_of_tensor(tensor: &Tensor) -> Result<Vec<String>> {
    let bytes = Vec::<u8>::try_from(tensor)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| anyhow!("the checkpoint's `{FINDINGS_TENSOR}` is not UTF-8 text"))?;
    Ok(text.lines().map(str::to_string).collect())
}

/// A classifier run.
pub struct ClassifierTask<'a> {
    config: RunConfig,
    registry: &'a Registry,
    device: Device,
    encoder: ForeignEncoder,
    frozen: bool,
    head: LinearHead,
    optimizer: OptimizerSlot,
    /// The precision it trains and evaluates in (`precision`).
    precision: Precision,
    schedule: LrSchedule,
    dataset_name: String,
    dataset_root: Option<String>,
    train: Data,
    val: Data,
    val_pipeline: ViewGroup,
    info: CheckpointInfo,
    stream: Option<BatchStream>,
    metrics: Option<HeadMetrics>,
    /// The training batches' predictions not yet read from the device.
    pending: PendingBatches,
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

/// A fresh encoder of `ssl_encoder` with the run's encoder parameters ([`encoder_params`]).
fn build_encoder(
    registry: &Registry,
    config: &RunConfig,
    device: Device,
) -> Result<(ForeignEncoder, serde_json::Value)> {
    let factory = registry.encoder(&config.ssl_encoder)?;
    let params = encoder_params(registry, config, &config.linear_head_dataset_info(registry))?;
    let json = serde_json::to_value(&params)?;
    let encoder = factory
        .create(&Params::from_value(json.clone())?, device)
        .with_context(|| format!("creating encoder `{}`", config.ssl_encoder))?;
    Ok((encoder, json))
}

impl<'a> ClassifierTask<'a> {
    /// Builds the run: the encoder (from `stored` when resuming, else pretrained), the dataset
    /// and its split, the head and its optimizer.
    pub fn build(
        registry: &'a Registry,
        mut config: RunConfig,
        device: Device,
        stored: Option<&Checkpoint>,
    ) -> Result<ClassifierTask<'a>> {
        if let Some(c) = stored {
            if c.info.algorithm != CLASSIFIER_ALGORITHM {
                bail!(
                    "--resume: the checkpoint in {} is of a {} run, not of a classifier",
                    config.output_dir.as_deref().unwrap_or("the run folder"),
                    c.info.algorithm
                );
            }
        }
        let (precision, note) = precision::resolve(&config, device);
        if let Some(note) = note {
            eprintln!("{note}");
        }
        let seed = config.random_seed;
        tch::manual_seed(seed as i64);
        let (encoder, encoder_name, encoder_params) = match stored {
            // A resumed run: the encoder is in the classifier's own checkpoint.
            Some(c) => {
                config.ssl_encoder = c.info.encoder.clone();
                let params: serde_json::Value = serde_json::from_str(&c.info.encoder_params)?;
                let encoder = registry
                    .encoder(&c.info.encoder)?
                    .create(&Params::from_value(params.clone())?, device)
                    .with_context(|| format!("creating encoder `{}`", c.info.encoder))?;
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
            &StoreSettings::from_config(&config),
        )?;
        let (train_idx, val_idx) = split_dataset(&dataset, config.val_split, seed)?;
        let (labels, weights) = head_labels(
            &dataset,
            &name,
            config.use_balanced_binary_loss_for_linear_head,
            &train_idx,
        )?;
        warn_if_no_val_batch(
            &format!("`{name}`"),
            val_idx.len(),
            config.linear_head_batch_size,
            "linear_head_batch_size",
            config.drop_last,
        );
        let (train_pipeline, val_pipeline) = linear_head_pipelines(registry, &config)?;
        let source = |group: &ViewGroup, stream: u64| {
            let mut source = Source::new(
                Arc::clone(&dataset),
                vec![group.clone()],
                Seeds::PerEpoch(seed_of(&[seed, stream])),
                &name,
            );
            source.skip_unreadable = config.skip_unreadable_images;
            source.pin_for = (device != Device::Cpu).then_some(device);
            Arc::new(source)
        };
        let (bs, drop_last) = (config.linear_head_batch_size, config.drop_last);
        // With several processes, each takes its slice of every global batch.
        let world = crate::world::current();
        let train = Data {
            source: source(&train_pipeline, TRAIN),
            sampler: Sampler::new(
                train_idx,
                bs,
                drop_last,
                shuffled_order(&config, &dataset, seed, SHUFFLE)?,
            )
            .for_rank(world.rank(), world.size())
            .checked()?,
        };
        let val = Data {
            source: source(&val_pipeline, VAL),
            sampler: Sampler::new(val_idx, bs, drop_last, Order::Sequential)
                .for_rank(world.rank(), world.size()),
        };

        let frozen = config.freeze_encoder;
        let head = LinearHead::new(encoder.output_dim(), labels, weights, device);
        // Every trained tensor gets weight decay (Adam over `self.parameters()` in the original).
        let decayed = |(name, tensor): (String, Tensor)| Param {
            name,
            tensor,
            weight_decay: true,
            lars_adaptation: false,
            scheduled: true,
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
        let optimizer = OptimizerSlot::new(
            "classifier",
            &OptimizerConfig {
                kind: OptimizerKind::Adam,
                weight_decay: 1e-4,
                eps: 1e-4,
                ..Default::default()
            },
            params,
            precision.scales_loss(),
        );
        let schedule = config
            .lr_schedule
            .fixed()
            .unwrap_or(LrSchedule::Polynomial {
                gamma: POLYNOMIAL_GAMMA,
            });
        let mut used = vec![("dataset", name.clone()), ("encoder", encoder_name.clone())];
        used.extend(transforms_used(&config, false));
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
            plugins: plugins_used(registry, &used),
            world_size: crate::world::current().size(),
            precision: precision.to_string(),
        };
        Ok(ClassifierTask {
            config,
            registry,
            device,
            encoder,
            frozen,
            head,
            optimizer,
            precision,
            schedule,
            dataset_name: name,
            dataset_root: root,
            train,
            val,
            val_pipeline,
            info,
            stream: None,
            metrics: None,
            pending: PendingBatches::default(),
        })
    }

    /// Adds the training batches kept on the device to the epoch's metrics.
    fn flush_pending(&mut self) -> Result<()> {
        let pending = std::mem::take(&mut self.pending);
        match &mut self.metrics {
            Some(metrics) => pending.flush_into(metrics),
            None => Ok(()),
        }
    }

    /// Features of a batch (fp32): without gradients and in eval mode when the encoder is
    /// frozen; the encoder under the run's autocast (the head computes in fp32).
    fn features(&mut self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (precision, device, encoder) = (self.precision, self.device, &mut self.encoder);
        let features = if self.frozen || !train {
            tch::no_grad(|| precision::autocast(precision, device, || encoder.forward(x, false)))??
                .detach()
        } else {
            precision::autocast(precision, device, || encoder.forward(x, true))??
        };
        Ok(features.to_kind(Kind::Float))
    }

    /// Loss and metrics of `plan` of `data`, whose dataset has `labels` (head in eval mode,
    /// every process's predictions together), named `<what>/<metric>`.
    fn evaluate(
        &mut self,
        data: &Data,
        labels: &HeadLabels,
        epoch: usize,
        plan: Vec<Vec<usize>>,
        what: &str,
    ) -> Result<Vec<(String, f64)>> {
        let (workers, device, precision) = (self.config.num_workers, self.device, self.precision);
        let encoder = &mut self.encoder;
        let metrics =
            data.evaluate_head(epoch, plan, workers, device, &self.head, labels, |x| {
                Ok(precision::autocast(precision, device, || {
                    encoder.forward(x, false)
                })??)
            })?;
        Ok(metrics
            .into_iter()
            .map(|(n, v)| (format!("{what}/{n}"), v))
            .collect())
    }

    /// The metric an epoch's line shows for `what` (`val`, `test`): what it is called there and
    /// its name: the accuracy, or for a multi-label head the macro-averaged AUROC.
    fn headline(&self, what: &str) -> (&'static str, String) {
        if self.head.labels.is_multi_label() {
            (
                "AUROC (macro)",
                format!("{what}/{}", crate::metrics::AUROC_MACRO),
            )
        } else {
            ("accuracy", format!("{what}/{}", crate::metrics::ACCURACY))
        }
    }

    /// `test/*` metrics on the dataset's test split (CIFAR's 10000), or nothing when it has none.
    fn test(&mut self) -> Result<Vec<(String, f64)>> {
        let test = open_split(
            self.registry,
            &self.dataset_name,
            self.dataset_root.as_deref(),
            "test",
            &self.config.linear_head_dataset_params,
            &StoreSettings::from_config(&self.config),
        )?;
        if test.is_empty() {
            return Ok(Vec::new());
        }
        let labels = HeadLabels::of(&test, &self.dataset_name)?;
        self.head.labels.check_same(
            &labels,
            &format!("the test split of `{}`", self.dataset_name),
        )?;
        let order: Vec<usize> = (0..test.len()).collect();
        let mut source = Source::new(
            test,
            vec![self.val_pipeline.clone()],
            Seeds::PerEpoch(seed_of(&[self.config.random_seed, TEST])),
            &format!("{} (test)", self.dataset_name),
        );
        source.skip_unreadable = self.config.skip_unreadable_images;
        // Every test sample once: the last, incomplete batch is kept.
        let world = crate::world::current();
        let sampler = Sampler::new(
            order,
            self.config.linear_head_batch_size,
            false,
            Order::Sequential,
        )
        .for_rank(world.rank(), world.size());
        let epoch = self.config.num_epochs;
        let plan = sampler.batches(epoch as u64);
        let data = Data {
            source: Arc::new(source),
            sampler,
        };
        self.evaluate(&data, &labels, epoch, plan, "test")
    }
}

impl Task for ClassifierTask<'_> {
    fn config(&self) -> &RunConfig {
        &self.config
    }

    fn info_mut(&mut self) -> &mut CheckpointInfo {
        &mut self.info
    }

    fn schedule(&self) -> LrSchedule {
        self.schedule
    }

    fn device(&self) -> Device {
        self.device
    }

    fn epoch_state(&mut self) -> Result<Vec<(String, Tensor)>> {
        // Every process's predictions together (rank 0 writes them).
        let world = crate::world::current();
        self.flush_pending()?;
        Ok(match &self.metrics {
            Some(m) => prefixed("train.", m.gathered(world)?.state()),
            None => Vec::new(),
        })
    }

    fn restore_epoch_state(&mut self, stored: &HashMap<String, Tensor>) -> Result<()> {
        // Rank 0 takes the stored predictions of every process; the others start empty.
        if !crate::world::current().is_main() {
            return Ok(());
        }
        if let Some(metrics) = &mut self.metrics {
            metrics.load_state(&under(stored, "train."))?;
        }
        Ok(())
    }

    fn begin_epoch(&mut self, epoch: usize, skip: usize) -> Result<EpochSteps> {
        let mut plan = self.train.sampler.batches(epoch as u64);
        if plan.is_empty() {
            bail!(
                "the training split of `{}` has {} samples, fewer than linear_head_batch_size={} (drop_last)",
                self.dataset_name,
                self.train.sampler.len(),
                self.config.linear_head_batch_size
            );
        }
        // The schedule sees the whole epoch's length, also when a debug run takes one step.
        let full_steps = plan.len();
        if self.config.is_debug_model {
            plan.truncate(1);
        }
        let steps = plan.len();
        self.stream = Some(BatchStream::new(
            Arc::clone(&self.train.source),
            epoch as u64,
            plan.into_iter().skip(skip).collect(),
            self.config.num_workers,
        ));
        self.metrics = Some(self.head.labels.metrics());
        self.pending = PendingBatches::default();
        Ok(EpochSteps { steps, full_steps })
    }

    fn train_step(&mut self, path: &mut StepPath, lr: f64) -> Result<StepReport> {
        let batch = self
            .stream
            .as_mut()
            .and_then(Iterator::next)
            .ok_or_else(|| anyhow!("data loader ended early"))??;
        let x = batch.images(self.device)?;
        let y = self.head.labels.tensor(&batch, self.device)?;
        let features = self.features(&x, true)?;
        let logits = self.head.forward(&features, true);
        let loss = self.head.loss(&logits, &y);
        let outcome = path.step(&mut self.optimizer, &loss, lr)?;
        if self.metrics.is_some() {
            self.pending
                .push(&self.head.labels, &logits, &batch, &loss, outcome.counted())?;
        }
        Ok(StepReport {
            loss,
            images: batch.len() * crate::world::current().size(),
        })
    }

    fn end_epoch(&mut self, epoch: usize, summary: &TrainSummary) -> Result<Vec<(String, f64)>> {
        self.stream = None;
        self.flush_pending()?;
        let mut out: Vec<(String, f64)> = self
            .metrics
            .take()
            .map(|m| m.gathered(crate::world::current()).map(|m| m.compute()))
            .transpose()?
            .unwrap_or_default()
            .into_iter()
            .map(|(n, v)| (format!("train/{n}"), v))
            .collect();
        out.push(("train/learning_rate".into(), summary.mean_lr));
        let mut plan = self.val.sampler.batches(epoch as u64);
        if self.config.is_debug_model {
            plan.truncate(1);
        }
        let (val, labels) = (self.val.clone(), self.head.labels.clone());
        out.extend(self.evaluate(&val, &labels, epoch, plan, "val")?);
        Ok(out)
    }

    fn checkpoint_tensors(&self) -> Vec<(String, Tensor)> {
        let mut all = prefixed("encoder.", encoder_tensors(&self.encoder));
        all.extend(prefixed("linear_head.", self.head.named_parameters()));
        all.extend(prefixed("optimizer.", self.optimizer.state()));
        all.extend(prefixed("loss_scaler.", self.optimizer.scaler_state()));
        if let HeadLabels::Findings(findings) = &self.head.labels {
            all.push((FINDINGS_TENSOR.into(), findings_tensor(findings.names())));
        }
        all
    }

    fn restore(&mut self, stored: &HashMap<String, Tensor>) -> Result<()> {
        let stored_findings = stored
            .get(FINDINGS_TENSOR)
            .map(findings_of_tensor)
            .transpose()?;
        let live_findings = match &self.head.labels {
            HeadLabels::Findings(f) => Some(f.names().to_vec()),
            HeadLabels::Classes(_) => None,
        };
        if stored_findings != live_findings {
            let describe = |f: &Option<Vec<String>>| match f {
                Some(names) => format!("a multi-label head for {}", names.join(", ")),
                None => "a single-label head".to_string(),
            };
            bail!(
                "--resume: the checkpoint holds {}, but dataset `{}` now gives {}",
                describe(&stored_findings),
                self.dataset_name,
                describe(&live_findings)
            );
        }
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
        self.optimizer
            .load_state(&under(stored, "optimizer."))
            .context("restoring the classifier optimizer")?;
        self.optimizer
            .load_scaler_state(&under(stored, "loss_scaler."))
            .context("restoring the classifier's loss scaler")
    }

    fn epoch_line(&self, epoch: usize, metrics: &[(String, f64)]) -> String {
        let get = |n: &str| crate::engine::metric(metrics, n);
        let (score, name) = self.headline("val");
        format!(
            "epoch {}/{}: classifier train loss {:.4}, val loss {:.4}, val {score} {:.3}, {:.1} images/s, {:.1}s",
            epoch + 1,
            self.config.num_epochs,
            get("train/loss"),
            get("val/loss"),
            get(&name),
            get("throughput/train_images_per_second"),
            get("time/epoch_seconds"),
        )
    }

    fn sources(&self) -> Vec<(Arc<Source>, &'static str)> {
        vec![
            (Arc::clone(&self.train.source), "training"),
            (Arc::clone(&self.val.source), "validation"),
        ]
    }

    fn final_evaluation(&mut self) -> Result<Option<FinalEvaluation>> {
        let test = self.test().context("the test split")?;
        let (score, name) = self.headline("test");
        let value = crate::engine::metric(&test, &name);
        Ok(Some(FinalEvaluation {
            metrics: test,
            line: format!("test split: {score} {value:.3} (test/* in metrics.csv)"),
        }))
    }
}
