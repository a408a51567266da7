//! The linear head shared by SSL runs (the online evaluator) and classifier runs: dropout 0.2
//! and a linear layer on embeddings, what it learns from its dataset ([`HeadLabels`]: one
//! class per sample, or the binary findings of a multi-label dataset), the weights of its loss,
//! its pipelines, and how a batch's predictions are recorded for the epoch's metrics.
//!
//! A multi-label head has one output per finding and trains with binary cross-entropy on the
//! logits, the entries whose finding is unknown (-1) left out ([`masked_bce`]); its balanced
//! loss weighs each finding's positives by negatives / positives in the training split
//! ([`finding_pos_weights`]).

use crate::config::RunConfig;
use crate::loader::{Batch, ViewGroup};
use crate::metrics::{
    class_weights, finding_pos_weights, BatchTargets, EpochMetrics, FindingMetrics, HeadMetrics,
};
use crate::registry::Registry;
use anyhow::{anyhow, bail, Context, Result};
use ssl_plugin_api::host::DatasetHandle;
use ssl_plugin_api::tch::{self, nn, Device, Kind, Reduction, Tensor};
use ssl_plugin_api::Findings;
use std::sync::Arc;

/// The dropout rate of the linear probe.
const DROPOUT: f64 = 0.2;

/// What a linear head learns from its dataset.
#[derive(Clone, Debug)]
pub enum HeadLabels {
    /// One of this many classes per sample (the sample's label): softmax and cross-entropy.
    Classes(usize),
    /// The binary findings of a multi-label dataset, one output each: sigmoids and binary
    /// cross-entropy. The table is the dataset's, looked up by a batch's dataset indices.
    Findings(Arc<Findings>),
}

impl HeadLabels {
    /// The labels of `dataset` (called `name`): its findings when it declares them, else its
    /// classes; an error when it has neither.
    pub fn of(dataset: &DatasetHandle, name: &str) -> Result<HeadLabels> {
        if let Some(findings) = dataset
            .findings()
            .with_context(|| format!("the findings of dataset `{name}`"))?
        {
            return Ok(HeadLabels::Findings(Arc::new(findings)));
        }
        let classes = dataset.num_classes().ok_or_else(|| {
            anyhow!("dataset `{name}` is unlabelled, but a linear head or classifier needs labels")
        })?;
        Ok(HeadLabels::Classes(classes))
    }

    /// The number of outputs of a head for these labels.
    pub fn outputs(&self) -> usize {
        match self {
            HeadLabels::Classes(n) => *n,
            HeadLabels::Findings(f) => f.names().len(),
        }
    }

    /// Whether these are the findings of a multi-label dataset.
    pub fn is_multi_label(&self) -> bool {
        matches!(self, HeadLabels::Findings(_))
    }

    /// An error unless `other` (another split's labels, `what`) has the same outputs: the same
    /// number of classes, or the same findings in the same order.
    pub fn check_same(&self, other: &HeadLabels, what: &str) -> Result<()> {
        match (self, other) {
            (HeadLabels::Classes(a), HeadLabels::Classes(b)) if a == b => Ok(()),
            (HeadLabels::Findings(a), HeadLabels::Findings(b)) if a.names() == b.names() => Ok(()),
            _ => bail!(
                "{what} has {}, but the head was trained on {}",
                other.describe(),
                self.describe()
            ),
        }
    }

    fn describe(&self) -> String {
        match self {
            HeadLabels::Classes(n) => format!("{n} classes"),
            HeadLabels::Findings(f) => format!("the findings {}", f.names().join(", ")),
        }
    }

    /// The targets of `batch` for the loss: class indices (int64 `[n]`) or findings (float
    /// `[n, F]`, -1 where unknown), on `device`.
    pub fn tensor(&self, batch: &Batch, device: Device) -> Result<Tensor> {
        match self {
            HeadLabels::Classes(n) => batch.label_tensor(device, *n),
            HeadLabels::Findings(f) => batch.finding_tensor(device, f),
        }
    }

