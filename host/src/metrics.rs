//! Classification metrics of the linear heads (the online evaluator and the classifier), on
//! plain Rust data, as InnerEye's `lightning_metrics.py` computes them with torchmetrics 0.6:
//!
//! - [`ACCURACY`] (`AccuracyAtThreshold05`): top-1 (argmax) accuracy of the class posteriors,
//!   for binary and multi-class heads alike (`torchmetrics.Accuracy()` on `[N, C]` softmax
//!   posteriors with integer targets);
//! - only for two classes, on the positive-class (column 1) posterior: [`AUROC`]
//!   (`AreaUnderRocCurve`, see [`auroc`]) and [`AUPRC`] (`AreaUnderPRCurve`, see [`auprc`]), both
//!   NaN when the targets of the epoch hold only one class;
//! - [`LOSS`] (`loss`): the mean of the per-batch losses weighted by batch size.
//!
//! All of them are epoch-level: [`EpochMetrics`] accumulates every batch of an epoch.
//!
//! Heads of multi-label datasets (several binary findings per sample) have their own metrics,
//! accumulated by [`FindingMetrics`]: for each finding `F`, `auroc/F` and `auprc/F` (the same
//! [`auroc`] and [`auprc`] on its sigmoid posterior, over the samples where `F` is known), and
//! their macro means [`AUROC_MACRO`] and [`AUPRC_MACRO`] over the findings whose value is not
//! NaN. [`HeadMetrics`] is either accumulator, as the head's dataset asks.

use anyhow::{bail, Result};

/// Name of the mean loss entry of [`EpochMetrics::compute`].
pub const LOSS: &str = "loss";
/// Name of the top-1 accuracy entry (InnerEye's `MetricType.ACCURACY_AT_THRESHOLD_05`).
pub const ACCURACY: &str = "AccuracyAtThreshold05";
/// Name of the ROC AUC entry (InnerEye's `MetricType.AREA_UNDER_ROC_CURVE`).
pub const AUROC: &str = "AreaUnderRocCurve";
/// Name of the precision-recall AUC entry (InnerEye's `MetricType.AREA_UNDER_PR_CURVE`).
pub const AUPRC: &str = "AreaUnderPRCurve";

/// Prefix of a finding's ROC AUC entry of [`FindingMetrics::compute`]: `auroc/<finding>`.
pub const AUROC_OF: &str = "auroc";
/// Prefix of a finding's precision-recall AUC entry: `auprc/<finding>`.
pub const AUPRC_OF: &str = "auprc";
/// Name of the mean of the findings' ROC AUCs (those that are not NaN).
pub const AUROC_MACRO: &str = "auroc_macro";
/// Name of the mean of the findings' precision-recall AUCs (those that are not NaN).
pub const AUPRC_MACRO: &str = "auprc_macro";

/// Class posteriors, targets and losses of one epoch of a linear head, turned into metrics by
/// [`EpochMetrics::compute`].
#[derive(Debug, Clone)]
pub struct EpochMetrics {
    num_classes: usize,
    /// Posteriors, row-major `[N, num_classes]`.
    probs: Vec<f32>,
    targets: Vec<i64>,
    /// Σ batch loss × batch size.
    loss_sum: f64,
    /// Σ batch size over the batches given to [`EpochMetrics::add_batch`].
    loss_count: f64,
}

impl EpochMetrics {
    /// An empty accumulator for a head with `num_classes` outputs (at least 1).
    pub fn new(num_classes: usize) -> EpochMetrics {
        assert!(num_classes >= 1, "a linear head needs at least one class");
        EpochMetrics {
            num_classes,
            probs: Vec::new(),
            targets: Vec::new(),
            loss_sum: 0.0,
            loss_count: 0.0,
        }
    }

    /// The number of classes given to [`EpochMetrics::new`].
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// The number of samples accumulated so far.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    /// Whether no sample has been accumulated yet.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// Adds one batch: `probs` are the softmax posteriors, row-major `[targets.len(),
    /// num_classes]`; `targets` the class indices; `loss` the batch's (mean) loss, weighted by
    /// `batch_size` (normally `targets.len()`) in the epoch's mean loss.
    ///
    /// Panics if `probs` does not have `targets.len() * num_classes` entries or a target is
    /// outside `0..num_classes` (cross-entropy would already have failed on such a target).
    pub fn add_batch(&mut self, probs: &[f32], targets: &[i64], loss: f64, batch_size: usize) {
        assert_eq!(
            probs.len(),
            targets.len() * self.num_classes,
            "posteriors must be [batch, {}] for {} targets",
            self.num_classes,
            targets.len()
        );
        if let Some(bad) = targets
            .iter()
            .find(|&&t| t < 0 || t as u64 >= self.num_classes as u64)
        {
            panic!(
                "target {bad} is outside the {} classes of the linear head",
                self.num_classes
            );
        }
        self.probs.extend_from_slice(probs);
        self.targets.extend_from_slice(targets);
        self.loss_sum += loss * batch_size as f64;
        self.loss_count += batch_size as f64;
    }

