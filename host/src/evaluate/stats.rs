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
pub(super) const PRESENT: i8 = ssl_plugin_api::PRESENT;
/// A finding that is absent.
pub(super) const ABSENT: i8 = ssl_plugin_api::ABSENT;
/// A finding that is not known for a sample.
pub(super) const UNKNOWN: i8 = ssl_plugin_api::UNKNOWN;

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
                Ok(Targets::Findings(Findings::new(
                    a.names().to_vec(),
                    values,
                )?))
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
                bail!(
                    "sample {i} has label {l}, outside the {num_classes} classes 0..{num_classes}"
                );
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
    assert_eq!(
        scores.len(),
        labels.len() * num_classes,
        "scores must be [samples × classes]"
    );
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
    assert_eq!(
        scores.len(),
        labels.len(),
        "scores and labels differ in length"
    );
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
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
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
            bail!(
                "{} patient ids for {n} samples: expected one per sample",
                g.len()
            );
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
                bail!(
                    "{} patient ids for {n} samples: expected one per sample",
                    g.len()
                );
            }
            let Ok(seed) = u32::try_from(seed) else {
                bail!(
                    "seed {seed}: a split by patient takes seeds below 2^32 (NumPy's RandomState)"
                );
            };
            crate::split::group_split(g, val_fraction, seed)
        }
        None => crate::split::train_val_split(n, val_fraction, seed),
    };
    if train.is_empty() || val.is_empty() {
        let what = if groups.is_some() {
            "patients"
        } else {
            "samples"
        };
        bail!(
            "a validation fraction of {val_fraction} of {n} samples leaves {} for training and {} \
             for validation: too few {what} to choose the probe's penalty",
            train.len(),
            val.len()
        );
    }
    Ok((train, val))
}

