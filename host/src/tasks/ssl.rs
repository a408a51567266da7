//! SSL pretraining. Each training step trains the algorithm plugin on the views of an SSL batch
//! (one list, in view-group order), then the online linear head on detached embeddings of a
//! linear-head batch; the engine then calls the algorithm's after-step hook (BYOL's moving
//! average), in the order of the original. Validation: the SSL loss on the validation split and
//! the linear head on as many batches of its validation split; then (`knn_monitor`) the kNN
//! monitor ([`crate::tasks::knn`]): the linear-head validation split classified against
//! embeddings of its training split.
//!
//! When the linear-head dataset is multi-label (it declares findings), the online head is a
//! multi-label head (see [`crate::tasks::linear_head`]) with per-finding metrics
//! (`ssl_online_evaluator/val/auroc/<finding>`, `.../train/online_auroc_macro`, ...), and the
//! kNN monitor, which needs one class per sample, is skipped with a note.

use crate::checkpoint::{self, prefixed, under, Checkpoint, CheckpointInfo};
use crate::config::RunConfig;
use crate::datasets::open_dataset;
use crate::engine::precision::{self, autocast, Precision};
use crate::engine::{EpochSteps, OptimizerSlot, StepPath, StepReport, Task, TrainSummary};
use crate::loader::{channels_last, BatchStream, Seeds, Source, ViewGroup};
use crate::metrics::HeadMetrics;
use crate::optim::{OptimizerConfig, OptimizerKind, Param};
use crate::registry::Registry;
use crate::sampler::{Order, Sampler};
use crate::schedule::LrSchedule;
use crate::seeds::seed_of;
use crate::shards::StoreSettings;
use crate::split::split_dataset;
use crate::tasks::knn::{self, knn_accuracy};
use crate::tasks::linear_head::{
    head_labels, linear_head_pipelines, HeadLabels, LinearHead, PendingBatches,
};
use crate::tasks::shuffled_order;
use crate::tasks::{
    encoder_params, plugins_used, reduce_named, transforms_used, warn_if_no_val_batch, Data,
};
use crate::world::Reduce;
use anyhow::{anyhow, bail, Context, Result};
use ssl_plugin_api::host::DatasetHandle;
use ssl_plugin_api::tch::{self, Device, Kind, Tensor};
use ssl_plugin_api::torch::ForeignAlgorithm;
use ssl_plugin_api::{EncoderSpec, Params, SslAlgorithm};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// The seed streams of the loaders (part of every augmentation seed; do not change).
const SSL_TRAIN: u64 = 1;
const SSL_VAL: u64 = 2;
const LINEAR_HEAD_TRAIN: u64 = 3;
const LINEAR_HEAD_VAL: u64 = 4;
const KNN_BANK: u64 = 5;
/// The shuffle streams of the samplers.
const SSL_SHUFFLE: u64 = 11;
const LINEAR_HEAD_SHUFFLE: u64 = 13;
/// Batches of the kNN bank in a debug run (and of its queries: 1).
const DEBUG_KNN_BANK_BATCHES: usize = 4;

/// The running sums of an epoch's training pass.
#[derive(Default)]
struct EpochSums {
    loss: Option<Tensor>,
    /// Steps whose loss is not in `loss` (not finite, skipped: `nan_policy = skip_step`;
    /// Int64 on the device).
    skipped: Option<Tensor>,
    scalars: BTreeMap<String, f64>,
    linear_head: Option<HeadMetrics>,
    /// The head's batches not yet read from the device.
    pending: PendingBatches,
}

/// The kNN monitor's data, every sample once, in order: the linear-head training split through
/// the linear-head validation pipeline (the bank) and the validation split (the queries).
struct KnnData {
    bank: Data,
    queries: Data,
}

/// An SSL pretraining run.
pub struct SslTask {
    config: RunConfig,
    device: Device,
    algorithm: ForeignAlgorithm,
    algorithm_name: String,
    prefix: String,
    optimizer: OptimizerSlot,
    /// The precision of the SSL loss (the online head and the kNN monitor stay fp32).
    precision: Precision,
    schedule: LrSchedule,
    head: LinearHead,
    head_optimizer: OptimizerSlot,
    ssl_train: Data,
    ssl_val: Data,
    lh_train: Data,
    lh_val: Data,
    knn: Option<KnnData>,
    info: CheckpointInfo,
    /// The loaders of the current epoch's training pass.
    streams: Option<(BatchStream, BatchStream)>,
    sums: EpochSums,
}

