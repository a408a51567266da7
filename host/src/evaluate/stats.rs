//! Statistics of the evaluation: the targets an encoder is scored against, the scores
//! themselves (top-k accuracy, AUROC, average precision), bootstrap confidence intervals over
//! the test set, label fractions for the label-efficiency protocol and the patient-level
//! validation split of the probe's penalty choice.
//!
//! Scores are row-major `[samples × outputs]` slices of `f64`: class posteriors for
//! [`Targets::Classes`], one probability per finding for [`Targets::Findings`]. The metrics
//! follow scikit-learn's definitions (`roc_auc_score`, `average_precision_score`,
//! `top_k_accuracy_score`) and are tested against it; AUROC is [`crate::metrics::auroc`].
//!
//! What this module does not do: fit anything (see [`super::probe`]) or format results.

use anyhow::{bail, Result};
use ssl_plugin_api::Findings;

use crate::metrics::auroc;
use crate::seeds;

// The values of [`Findings`] (plugin-api's `findings::{PRESENT, ABSENT, UNKNOWN}`, which the
// crate does not re-export).
/// A finding that is present.
pub(super) const PRESENT: i8 = 1;
/// A finding that is absent.
pub(super) const ABSENT: i8 = 0;
/// A finding that is not known for a sample.
pub(super) const UNKNOWN: i8 = -1;

/// What an evaluation predicts for each sample.
#[derive(Clone, Debug, PartialEq)]
pub enum Targets {
    /// One class per sample, in `0..num_classes` (binary datasets have `num_classes` 2).
    Classes {
        /// The class of each sample.
        labels: Vec<i64>,
        /// The number of classes, at least 2.
        num_classes: usize,
    },
    /// Several binary findings per sample; unknown entries are left out of fits and metrics.
    Findings(Findings),
}