    /// The targets of the first `real` samples of `batch`, for the metrics.
    pub fn batch_targets(&self, batch: &Batch, real: usize) -> Result<BatchTargets> {
        Ok(match self {
            HeadLabels::Classes(_) => BatchTargets::Classes(
                batch.labels[..real]
                    .iter()
                    .map(|l| l.unwrap_or(-1))
                    .collect(),
            ),
            HeadLabels::Findings(f) => BatchTargets::Findings(batch.finding_rows(f, real)?),
        })
    }

    /// An empty epoch accumulator for a head with these labels.
    pub fn metrics(&self) -> HeadMetrics {
        match self {
            HeadLabels::Classes(n) => HeadMetrics::Classes(EpochMetrics::new(*n)),
            HeadLabels::Findings(f) => {
                HeadMetrics::Findings(FindingMetrics::new(f.names().to_vec()))
            }
        }
    }

    /// The posteriors of `logits` (detached, float): softmax over the classes, or a sigmoid
    /// per finding.
    pub fn posteriors(&self, logits: &Tensor) -> Tensor {
        let logits = logits.detach();
        match self {
            HeadLabels::Classes(_) => logits.softmax(-1, Kind::Float),
            HeadLabels::Findings(_) => logits.to_kind(Kind::Float).sigmoid(),
        }
    }
}

/// The linear probe: dropout 0.2 and a linear layer on detached embeddings.
pub struct LinearHead {
    vs: nn::VarStore,
    linear: nn::Linear,
    /// What it predicts (and so its number of outputs and its loss).
    pub labels: HeadLabels,
    /// Class weights (classes) or positive weights (findings) of the loss.
    weights: Option<Tensor>,
}

