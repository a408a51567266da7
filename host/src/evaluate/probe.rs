//! The linear probe (CLIP's protocol): features standardised with the mean and standard
//! deviation of the training part, L2-regularised logistic regression fitted by L-BFGS for
//! each penalty of a grid, the penalty chosen on a validation part, then a refit on training
//! and validation together with that penalty, to be scored once on the test features.
//!
//! - Single-label datasets of more than two classes: a softmax (multinomial) regression, the
//!   penalty chosen by top-1 accuracy on validation.
//! - Binary datasets (2 classes): one logistic regression of class 1 against class 0 (as
//!   scikit-learn fits two classes; a two-class softmax would halve the penalty's effect),
//!   chosen by AUROC; [`Probe::scores`] still gives both columns.
//! - Multi-label datasets: one independent binary problem per finding, unknown entries left
//!   out of its loss; one penalty for all findings, chosen by the macro AUROC on validation
//!   (the mean over the findings that have both positives and negatives there).
//!
//! Ties in the validation score go to the smaller `C` (the stronger penalty).
//!
//! The penalty `C` is scikit-learn's (`LogisticRegression(C=...)`): each problem minimises
//! `C · Σᵢ loss(W xᵢ + b, yᵢ) + ½‖W‖²`, the intercept `b` unpenalised, with `loss` the
//! cross-entropy (binary or softmax) and the sum over the `n` samples whose target is known.
//! The stopping rule is scikit-learn's too: the largest entry of the gradient of that objective
//! divided by `C·n` at most [`ProbeConfig::tolerance`]. A probe thus has the minimiser of
//! `make_pipeline(StandardScaler(), LogisticRegression(C=C))` fitted per finding; the tests
//! check validation curve, chosen `C`, test accuracy and AUROC against scikit-learn at a tight
//! tolerance. At the default 1e-4 both stop near, not at, the minimiser, each where its own
//! path crosses the tolerance: for weak penalties on near-separable data (digits, C ≥ 100) that
//! moves validation accuracy by up to ~1%, in either solver. The solver is this crate's own
//! (see `lbfgs.rs` for why): all findings and all penalties in one batched L-BFGS, each
//! iteration one pass of two GEMMs over the features.
//!
//! Precision: float64 features are fitted in float64, any other float features in float32
//! (twice as fast, half the memory; its gradients are exact to about 1e-6, well below the
//! default tolerance, so the float32 fit stops as "not converged" only for tolerances below
//! that).

mod lbfgs;

use anyhow::{bail, Context, Result};
use ssl_plugin_api::tch::{Device, Kind, Tensor};

use super::stats::{aurocs, defined_mean, top_k_accuracy, Targets, PRESENT, UNKNOWN};

/// The probe's settings; [`Default`] is the grid and limits of the evaluation.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeConfig {
    /// The grid of inverse penalties `C` (scikit-learn's parametrisation, see the module
    /// documentation). Default: 10⁻⁴, 10⁻³, ..., 10³ (8 values).
    pub penalties: Vec<f64>,
    /// The most L-BFGS iterations per problem. Default 1000 (CLIP's).
    pub max_iter: usize,
    /// Stop when the largest entry of the mean-scaled objective's gradient is at most this
    /// (scikit-learn's `tol`). Default 1e-4 (scikit-learn's).
    pub tolerance: f64,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            penalties: (-4..=3).map(|e| 10f64.powi(e)).collect(),
            max_iter: 1000,
            tolerance: 1e-4,
        }
    }
}

impl ProbeConfig {
    fn check(&self) -> Result<()> {
        if self.penalties.is_empty() {
            bail!("the probe needs at least one penalty C to try");
        }
        if let Some(c) = self
            .penalties
            .iter()
            .find(|c| !(c.is_finite() && **c > 0.0))
        {
            bail!("penalty C = {c}: each C must be a positive number");
        }
        if self.max_iter == 0 {
            bail!("the probe's max_iter must be at least 1");
        }
        if !(self.tolerance.is_finite() && self.tolerance > 0.0) {
            bail!(
                "the probe's tolerance {} must be a positive number",
                self.tolerance
            );
        }
        Ok(())
    }