    /// The samples of every process of `world` together (the same on every process): metrics
    /// over all processes' predictions, as a one-process run over the global batches.
    pub fn gathered(&self, world: &crate::world::World) -> anyhow::Result<EpochMetrics> {
        if !world.is_distributed() {
            return Ok(self.clone());
        }
        use ssl_plugin_api::tch::Tensor;
        let c = self.num_classes as i64;
        let probs = Tensor::from_slice(&self.probs).view([-1, c]);
        let probs = world.gather_rows(&probs)?.contiguous().view(-1);
        let targets = world.gather_rows(&Tensor::from_slice(&self.targets))?;
        let sums =
            world.all_reduce_f64(&[self.loss_sum, self.loss_count], crate::world::Reduce::Sum)?;
        Ok(EpochMetrics {
            num_classes: self.num_classes,
            probs: Vec::<f32>::try_from(&probs)?,
            targets: Vec::<i64>::try_from(&targets)?,
            loss_sum: sums[0],
            loss_count: sums[1],
        })
    }

    /// Its content as tensors (`probs`, `targets`, `loss_sum`, `loss_count`), for a checkpoint
    /// written mid-epoch.
    pub fn state(&self) -> Vec<(String, ssl_plugin_api::tch::Tensor)> {
        use ssl_plugin_api::tch::Tensor;
        vec![
            ("probs".into(), Tensor::from_slice(&self.probs)),
            ("targets".into(), Tensor::from_slice(&self.targets)),
            ("loss_sum".into(), Tensor::from(self.loss_sum)),
            ("loss_count".into(), Tensor::from(self.loss_count)),
        ]
    }

    /// Restores [`EpochMetrics::state`] (names without prefix).
    pub fn load_state(
        &mut self,
        stored: &std::collections::HashMap<String, ssl_plugin_api::tch::Tensor>,
    ) -> anyhow::Result<()> {
        use anyhow::Context;
        let get = |name: &str| {
            stored
                .get(name)
                .with_context(|| format!("the checkpoint's epoch state lacks `{name}`"))
        };
        let probs = Vec::<f32>::try_from(get("probs")?)?;
        let targets = Vec::<i64>::try_from(get("targets")?)?;
        if probs.len() != targets.len() * self.num_classes {
            anyhow::bail!(
                "the checkpoint's epoch state has {} posteriors for {} targets of {} classes",
                probs.len(),
                targets.len(),
                self.num_classes
            );
        }
        self.probs = probs;
        self.targets = targets;
        self.loss_sum = get("loss_sum")?.double_value(&[]);
        self.loss_count = get("loss_count")?.double_value(&[]);
        Ok(())
    }

    /// Clears the accumulator for a new epoch.
    pub fn reset(&mut self) {
        self.probs.clear();
        self.targets.clear();
        self.loss_sum = 0.0;
        self.loss_count = 0.0;
    }

    /// The metrics of the accumulated samples, in this fixed order: [`LOSS`], then for two
    /// classes [`AUROC`] and [`AUPRC`], then [`ACCURACY`]. The loss is NaN when no batch was
    /// added, the accuracy NaN when there are no samples; the AUCs are NaN unless both classes
    /// occur among the targets (or when a posterior is NaN).
    pub fn compute(&self) -> Vec<(String, f64)> {
        let mut out = Vec::with_capacity(4);
        let loss = if self.loss_count > 0.0 {
            self.loss_sum / self.loss_count
        } else {
            f64::NAN
        };
        out.push((LOSS.to_string(), loss));
        if self.num_classes == 2 {
            let scores: Vec<f64> = self.probs.chunks(2).map(|row| row[1] as f64).collect();
            let labels: Vec<bool> = self.targets.iter().map(|&t| t == 1).collect();
            out.push((AUROC.to_string(), auroc(&scores, &labels)));
            out.push((AUPRC.to_string(), auprc(&scores, &labels)));
        }
        out.push((ACCURACY.to_string(), self.accuracy()));
        out
    }

    /// Top-1 accuracy: the fraction of samples whose argmax posterior (the first one on ties,
    /// a NaN counting as the largest value, as `torch.argmax`) is the target.
    fn accuracy(&self) -> f64 {
        if self.targets.is_empty() {
            return f64::NAN;
        }
        let correct = self
            .probs
            .chunks(self.num_classes)
            .zip(&self.targets)
            .filter(|(row, &target)| argmax(row) as i64 == target)
            .count();
        correct as f64 / self.targets.len() as f64
    }
}

/// Index of the largest value, the first on ties; the first NaN wins over any number.
fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate().skip(1) {
        let b = row[best];
        if b.is_nan() {
            break;
        }
        if v.is_nan() || v > b {
            best = i;
        }
    }
    best
}

