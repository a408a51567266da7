//! The linear head shared by SSL runs (the online evaluator) and classifier runs: dropout 0.2
//! and a linear layer on embeddings, its classes and class weights, its pipelines, and how a
//! batch's predictions are recorded for the epoch's metrics.

use crate::config::RunConfig;
use crate::loader::{Batch, ViewGroup};
use crate::metrics::{class_weights, EpochMetrics};
use crate::registry::Registry;
use anyhow::{anyhow, Context, Result};
use ssl_plugin_api::host::DatasetHandle;
use ssl_plugin_api::tch::{nn, Device, Kind, Reduction, Tensor};

/// The dropout rate of the linear probe.
const DROPOUT: f64 = 0.2;

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

    /// Logits; dropout only in training. With several processes, the dropout mask is drawn
    /// for the whole global batch (every process draws the same, as their generators are
    /// seeded alike) and each process applies its rows: the masks of a one-process run with
    /// the global batch, so the runs agree. It relies on every process's batch having the same
    /// number of rows (the sampler fills the last global batch, the loader puts a stand-in in
    /// place of an unreadable image): otherwise the draws, and so the generators, would differ.
    pub fn forward(&self, embeddings: &Tensor, train: bool) -> Tensor {
        let x = embeddings.flatten(1, -1);
        let world = crate::world::current();
        let x = if train && world.is_distributed() {
            // As libtorch's CPU dropout: a Bernoulli(1 - p) mask scaled by 1 / (1 - p).
            let (n, d) = (x.size()[0], x.size()[1]);
            let mut mask = Tensor::empty([n * world.size() as i64, d], (x.kind(), x.device()));
            let _ = mask.bernoulli_float_(1.0 - DROPOUT);
            let _ = mask.g_div_scalar_(1.0 - DROPOUT);
            x * world.my_rows(&mask, n)
        } else {
            x.dropout(DROPOUT, train)
        };
        x.apply(&self.linear)
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

/// Adds a batch's posteriors (softmax of `logits`), labels and loss to `metrics`.
pub fn record_batch(
    metrics: &mut EpochMetrics,
    logits: &Tensor,
    batch: &Batch,
    loss: &Tensor,
) -> Result<()> {
    record_rows(metrics, logits, batch, loss, batch.len())
}

/// [`record_batch`] for the first `real` samples of the batch only (the others repeat samples
/// to fill a distributed run's last global batch, see
/// [`Sampler::real_samples`](crate::sampler::Sampler::real_samples)).
pub fn record_rows(
    metrics: &mut EpochMetrics,
    logits: &Tensor,
    batch: &Batch,
    loss: &Tensor,
    real: usize,
) -> Result<()> {
    let real = real.min(batch.len());
    let probs = logits
        .detach()
        .narrow(0, 0, real as i64)
        .softmax(-1, Kind::Float)
        .to_device(Device::Cpu)
        .contiguous()
        .view(-1);
    let probs: Vec<f32> = Vec::<f32>::try_from(&probs)?;
    let targets: Vec<i64> = batch.labels[..real]
        .iter()
        .map(|l| l.unwrap_or(-1))
        .collect();
    if real > 0 {
        metrics.add_batch(&probs, &targets, loss.double_value(&[]), real);
    }
    Ok(())
}

/// The head's batches of a training pass kept on the device until the epoch ends, so a step
/// does not wait for the device to read them (a host synchronisation per step on a GPU).
#[derive(Default)]
pub struct PendingBatches {
    batches: Vec<(Tensor, Vec<i64>, Tensor, usize)>,
}

impl PendingBatches {
    /// Keeps the probabilities and loss of `batch` (detached, on the device).
    pub fn push(&mut self, logits: &Tensor, batch: &Batch, loss: &Tensor) {
        let probs = logits.detach().softmax(-1, Kind::Float);
        let targets = batch.labels.iter().map(|l| l.unwrap_or(-1)).collect();
        self.batches
            .push((probs, targets, loss.detach(), batch.len()));
    }

    /// Adds every kept batch to `metrics`, in order.
    pub fn flush_into(self, metrics: &mut EpochMetrics) -> Result<()> {
        for (probs, targets, loss, n) in self.batches {
            let probs = probs.to_device(Device::Cpu).contiguous().view(-1);
            let probs: Vec<f32> = Vec::<f32>::try_from(&probs)?;
            metrics.add_batch(&probs, &targets, loss.double_value(&[]), n);
        }
        Ok(())
    }
}

/// The number of classes of a head's labelled dataset and, when `balanced`, the class weights
/// of its loss (from all its labels, as the original).
pub fn head_classes(
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
        .targets()?
        .into_iter()
        .map(|t| t.unwrap_or(-1))
        .collect();
    let weights = class_weights(&targets, num_classes)
        .with_context(|| format!("class weights of `{name}`"))?;
    Ok((num_classes, Some(weights)))
}

/// The linear head's training view group and its validation one (the training one unless
/// `linear_head_val_augmentations` is set), augmented where `augment_on` says.
pub fn linear_head_pipelines(
    registry: &Registry,
    config: &RunConfig,
) -> Result<(ViewGroup, ViewGroup)> {
    let train = ViewGroup::build(
        registry,
        config,
        &config.linear_head_augmentations,
        1,
        "linear_head_augmentations",
    )?;
    let val = match &config.linear_head_val_augmentations {
        Some(specs) => {
            ViewGroup::build(registry, config, specs, 1, "linear_head_val_augmentations")?
        }
        None => train.clone(),
    };
    Ok((train, val))
}