    fn settings(&self) -> lbfgs::Settings {
        lbfgs::Settings {
            max_iter: self.max_iter,
            tolerance: self.tolerance,
        }
    }
}

/// How a probe's logits become scores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Output {
    /// Softmax over the classes.
    Softmax,
    /// One logit for class 1 of two: scores `[1 − p, p]`.
    Binary,
    /// One sigmoid per finding.
    Findings,
}

/// A fitted linear probe: standardisation, weights and bias.
#[derive(Debug)]
pub struct Probe {
    mean: Tensor,
    scale: Tensor,
    /// `[k, d]`: k = classes (softmax), 1 (binary) or findings.
    weight: Tensor,
    bias: Tensor,
    output: Output,
    penalty: f64,
}

/// How far a fit went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Convergence {
    /// L-BFGS iterations (the most of any finding's problem).
    pub iterations: usize,
    /// Whether every problem reached the tolerance (else it stopped at `max_iter` or where
    /// the objective's precision no longer shows a decrease).
    pub converged: bool,
}

/// One point of the penalty grid, fitted on the training part and scored on validation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GridPoint {
    /// The penalty C.
    pub penalty: f64,
    /// The validation score ([`ProbeFit::selection_metric`]).
    pub score: f64,
    /// The fit's convergence.
    pub convergence: Convergence,
}

/// The result of [`fit_with_validation`].
#[derive(Debug)]
pub struct ProbeFit {
    /// The probe refitted on training and validation with the chosen penalty.
    pub probe: Probe,
    /// The chosen C.
    pub chosen_penalty: f64,
    /// Every grid point, in the order of [`ProbeConfig::penalties`].
    pub validation: Vec<GridPoint>,
    /// What the validation scores are: `top-1 accuracy`, `AUROC` or `macro AUROC`.
    pub selection_metric: &'static str,
    /// The refit's convergence.
    pub refit: Convergence,
    /// Where the time went.
    pub seconds: Timings,
}

/// Wall-clock seconds of the steps of [`fit_with_validation`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Timings {
    /// Checking and standardising the features of both parts (and the refit's).
    pub standardise: f64,
    /// Fitting every penalty of the grid on the training part.
    pub grid: f64,
    /// Scoring the grid on the validation part.
    pub validation: f64,
    /// Refitting on both parts with the chosen penalty.
    pub refit: f64,
}