impl Targets {
    /// Number of samples.
    pub fn len(&self) -> usize {
        match self {
            Targets::Classes { labels, .. } => labels.len(),
            Targets::Findings(f) => f.len(),
        }
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The number of score columns: the classes or the findings.
    pub fn outputs(&self) -> usize {
        match self {
            Targets::Classes { num_classes, .. } => *num_classes,
            Targets::Findings(f) => f.names().len(),
        }
    }

    /// The names of the score columns: `class 0`, `class 1`, ... or the findings' names.
    pub fn output_names(&self) -> Vec<String> {
        match self {
            Targets::Classes { num_classes, .. } => {
                (0..*num_classes).map(|c| format!("class {c}")).collect()
            }
            Targets::Findings(f) => f.names().to_vec(),
        }
    }

    /// The targets of the samples `rows`, in that order (repeats allowed). Panics when a row
    /// is out of range.
    pub fn select(&self, rows: &[usize]) -> Targets {
        match self {
            Targets::Classes {
                labels,
                num_classes,
            } => Targets::Classes {
                labels: rows.iter().map(|&i| labels[i]).collect(),
                num_classes: *num_classes,
            },
            Targets::Findings(f) => Targets::Findings(f.select(rows)),
        }
    }

    /// These targets followed by `other`'s (e.g. the training and validation parts, for the
    /// probe's refit). `Err` when they differ in classes or findings.
    pub fn concat(&self, other: &Targets) -> Result<Targets> {
        match (self, other) {
            (
                Targets::Classes {
                    labels: a,
                    num_classes: k,
                },
                Targets::Classes {
                    labels: b,
                    num_classes: k2,
                },
            ) if k == k2 => Ok(Targets::Classes {
                labels: a.iter().chain(b).copied().collect(),
                num_classes: *k,
            }),
            (Targets::Findings(a), Targets::Findings(b)) if a.names() == b.names() => {
                let values = a.values().iter().chain(b.values()).copied().collect();
                Ok(Targets::Findings(Findings::new(a.names().to_vec(), values)?))
            }
            _ => bail!(
                "the targets differ: {} and {}",
                self.describe(),
                other.describe()
            ),
        }
    }

    /// A short description: `3 classes` or `findings A, B, C`.
    pub fn describe(&self) -> String {
        match self {
            Targets::Classes { num_classes, .. } => format!("{num_classes} classes"),
            Targets::Findings(f) => format!("findings {}", f.names().join(", ")),
        }
    }

    /// `Err` naming the first problem: fewer than 2 classes, or a label outside
    /// `0..num_classes`.
    pub fn check(&self) -> Result<()> {
        if let Targets::Classes {
            labels,
            num_classes,
        } = self
        {
            if *num_classes < 2 {
                bail!("a single-label dataset needs at least 2 classes, got {num_classes}");
            }
            if let Some((i, l)) = labels
                .iter()
                .enumerate()
                .find(|(_, &l)| l < 0 || l as u64 >= *num_classes as u64)
            {
                bail!("sample {i} has label {l}, outside the {num_classes} classes 0..{num_classes}");
            }
        }
        Ok(())
    }

    /// Column `output` as binary labels, with the samples it is known for: for classes
    /// one-vs-rest (every sample), for findings the samples whose entry is not unknown.
    fn column(&self, output: usize) -> (Vec<usize>, Vec<bool>) {
        match self {
            Targets::Classes { labels, .. } => (
                (0..labels.len()).collect(),
                labels.iter().map(|&l| l == output as i64).collect(),
            ),
            Targets::Findings(f) => {
                let width = f.names().len();
                let mut rows = Vec::new();
                let mut positive = Vec::new();
                for (i, &v) in f.values().iter().skip(output).step_by(width).enumerate() {
                    if v == PRESENT || v == ABSENT {
                        rows.push(i);
                        positive.push(v == PRESENT);
                    }
                }
                (rows, positive)
            }
        }
    }

    /// Per output: the scores of column `output` of `scores` and its labels, known entries
    /// only.
    fn scored_column(&self, scores: &[f64], output: usize) -> (Vec<f64>, Vec<bool>) {
        let width = self.outputs();
        let (rows, labels) = self.column(output);
        let s = rows.iter().map(|&i| scores[i * width + output]).collect();
        (s, labels)
    }

    fn check_scores(&self, scores: &[f64]) {
        assert_eq!(
            scores.len(),
            self.len() * self.outputs(),
            "scores must be [{} samples × {} outputs]",
            self.len(),
            self.outputs()
        );
    }
}

/// Top-k accuracy: the fraction of samples whose label is among the `k` highest of its
/// `num_classes` scores (row-major `scores`). Ties go to the lower class index, as
/// `argmax` (so top-1 is the accuracy of [`crate::metrics`]). NaN without samples. Panics if
/// `scores` is not `[labels.len() × num_classes]`.
pub fn top_k_accuracy(scores: &[f64], labels: &[i64], num_classes: usize, k: usize) -> f64 {
    assert_eq!(scores.len(), labels.len() * num_classes, "scores must be [samples × classes]");
    if labels.is_empty() {
        return f64::NAN;
    }
    let hits = scores
        .chunks(num_classes)
        .zip(labels)
        .filter(|(row, &label)| {
            let label = label as usize;
            let own = row[label];
            let ahead = row
                .iter()
                .enumerate()
                .filter(|&(c, &s)| s > own || (s == own && c < label))
                .count();
            ahead < k
        })
        .count();
    hits as f64 / labels.len() as f64
}

/// The AUROC of every output (scikit-learn's `roc_auc_score` per column: one-vs-rest for
/// classes, known entries only for findings); NaN where a column has one class only. Panics if
/// `scores` is not `[targets.len() × targets.outputs()]`.
pub fn aurocs(scores: &[f64], targets: &Targets) -> Vec<f64> {
    targets.check_scores(scores);
    (0..targets.outputs())
        .map(|j| {
            let (s, l) = targets.scored_column(scores, j);
            auroc(&s, &l)
        })
        .collect()
}

/// The average precision of every output, as [`average_precision`] per column (one-vs-rest
/// for classes, known entries only for findings). Panics as [`aurocs`].
pub fn average_precisions(scores: &[f64], targets: &Targets) -> Vec<f64> {
    targets.check_scores(scores);
    (0..targets.outputs())
        .map(|j| {
            let (s, l) = targets.scored_column(scores, j);
            average_precision(&s, &l)
        })
        .collect()
}

/// The mean of `values` (a macro average); NaN when it is empty or any value is NaN (a
/// column whose metric is undefined makes the average undefined, as in scikit-learn).
pub fn macro_mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.iter().sum::<f64>() / values.len() as f64
}