/// scikit-learn's answers on the tests' data (host/tests/evaluate_reference.py), computed once
/// per test process: the folder of the data and `reference.json`.
#[cfg(test)]
pub(super) fn sklearn_reference() -> &'static (std::path::PathBuf, serde_json::Value) {
    use std::sync::OnceLock;
    static REFERENCE: OnceLock<(std::path::PathBuf, serde_json::Value)> = OnceLock::new();
    REFERENCE.get_or_init(|| {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let python = root.join("../.deps/torch-venv/bin/python");
        assert!(
            python.exists(),
            "{} is missing: run scripts/setup-libtorch.sh",
            python.display()
        );
        let dir = tempfile::tempdir().unwrap().keep();
        let out = std::process::Command::new(&python)
            .arg(root.join("tests/evaluate_reference.py"))
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "evaluate_reference.py failed (scikit-learn missing? run scripts/setup-libtorch.sh): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json = std::fs::read_to_string(dir.join("reference.json")).unwrap();
        (dir, serde_json::from_str(&json).unwrap())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssl_plugin_api::tch::{Kind, Tensor};

    fn npy(name: &str) -> Tensor {
        let (dir, _) = sklearn_reference();
        Tensor::read_npy(dir.join(name)).unwrap().reshape([-1])
    }

    fn npy_f64(name: &str) -> Vec<f64> {
        Vec::<f64>::try_from(npy(name).to_kind(Kind::Double)).unwrap()
    }

    fn npy_i64(name: &str) -> Vec<i64> {
        Vec::<i64>::try_from(npy(name).to_kind(Kind::Int64)).unwrap()
    }

    fn findings(names: &[&str], values: Vec<i8>) -> Targets {
        Targets::Findings(
            Findings::new(names.iter().map(|s| s.to_string()).collect(), values).unwrap(),
        )
    }

    #[test]
    fn metrics_match_scikit_learn() {
        let (_, reference) = sklearn_reference();
        let expected = &reference["metrics"];
        let scores = npy_f64("metric_s.npy");
        let labels: Vec<bool> = npy_i64("metric_l.npy").iter().map(|&l| l == 1).collect();
        // Scores rounded to 2 decimals: many ties, which both metrics must treat as one step.
        let got = auroc(&scores, &labels);
        assert!(
            (got - expected["auroc"].as_f64().unwrap()).abs() < 1e-9,
            "{got}"
        );
        let got = average_precision(&scores, &labels);
        let want = expected["average_precision"].as_f64().unwrap();
        assert!((got - want).abs() < 1e-9, "{got} vs {want}");
        // And it is not torchmetrics' interpolated area.
        assert!((crate::metrics::auprc(&scores, &labels) - want).abs() > 1e-4);
        let probs = npy_f64("metric_p.npy");
        let classes = npy_i64("metric_c.npy");
        for k in [1, 5] {
            let got = top_k_accuracy(&probs, &classes, 8, k);
            let want = expected[format!("top{k}")].as_f64().unwrap();
            assert!((got - want).abs() < 1e-12, "top-{k}: {got} vs {want}");
        }
    }

    #[test]
    fn average_precision_by_hand() {
        // Descending: 0.9(+) 0.8(-) 0.7(+) 0.6(-): AP = ½·1 + ½·⅔.
        let got = average_precision(&[0.6, 0.9, 0.7, 0.8], &[false, true, true, false]);
        assert!((got - (0.5 + 1.0 / 3.0)).abs() < 1e-12);
        // A tie of a positive and a negative at the top is one step of precision ½.
        let got = average_precision(&[0.5, 0.5, 0.1], &[true, false, true]);
        assert!((got - (0.5 * 0.5 + 0.5 * 2.0 / 3.0)).abs() < 1e-12, "{got}");
        assert!(average_precision(&[0.1, 0.2], &[false, false]).is_nan());
        assert_eq!(average_precision(&[0.1, 0.2], &[true, true]), 1.0);
    }

    #[test]
    fn per_output_metrics_skip_unknown_findings() {
        // Finding A: rows 0 (+, 0.9), 1 (-, 0.2), 2 unknown (scored 0.0, must be ignored),
        // 3 (-, 0.95). Finding B: one class only among known rows.
        let t = findings(&["A", "B"], vec![1, 0, 0, 0, -1, 0, 0, -1]);
        let scores = [0.9, 0.1, 0.2, 0.3, 0.0, 0.5, 0.95, 0.7];
        let a = aurocs(&scores, &t);
        assert!((a[0] - 0.5).abs() < 1e-12, "{a:?}");
        assert!(a[1].is_nan());
        assert!(macro_mean(&a).is_nan());
        assert!((defined_mean(&a) - 0.5).abs() < 1e-12);
        let classes = Targets::Classes {
            labels: vec![0, 1, 2],
            num_classes: 3,
        };
        let probs = [0.8, 0.1, 0.1, 0.3, 0.6, 0.1, 0.5, 0.3, 0.2];
        assert_eq!(aurocs(&probs, &classes)[..2], [1.0, 1.0]);
        assert_eq!(top_k_accuracy(&probs, &[0, 1, 2], 3, 1), 2.0 / 3.0);
        assert_eq!(top_k_accuracy(&probs, &[0, 1, 2], 3, 3), 1.0);
    }

    /// AUROC of a noisy score for `n` samples: the bootstrap's test metric.
    fn scored(n: usize) -> (Vec<f64>, Vec<bool>) {
        let labels: Vec<bool> = (0..n)
            .map(|i| seeds::mix(1, i as u64).is_multiple_of(3))
            .collect();
        let scores = labels
            .iter()
            .enumerate()
            .map(|(i, &l)| l as u8 as f64 + (seeds::mix(2, i as u64) % 1000) as f64 / 500.0)
            .collect();
        (scores, labels)
    }

    fn auroc_interval(n: usize, seed: u64) -> Interval {
        let (s, l) = scored(n);
        bootstrap_ci(n, 1000, seed, |rows| {
            let s: Vec<f64> = rows.iter().map(|&i| s[i]).collect();
            let l: Vec<bool> = rows.iter().map(|&i| l[i]).collect();
            auroc(&s, &l)
        })
    }

    #[test]
    fn bootstrap_covers_the_estimate_and_shrinks_with_samples() {
        let small = auroc_interval(200, 3);
        let large = auroc_interval(3200, 3);
        for ci in [small, large] {
            assert!(ci.low < ci.estimate && ci.estimate < ci.high, "{ci:?}");
            assert_eq!((ci.resamples, ci.skipped), (1000, 0));
        }
        // 16× the samples: about a quarter of the width (1/√16).
        let ratio = (large.high - large.low) / (small.high - small.low);
        assert!(
            (0.18..0.35).contains(&ratio),
            "{ratio}: {small:?} {large:?}"
        );
        assert_eq!(auroc_interval(200, 3), small);
        assert_ne!(auroc_interval(200, 4), small);
    }

    #[test]
    fn bootstrap_skips_and_counts_undefined_resamples() {
        // One positive among 20: about (19/20)^20 ≈ 36% of the resamples miss it.
        let labels: Vec<bool> = (0..20).map(|i| i == 7).collect();
        let scores: Vec<f64> = (0..20).map(|i| i as f64).collect();
        let ci = bootstrap_ci(20, 1000, 9, |rows| {
            let s: Vec<f64> = rows.iter().map(|&i| scores[i]).collect();
            let l: Vec<bool> = rows.iter().map(|&i| labels[i]).collect();
            auroc(&s, &l)
        });
        assert_eq!(ci.resamples + ci.skipped, 1000);
        assert!((280..440).contains(&ci.skipped), "{ci:?}");
        assert!(ci.low <= ci.estimate && ci.estimate <= ci.high);
        let none = bootstrap_ci(5, 10, 0, |_| f64::NAN);
        assert!(none.low.is_nan() && none.high.is_nan() && none.skipped == 10);
    }

    #[test]
    fn percentile_interpolates_as_numpy() {
        // numpy.percentile([1, 2, 3, 4], [2.5, 97.5]) = [1.075, 3.925].
        let v = [1.0, 2.0, 3.0, 4.0];
        assert!((percentile(&v, 0.025) - 1.075).abs() < 1e-12);
        assert!((percentile(&v, 0.975) - 3.925).abs() < 1e-12);
    }

    /// 3 classes of 60%, 30%, 10% over 2000 samples in patients of 1 to 4 images, all of a
    /// patient's images of one class.
    fn patients() -> (Targets, Vec<String>) {
        let mut labels = Vec::new();
        let mut groups = Vec::new();
        for p in 0..800u64 {
            let class = match seeds::mix(5, p) % 10 {
                0..=5 => 0,
                6..=8 => 1,
                _ => 2,
            };
            for _ in 0..=(seeds::mix(6, p) % 4) {
                labels.push(class);
                groups.push(format!("patient{p}"));
            }
        }
        let n = labels.len();
        (
            Targets::Classes {
                labels,
                num_classes: 3,
            },
            groups[..n].to_vec(),
        )
    }

    fn class_counts(t: &Targets, rows: &[usize]) -> Vec<usize> {
        let Targets::Classes { labels, .. } = t else {
            unreachable!()
        };
        let mut c = vec![0; 3];
        for &i in rows {
            c[labels[i] as usize] += 1;
        }
        c
    }

    #[test]
    fn label_fraction_is_stratified_patient_level_and_seeded() {
        let (targets, groups) = patients();
        let all = class_counts(&targets, &(0..targets.len()).collect::<Vec<_>>());
        for fraction in [0.01, 0.1, 0.5] {
            let rows = label_fraction(&targets, Some(&groups), fraction, 11).unwrap();
            // Whole patients: a drawn patient has all its images drawn.
            let drawn: std::collections::HashSet<&str> =
                rows.iter().map(|&i| groups[i].as_str()).collect();
            let expected: Vec<usize> = (0..groups.len())
                .filter(|&i| drawn.contains(groups[i].as_str()))
                .collect();
            assert_eq!(rows, expected, "fraction {fraction}");
            // Each class keeps its share, to within one patient (4 images).
            let got = class_counts(&targets, &rows);
            for c in 0..3 {
                let want = all[c] as f64 * fraction;
                assert!(
                    (got[c] as f64 - want).abs() <= 4.0 && got[c] >= 1,
                    "fraction {fraction}, class {c}: {got:?} of {all:?}"
                );
            }
            assert_eq!(
                label_fraction(&targets, Some(&groups), fraction, 11).unwrap(),
                rows
            );
            assert_ne!(
                label_fraction(&targets, Some(&groups), fraction, 12).unwrap(),
                rows
            );
        }
        // Without groups: per sample, each class its share rounded (either way at a half).
        let rows = label_fraction(&targets, None, 0.1, 1).unwrap();
        let got = class_counts(&targets, &rows);
        for c in 0..3 {
            assert!(
                (got[c] as f64 - all[c] as f64 * 0.1).abs() <= 0.5,
                "{got:?} of {all:?}"
            );
        }
        assert_eq!(
            label_fraction(&targets, None, 1.0, 1).unwrap().len(),
            targets.len()
        );
    }

    #[test]
    fn label_fraction_keeps_each_finding() {
        // 1000 samples, one per patient; finding R has 3 positives, C 300, F 100 with some
        // unknowns; 1% must still hold an R positive.
        let mut values = Vec::new();
        for i in 0..1000u64 {
            let r = (i % 333 == 5) as i8;
            let c = (seeds::mix(8, i) % 10 < 3) as i8;
            let f = if i % 50 == 0 {
                -1
            } else {
                seeds::mix(9, i).is_multiple_of(10) as i8
            };
            values.extend([r, c, f]);
        }
        let t = findings(&["R", "C", "F"], values);
        let Targets::Findings(f) = &t else {
            unreachable!()
        };
        let positives =
            |rows: &[usize], j: usize| rows.iter().filter(|&&i| f.of(i)[j] == 1).count();
        let all: Vec<usize> = (0..1000).collect();
        for (fraction, seed) in [(0.01, 1), (0.01, 2), (0.1, 1)] {
            let rows = label_fraction(&t, None, fraction, seed).unwrap();
            assert!((rows.len() as f64 - 1000.0 * fraction).abs() <= 1000.0 * fraction * 0.3 + 1.0);
            assert!(positives(&rows, 0) >= 1, "{fraction} {seed}");
            for j in 1..3 {
                let want = positives(&all, j) as f64 * fraction;
                let got = positives(&rows, j) as f64;
                assert!(
                    (got - want).abs() <= want * 0.25 + 1.0,
                    "finding {j}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn label_fraction_and_split_errors_name_the_problem() {
        let (targets, groups) = patients();
        let err = label_fraction(&targets, None, 0.0, 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not in (0, 1]"), "{err}");
        let err = label_fraction(&targets, Some(&groups[..5]), 0.1, 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("5 patient ids"), "{err}");
        let bad = Targets::Classes {
            labels: vec![0, 3],
            num_classes: 2,
        };
        let err = label_fraction(&bad, None, 0.5, 1).unwrap_err().to_string();
        assert!(err.contains("sample 1 has label 3"), "{err}");
        let err = validation_split(10, None, 0.05, 1).unwrap_err().to_string();
        assert!(err.contains("0 for validation"), "{err}");
    }

    #[test]
    fn validation_split_keeps_patients_whole() {
        let (targets, groups) = patients();
        let (train, val) = validation_split(targets.len(), Some(&groups), 0.2, 3).unwrap();
        assert_eq!(train.len() + val.len(), targets.len());
        let in_val: std::collections::HashSet<&str> =
            val.iter().map(|&i| groups[i].as_str()).collect();
        assert!(train.iter().all(|&i| !in_val.contains(groups[i].as_str())));
        // 20% of the 800 patients.
        assert_eq!(in_val.len(), 160);
        let (train, val) = validation_split(100, None, 0.2, 3).unwrap();
        assert_eq!((train.len(), val.len()), (80, 20));
    }

    #[test]
    fn targets_concat_and_select() {
        let a = findings(&["A"], vec![1, 0]);
        let b = findings(&["A"], vec![-1]);
        assert_eq!(a.concat(&b).unwrap(), findings(&["A"], vec![1, 0, -1]));
        assert_eq!(
            a.concat(&b).unwrap().select(&[2, 0]),
            findings(&["A"], vec![-1, 1])
        );
        let err = a
            .concat(&findings(&["B"], vec![1]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("findings A and findings B"), "{err}");
    }
}