/// Fits the probe for every penalty of `config` on the training part, chooses the penalty
/// with the best validation score (see the module documentation), refits on training and
/// validation together with it and returns that probe.
///
/// `Err`, naming what is wrong, when the features are not 2-d float `[samples, dim]` with one
/// row per target, hold NaN or infinity, the two parts differ in dimension or targets, a class
/// has no training sample, a finding has no positive or no negative known training entry, or
/// the validation part cannot score any penalty (e.g. a binary validation part of one class).
pub fn fit_with_validation(
    train_x: &Tensor,
    train_y: &Targets,
    val_x: &Tensor,
    val_y: &Targets,
    config: &ProbeConfig,
) -> Result<ProbeFit> {
    let mut seconds = Timings::default();
    let clock = std::time::Instant::now();
    config.check()?;
    check_features(train_x, train_y, "training")?;
    check_features(val_x, val_y, "validation")?;
    if train_x.size()[1] != val_x.size()[1] {
        bail!(
            "the training features have {} dimensions and the validation features {}",
            train_x.size()[1],
            val_x.size()[1]
        );
    }
    let all_y = train_y
        .concat(val_y)
        .context("training and validation targets")?;
    let output = output_of(train_y);
    let standard = Standardiser::fit(train_x);
    let grid = {
        let loss = loss_of(train_y, compute_kind(train_x), "training")?;
        let x = standard.apply(train_x);
        seconds.standardise = lap(&clock, 0.0);
        lbfgs::solve(&x, &loss, &config.penalties, None, None, config.settings())?
    };
    seconds.grid = lap(&clock, seconds.standardise);
    let per_penalty = (grid.iterations.len() / config.penalties.len()).max(1);
    let val_logits = logits(&standard.apply(val_x), &grid.theta);
    let validation: Vec<GridPoint> = config
        .penalties
        .iter()
        .enumerate()
        .map(|(g, &penalty)| {
            let problems = g * per_penalty..(g + 1) * per_penalty;
            GridPoint {
                penalty,
                score: validation_score(&val_logits, g, output, val_y),
                convergence: Convergence {
                    iterations: grid.iterations[problems.clone()]
                        .iter()
                        .copied()
                        .max()
                        .unwrap_or(0),
                    converged: grid.converged[problems].iter().all(|&c| c),
                },
            }
        })
        .collect();
    let best = choose(&validation).with_context(|| {
        format!(
            "the validation part ({} samples) gives no {} for any penalty: it needs both \
             positives and negatives{}",
            val_y.len(),
            selection_metric(output),
            if output == Output::Findings {
                " for at least one finding"
            } else {
                ""
            }
        )
    })?;
    let chosen = config.penalties[best];
    seconds.validation = lap(&clock, seconds.standardise + seconds.grid);
    // Refit on both parts, from the chosen grid solution carried over to the new
    // standardisation (the same function, so the solver starts near the optimum).
    let kind = compute_kind(train_x);
    let all_x = Tensor::cat(&[train_x.to_kind(kind), val_x.to_kind(kind)], 0);
    let refit_standard = Standardiser::fit(&all_x);
    let warm = refit_standard.carry_over(
        &standard,
        &grid
            .theta
            .narrow(0, (best * per_penalty) as i64, per_penalty as i64),
    );
    let start = Start {
        theta: warm,
        preconditioner: grid.preconditioner,
    };
    let (probe, refit) = fit_from(&all_x, &all_y, chosen, config, refit_standard, Some(start))?;
    seconds.refit = lap(
        &clock,
        seconds.standardise + seconds.grid + seconds.validation,
    );
    Ok(ProbeFit {
        probe,
        chosen_penalty: chosen,
        validation,
        selection_metric: selection_metric(output),
        refit,
        seconds,
    })
}

/// Seconds since `clock` started, less `before`.
fn lap(clock: &std::time::Instant, before: f64) -> f64 {
    clock.elapsed().as_secs_f64() - before
}

/// Fits the probe with one `penalty` on all of `x` (no validation): e.g. the chosen penalty
/// on a label fraction. `Err` as [`fit_with_validation`].
pub fn fit(
    x: &Tensor,
    y: &Targets,
    penalty: f64,
    config: &ProbeConfig,
) -> Result<(Probe, Convergence)> {
    ProbeConfig {
        penalties: vec![penalty],
        ..config.clone()
    }
    .check()?;
    check_features(x, y, "training")?;
    fit_from(x, y, penalty, config, Standardiser::fit(x), None)
}

/// Where a refit starts: the grid's solution carried over to its standardisation, and the
/// grid's preconditioner (the features are much the same).
struct Start {
    theta: Tensor,
    preconditioner: lbfgs::Preconditioner,
}