/// The mean of the values that are not NaN, NaN if none is: the macro AUROC that chooses the
/// probe's penalty, where a finding without positives in the validation part has no say.
pub fn defined_mean(values: &[f64]) -> f64 {
    let defined: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    macro_mean(&defined)
}

/// Average precision as scikit-learn's `average_precision_score`: over the distinct scores
/// `t` from the highest down, `AP = Σ (R(t) − R(t_prev)) · P(t)`, with precision
/// `P(t) = TP/(TP + FP)` and recall `R(t) = TP/positives` counting the samples scoring at least
/// `t` (a step sum, no interpolation; tied scores form one step). This is not
/// [`crate::metrics::auprc`] (torchmetrics' trapezoid area).
///
/// NaN when there is no positive or a score is NaN; 1 when every sample is positive. Panics
/// if the slices differ in length.
pub fn average_precision(scores: &[f64], labels: &[bool]) -> f64 {
    assert_eq!(scores.len(), labels.len(), "scores and labels differ in length");
    let positives = labels.iter().filter(|&&l| l).count() as f64;
    if positives == 0.0 || scores.iter().any(|s| s.is_nan()) {
        return f64::NAN;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut tp, mut seen, mut recall0, mut ap) = (0.0, 0.0, 0.0, 0.0);
    for (k, &i) in order.iter().enumerate() {
        seen += 1.0;
        if labels[i] {
            tp += 1.0;
        }
        let last_of_tie = order
            .get(k + 1)
            .is_none_or(|&next| scores[next] != scores[i]);
        if last_of_tie {
            let recall = tp / positives;
            ap += (recall - recall0) * (tp / seen);
            recall0 = recall;
        }
    }
    ap
}

/// A bootstrap confidence interval.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Interval {
    /// The metric on the full set (every sample once).
    pub estimate: f64,
    /// The 2.5th percentile of the resampled values.
    pub low: f64,
    /// The 97.5th percentile of the resampled values.
    pub high: f64,
    /// The resamples whose metric was defined (the interval's basis).
    pub resamples: usize,
    /// The resamples skipped because their metric was not finite (e.g. AUROC of a resample
    /// without positives).
    pub skipped: usize,
}

/// The 95% bootstrap confidence interval of `metric` over a set of `n` samples, by the
/// percentile method: `resamples` draws of `n` indices with replacement (seeded: the same
/// `seed` gives the same draws), `metric` evaluated on each (it receives the drawn indices,
/// repeats included), and the 2.5th and 97.5th percentiles (linear interpolation between
/// order statistics, as NumPy's default) of the finite values. A non-finite value (an AUROC
/// undefined on that resample) is skipped and counted in [`Interval::skipped`]; when every
/// resample is skipped `low` and `high` are NaN.
pub fn bootstrap_ci(
    n: usize,
    resamples: usize,
    seed: u64,
    metric: impl Fn(&[usize]) -> f64,
) -> Interval {
    let all: Vec<usize> = (0..n).collect();
    let estimate = metric(&all);
    let mut values = Vec::with_capacity(resamples);
    let mut rows = vec![0usize; n];
    let mut skipped = 0;
    for r in 0..resamples {
        let base = seeds::seed_of(&[seed, r as u64]);
        for (i, row) in rows.iter_mut().enumerate() {
            // Multiply-shift of 32 random bits: uniform enough for n far below 2^32.
            *row = (((seeds::mix(base, i as u64) >> 32) * n as u64) >> 32) as usize;
        }
        let v = metric(&rows);
        if v.is_finite() {
            values.push(v);
        } else {
            skipped += 1;
        }
    }
    values.sort_by(f64::total_cmp);
    Interval {
        estimate,
        low: percentile(&values, 0.025),
        high: percentile(&values, 0.975),
        resamples: values.len(),
        skipped,
    }
}