/// The count of [`EpochSums::skipped`] (a read of the device: at a checkpoint or the epoch's
/// end).
fn skipped_steps(skipped: &Option<Tensor>) -> i64 {
    skipped.as_ref().map_or(0, |s| s.int64_value(&[]))
}

fn to_params(list: Vec<ssl_plugin_api::TrainableParam>) -> Vec<Param> {
    list.into_iter()
        .map(|p| Param {
            name: p.name,
            tensor: p.tensor,
            weight_decay: p.weight_decay,
            lars_adaptation: p.lars_adaptation,
            scheduled: p.scheduled,
        })
        .collect()
}

/// The SSL view groups of `config` with their pipelines made.
fn view_groups(registry: &Registry, config: &RunConfig) -> Result<Vec<ViewGroup>> {
    config
        .view_groups()
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let what = if config.ssl_view_groups.is_empty() {
                "ssl_augmentations".to_string()
            } else {
                format!("ssl_view_groups[{i}].pipeline")
            };
            ViewGroup::build(registry, config, &g.pipeline, g.count, &what)
        })
        .collect()
}

/// The SSL training dataset of `config` (its training split, before the validation split is
/// taken out), with its name.
pub fn ssl_dataset(
    registry: &Registry,
    config: &RunConfig,
) -> Result<(String, Arc<DatasetHandle>)> {
    let name = config
        .ssl_training_dataset_name
        .clone()
        .ok_or_else(|| anyhow!("`ssl_training_dataset_name` is not set"))?;
    let dataset = open_dataset(
        registry,
        &name,
        config.local_dataset.as_deref(),
        "train",
        &config.ssl_dataset_params,
        &StoreSettings::from_config(config),
    )?;
    Ok((name, dataset))
}

/// The source of SSL training views of `dataset` (called `name`) as training draws them on
/// `device`: what `preview` shows and `bench-data` measures.
pub fn training_views(
    registry: &Registry,
    config: &RunConfig,
    dataset: Arc<DatasetHandle>,
    name: &str,
    device: Device,
) -> Result<Source> {
    let groups = view_groups(registry, config)?;
    Ok(loader_source(
        config, &dataset, groups, SSL_TRAIN, name, device,
    ))
}

/// The sampler of SSL training over the training indices `train` of `dataset` (as training
/// orders them), for this process.
pub fn training_sampler(
    config: &RunConfig,
    dataset: &Arc<DatasetHandle>,
    train: Vec<usize>,
) -> Result<Sampler> {
    let world = crate::world::current();
    Sampler::new(
        train,
        config.ssl_training_batch_size,
        config.drop_last,
        shuffled_order(config, dataset, config.random_seed, SSL_SHUFFLE)?,
    )
    .for_rank(world.rank(), world.size())
    .checked()
}

/// The data of an SSL run: its SSL splits, the linear head's, the kNN monitor's, this
/// process's share of each.
struct SslData {
    ssl_name: String,
    ssl_train: Data,
    ssl_val: Data,
    lh_train: Data,
    lh_val: Data,
    knn: Option<KnnData>,
    /// What the linear head learns and, when balanced, its loss weights.
    labels: HeadLabels,
    head_weights: Option<Vec<f32>>,
    lh_name: String,
}