fn fit_from(
    x: &Tensor,
    y: &Targets,
    penalty: f64,
    config: &ProbeConfig,
    standard: Standardiser,
    start: Option<Start>,
) -> Result<(Probe, Convergence)> {
    let loss = loss_of(y, compute_kind(x), "training")?;
    let (theta, preconditioner) = match start {
        Some(s) => (Some(s.theta), Some(s.preconditioner)),
        None => (None, None),
    };
    let solution = lbfgs::solve(
        &standard.apply(x),
        &loss,
        &[penalty],
        theta,
        preconditioner,
        config.settings(),
    )?;
    let (k, d) = (
        solution.theta.size()[0] * solution.theta.size()[1],
        standard.mean.size()[0],
    );
    let theta = solution.theta.reshape([k, d + 1]);
    let probe = Probe {
        weight: theta.narrow(1, 0, d).contiguous(),
        bias: theta.select(1, d).contiguous(),
        mean: standard.mean,
        scale: standard.scale,
        output: output_of(y),
        penalty,
    };
    let convergence = Convergence {
        iterations: solution.iterations.iter().copied().max().unwrap_or(0),
        converged: solution.converged.iter().all(|&c| c),
    };
    Ok((probe, convergence))
}

impl Probe {
    /// The penalty C it was fitted with.
    pub fn penalty(&self) -> f64 {
        self.penalty
    }

    /// The feature dimension it takes.
    pub fn dim(&self) -> usize {
        self.mean.size()[0] as usize
    }

    /// The scores of the features `x` `[m, d]`: `[m, K]` softmax probabilities for classes
    /// (for 2 classes `[1 − p, p]` of the binary model), `[m, F]` sigmoid probabilities for
    /// findings; in the probe's precision. `Err` when `x` is not `[m, d]` float or holds NaN or infinity.
    pub fn scores(&self, x: &Tensor) -> Result<Tensor> {
        check_matrix(x, "scored")?;
        if x.size()[1] != self.mean.size()[0] {
            bail!(
                "features of {} dimensions for a probe fitted on {}",
                x.size()[1],
                self.dim()
            );
        }
        let z = Tensor::addmm(&self.bias, &self.standardise(x), &self.weight.tr());
        Ok(match self.output {
            Output::Softmax => z.softmax(1, z.kind()),
            Output::Binary => {
                let p = z.sigmoid();
                Tensor::cat(&[1.0 - &p, p], 1)
            }
            Output::Findings => z.sigmoid(),
        })
    }

    /// [`Probe::scores`] as row-major `f64`, the form the metrics of
    /// [`super::stats`] take.
    pub fn predict(&self, x: &Tensor) -> Result<Vec<f64>> {
        let scores = self.scores(x)?.to_kind(Kind::Double).reshape([-1]);
        Ok(Vec::<f64>::try_from(&scores)?)
    }

    fn standardise(&self, x: &Tensor) -> Tensor {
        (x.to_kind(self.mean.kind()) - &self.mean) / &self.scale
    }
}

/// Mean and standard deviation per feature (population, as scikit-learn's `StandardScaler`;
/// a constant feature gets scale 1).
struct Standardiser {
    mean: Tensor,
    scale: Tensor,
}

impl Standardiser {
    fn fit(x: &Tensor) -> Standardiser {
        let (var, mean) = x.to_kind(compute_kind(x)).var_mean_correction(0, 0, false);
        let sd = var.sqrt();
        // scikit-learn's threshold for a zero scale: 10 machine epsilons.
        let epsilon = match sd.kind() {
            Kind::Double => f64::EPSILON,
            _ => f32::EPSILON as f64,
        };
        let constant = sd.lt(10.0 * epsilon);
        let scale = sd.where_self(&constant.logical_not(), &sd.ones_like());
        Standardiser { mean, scale }
    }

    fn apply(&self, x: &Tensor) -> Tensor {
        (x.to_kind(self.mean.kind()) - &self.mean) / &self.scale
    }

    /// `theta` (`[P, k, d + 1]`, weights then bias) fitted on features standardised by
    /// `old`, rewritten for features standardised by `self`: the same logits.
    fn carry_over(&self, old: &Standardiser, theta: &Tensor) -> Tensor {
        let d = self.mean.size()[0];
        let w = theta.narrow(2, 0, d);
        let b = theta.narrow(2, d, 1);
        let new_w = &w * (&self.scale / &old.scale);
        let shift =
            (&w * ((&self.mean - &old.mean) / &old.scale)).sum_dim_intlist(2, true, w.kind());
        Tensor::cat(&[new_w, b + shift], 2)
    }
}