/// The `q` quantile of sorted `values`, interpolated linearly (NumPy's default); NaN if empty.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let position = q * (sorted.len() - 1) as f64;
    let below = position.floor() as usize;
    let above = (below + 1).min(sorted.len() - 1);
    let t = position - below as f64;
    sorted[below] + (sorted[above] - sorted[below]) * t
}

/// The training samples of the label-efficiency protocol: about `fraction` of the samples,
/// drawn by patient when `groups` names one per sample (all images of a patient in or out),
/// stratified by label, the same for the same `seed`. Returns the drawn sample indices in
/// increasing order; their number is the number actually drawn (whole patients make it
/// approximate).
///
/// Stratification: each label (a class; for findings each finding's positives, and the
/// samples with no positive finding as one more label) should keep `fraction` of its samples.
/// The draw first takes, rarest label first, one patient (in seeded random order) with a
/// sample of each label that has one and is still missing, so that every class or finding
/// present in the data is present in the fraction; then it goes through the other patients in
/// seeded random order and takes a patient when that brings the drawn counts closer to their
/// targets (Σ over labels of (drawn − target)² / max(target, 1) decreases). Unknown findings
/// count for no label. `fraction` 1 returns every sample.
///
/// `Err` when `fraction` is not in (0, 1], `groups` does not have one entry per sample, or a
/// class label is out of range.
pub fn label_fraction(
    targets: &Targets,
    groups: Option<&[String]>,
    fraction: f64,
    seed: u64,
) -> Result<Vec<usize>> {
    if !(fraction > 0.0 && fraction <= 1.0) {
        bail!("label fraction {fraction} is not in (0, 1]");
    }
    targets.check()?;
    let n = targets.len();
    if let Some(g) = groups {
        if g.len() != n {
            bail!("{} patient ids for {n} samples: expected one per sample", g.len());
        }
    }
    if fraction == 1.0 {
        return Ok((0..n).collect());
    }
    let units = Units::new(targets, groups);
    let labels = units.counts.first().map_or(0, Vec::len);
    let totals: Vec<f64> = (0..labels)
        .map(|j| units.counts.iter().map(|c| c[j] as f64).sum())
        .collect();
    let wanted: Vec<f64> = totals.iter().map(|t| t * fraction).collect();
    let order = seeds::permutation(units.members.len(), seed);
    let mut taken = vec![false; units.members.len()];
    let mut drawn = vec![0.0; labels];
    let take = |u: usize, taken: &mut Vec<bool>, drawn: &mut Vec<f64>| {
        taken[u] = true;
        for (d, &c) in drawn.iter_mut().zip(&units.counts[u]) {
            *d += c as f64;
        }
    };
    // Every label present in the data at least once, rarest first.
    let mut by_rarity: Vec<usize> = (0..labels).filter(|&j| totals[j] > 0.0).collect();
    by_rarity.sort_by(|&a, &b| totals[a].total_cmp(&totals[b]).then(a.cmp(&b)));
    for j in by_rarity {
        if drawn[j] == 0.0 {
            if let Some(&u) = order.iter().find(|&&u| units.counts[u][j] > 0) {
                take(u, &mut taken, &mut drawn);
            }
        }
    }
    // Then every patient that brings the drawn counts closer to the targets.
    for &u in &order {
        if taken[u] {
            continue;
        }
        let change: f64 = (0..labels)
            .map(|j| {
                let c = units.counts[u][j] as f64;
                let (d, w) = (drawn[j], wanted[j]);
                ((d + c - w).powi(2) - (d - w).powi(2)) / w.max(1.0)
            })
            .sum();
        if change < 0.0 {
            take(u, &mut taken, &mut drawn);
        }
    }
    let mut rows: Vec<usize> = (0..units.members.len())
        .filter(|&u| taken[u])
        .flat_map(|u| units.members[u].iter().copied())
        .collect();
    rows.sort_unstable();
    Ok(rows)
}