impl SslData {
    /// Opens the datasets of `config`, splits them and makes their loaders' sources and
    /// samplers (SSL training exactly as [`training_views`] and [`training_sampler`] make them
    /// for `preview` and `bench-data`).
    fn open(registry: &Registry, config: &RunConfig, device: Device) -> Result<SslData> {
        let seed = config.random_seed;
        let (ssl_name, ssl_dataset) = ssl_dataset(registry, config)?;
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
                &StoreSettings::from_config(config),
            )?
        };
        let (ssl_train_idx, ssl_val_idx) = split_dataset(&ssl_dataset, config.val_split, seed)?;
        let (lh_train_idx, lh_val_idx) = split_dataset(&lh_dataset, config.val_split, seed)?;
        let (labels, head_weights) = head_labels(
            &lh_dataset,
            &lh_name,
            config.use_balanced_binary_loss_for_linear_head,
            &lh_train_idx,
        )?;
        let knn_monitor = config.knn_monitor && !labels.is_multi_label();
        if config.knn_monitor && !knn_monitor {
            eprintln!(
                "note: knn_monitor skipped: linear_head_dataset_name `{lh_name}` is multi-label (findings), and the kNN monitor needs one class per sample; set knn_monitor=false to silence this"
            );
        }
        let (bs, lh_bs, drop_last) = (
            config.ssl_training_batch_size,
            config.linear_head_batch_size,
            config.drop_last,
        );
        warn_if_no_val_batch(
            "SSL",
            ssl_val_idx.len(),
            bs,
            "ssl_training_batch_size",
            drop_last,
        );
        warn_if_no_val_batch(
            "linear-head",
            lh_val_idx.len(),
            lh_bs,
            "linear_head_batch_size",
            drop_last,
        );
        let (lh_pipeline, lh_val_pipeline) = linear_head_pipelines(registry, config)?;
        let source = |dataset: &Arc<DatasetHandle>, groups: Vec<ViewGroup>, stream, name: &str| {
            Arc::new(loader_source(config, dataset, groups, stream, name, device))
        };
        let one = |group: &ViewGroup| vec![group.clone()];
        // With several processes, each takes its slice of every global batch.
        let world = crate::world::current();
        let (rank, size) = (world.rank(), world.size());
        let sampler = |indices: Vec<usize>, bs: usize, drop_last: bool, order: Order| {
            Sampler::new(indices, bs, drop_last, order).for_rank(rank, size)
        };

        let lh_val_source = source(
            &lh_dataset,
            one(&lh_val_pipeline),
            LINEAR_HEAD_VAL,
            &lh_name,
        );
        Ok(SslData {
            ssl_train: Data {
                source: Arc::new(training_views(
                    registry,
                    config,
                    Arc::clone(&ssl_dataset),
                    &ssl_name,
                    device,
                )?),
                sampler: training_sampler(config, &ssl_dataset, ssl_train_idx)?,
            },
            ssl_val: Data {
                source: source(
                    &ssl_dataset,
                    view_groups(registry, config)?,
                    SSL_VAL,
                    &ssl_name,
                ),
                sampler: sampler(ssl_val_idx, bs, drop_last, Order::Sequential),
            },
            knn: knn_monitor.then(|| KnnData {
                bank: Data {
                    source: source(&lh_dataset, one(&lh_val_pipeline), KNN_BANK, &lh_name),
                    sampler: sampler(lh_train_idx.clone(), lh_bs, false, Order::Sequential),
                },
                queries: Data {
                    source: Arc::clone(&lh_val_source),
                    sampler: sampler(lh_val_idx.clone(), lh_bs, false, Order::Sequential),
                },
            }),
            lh_train: Data {
                source: source(&lh_dataset, one(&lh_pipeline), LINEAR_HEAD_TRAIN, &lh_name),
                sampler: sampler(
                    lh_train_idx,
                    lh_bs,
                    drop_last,
                    shuffled_order(config, &lh_dataset, seed, LINEAR_HEAD_SHUFFLE)?,
                )
                .checked()?,
            },
            lh_val: Data {
                source: lh_val_source,
                sampler: sampler(lh_val_idx, lh_bs, drop_last, Order::Sequential),
            },
            labels,
            head_weights,
            ssl_name,
            lh_name,
        })
    }
}

/// A loader's source of `dataset` (called `name`) through `groups`, seeded by the run's seed
/// and `stream`, reading as `config` says (unreadable images, pinned memory for `device`).
fn loader_source(
    config: &RunConfig,
    dataset: &Arc<DatasetHandle>,
    groups: Vec<ViewGroup>,
    stream: u64,
    name: &str,
    device: Device,
) -> Source {
    let mut source = Source::new(
        Arc::clone(dataset),
        groups,
        Seeds::PerEpoch(seed_of(&[config.random_seed, stream])),
        name,
    );
    source.skip_unreadable = config.skip_unreadable_images;
    source.pin_for = (device != Device::Cpu).then_some(device);
    source
}