/// Logits of every problem of a grid solution `[P, k, d + 1]` on standardised `x`:
/// `[m, P·k]`.
fn logits(x: &Tensor, theta: &Tensor) -> Tensor {
    let (p, k, d1) = (theta.size()[0], theta.size()[1], theta.size()[2]);
    let w = theta.narrow(2, 0, d1 - 1).reshape([p * k, d1 - 1]);
    let b = theta.narrow(2, d1 - 1, 1).reshape([p * k]);
    Tensor::addmm(&b, x, &w.tr())
}

fn output_of(y: &Targets) -> Output {
    match y {
        Targets::Classes { num_classes: 2, .. } => Output::Binary,
        Targets::Classes { .. } => Output::Softmax,
        Targets::Findings(_) => Output::Findings,
    }
}

fn selection_metric(output: Output) -> &'static str {
    match output {
        Output::Softmax => "top-1 accuracy",
        Output::Binary => "AUROC",
        Output::Findings => "macro AUROC",
    }
}

/// The validation score of penalty `g` from the grid's validation logits.
fn validation_score(logits: &Tensor, g: usize, output: Output, y: &Targets) -> f64 {
    let width = y.outputs() as i64;
    let block = match output {
        Output::Binary => {
            let z = logits.narrow(1, g as i64, 1);
            Tensor::cat(&[-&z, z], 1)
        }
        _ => logits.narrow(1, g as i64 * width, width),
    };
    let scores =
        Vec::<f64>::try_from(block.to_kind(Kind::Double).reshape([-1])).expect("a double tensor");
    match (output, y) {
        (
            Output::Softmax,
            Targets::Classes {
                labels,
                num_classes,
            },
        ) => top_k_accuracy(&scores, labels, *num_classes, 1),
        (Output::Binary, _) => aurocs(&scores, y)[1],
        _ => defined_mean(&aurocs(&scores, y)),
    }
}

/// The best grid point: highest score, the first (smaller C in an ascending grid) on ties;
/// `None` when every score is NaN.
fn choose(points: &[GridPoint]) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, point) in points.iter().enumerate() {
        if point.score.is_nan() {
            continue;
        }
        let better = match best {
            None => true,
            Some(b) => {
                let (s, sb) = (point.score, points[b].score);
                s > sb || (s == sb && point.penalty < points[b].penalty)
            }
        };
        if better {
            best = Some(i);
        }
    }
    best
}

/// The precision the probe computes in: float64 for float64 features, else float32.
fn compute_kind(x: &Tensor) -> Kind {
    match x.kind() {
        Kind::Double => Kind::Double,
        _ => Kind::Float,
    }
}

/// `Err` unless `x` is a 2-d float tensor of finite values.
fn check_matrix(x: &Tensor, what: &str) -> Result<()> {
    if x.dim() != 2 {
        bail!(
            "the {what} features must be [samples, dim], got shape {:?}",
            x.size()
        );
    }
    if !matches!(
        x.kind(),
        Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
    ) {
        bail!(
            "the {what} features must be floating point, got {:?}",
            x.kind()
        );
    }
    if x.device() != Device::Cpu {
        bail!(
            "the {what} features must be on the CPU, got {:?}",
            x.device()
        );
    }
    let finite = x.isfinite();
    if !bool::try_from(finite.all())? {
        let at = finite.logical_not().nonzero().get(0);
        let (row, col) = (at.int64_value(&[0]), at.int64_value(&[1]));
        let value = x.double_value(&[row, col]);
        bail!("the {what} features hold {value} at sample {row}, dimension {col}");
    }
    Ok(())
}