impl LinearHead {
    /// A head from `dim` features to one output per class or finding of `labels`, with optional
    /// weights for the loss (see [`head_labels`]).
    pub fn new(
        dim: i64,
        labels: HeadLabels,
        weights: Option<Vec<f32>>,
        device: Device,
    ) -> LinearHead {
        let vs = nn::VarStore::new(device);
        let linear = nn::linear(
            vs.root() / "linear",
            dim,
            labels.outputs() as i64,
            Default::default(),
        );
        let weights = weights.map(|w| Tensor::from_slice(&w).to_device(device));
        LinearHead {
            vs,
            linear,
            labels,
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
        let x = if train && world.size() > 1 {
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

    /// The loss of `logits` for `targets` ([`HeadLabels::tensor`]): for classes cross-entropy,
    /// class-weighted as PyTorch's (Σ w_y·ce / Σ w_y) when weights are set; for findings
    /// [`masked_bce`] with the positive weights.
    pub fn loss(&self, logits: &Tensor, targets: &Tensor) -> Tensor {
        match self.labels {
            HeadLabels::Classes(_) => logits.log_softmax(-1, Kind::Float).g_nll_loss(
                targets,
                self.weights.as_ref(),
                Reduction::Mean,
                -100,
            ),
            HeadLabels::Findings(_) => masked_bce(logits, targets, self.weights.as_ref()),
        }
    }

    /// Trainable tensors, named `linear.weight` / `linear.bias`.
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut vars: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    }
}

/// Binary cross-entropy with logits (`torch.nn.BCEWithLogitsLoss`'s terms, `pos_weight`
/// scaling the positive ones), averaged over the known entries of `targets` (`[n, F]`: 1, 0,
/// or -1 for unknown). Unknown entries count neither in the sum nor in the number averaged
/// over, so they give no gradient; with no known entry the loss is 0.
pub fn masked_bce(logits: &Tensor, targets: &Tensor, pos_weight: Option<&Tensor>) -> Tensor {
    let logits = logits.to_kind(Kind::Float);
    let known = targets.ge(0.0).to_kind(Kind::Float);
    let present = targets.clamp_min(0.0).to_kind(Kind::Float);
    let terms =
        logits.binary_cross_entropy_with_logits(&present, None, pos_weight, Reduction::None);
    (terms * &known).sum(Kind::Float) / known.sum(Kind::Float).clamp_min(1.0)
}

/// Adds the posteriors, targets and loss of the first `real` samples of a batch to `metrics` (the others repeat samples
/// to fill a distributed run's last global batch, see
/// [`Sampler::real_samples`](crate::sampler::Sampler::real_samples)).
pub fn record_rows(
    metrics: &mut HeadMetrics,
    labels: &HeadLabels,
    logits: &Tensor,
    batch: &Batch,
    loss: &Tensor,
    real: usize,
) -> Result<()> {
    let real = real.min(batch.len());
    if real == 0 {
        return Ok(());
    }
    let probs = labels
        .posteriors(&logits.narrow(0, 0, real as i64))
        .to_device(Device::Cpu)
        .contiguous()
        .view(-1);
    crate::engine::host_reads::note();
    let probs: Vec<f32> = Vec::<f32>::try_from(&probs)?;
    let targets = labels.batch_targets(batch, real)?;
    metrics.add_batch(&probs, &targets, loss.double_value(&[]), real);
    Ok(())
}

/// The head's batches of a training pass kept on the device until the epoch ends, so a step
/// does not wait for the device to read them (a host synchronisation per step on a GPU).
#[derive(Default)]
pub struct PendingBatches {
    batches: Vec<Pending>,
}

/// One batch of [`PendingBatches`].
struct Pending {
    probs: Tensor,
    targets: BatchTargets,
    loss: Tensor,
    n: usize,
    /// Whether its step counted (0-dim Bool, see
    /// [`StepOutcome::counted`](crate::engine::step::StepOutcome::counted)); `None`: it did.
    counted: Option<Tensor>,
}

impl PendingBatches {
    /// Keeps the posteriors and loss of `batch` (detached, on the device) with its targets;
    /// the batch is left out of the metrics when `counted` turns out false.
    pub fn push(
        &mut self,
        labels: &HeadLabels,
        logits: &Tensor,
        batch: &Batch,
        loss: &Tensor,
        counted: Option<&Tensor>,
    ) -> Result<()> {
        let targets = labels.batch_targets(batch, batch.len())?;
        self.batches.push(Pending {
            probs: tch::no_grad(|| labels.posteriors(logits)).detach(),
            targets,
            loss: loss.detach(),
            n: batch.len(),
            counted: counted.map(Tensor::shallow_clone),
        });
        Ok(())
    }

    /// Adds every kept batch that counts to `metrics`, in order.
    pub fn flush_into(self, metrics: &mut HeadMetrics) -> Result<()> {
        for p in self.batches {
            if let Some(counted) = &p.counted {
                if !bool::try_from(counted)? {
                    continue;
                }
            }
            let probs = p.probs.to_device(Device::Cpu).contiguous().view(-1);
            let probs: Vec<f32> = Vec::<f32>::try_from(&probs)?;
            metrics.add_batch(&probs, &p.targets, p.loss.double_value(&[]), p.n);
        }
        Ok(())
    }
}

/// The labels of a head's dataset (called `name`) and, when `balanced`, the weights of its
/// loss: class weights from all its labels (as the original), or per-finding positive weights
/// from its training samples `train` (a finding without positives or negatives gets 1, with a
/// warning naming it).
pub fn head_labels(
    dataset: &DatasetHandle,
    name: &str,
    balanced: bool,
    train: &[usize],
) -> Result<(HeadLabels, Option<Vec<f32>>)> {
    let labels = HeadLabels::of(dataset, name)?;
    if !balanced {
        return Ok((labels, None));
    }
    let weights = match &labels {
        HeadLabels::Classes(num_classes) => {
            let targets: Vec<i64> = dataset
                .targets()?
                .into_iter()
                .map(|t| t.unwrap_or(-1))
                .collect();
            class_weights(&targets, *num_classes)
                .with_context(|| format!("class weights of `{name}`"))?
        }
        HeadLabels::Findings(findings) => {
            let (weights, one_sided) = finding_pos_weights(findings, train);
            if !one_sided.is_empty() {
                eprintln!(
                    "warning: use_balanced_binary_loss_for_linear_head: in the training split of `{name}`, {} {} no positive or no negative sample; {} positive weight is 1",
                    one_sided.join(", "),
                    if one_sided.len() == 1 { "has" } else { "have" },
                    if one_sided.len() == 1 { "its" } else { "their" },
                );
            }
            weights
        }
    };
    Ok((labels, Some(weights)))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn floats(t: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(&t.contiguous().view(-1)).unwrap()
    }

    /// `-log σ(x)` and `-log(1 - σ(x))`, by hand.
    fn bce(x: f64, present: bool) -> f64 {
        let s = 1.0 / (1.0 + (-x).exp());
        if present {
            -s.ln()
        } else {
            -(1.0 - s).ln()
        }
    }

    #[test]
    fn masked_bce_averages_the_known_entries_only() {
        let logits = Tensor::from_slice(&[0.5f32, -1.0, 2.0, 0.0, 3.0, -2.0]).view([2, 3]);
        let targets = Tensor::from_slice(&[1.0f32, 0.0, -1.0, -1.0, 1.0, 0.0]).view([2, 3]);
        let got = masked_bce(&logits, &targets, None).double_value(&[]);
        let expected =
            (bce(0.5, true) + bce(-1.0, false) + bce(3.0, true) + bce(-2.0, false)) / 4.0;
        assert!((got - expected).abs() < 1e-6, "{got} vs {expected}");
        // The unknown entries' logits change nothing, and get no gradient.
        let other = Tensor::from_slice(&[0.5f32, -1.0, -9.0, 7.0, 3.0, -2.0])
            .view([2, 3])
            .set_requires_grad(true);
        let loss = masked_bce(&other, &targets, None);
        assert!((loss.double_value(&[]) - expected).abs() < 1e-6);
        loss.backward();
        let grad = floats(&other.grad());
        assert_eq!((grad[2], grad[3]), (0.0, 0.0));
        assert!(grad[0] != 0.0 && grad[5] != 0.0, "{grad:?}");
        // Positive weights scale the positive terms of their finding.
        let weights = Tensor::from_slice(&[2.0f32, 1.0, 5.0]);
        let got = masked_bce(&logits, &targets, Some(&weights)).double_value(&[]);
        let expected =
            (2.0 * bce(0.5, true) + bce(-1.0, false) + bce(3.0, true) + bce(-2.0, false)) / 4.0;
        assert!((got - expected).abs() < 1e-6, "{got} vs {expected}");
        // Nothing known: 0, not NaN.
        let unknown = Tensor::from_slice(&[-1.0f32, -1.0]).view([1, 2]);
        let logits = Tensor::from_slice(&[1.0f32, 2.0]).view([1, 2]);
        assert_eq!(masked_bce(&logits, &unknown, None).double_value(&[]), 0.0);
    }

    #[test]
    fn a_multi_label_head_has_one_output_per_finding_and_its_loss() {
        let findings =
            Findings::new(vec!["A".into(), "B".into()], vec![1, 0, 0, -1, 1, 1]).unwrap();
        let labels = HeadLabels::Findings(Arc::new(findings));
        let head = LinearHead::new(4, labels.clone(), Some(vec![1.0, 3.0]), Device::Cpu);
        assert_eq!(head.labels.outputs(), 2);
        let logits = head.forward(&Tensor::ones([3, 4], (Kind::Float, Device::Cpu)), false);
        assert_eq!(logits.size(), [3, 2]);
        let targets = Tensor::from_slice(&[1.0f32, 0.0, 0.0, -1.0, 1.0, 1.0]).view([3, 2]);
        let weights = Tensor::from_slice(&[1.0f32, 3.0]);
        let expected = masked_bce(&logits, &targets, Some(&weights)).double_value(&[]);
        assert_eq!(head.loss(&logits, &targets).double_value(&[]), expected);
        let p = floats(&labels.posteriors(&Tensor::from_slice(&[0.0f32, 100.0]).view([1, 2])));
        assert_eq!(p, [0.5, 1.0]);
        assert!(matches!(labels.metrics(), HeadMetrics::Findings(_)));
        let e = labels
            .check_same(&HeadLabels::Classes(2), "the test split")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("the test split has 2 classes") && e.contains("findings A, B"),
            "{e}"
        );
        assert!(labels.check_same(&labels.clone(), "x").is_ok());
    }
}