/// The points of torchmetrics' `_binary_clf_curve`: for each distinct score, from the highest
/// down, the number of false and true positives among the samples scoring at least that much.
/// `None` if a score is NaN.
fn binary_clf_curve(scores: &[f64], labels: &[bool]) -> Option<Vec<(f64, f64)>> {
    assert_eq!(
        scores.len(),
        labels.len(),
        "scores and labels differ in length"
    );
    if scores.iter().any(|s| s.is_nan()) {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut points = Vec::new();
    let (mut fps, mut tps) = (0.0, 0.0);
    for (k, &i) in order.iter().enumerate() {
        if labels[i] {
            tps += 1.0;
        } else {
            fps += 1.0;
        }
        // `==` rather than total_cmp so that -0.0 and 0.0 are one threshold, as in torch.
        let last_of_group = order
            .get(k + 1)
            .is_none_or(|&next| scores[next] != scores[i]);
        if last_of_group {
            points.push((fps, tps));
        }
    }
    Some(points)
}

/// Exact area under the ROC curve of `scores` (higher = more positive) for `labels` (`true` =
/// positive class), as `torchmetrics.functional.auroc` (0.6) for binary inputs: the trapezoid
/// rule over the (FPR, TPR) points of the unique thresholds, starting at (0, 0). Tied scores
/// thus count half, i.e. this equals the Mann-Whitney statistic
/// `P(score⁺ > score⁻) + ½·P(score⁺ = score⁻)`.
///
/// NaN when only one class is present (InnerEye's `AreaUnderRocCurve` returns NaN there) or a
/// score is NaN. Panics if the slices differ in length.
pub fn auroc(scores: &[f64], labels: &[bool]) -> f64 {
    let Some(points) = binary_clf_curve(scores, labels) else {
        return f64::NAN;
    };
    let Some(&(negatives, positives)) = points.last() else {
        return f64::NAN;
    };
    if negatives == 0.0 || positives == 0.0 {
        return f64::NAN;
    }
    // Trapezoids in count units (Δfp · mean tp), scaled once at the end: exact for ties.
    let mut area = 0.0;
    let (mut fp0, mut tp0) = (0.0, 0.0);
    for &(fp, tp) in &points {
        area += (fp - fp0) * (tp + tp0) / 2.0;
        (fp0, tp0) = (fp, tp);
    }
    area / (negatives * positives)
}

/// Area under the precision-recall curve of `scores` for `labels`, as InnerEye's
/// `AreaUnderPRCurve`: `auc(recall, precision)` over torchmetrics 0.6
/// `precision_recall_curve(scores, labels)`. Precisely:
///
/// 1. thresholds are the unique scores in descending order; at each threshold `t`,
///    `TP(t)`/`FP(t)` count the positives/negatives with score ≥ `t`,
///    `precision = TP / (TP + FP)`, `recall = TP / P` (P = number of positives);
/// 2. the points stop at the first threshold reaching full recall, and the end point
///    (recall 0, precision 1) is appended after the points are put in order of decreasing
///    recall;
/// 3. the area is the trapezoid rule over these points, `Σ (rᵢ − rᵢ₊₁)·(pᵢ + pᵢ₊₁)/2`
///    (`torchmetrics.functional.auc` with its sign fixed for a decreasing x).
///
/// This is not average precision (a step sum): the segment from (0, 1) to the first point is
/// interpolated linearly. NaN when only one class is present or a score is NaN. Panics if the
/// slices differ in length.
pub fn auprc(scores: &[f64], labels: &[bool]) -> f64 {
    let Some(points) = binary_clf_curve(scores, labels) else {
        return f64::NAN;
    };
    let Some(&(negatives, positives)) = points.last() else {
        return f64::NAN;
    };
    if negatives == 0.0 || positives == 0.0 {
        return f64::NAN;
    }
    // Walk from the (recall 0, precision 1) end point towards full recall; the sum is the same
    // as over the reversed order torchmetrics uses.
    let mut area = 0.0;
    let (mut recall0, mut precision0) = (0.0, 1.0);
    for &(fp, tp) in &points {
        let recall = tp / positives;
        let precision = tp / (tp + fp);
        area += (recall - recall0) * (precision + precision0) / 2.0;
        (recall0, precision0) = (recall, precision);
        if tp == positives {
            break;
        }
    }
    area
}

/// Posteriors (sigmoids), findings and losses of one epoch of a multi-label head, turned into
/// metrics by [`FindingMetrics::compute`].
#[derive(Debug, Clone)]
pub struct FindingMetrics {
    names: Vec<String>,
    /// Posteriors, row-major `[N, names.len()]`.
    probs: Vec<f32>,
    /// Findings, row-major `[N, names.len()]`: 1 present, 0 absent, -1 unknown.
    targets: Vec<i8>,
    /// Σ batch loss × batch size.
    loss_sum: f64,
    /// Σ batch size.
    loss_count: f64,
}

impl FindingMetrics {
    /// An empty accumulator for a head with one output per finding of `names` (at least one).
    pub fn new(names: Vec<String>) -> FindingMetrics {
        assert!(
            !names.is_empty(),
            "a multi-label head needs at least one finding"
        );
        FindingMetrics {
            names,
            probs: Vec::new(),
            targets: Vec::new(),
            loss_sum: 0.0,
            loss_count: 0.0,
        }
    }

    /// The findings' names, in output order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The number of samples accumulated so far.
    pub fn len(&self) -> usize {
        self.targets.len() / self.names.len()
    }

    /// Whether no sample has been accumulated yet.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// Adds one batch: `probs` are the sigmoid posteriors and `targets` the findings (1, 0, -1
    /// unknown), both row-major `[n, findings]`; `loss` the batch's (mean) loss, weighted by
    /// `batch_size` in the epoch's mean loss.
    ///
    /// Panics if `probs` and `targets` differ in length or do not fill whole rows, or a target
    /// is not 1, 0 or -1 (the host builds both from the head and the dataset's findings).
    pub fn add_batch(&mut self, probs: &[f32], targets: &[i8], loss: f64, batch_size: usize) {
        let f = self.names.len();
        assert!(
            probs.len() == targets.len() && targets.len().is_multiple_of(f),
            "posteriors ({}) and findings ({}) must both be [batch, {f}]",
            probs.len(),
            targets.len()
        );
        if let Some(bad) = targets.iter().find(|t| !(-1..=1).contains(*t)) {
            panic!("finding value {bad} is not 1, 0 or -1");
        }
        self.probs.extend_from_slice(probs);
        self.targets.extend_from_slice(targets);
        self.loss_sum += loss * batch_size as f64;
        self.loss_count += batch_size as f64;
    }

    /// The samples of every process of `world` together (the same on every process), as
    /// [`EpochMetrics::gathered`]: posteriors and findings travel as one `[n, 2F]` float
    /// tensor.
    pub fn gathered(&self, world: &crate::world::World) -> Result<FindingMetrics> {
        if !world.is_distributed() {
            return Ok(self.clone());
        }
        use ssl_plugin_api::tch::Tensor;
        let f = self.names.len() as i64;
        let targets: Vec<f32> = self.targets.iter().map(|&t| t as f32).collect();
        let rows = Tensor::cat(
            &[
                Tensor::from_slice(&self.probs).view([-1, f]),
                Tensor::from_slice(&targets).view([-1, f]),
            ],
            1,
        );
        let all = world.gather_rows(&rows)?;
        let probs = all.narrow(1, 0, f).contiguous().view(-1);
        let targets = all.narrow(1, f, f).contiguous().view(-1);
        let sums =
            world.all_reduce_f64(&[self.loss_sum, self.loss_count], crate::world::Reduce::Sum)?;
        Ok(FindingMetrics {
            names: self.names.clone(),
            probs: Vec::<f32>::try_from(&probs)?,
            targets: Vec::<f32>::try_from(&targets)?
                .into_iter()
                .map(|t| t as i8)
                .collect(),
            loss_sum: sums[0],
            loss_count: sums[1],
        })
    }

    /// Its content as tensors (`probs` float, `targets` int8, `loss_sum`, `loss_count`), for
    /// a checkpoint written mid-epoch.
    pub fn state(&self) -> Vec<(String, ssl_plugin_api::tch::Tensor)> {
        use ssl_plugin_api::tch::Tensor;
        vec![
            ("probs".into(), Tensor::from_slice(&self.probs)),
            ("targets".into(), Tensor::from_slice(&self.targets)),
            ("loss_sum".into(), Tensor::from(self.loss_sum)),
            ("loss_count".into(), Tensor::from(self.loss_count)),
        ]
    }

    /// Restores [`FindingMetrics::state`] (names without prefix).
    pub fn load_state(
        &mut self,
        stored: &std::collections::HashMap<String, ssl_plugin_api::tch::Tensor>,
    ) -> Result<()> {
        use anyhow::Context;
        use ssl_plugin_api::tch::Kind;
        let get = |name: &str| {
            stored
                .get(name)
                .with_context(|| format!("the checkpoint's epoch state lacks `{name}`"))
        };
        let probs = Vec::<f32>::try_from(get("probs")?)?;
        let targets = get("targets")?;
        if targets.kind() != Kind::Int8 {
            bail!(
                "the checkpoint's epoch state holds class targets ({:?}), but this head predicts {} findings: was the run trained on another dataset?",
                targets.kind(),
                self.names.len()
            );
        }
        let targets = Vec::<i8>::try_from(targets)?;
        let f = self.names.len();
        if probs.len() != targets.len() || !targets.len().is_multiple_of(f) {
            bail!(
                "the checkpoint's epoch state has {} posteriors for {} finding values of {f} findings",
                probs.len(),
                targets.len()
            );
        }
        self.probs = probs;
        self.targets = targets;
        self.loss_sum = get("loss_sum")?.double_value(&[]);
        self.loss_count = get("loss_count")?.double_value(&[]);
        Ok(())
    }

    /// The metrics of the accumulated samples, in this fixed order: [`LOSS`]; `auroc/<F>` for
    /// each finding, then [`AUROC_MACRO`]; `auprc/<F>` for each finding, then [`AUPRC_MACRO`].
    /// A finding's AUCs are over the samples where it is known (not -1), NaN when these hold
    /// only one class; the macro means leave NaN findings out and are NaN when all are. The loss
    /// is NaN when no batch was added.
    pub fn compute(&self) -> Vec<(String, f64)> {
        let f = self.names.len();
        let loss = if self.loss_count > 0.0 {
            self.loss_sum / self.loss_count
        } else {
            f64::NAN
        };
        let (mut aurocs, mut auprcs) = (Vec::with_capacity(f), Vec::with_capacity(f));
        for k in 0..f {
            let (mut scores, mut labels) = (Vec::new(), Vec::new());
            for (row, target) in self.probs.chunks(f).zip(self.targets.chunks(f)) {
                if target[k] >= 0 {
                    scores.push(row[k] as f64);
                    labels.push(target[k] == 1);
                }
            }
            aurocs.push(auroc(&scores, &labels));
            auprcs.push(auprc(&scores, &labels));
        }
        let mut out = Vec::with_capacity(2 * f + 3);
        out.push((LOSS.to_string(), loss));
        for (prefix, values, macro_name) in [
            (AUROC_OF, &aurocs, AUROC_MACRO),
            (AUPRC_OF, &auprcs, AUPRC_MACRO),
        ] {
            for (name, &v) in self.names.iter().zip(values) {
                out.push((format!("{prefix}/{name}"), v));
            }
            out.push((macro_name.to_string(), mean_of_numbers(values)));
        }
        out
    }
}

/// The mean of the values that are not NaN; NaN when there are none.
fn mean_of_numbers(values: &[f64]) -> f64 {
    let numbers: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    if numbers.is_empty() {
        f64::NAN
    } else {
        numbers.iter().sum::<f64>() / numbers.len() as f64
    }
}

/// The targets of a batch's rows for [`HeadMetrics::add_batch`]: class indices, or findings
/// row-major `[n, F]`.
#[derive(Debug, Clone)]
pub enum BatchTargets {
    Classes(Vec<i64>),
    Findings(Vec<i8>),
}

/// The epoch accumulator of a linear head: [`EpochMetrics`] for one class per sample,
/// [`FindingMetrics`] for multi-label datasets.
#[derive(Debug, Clone)]
pub enum HeadMetrics {
    Classes(EpochMetrics),
    Findings(FindingMetrics),
}

impl HeadMetrics {
    /// Adds one batch of posteriors (softmax rows for classes, sigmoids for findings) and its
    /// targets, of the kind of the accumulator (panics otherwise, as the host pairs them).
    pub fn add_batch(&mut self, probs: &[f32], targets: &BatchTargets, loss: f64, n: usize) {
        match (self, targets) {
            (HeadMetrics::Classes(m), BatchTargets::Classes(t)) => m.add_batch(probs, t, loss, n),
            (HeadMetrics::Findings(m), BatchTargets::Findings(t)) => m.add_batch(probs, t, loss, n),
            _ => panic!("a linear head's targets are not of the kind of its metrics"),
        }
    }

    /// See [`EpochMetrics::gathered`].
    pub fn gathered(&self, world: &crate::world::World) -> Result<HeadMetrics> {
        Ok(match self {
            HeadMetrics::Classes(m) => HeadMetrics::Classes(m.gathered(world)?),
            HeadMetrics::Findings(m) => HeadMetrics::Findings(m.gathered(world)?),
        })
    }

    /// See [`EpochMetrics::state`].
    pub fn state(&self) -> Vec<(String, ssl_plugin_api::tch::Tensor)> {
        match self {
            HeadMetrics::Classes(m) => m.state(),
            HeadMetrics::Findings(m) => m.state(),
        }
    }

    /// See [`EpochMetrics::load_state`].
    pub fn load_state(
        &mut self,
        stored: &std::collections::HashMap<String, ssl_plugin_api::tch::Tensor>,
    ) -> Result<()> {
        match self {
            HeadMetrics::Classes(m) => m.load_state(stored),
            HeadMetrics::Findings(m) => m.load_state(stored),
        }
    }

    /// See [`EpochMetrics::compute`] and [`FindingMetrics::compute`].
    pub fn compute(&self) -> Vec<(String, f64)> {
        match self {
            HeadMetrics::Classes(m) => m.compute(),
            HeadMetrics::Findings(m) => m.compute(),
        }
    }
}

/// Positive weights of the balanced multi-label loss (`pos_weight` of binary cross-entropy),
/// one per finding: negatives / positives of that finding among the samples `rows` of
/// `findings` (the training split), unknown values not counted. A finding without positives
/// or without negatives gets weight 1; their names are returned second, for a warning.
pub fn finding_pos_weights(
    findings: &ssl_plugin_api::Findings,
    rows: &[usize],
) -> (Vec<f32>, Vec<String>) {
    let f = findings.names().len();
    let (mut positives, mut negatives) = (vec![0u64; f], vec![0u64; f]);
    for &i in rows {
        for (k, &v) in findings.of(i).iter().enumerate() {
            match v {
                1 => positives[k] += 1,
                0 => negatives[k] += 1,
                _ => {}
            }
        }
    }
    let mut weights = Vec::with_capacity(f);
    let mut one_sided = Vec::new();
    for (k, name) in findings.names().iter().enumerate() {
        if positives[k] == 0 || negatives[k] == 0 {
            weights.push(1.0);
            one_sided.push(name.clone());
        } else {
            weights.push((negatives[k] as f64 / positives[k] as f64) as f32);
        }
    }
    (weights, one_sided)
}

/// Class weights of the balanced linear-head loss, as InnerEye's `compute_class_weights`:
/// `w_c = N / count_c` over the dataset's `targets`, normalised to sum to 1.
///
/// Errors when a class in `0..num_classes` has no sample (its weight would be infinite) or a
/// target lies outside `0..num_classes`.
pub fn class_weights(targets: &[i64], num_classes: usize) -> Result<Vec<f32>> {
    let mut counts = vec![0u64; num_classes];
    for &t in targets {
        if t < 0 || t as u64 >= num_classes as u64 {
            bail!(
                "class weights: target {t} is outside the {num_classes} classes 0..{num_classes}"
            );
        }
        counts[t as usize] += 1;
    }
    if let Some(class) = counts.iter().position(|&c| c == 0) {
        bail!(
            "class weights: class {class} has no sample among the {} targets, so its weight \
             N/count would be infinite; disable the balanced loss or fix the dataset",
            targets.len()
        );
    }
    let n = targets.len() as f64;
    let raw: Vec<f64> = counts.iter().map(|&c| n / c as f64).collect();
    let sum: f64 = raw.iter().sum();
    Ok(raw.iter().map(|w| (w / sum) as f32).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    fn labels(v: &[u8]) -> Vec<bool> {
        v.iter().map(|&l| l == 1).collect()
    }

    #[test]
    fn auroc_separated_reversed_and_hand_case() {
        let l = labels(&[0, 0, 1, 1]);
        assert_eq!(auroc(&[0.1, 0.2, 0.8, 0.9], &l), 1.0);
        assert_eq!(auroc(&[0.9, 0.8, 0.2, 0.1], &l), 0.0);
        // Positive pairs (pos > neg): 0.35>0.1, 0.8>0.1, 0.8>0.4; 0.35<0.4 ⇒ 3/4.
        assert!(close(auroc(&[0.1, 0.4, 0.35, 0.8], &l), 0.75));
    }

    #[test]
    fn auroc_ties_count_half() {
        // All tied: 0.5.
        assert!(close(
            auroc(&[0.3, 0.3, 0.3, 0.3], &labels(&[0, 1, 0, 1])),
            0.5
        ));
        // pos {0.5, 0.5, 0.9}, neg {0.5, 0.1}: pairs 0.5/0.5 tie ×2 (=1), 0.5>0.1 ×2, 0.9>both
        // ×2 ⇒ (1 + 2 + 2)/6 = 5/6. torchmetrics 0.6 auroc gives 0.8333334 too.
        let s = [0.5, 0.5, 0.5, 0.9, 0.1];
        assert!(close(auroc(&s, &labels(&[1, 0, 1, 1, 0])), 5.0 / 6.0));
    }

    #[test]
    fn aucs_are_nan_for_one_class_or_nan_scores() {
        assert!(auroc(&[0.1, 0.9], &labels(&[1, 1])).is_nan());
        assert!(auprc(&[0.1, 0.9], &labels(&[0, 0])).is_nan());
        assert!(auroc(&[], &[]).is_nan());
        assert!(auprc(&[f64::NAN, 0.9], &labels(&[0, 1])).is_nan());
    }

    #[test]
    fn auprc_hand_case() {
        // Scores descending: 0.8(+) 0.4(-) 0.35(+) 0.1(-). Thresholds 0.8, 0.4, 0.35 (full
        // recall reached, stop): (recall, precision) = (0.5, 1), (0.5, 0.5), (1, 2/3); with the
        // (0, 1) end point the trapezoids are 0.5·(1+1)/2 + 0 + 0.5·(0.5+2/3)/2 = 0.5 + 7/24
        // = 19/24. torchmetrics 0.6 `auc(recall, precision)` gives 0.7916667.
        let got = auprc(&[0.1, 0.4, 0.35, 0.8], &labels(&[0, 0, 1, 1]));
        assert!(close(got, 19.0 / 24.0), "{got}");
        assert_eq!(auprc(&[0.1, 0.2, 0.8, 0.9], &labels(&[0, 0, 1, 1])), 1.0);
    }

    #[test]
    fn auprc_matches_torchmetrics_with_ties() {
        // Reference values from torchmetrics 0.6.0, run in a throwaway venv:
        // `prec, rec, _ = precision_recall_curve(preds=tensor(s), target=tensor(l));
        // auc(rec, prec)` and `auroc(tensor(s), tensor(l))` (float32, hence 1e-6 tolerance).
        let s = [0.5, 0.5, 0.5, 0.9, 0.1];
        let got = auprc(&s, &labels(&[1, 0, 1, 1, 0]));
        // By hand: (r, p) = (1/3, 1), (1, 3/4) ⇒ 1/3 + (2/3)·(1 + 3/4)/2 = 11/12.
        assert!(close(got, 0.916_666_6), "{got}");
        let s = [0.9, 0.1, 0.4, 0.4, 0.7, 0.2, 0.7, 0.3];
        let l = labels(&[0, 1, 1, 0, 1, 0, 0, 1]);
        let got = auprc(&s, &l);
        assert!(close(got, 0.361_904_77), "{got}");
        assert!(close(auroc(&s, &l), 0.3125));
    }

    #[test]
    fn accuracy_loss_and_order() {
        let mut m = EpochMetrics::new(3);
        assert!(m.is_empty());
        // argmax: 0, 2, 1, 0 (tie 0.4/0.4 → first); targets 0, 2, 2, 1 ⇒ 2/4.
        m.add_batch(
            &[0.7, 0.2, 0.1, 0.1, 0.2, 0.7, 0.2, 0.5, 0.3],
            &[0, 2, 2],
            1.0,
            3,
        );
        m.add_batch(&[0.4, 0.4, 0.2], &[1], 3.0, 1);
        assert!(!m.is_empty());
        let got = m.compute();
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, [LOSS, ACCURACY]);
        assert!(close(got[0].1, (1.0 * 3.0 + 3.0) / 4.0));
        assert!(close(got[1].1, 0.5));
    }

    #[test]
    fn binary_metrics() {
        let mut m = EpochMetrics::new(2);
        m.add_batch(&[0.9, 0.1, 0.6, 0.4], &[0, 0], 0.5, 2);
        m.add_batch(&[0.65, 0.35, 0.2, 0.8], &[1, 1], 0.7, 2);
        let got = m.compute();
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, [LOSS, AUROC, AUPRC, ACCURACY]);
        assert!(close(got[0].1, 0.6));
        // Column 1 scores [0.1, 0.4, 0.35, 0.8], as the hand cases above.
        assert!(close(got[1].1, 0.75));
        assert!(close(got[2].1, 19.0 / 24.0));
        // argmax [0, 0, 0, 1] vs [0, 0, 1, 1].
        assert!(close(got[3].1, 0.75));

        let mut one_class = EpochMetrics::new(2);
        one_class.add_batch(&[0.9, 0.1, 0.3, 0.7], &[0, 0], 0.1, 2);
        let got = one_class.compute();
        assert!(got[1].1.is_nan() && got[2].1.is_nan());
        assert!(close(got[3].1, 0.5));
    }

    #[test]
    fn empty_metrics_are_nan() {
        let got = EpochMetrics::new(2).compute();
        assert!(got.iter().all(|(_, v)| v.is_nan()));
    }

    #[test]
    #[should_panic(expected = "outside")]
    fn out_of_range_target_panics() {
        EpochMetrics::new(2).add_batch(&[0.5, 0.5], &[2], 0.0, 1);
    }

    #[test]
    fn argmax_ties_and_nan() {
        assert_eq!(argmax(&[0.2, 0.5, 0.5]), 1);
        assert_eq!(argmax(&[0.2, f32::NAN, 0.9]), 1);
    }

    fn findings(names: &[&str]) -> FindingMetrics {
        FindingMetrics::new(names.iter().map(|n| n.to_string()).collect())
    }

    fn value(metrics: &[(String, f64)], name: &str) -> f64 {
        metrics
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{name} not in {metrics:?}"))
            .1
    }

    #[test]
    fn finding_metrics_per_finding_and_macro() {
        let mut m = findings(&["A", "B", "C"]);
        assert!(m.is_empty());
        // Rows (A, B, C) in two batches. A: scores [0.1, 0.4, 0.35, 0.8] for [0, 0, 1, 1] (the
        // hand case above) and a fifth row, unknown, whose 0.99 would change them; B: four
        // known rows; C: only absent or unknown values.
        m.add_batch(
            &[0.1, 0.9, 0.3, 0.4, 0.5, 0.2, 0.35, 0.5, 0.7],
            &[0, 1, 0, 0, 1, 0, 1, 0, -1],
            0.5,
            3,
        );
        m.add_batch(
            &[0.8, 0.2, 0.6, 0.99, 0.7, 0.1],
            &[1, 0, 0, -1, -1, 0],
            1.0,
            2,
        );
        assert_eq!(m.len(), 5);
        let got = m.compute();
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                LOSS,
                "auroc/A",
                "auroc/B",
                "auroc/C",
                AUROC_MACRO,
                "auprc/A",
                "auprc/B",
                "auprc/C",
                AUPRC_MACRO
            ]
        );
        assert!(close(value(&got, LOSS), (0.5 * 3.0 + 1.0 * 2.0) / 5.0));
        // A: the unknown fifth row (0.99) is left out.
        assert!(close(value(&got, "auroc/A"), 0.75));
        assert!(close(value(&got, "auprc/A"), 19.0 / 24.0));
        // B over rows 0..4: scores [0.9, 0.5, 0.5, 0.2] for [1, 1, 0, 0]: pairs (pos, neg)
        // 0.9>0.5, 0.9>0.2, 0.5=0.5 (½), 0.5>0.2 ⇒ 3.5/4.
        assert!(close(value(&got, "auroc/B"), 3.5 / 4.0));
        // (r, p) at thresholds 0.9, 0.5: (1/2, 1), (1, 2/3) ⇒ 1/2 + (1/2)(1 + 2/3)/2 = 11/12.
        assert!(close(value(&got, "auprc/B"), 11.0 / 12.0));
        assert!(value(&got, "auroc/C").is_nan() && value(&got, "auprc/C").is_nan());
        // The macro means leave C out.
        assert!(close(value(&got, AUROC_MACRO), (0.75 + 3.5 / 4.0) / 2.0));
        assert!(close(
            value(&got, AUPRC_MACRO),
            (19.0 / 24.0 + 11.0 / 12.0) / 2.0
        ));
    }

    #[test]
    fn finding_metrics_without_any_two_class_finding_are_nan() {
        let got = findings(&["A"]).compute();
        assert!(got.iter().all(|(_, v)| v.is_nan()), "{got:?}");
        let mut m = findings(&["A", "B"]);
        m.add_batch(&[0.2, 0.3, 0.9, 0.1], &[1, -1, 1, -1], 0.3, 2);
        let got = m.compute();
        assert!(close(value(&got, LOSS), 0.3));
        assert!(value(&got, AUROC_MACRO).is_nan() && value(&got, AUPRC_MACRO).is_nan());
    }

    /// A world of two processes that hold the same tensors as this one.
    struct Mirror;

    impl crate::world::Comm for Mirror {
        fn rank(&self) -> usize {
            0
        }
        fn world_size(&self) -> usize {
            2
        }
        fn all_reduce_(
            &self,
            tensors: &[ssl_plugin_api::tch::Tensor],
            op: crate::world::Reduce,
        ) -> Result<()> {
            for t in tensors {
                if matches!(op, crate::world::Reduce::Sum) {
                    let _ = t.shallow_clone().g_mul_scalar_(2.0);
                }
            }
            Ok(())
        }
        fn broadcast_(&self, _: &[ssl_plugin_api::tch::Tensor], _: usize) -> Result<()> {
            Ok(())
        }
        fn all_gather(
            &self,
            tensor: &ssl_plugin_api::tch::Tensor,
        ) -> Result<ssl_plugin_api::tch::Tensor> {
            Ok(ssl_plugin_api::tch::Tensor::cat(&[tensor, tensor], 0))
        }
        fn barrier(&self) -> Result<()> {
            Ok(())
        }
    }

    #[test]
    fn finding_metrics_state_and_gather_round_trip() {
        let mut m = findings(&["A", "B"]);
        m.add_batch(
            &[0.1, 0.9, 0.7, 0.2, 0.6, 0.5],
            &[0, 1, 1, -1, 1, 0],
            0.4,
            3,
        );
        // Two processes holding the same rows: every row twice, in rank order, each posterior
        // with its own finding; the loss sums doubled alike.
        let two = crate::world::World::new(
            std::sync::Arc::new(Mirror),
            ssl_plugin_api::tch::Device::Cpu,
            0,
        );
        let gathered = m.gathered(&two).unwrap();
        assert_eq!(gathered.probs, [m.probs.clone(), m.probs.clone()].concat());
        assert_eq!(
            gathered.targets,
            [m.targets.clone(), m.targets.clone()].concat()
        );
        assert_eq!(gathered.len(), 6);
        assert!(close(value(&gathered.compute(), LOSS), 0.4));
        let state: std::collections::HashMap<_, _> = gathered.state().into_iter().collect();
        let mut restored = findings(&["A", "B"]);
        restored.load_state(&state).unwrap();
        let (a, b) = (m.compute(), restored.compute());
        for ((na, va), (nb, vb)) in a.iter().zip(&b) {
            assert_eq!(na, nb);
            assert!(
                va == vb || (va.is_nan() && vb.is_nan()),
                "{na}: {va} vs {vb}"
            );
        }
        // Five findings' accumulator cannot take the 12 values of two findings' rows.
        let e = findings(&["A", "B", "C", "D", "E"])
            .load_state(&state)
            .unwrap_err();
        assert!(e.to_string().contains("of 5 findings"), "{e}");
        // A single-label head's state is refused by name, not misread.
        let mut classes = EpochMetrics::new(2);
        classes.add_batch(&[0.5, 0.5], &[1], 0.1, 1);
        let state: std::collections::HashMap<_, _> = classes.state().into_iter().collect();
        let e = restored.load_state(&state).unwrap_err();
        assert!(e.to_string().contains("class targets"), "{e}");
    }

    #[test]
    fn head_metrics_dispatch_to_their_kind() {
        let mut m = HeadMetrics::Findings(findings(&["A"]));
        m.add_batch(&[0.2, 0.8], &BatchTargets::Findings(vec![0, 1]), 1.0, 2);
        assert!(close(value(&m.compute(), "auroc/A"), 1.0));
        let mut m = HeadMetrics::Classes(EpochMetrics::new(2));
        m.add_batch(&[0.2, 0.8], &BatchTargets::Classes(vec![1]), 1.0, 1);
        assert!(close(value(&m.compute(), ACCURACY), 1.0));
    }

    #[test]
    fn positive_weights_per_finding() {
        // Rows: A present in 1 of 4 known, B in 2 of 3 known (one unknown), C never.
        let table = ssl_plugin_api::Findings::new(
            vec!["A".into(), "B".into(), "C".into()],
            vec![
                1, 1, 0, //
                0, 1, 0, //
                0, 0, 0, //
                0, -1, 0, //
                1, 1, 0, // not in the training rows
            ],
        )
        .unwrap();
        let (weights, one_sided) = finding_pos_weights(&table, &[0, 1, 2, 3]);
        assert_eq!(weights, [3.0, 0.5, 1.0]);
        assert_eq!(one_sided, ["C"]);
        // The training rows alone count: with row 4, A is 2 of 5.
        let (weights, _) = finding_pos_weights(&table, &[0, 1, 2, 3, 4]);
        assert_eq!(weights[0], 1.5);
    }

    #[test]
    fn class_weights_balanced() {
        assert_eq!(class_weights(&[0, 0, 0, 1], 2).unwrap(), [0.25, 0.75]);
        let w = class_weights(&[0, 1, 1, 2, 2, 2], 3).unwrap();
        // 6/[1,2,3] = [6,3,2], / 11.
        for (a, b) in w.iter().zip([6.0 / 11.0, 3.0 / 11.0, 2.0 / 11.0]) {
            assert!((a - b).abs() < 1e-6);
        }
        let err = class_weights(&[0, 0, 2], 3).unwrap_err().to_string();
        assert!(err.contains("class 1"), "{err}");
        let err = class_weights(&[0, 5], 2).unwrap_err().to_string();
        assert!(err.contains("target 5"), "{err}");
    }
}