/// `Err` unless `x` is valid features for `y`.
fn check_features(x: &Tensor, y: &Targets, what: &str) -> Result<()> {
    check_matrix(x, what)?;
    y.check().with_context(|| format!("the {what} targets"))?;
    if x.size()[0] != y.len() as i64 {
        bail!(
            "{} {what} feature rows for {} targets",
            x.size()[0],
            y.len()
        );
    }
    if y.is_empty() {
        bail!("the {what} part has no sample");
    }
    Ok(())
}

/// The targets encoded for the solver. `Err` when a class has no sample, or a finding has no
/// positive or no negative known entry (its intercept would run off to infinity).
fn loss_of(y: &Targets, kind: Kind, what: &str) -> Result<lbfgs::Loss> {
    let n = y.len() as i64;
    match y {
        Targets::Classes {
            labels,
            num_classes,
        } => {
            let mut counts = vec![0usize; *num_classes];
            for &l in labels {
                counts[l as usize] += 1;
            }
            if let Some(c) = counts.iter().position(|&c| c == 0) {
                bail!(
                    "class {c} has no sample among the {n} {what} samples: the probe cannot \
                     learn it (each of the {num_classes} classes needs one)"
                );
            }
            let labels = Tensor::from_slice(labels);
            if *num_classes == 2 {
                let present = labels.to_kind(kind).view([n, 1]);
                return Ok(lbfgs::Loss::Sigmoid {
                    known: present.ones_like(),
                    present,
                });
            }
            Ok(lbfgs::Loss::Softmax {
                labels,
                classes: *num_classes as i64,
            })
        }
        Targets::Findings(f) => {
            let width = f.names().len();
            for (j, name) in f.names().iter().enumerate() {
                let column = f.values().iter().skip(j).step_by(width);
                let positives = column.clone().filter(|&&v| v == PRESENT).count();
                let known = column.filter(|&&v| v != UNKNOWN).count();
                if positives == 0 || positives == known {
                    let missing = if positives == 0 {
                        "positive"
                    } else {
                        "negative"
                    };
                    bail!(
                        "finding `{name}` has no {missing} among its {known} known {what} \
                         samples: a logistic regression needs both"
                    );
                }
            }
            let values = Tensor::from_slice(f.values()).view([n, width as i64]);
            Ok(lbfgs::Loss::Sigmoid {
                present: values.eq(PRESENT as i64).to_kind(kind),
                known: values.ne(UNKNOWN as i64).to_kind(kind),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::stats::sklearn_reference;
    use super::*;
    use ssl_plugin_api::Findings;

    fn load(name: &str) -> Tensor {
        Tensor::read_npy(sklearn_reference().0.join(name)).unwrap()
    }

    /// The reference's split by row index: train i % 5 ≥ 2, validation 1, test 0.
    fn parts(n: usize) -> [Vec<usize>; 3] {
        let of = |keep: fn(usize) -> bool| (0..n).filter(|&i| keep(i % 5)).collect::<Vec<_>>();
        [of(|r| r >= 2), of(|r| r == 1), of(|r| r == 0)]
    }

    fn rows(x: &Tensor, rows: &[usize]) -> Tensor {
        let index: Vec<i64> = rows.iter().map(|&i| i as i64).collect();
        x.index_select(0, &Tensor::from_slice(&index))
    }

    fn floats(v: &serde_json::Value) -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    }

    fn config() -> ProbeConfig {
        ProbeConfig {
            max_iter: 10_000,
            tolerance: 1e-7,
            ..ProbeConfig::default()
        }
    }

    /// Fits on the reference's train/validation parts, checks the validation curve and the
    /// chosen C against scikit-learn's, returns the probe's test scores.
    fn fit_like_reference(
        x: &Tensor,
        y: &Targets,
        expected: &serde_json::Value,
    ) -> (ProbeFit, Vec<f64>, Targets) {
        let [train, val, test] = parts(y.len());
        let fit = fit_with_validation(
            &rows(x, &train),
            &y.select(&train),
            &rows(x, &val),
            &y.select(&val),
            &config(),
        )
        .unwrap();
        let want = floats(&expected["validation"]);
        for (point, want) in fit.validation.iter().zip(&want) {
            assert!(point.convergence.converged, "{point:?}");
            assert!(
                (point.score - want).abs() < 0.005,
                "C = {}: {} vs scikit-learn {want}\n{:?}",
                point.penalty,
                point.score,
                fit.validation
            );
        }
        let chosen = expected["chosen"].as_u64().unwrap() as usize;
        assert_eq!(
            fit.chosen_penalty,
            config().penalties[chosen],
            "{:?}",
            fit.validation
        );
        assert!(fit.refit.converged);
        let scores = fit.probe.predict(&rows(x, &test)).unwrap();
        (fit, scores, y.select(&test))
    }

    fn assert_close(got: &[f64], want: &[f64], tolerance: f64, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        for (g, w) in got.iter().zip(want) {
            assert!(
                (g - w).abs() < tolerance,
                "{what}: {got:?} vs scikit-learn {want:?}"
            );
        }
    }

    #[test]
    fn matches_scikit_learn_on_digits() {
        let expected = &sklearn_reference().1["digits"];
        let x = load("digits_x.npy");
        let labels = Vec::<i64>::try_from(load("digits_y.npy")).unwrap();
        let y = Targets::Classes {
            labels,
            num_classes: 10,
        };
        let (fit, scores, test) = fit_like_reference(&x, &y, expected);
        assert_eq!(fit.selection_metric, "top-1 accuracy");
        let Targets::Classes { labels, .. } = &test else {
            unreachable!()
        };
        let accuracy = top_k_accuracy(&scores, labels, 10, 1);
        let want = expected["test_accuracy"].as_f64().unwrap();
        assert!((accuracy - want).abs() < 0.005, "{accuracy} vs {want}");
        let top5 = top_k_accuracy(&scores, labels, 10, 5);
        assert!((top5 - expected["test_top5"].as_f64().unwrap()).abs() < 0.005);
        assert_close(
            &aurocs(&scores, &test),
            &floats(&expected["test_aurocs"]),
            0.005,
            "AUROC",
        );
        // The probabilities themselves.
        let worst = scores
            .iter()
            .zip(floats(&expected["test_scores"]))
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(worst < 0.02, "largest probability difference {worst}");
    }

    #[test]
    fn matches_scikit_learn_on_two_classes() {
        let expected = &sklearn_reference().1["binary"];
        let x = load("binary_x.npy");
        let labels = Vec::<i64>::try_from(load("binary_y.npy")).unwrap();
        let y = Targets::Classes {
            labels,
            num_classes: 2,
        };
        let (fit, scores, test) = fit_like_reference(&x, &y, expected);
        assert_eq!(fit.selection_metric, "AUROC");
        assert!(scores.chunks(2).all(|p| (p[0] + p[1] - 1.0).abs() < 1e-6));
        let Targets::Classes { labels, .. } = &test else {
            unreachable!()
        };
        let accuracy = top_k_accuracy(&scores, labels, 2, 1);
        let want = expected["test_accuracy"].as_f64().unwrap();
        assert!((accuracy - want).abs() < 0.005, "{accuracy} vs {want}");
        assert_close(
            &aurocs(&scores, &test),
            &floats(&expected["test_aurocs"]),
            0.005,
            "AUROC",
        );
        assert_close(
            &scores,
            &floats(&expected["test_scores"]),
            0.01,
            "test probabilities",
        );
    }

    #[test]
    fn matches_scikit_learn_on_findings() {
        let expected = &sklearn_reference().1["multi"];
        let x = load("multi_x.npy");
        let values: Vec<i8> = Vec::<i64>::try_from(load("multi_f.npy").reshape([-1]))
            .unwrap()
            .into_iter()
            .map(|v| v as i8)
            .collect();
        let names = ["A", "B", "C", "D"].map(String::from).to_vec();
        let y = Targets::Findings(Findings::new(names, values).unwrap());
        let (fit, scores, test) = fit_like_reference(&x, &y, expected);
        assert_eq!(fit.selection_metric, "macro AUROC");
        assert_close(
            &aurocs(&scores, &test),
            &floats(&expected["test_aurocs"]),
            0.005,
            "AUROC",
        );
    }

    fn small() -> (Tensor, Targets) {
        let x = Tensor::randn([30, 4], (Kind::Float, Device::Cpu));
        let labels = (0..30).map(|i| i % 3).collect();
        (
            x,
            Targets::Classes {
                labels,
                num_classes: 3,
            },
        )
    }

    fn error_of(x: &Tensor, y: &Targets) -> String {
        let (vx, vy) = small();
        fit_with_validation(x, y, &vx, &vy, &ProbeConfig::default())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn errors_name_what_is_wrong() {
        let (x, y) = small();
        let nan = x.copy();
        let _ = nan.get(7).get(2).fill_(f64::NAN);
        assert!(
            error_of(&nan, &y).contains("NaN at sample 7, dimension 2"),
            "{}",
            error_of(&nan, &y)
        );
        let missing = Targets::Classes {
            labels: (0..30).map(|i| i % 2 * 2).collect(),
            num_classes: 3,
        };
        let err = error_of(&x, &missing);
        assert!(
            err.contains("class 1 has no sample among the 30 training"),
            "{err}"
        );
        let err = error_of(&x.narrow(0, 0, 20), &y);
        assert!(
            err.contains("20 training feature rows for 30 targets"),
            "{err}"
        );
        let err = error_of(&x.narrow(1, 0, 3), &y);
        assert!(
            err.contains("3 dimensions and the validation features 4"),
            "{err}"
        );
        let all_absent =
            Targets::Findings(Findings::new(vec!["Edema".into()], vec![0; 30]).unwrap());
        let (vx, _) = small();
        let vy = Targets::Findings(Findings::new(vec!["Edema".into()], vec![1; 30]).unwrap());
        let err = fit_with_validation(&x, &all_absent, &vx, &vy, &ProbeConfig::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("finding `Edema` has no positive"), "{err}");
        let bad = ProbeConfig {
            penalties: vec![1.0, -2.0],
            ..ProbeConfig::default()
        };
        let err = fit_with_validation(&x, &y, &x, &y, &bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains("C = -2"), "{err}");
    }

    #[test]
    fn scores_check_their_input() {
        let (x, y) = small();
        let (probe, _) = fit(&x, &y, 1.0, &ProbeConfig::default()).unwrap();
        let scores = probe.scores(&x).unwrap();
        assert_eq!(scores.size(), [30, 3]);
        let sums = scores.sum_dim_intlist(1, false, Kind::Double);
        assert!(bool::try_from((sums - 1.0).abs().lt(1e-5).all()).unwrap());
        let err = probe.scores(&x.narrow(1, 0, 2)).unwrap_err().to_string();
        assert!(
            err.contains("2 dimensions for a probe fitted on 4"),
            "{err}"
        );
    }

    #[test]
    fn carry_over_keeps_the_logits() {
        let x = Tensor::randn([50, 6], (Kind::Float, Device::Cpu)) * 3.0 + 1.0;
        let a = Standardiser::fit(&x.narrow(0, 0, 30));
        let b = Standardiser::fit(&x);
        let theta = Tensor::randn([2, 3, 7], (Kind::Float, Device::Cpu));
        let before = logits(&a.apply(&x), &theta);
        let after = logits(&b.apply(&x), &b.carry_over(&a, &theta));
        assert!(before.allclose(&after, 1e-4, 1e-4, false));
    }
}