/// The algorithm plugin of `config` with its encoder, on `device`; a new run (no `stored`
/// checkpoint) starts its encoders from `encoder_init` when set. Returns it with the encoder
/// parameters it was made with (JSON, for the checkpoint record).
fn make_algorithm(
    registry: &Registry,
    config: &RunConfig,
    device: Device,
    stored: Option<&Checkpoint>,
) -> Result<(ForeignAlgorithm, serde_json::Value)> {
    tch::manual_seed(config.random_seed as i64);
    let encoder_json = serde_json::to_value(encoder_params(
        registry,
        config,
        &config.ssl_dataset_info(registry),
    )?)?;
    let spec = EncoderSpec {
        factory: registry.encoder(&config.ssl_encoder)?.clone(),
        params: Params::from_value(encoder_json.clone())?,
    };
    let algorithm_params = Params::from_value(serde_json::to_value(&config.algorithm_params)?)?;
    let algorithm =
        registry
            .algorithm(&config.ssl_training_type)?
            .create(&algorithm_params, &spec, device)?;
    if let (Some(weights), None) = (&config.encoder_init, stored) {
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
    Ok((algorithm, encoder_json))
}

/// The SSL optimizer of `config` over `algorithm`'s parameters. Parameters the algorithm
/// leaves unscheduled (SimSiam's predictor) stay at the base learning rate, scaled with the
/// processes as the engine scales the schedule's.
fn ssl_optimizer(
    config: &RunConfig,
    algorithm: &ForeignAlgorithm,
    precision: Precision,
) -> OptimizerSlot {
    OptimizerSlot::new(
        "ssl",
        &OptimizerConfig {
            kind: config.optimizer,
            weight_decay: config.weight_decay,
            momentum: config.momentum,
            fixed_lr: Some(config.l_rate * crate::schedule::world_lr_scale(config)),
            ..Default::default()
        },
        to_params(algorithm.parameters()),
        precision.scales_loss(),
    )
}

/// The learning-rate schedule: the config's, or the one the algorithm declares with the run's
/// warm-up.
fn ssl_schedule(config: &RunConfig, declared: &str) -> Result<LrSchedule> {
    Ok(match config.lr_schedule.fixed() {
        Some(schedule) => schedule,
        None => declared
            .parse::<LrSchedule>()
            .with_context(|| {
                format!(
                    "the lr_schedule the `{}` algorithm declares",
                    config.ssl_training_type
                )
            })?
            .with_warmup_epochs(config.warmup_epochs),
    })
}

/// The online linear head on `dim` features and its optimizer (Adam, weight decay 1e-4, never
/// clipped, as the original's callback).
fn online_head(dim: i64, data: &SslData, device: Device) -> (LinearHead, OptimizerSlot) {
    let head = LinearHead::new(dim, data.labels.clone(), data.head_weights.clone(), device);
    let params: Vec<Param> = head
        .named_parameters()
        .into_iter()
        .map(|(name, tensor)| Param {
            name,
            tensor,
            weight_decay: true,
            lars_adaptation: false,
            scheduled: true,
        })
        .collect();
    let optimizer = OptimizerSlot::new(
        "linear_head",
        &OptimizerConfig {
            kind: OptimizerKind::Adam,
            weight_decay: 1e-4,
            ..Default::default()
        },
        params,
        false,
    )
    .unclipped();
    (head, optimizer)
}

impl SslTask {
    /// Builds the run: its data, the algorithm (with its encoder), its optimizer and schedule,
    /// the online linear head and the checkpoint record. With `stored` (a resumed run),
    /// `encoder_init` is not applied again.
    pub fn build(
        registry: &Registry,
        config: RunConfig,
        device: Device,
        stored: Option<&Checkpoint>,
    ) -> Result<SslTask> {
        let data = SslData::open(registry, &config, device)?;
        let (algorithm, encoder_json) = make_algorithm(registry, &config, device, stored)?;
        let (precision, note) = precision::resolve(&config, device);
        if let Some(note) = note {
            eprintln!("{note}");
        }
        let optimizer = ssl_optimizer(&config, &algorithm, precision);
        let declared = registry.algorithm(&config.ssl_training_type)?.info();
        let schedule = ssl_schedule(&config, &declared.lr_schedule)?;
        let (head, head_optimizer) = online_head(algorithm.embedding_dim(), &data, device);
        let mut used: Vec<(&str, String)> = vec![
            ("dataset", data.ssl_name.clone()),
            ("dataset", data.lh_name.clone()),
            ("encoder", config.ssl_encoder.clone()),
            ("algorithm", config.ssl_training_type.clone()),
        ];
        used.extend(transforms_used(&config, true));
        let info = CheckpointInfo {
            format: checkpoint::FORMAT.into(),
            epochs_done: 0,
            global_step: 0,
            model: config.model.clone(),
            config: config.to_toml(),
            algorithm: config.ssl_training_type.clone(),
            encoder: config.ssl_encoder.clone(),
            encoder_params: encoder_json.to_string(),
            embedding_encoder_prefix: algorithm.embedding_encoder_prefix(),
            plugins: plugins_used(registry, &used),
            world_size: crate::world::current().size(),
            precision: precision.to_string(),
        };
        Ok(SslTask {
            algorithm_name: config.ssl_training_type.clone(),
            config,
            device,
            algorithm,
            prefix: declared.metric_prefix,
            optimizer,
            precision,
            schedule,
            head,
            head_optimizer,
            ssl_train: data.ssl_train,
            ssl_val: data.ssl_val,
            lh_train: data.lh_train,
            lh_val: data.lh_val,
            knn: data.knn,
            info,
            streams: None,
            sums: EpochSums::default(),
        })
    }

    /// Validation: the SSL loss on the validation split (training-strength views) and the
    /// linear head on the first batches of its validation split, each sample once.
    fn validate(&mut self, epoch: usize) -> Result<Vec<(String, f64)>> {
        let _guard = tch::no_grad_guard();
        let workers = self.config.num_workers;
        let mut ssl_plan = self.ssl_val.sampler.batches(epoch as u64);
        if self.config.is_debug_model {
            ssl_plan.truncate(1);
        }
        let val_batches = ssl_plan.len();
        let mut lh_plan = self.lh_val.sampler.batches(epoch as u64);
        lh_plan.truncate(val_batches);
        let mut loss_sum = Tensor::zeros([], (Kind::Double, self.device));
        let (algorithm, name, device) = (&mut self.algorithm, &self.algorithm_name, self.device);
        let precision = self.precision;
        self.ssl_val
            .for_each_batch(epoch, ssl_plan, workers, |batch, _| {
                let views = batch.to_device(device)?;
                let loss = autocast(precision, device, || algorithm.validation_loss(&views))?
                    .map(precision::fp32_loss)
                    .with_context(|| format!("{name} validation step"))?;
                loss_sum += loss.to_kind(Kind::Double);
                Ok(())
            })?;
        let world = crate::world::current();
        // Every process's batch loss of a global batch, averaged: the global batch's loss.
        let loss_sum = world.all_reduce_f64(&[loss_sum.double_value(&[])], Reduce::Average)?[0];
        let mut metrics = vec![(
            format!("{}/val/loss", self.prefix),
            if val_batches == 0 {
                f64::NAN
            } else {
                loss_sum / val_batches as f64
            },
        )];
        let algorithm = &mut self.algorithm;
        let head = self.lh_val.evaluate_head(
            epoch,
            lh_plan,
            workers,
            device,
            &self.head,
            &self.head.labels,
            |x| Ok(algorithm.embed(x, false)?),
        )?;
        for (name, value) in head {
            let name = if name == "loss" {
                "ssl_online_evaluator/val/loss".to_string()
            } else {
                format!("ssl_online_evaluator/val/{name}")
            };
            metrics.push((name, value));
        }
        Ok(metrics)
    }

    /// The kNN monitor (`knn_monitor`): `knn/val/top1` (and `top5` with at least 5 classes) of
    /// the linear-head validation split against a bank of its training split, embedded in
    /// evaluation mode without gradients, and `time/knn_seconds`. A debug run's bank is
    /// [`DEBUG_KNN_BANK_BATCHES`] batches, its queries 1.
    fn knn_monitor(&mut self, epoch: usize) -> Result<Vec<(String, f64)>> {
        let (Some(knn), HeadLabels::Classes(classes)) = (&self.knn, &self.head.labels) else {
            return Ok(Vec::new());
        };
        let classes = *classes;
        let started = Instant::now();
        let _guard = tch::no_grad_guard();
        let mut bank_plan = knn.bank.sampler.batches(epoch as u64);
        let mut query_plan = knn.queries.sampler.batches(epoch as u64);
        if self.config.is_debug_model {
            bank_plan.truncate(DEBUG_KNN_BANK_BATCHES);
            query_plan.truncate(1);
        }
        let embed = |data: &Data, plan, algorithm: &mut ForeignAlgorithm| {
            embed_all(
                data,
                epoch,
                plan,
                self.config.num_workers,
                self.device,
                classes,
                algorithm,
            )
        };
        let bank = embed(&knn.bank, bank_plan, &mut self.algorithm)?;
        let queries = embed(&knn.queries, query_plan, &mut self.algorithm)?;
        let classes = classes as i64;
        let accuracy = match (bank, queries) {
            (Some((bank, bank_labels)), Some((queries, labels))) => knn_accuracy(
                &bank,
                &bank_labels,
                &queries,
                &labels,
                classes,
                knn::K,
                knn::TEMPERATURE,
            ),
            _ => knn::KnnAccuracy {
                top1: f64::NAN,
                top5: (classes >= 5).then_some(f64::NAN),
            },
        };
        let mut metrics = vec![("knn/val/top1".to_string(), accuracy.top1)];
        if let Some(top5) = accuracy.top5 {
            metrics.push(("knn/val/top5".to_string(), top5));
        }
        metrics.push((
            "time/knn_seconds".to_string(),
            started.elapsed().as_secs_f64(),
        ));
        Ok(metrics)
    }
}

/// Evaluation-mode embeddings `[n, d]` (float) and labels `[n]` of `plan`'s samples of `data`,
/// those of every process together; `None` for an empty plan.
fn embed_all(
    data: &Data,
    epoch: usize,
    plan: Vec<Vec<usize>>,
    workers: usize,
    device: Device,
    classes: usize,
    algorithm: &mut ForeignAlgorithm,
) -> Result<Option<(Tensor, Tensor)>> {
    let (mut embeddings, mut labels) = (Vec::new(), Vec::new());
    data.for_each_batch(epoch, plan, workers, |batch, real| {
        let x = batch.images(device)?;
        let y = batch.label_tensor(device, classes)?;
        let e = algorithm.embed(&x, false)?.to_kind(Kind::Float);
        labels.push(y.narrow(0, 0, real as i64));
        embeddings.push(e.narrow(0, 0, real as i64));
        Ok(())
    })?;
    if embeddings.is_empty() {
        return Ok(None);
    }
    let world = crate::world::current();
    Ok(Some((
        world.gather_rows(&Tensor::cat(&embeddings, 0))?,
        world.gather_rows(&Tensor::cat(&labels, 0))?,
    )))
}

impl Task for SslTask {
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

    fn begin_epoch(&mut self, epoch: usize, skip: usize) -> Result<EpochSteps> {
        let workers = self.config.num_workers;
        let full_plan = self.ssl_train.sampler.batches(epoch as u64);
        let full_steps = full_plan.len();
        if full_steps == 0 {
            bail!(
                "the SSL training split has {} samples, fewer than ssl_training_batch_size={} (drop_last)",
                self.ssl_train.sampler.len(),
                self.config.ssl_training_batch_size
            );
        }
        let steps = if self.config.is_debug_model {
            1
        } else {
            full_steps
        };
        let ssl_stream = BatchStream::new(
            Arc::clone(&self.ssl_train.source),
            epoch as u64,
            full_plan.into_iter().take(steps).skip(skip).collect(),
            workers,
        );
        let lh_plan = self
            .lh_train
            .sampler
            .cycled(epoch as u64, steps)
            .ok_or_else(|| {
                anyhow!(
                    "the linear-head training split has {} samples, fewer than linear_head_batch_size={} (drop_last)",
                    self.lh_train.sampler.len(),
                    self.config.linear_head_batch_size
                )
            })?;
        let lh_stream = BatchStream::new(
            Arc::clone(&self.lh_train.source),
            epoch as u64,
            lh_plan.into_iter().skip(skip).collect(),
            workers.div_ceil(2),
        );
        self.streams = Some((ssl_stream, lh_stream));
        self.algorithm
            .begin_epoch(epoch as u64, self.config.num_epochs as u64)
            .with_context(|| format!("{} begin-epoch hook", self.algorithm_name))?;
        self.sums = EpochSums {
            loss: Some(Tensor::zeros([], (Kind::Double, self.device))),
            skipped: Some(Tensor::zeros([], (Kind::Int64, self.device))),
            scalars: BTreeMap::new(),
            linear_head: Some(self.head.labels.metrics()),
            pending: PendingBatches::default(),
        };
        Ok(EpochSteps { steps, full_steps })
    }

    fn train_step(&mut self, path: &mut StepPath, lr: f64) -> Result<StepReport> {
        let (mut ssl_stream, mut lh_stream) = self
            .streams
            .take()
            .ok_or_else(|| anyhow!("training step outside an epoch"))?;
        let batch = ssl_stream
            .next()
            .ok_or_else(|| anyhow!("data loader ended early"))??;
        let views = batch.to_device(self.device)?;
        let views: Vec<Tensor> = if self.precision.is_mixed() && self.device.is_cuda() {
            views.iter().map(channels_last).collect()
        } else {
            views
        };
        for (name, value) in self.algorithm.scalars()? {
            *self.sums.scalars.entry(name).or_default() += value;
        }
        let algorithm = &mut self.algorithm;
        let loss = autocast(self.precision, self.device, || {
            algorithm.training_loss(&views)
        })?
        .map(precision::fp32_loss)
        .with_context(|| format!("{} training step", self.algorithm_name))?;
        let outcome = path.step(&mut self.optimizer, &loss, lr)?;
        tch::no_grad(|| {
            if let Some(sum) = &mut self.sums.loss {
                *sum += outcome.keep(&loss.detach().to_kind(Kind::Double));
            }
            if let (Some(skipped), Some(left_out)) = (&mut self.sums.skipped, outcome.left_out()) {
                *skipped += left_out;
            }
        });

        // The online linear head, on detached embeddings of its own batch.
        let lh = lh_stream
            .next()
            .ok_or_else(|| anyhow!("linear-head loader ended early"))??;
        self.streams = Some((ssl_stream, lh_stream));
        let x = lh.images(self.device)?;
        let y = self.head.labels.tensor(&lh, self.device)?;
        let embeddings = tch::no_grad(|| self.algorithm.embed(&x, true))?.detach();
        let logits = self.head.forward(&embeddings.to_kind(Kind::Float), true);
        let lh_loss = self.head.loss(&logits, &y);
        let outcome = path.step(
            &mut self.head_optimizer,
            &lh_loss,
            self.config.learning_rate_linear_head_during_ssl_training,
        )?;
        if self.sums.linear_head.is_some() {
            self.sums
                .pending
                .push(&self.head.labels, &logits, &lh, &lh_loss, outcome.counted())?;
        }
        Ok(StepReport {
            loss,
            images: batch.len() * crate::world::current().size(),
        })
    }

    fn epoch_state(&mut self) -> Result<Vec<(String, Tensor)>> {
        // Every process's sums together: the loss and scalars averaged over processes (as the
        // epoch's end does), the head's predictions of all of them.
        let world = crate::world::current();
        let sums = &mut self.sums;
        if let Some(metrics) = &mut sums.linear_head {
            std::mem::take(&mut sums.pending).flush_into(metrics)?;
        }
        let loss = sums.loss.as_ref().map_or(0.0, |l| l.double_value(&[]));
        let mut out = vec![
            (
                "loss".to_string(),
                Tensor::from(world.all_reduce_f64(&[loss], Reduce::Average)?[0]),
            ),
            (
                "skipped".to_string(),
                Tensor::from(skipped_steps(&sums.skipped)),
            ),
        ];
        for (name, value) in reduce_named(&sums.scalars)? {
            out.push((format!("scalar.{name}"), Tensor::from(value)));
        }
        if let Some(metrics) = &sums.linear_head {
            out.extend(checkpoint::prefixed(
                "linear_head.",
                metrics.gathered(world)?.state(),
            ));
        }
        Ok(out)
    }

    fn restore_epoch_state(&mut self, stored: &HashMap<String, Tensor>) -> Result<()> {
        // Every process takes the count of skipped steps (they skip alike); rank 0 takes the
        // stored sums (the processes' averages times their number, so the epoch's end averages
        // them back), the others start from zero. A checkpoint written before skipped steps
        // were counted has none.
        if let Some(skipped) = stored.get("skipped") {
            let count = skipped.int64_value(&[]);
            if count < 0 {
                bail!("the checkpoint's epoch state has a negative `skipped` ({count})");
            }
            self.sums.skipped = Some(Tensor::from(count).to_device(self.device));
        }
        let world = crate::world::current();
        if !world.is_main() {
            return Ok(());
        }
        let scale = world.size() as f64;
        let loss = stored
            .get("loss")
            .context("the checkpoint's epoch state lacks `loss`")?
            .double_value(&[]);
        self.sums.loss = Some(Tensor::from(loss * scale).to_device(self.device));
        for (name, value) in stored {
            if let Some(scalar) = name.strip_prefix("scalar.") {
                self.sums
                    .scalars
                    .insert(scalar.to_string(), value.double_value(&[]) * scale);
            }
        }
        if let Some(metrics) = &mut self.sums.linear_head {
            metrics.load_state(&under(stored, "linear_head."))?;
        }
        Ok(())
    }

    fn after_step(&mut self, step: u64, max_steps: u64) -> Result<()> {
        self.algorithm
            .after_optimizer_step(step, max_steps)
            .with_context(|| format!("{} after-step hook", self.algorithm_name))
    }

    fn end_epoch(&mut self, epoch: usize, summary: &TrainSummary) -> Result<Vec<(String, f64)>> {
        self.streams = None;
        let mut sums = std::mem::take(&mut self.sums);
        if let Some(metrics) = &mut sums.linear_head {
            std::mem::take(&mut sums.pending).flush_into(metrics)?;
        }
        let steps = summary.steps as f64;
        let world = crate::world::current();
        // Each step's loss averaged over the processes: the global batch's loss; the mean over
        // the steps whose loss counts (every process skips the same steps).
        let loss = sums.loss.map_or(f64::NAN, |l| l.double_value(&[]));
        let loss = world.all_reduce_f64(&[loss], Reduce::Average)?[0];
        let counted = summary
            .steps
            .saturating_sub(skipped_steps(&sums.skipped) as usize);
        let mut metrics = vec![(
            format!("{}/train/loss", self.prefix),
            if counted == 0 {
                f64::NAN
            } else {
                loss / counted as f64
            },
        )];
        metrics.push((format!("{}/learning_rate", self.prefix), summary.mean_lr));
        for (name, sum) in reduce_named(&sums.scalars)? {
            metrics.push((name, sum / steps));
        }
        let head = match sums.linear_head {
            Some(m) => m.gathered(world)?.compute(),
            None => Vec::new(),
        };
        for (name, value) in head {
            let name = if name == "loss" {
                "ssl_online_evaluator/train/loss".to_string()
            } else {
                format!("ssl_online_evaluator/train/online_{name}")
            };
            metrics.push((name, value));
        }
        metrics.extend(self.validate(epoch)?);
        metrics.extend(self.knn_monitor(epoch)?);
        Ok(metrics)
    }

    fn checkpoint_tensors(&self) -> Vec<(String, Tensor)> {
        let mut all = prefixed("algorithm.", self.algorithm.state());
        all.extend(prefixed("linear_head.", self.head.named_parameters()));
        all.extend(prefixed("optimizer.", self.optimizer.state()));
        all.extend(prefixed(
            "linear_head_optimizer.",
            self.head_optimizer.state(),
        ));
        all.extend(prefixed("loss_scaler.", self.optimizer.scaler_state()));
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
        self.optimizer
            .load_state(&under(stored, "optimizer."))
            .context("restoring the SSL optimizer")?;
        self.head_optimizer
            .load_state(&under(stored, "linear_head_optimizer."))
            .context("restoring the linear-head optimizer")?;
        self.optimizer
            .load_scaler_state(&under(stored, "loss_scaler."))
    }

    fn epoch_line(&self, epoch: usize, metrics: &[(String, f64)]) -> String {
        let get = |n: &str| crate::engine::metric(metrics, n);
        let knn = if self.knn.is_some() {
            format!(
                ", kNN val top-1 {:.3} ({:.1}s)",
                get("knn/val/top1"),
                get("time/knn_seconds")
            )
        } else {
            String::new()
        };
        let (score, name) = if self.head.labels.is_multi_label() {
            ("AUROC (macro)", crate::metrics::AUROC_MACRO)
        } else {
            ("accuracy", crate::metrics::ACCURACY)
        };
        format!(
            "epoch {}/{}: {} train loss {:.4}, val loss {:.4}, linear head val {score} {:.3}{knn}, {:.1} images/s, {:.1}s",
            epoch + 1,
            self.config.num_epochs,
            self.prefix,
            get(&format!("{}/train/loss", self.prefix)),
            get(&format!("{}/val/loss", self.prefix)),
            get(&format!("ssl_online_evaluator/val/{name}")),
            get("throughput/train_images_per_second"),
            get("time/epoch_seconds"),
        )
    }

    fn sources(&self) -> Vec<(Arc<Source>, &'static str)> {
        let mut sources = vec![
            (Arc::clone(&self.ssl_train.source), "SSL training"),
            (Arc::clone(&self.ssl_val.source), "SSL validation"),
            (Arc::clone(&self.lh_train.source), "linear-head training"),
            (Arc::clone(&self.lh_val.source), "linear-head validation"),
        ];
        if let Some(knn) = &self.knn {
            sources.push((Arc::clone(&knn.bank.source), "kNN bank"));
        }
        sources
    }
}