/// The samples grouped into patients (each sample its own when there are no groups), with
/// each patient's count of samples per label.
struct Units {
    members: Vec<Vec<usize>>,
    counts: Vec<Vec<u32>>,
}

impl Units {
    fn new(targets: &Targets, groups: Option<&[String]>) -> Units {
        let n = targets.len();
        let mut members: Vec<Vec<usize>> = Vec::new();
        match groups {
            None => members.extend((0..n).map(|i| vec![i])),
            Some(groups) => {
                let mut index = std::collections::HashMap::new();
                for (i, g) in groups.iter().enumerate() {
                    let u = *index.entry(g.as_str()).or_insert_with(|| {
                        members.push(Vec::new());
                        members.len() - 1
                    });
                    members[u].push(i);
                }
            }
        }
        let labels = match targets {
            Targets::Classes { num_classes, .. } => *num_classes,
            Targets::Findings(f) => f.names().len() + 1,
        };
        let counts = members
            .iter()
            .map(|rows| {
                let mut c = vec![0u32; labels];
                for &i in rows {
                    match targets {
                        Targets::Classes { labels, .. } => c[labels[i] as usize] += 1,
                        Targets::Findings(f) => {
                            let row = f.of(i);
                            for (j, &v) in row.iter().enumerate() {
                                c[j] += (v == PRESENT) as u32;
                            }
                            if !row.contains(&PRESENT) {
                                c[labels - 1] += 1;
                            }
                        }
                    }
                }
                c
            })
            .collect();
        Units { members, counts }
    }
}

/// The split of the probe's training samples into the part that fits each penalty and the
/// part that chooses among them: by patient when `groups` names one per sample
/// ([`crate::split::group_split`], NumPy's permutation of the sorted patient ids), else by
/// sample ([`crate::split::train_val_split`], torch's `randperm`); `val_fraction` of the
/// patients (or samples), rounded down, are validation. Returns (train, validation) indices.
///
/// `Err` when `val_fraction` is not in (0, 1), `groups` does not have one entry per sample,
/// the seed of a patient-level split is 2^32 or more, or either part would be empty.
pub fn validation_split(
    n: usize,
    groups: Option<&[String]>,
    val_fraction: f64,
    seed: u64,
) -> Result<(Vec<usize>, Vec<usize>)> {
    if !(val_fraction > 0.0 && val_fraction < 1.0) {
        bail!("validation fraction {val_fraction} is not in (0, 1)");
    }
    let (train, val) = match groups {
        Some(g) => {
            if g.len() != n {
                bail!("{} patient ids for {n} samples: expected one per sample", g.len());
            }
            let Ok(seed) = u32::try_from(seed) else {
                bail!("seed {seed}: a split by patient takes seeds below 2^32 (NumPy's RandomState)");
            };
            crate::split::group_split(g, val_fraction, seed)
        }
        None => crate::split::train_val_split(n, val_fraction, seed),
    };
    if train.is_empty() || val.is_empty() {
        let what = if groups.is_some() { "patients" } else { "samples" };
        bail!(
            "a validation fraction of {val_fraction} of {n} samples leaves {} for training and {} \
             for validation: too few {what} to choose the probe's penalty",
            train.len(),
            val.len()
        );
    }
    Ok((train, val))
}
