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
//! cross-entropy (binary or softmax) and the sum over the samples whose target is known. The
//! stopping rule is scikit-learn's (largest entry of the gradient of the objective divided by
//! `C·n` at most [`ProbeConfig::tolerance`]), so a probe matches
//! `make_pipeline(StandardScaler(), LogisticRegression(C=C, tol=tolerance, max_iter=max_iter))`
//! fitted per finding; the tests check that against scikit-learn. The solver is this crate's
//! own (see `lbfgs.rs` for why): all findings and all penalties in one batched L-BFGS, each
//! iteration one pass of two GEMMs over the features.

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
        if let Some(c) = self.penalties.iter().find(|c| !(c.is_finite() && **c > 0.0)) {
            bail!("penalty C = {c}: each C must be a positive number");
        }
        if self.max_iter == 0 {
            bail!("the probe's max_iter must be at least 1");
        }
        if !(self.tolerance.is_finite() && self.tolerance > 0.0) {
            bail!("the probe's tolerance {} must be a positive number", self.tolerance);
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
    /// float32 evaluation no longer finds a decrease).
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
    let all_y = train_y.concat(val_y).context("training and validation targets")?;
    let output = output_of(train_y);
    let standard = Standardiser::fit(train_x);
    let grid = {
        let loss = loss_of(train_y, "training")?;
        lbfgs::solve(
            &standard.apply(train_x),
            &loss,
            &config.penalties,
            None,
            config.settings(),
        )?
    };
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
                    iterations: grid.iterations[problems.clone()].iter().copied().max().unwrap_or(0),
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
            if output == Output::Findings { " for at least one finding" } else { "" }
        )
    })?;
    let chosen = config.penalties[best];
    // Refit on both parts, from the chosen grid solution carried over to the new
    // standardisation (the same function, so the solver starts near the optimum).
    let all_x = Tensor::cat(&[train_x, val_x], 0);
    let refit_standard = Standardiser::fit(&all_x);
    let warm = refit_standard.carry_over(
        &standard,
        &grid.theta.narrow(0, (best * per_penalty) as i64, per_penalty as i64),
    );
    let (probe, refit) = fit_from(&all_x, &all_y, chosen, config, refit_standard, Some(warm))?;
    Ok(ProbeFit {
        probe,
        chosen_penalty: chosen,
        validation,
        selection_metric: selection_metric(output),
        refit,
    })
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

fn fit_from(
    x: &Tensor,
    y: &Targets,
    penalty: f64,
    config: &ProbeConfig,
    standard: Standardiser,
    warm: Option<Tensor>,
) -> Result<(Probe, Convergence)> {
    let loss = loss_of(y, "training")?;
    let solution = lbfgs::solve(&standard.apply(x), &loss, &[penalty], warm, config.settings())?;
    let (k, d) = (solution.theta.size()[0] * solution.theta.size()[1], standard.mean.size()[0]);
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
    /// findings; float32. `Err` when `x` is not `[m, d]` float or holds NaN or infinity.
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
            Output::Softmax => z.softmax(1, Kind::Float),
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
        (x.to_kind(Kind::Float) - &self.mean) / &self.scale
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
        let (var, mean) = x.to_kind(Kind::Float).var_mean_correction(0, 0, false);
        let sd = var.sqrt();
        // scikit-learn's threshold for a zero scale: 10 machine epsilons.
        let constant = sd.lt(10.0 * f32::EPSILON as f64);
        let scale = sd.where_self(&constant.logical_not(), &sd.ones_like());
        Standardiser { mean, scale }
    }

    fn apply(&self, x: &Tensor) -> Tensor {
        (x.to_kind(Kind::Float) - &self.mean) / &self.scale
    }

    /// `theta` (`[P, k, d + 1]`, weights then bias) fitted on features standardised by
    /// `old`, rewritten for features standardised by `self`: the same logits.
    fn carry_over(&self, old: &Standardiser, theta: &Tensor) -> Tensor {
        let d = self.mean.size()[0];
        let w = theta.narrow(2, 0, d);
        let b = theta.narrow(2, d, 1);
        let new_w = &w * (&self.scale / &old.scale);
        let shift = (&w * ((&self.mean - &old.mean) / &old.scale)).sum_dim_intlist(2, true, Kind::Float);
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
    let scores = Vec::<f64>::try_from(block.to_kind(Kind::Double).reshape([-1]))
        .expect("a double tensor");
    match (output, y) {
        (Output::Softmax, Targets::Classes { labels, num_classes }) => {
            top_k_accuracy(&scores, labels, *num_classes, 1)
        }
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

/// `Err` unless `x` is a 2-d float tensor of finite values.
fn check_matrix(x: &Tensor, what: &str) -> Result<()> {
    if x.dim() != 2 {
        bail!("the {what} features must be [samples, dim], got shape {:?}", x.size());
    }
    if !matches!(x.kind(), Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16) {
        bail!("the {what} features must be floating point, got {:?}", x.kind());
    }
    if x.device() != Device::Cpu {
        bail!("the {what} features must be on the CPU, got {:?}", x.device());
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
        bail!("{} {what} feature rows for {} targets", x.size()[0], y.len());
    }
    if y.is_empty() {
        bail!("the {what} part has no sample");
    }
    Ok(())
}

/// The targets encoded for the solver. `Err` when a class has no sample, or a finding has no
/// positive or no negative known entry (its intercept would run off to infinity).
fn loss_of(y: &Targets, what: &str) -> Result<lbfgs::Loss> {
    let n = y.len() as i64;
    match y {
        Targets::Classes { labels, num_classes } => {
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
                let present = labels.to_kind(Kind::Float).view([n, 1]);
                return Ok(lbfgs::Loss::Sigmoid {
                    known: present.ones_like(),
                    present,
                });
            }
            let one_hot = labels.one_hot(*num_classes as i64).to_kind(Kind::Float);
            Ok(lbfgs::Loss::Softmax { labels, one_hot })
        }
        Targets::Findings(f) => {
            let width = f.names().len();
            for (j, name) in f.names().iter().enumerate() {
                let column = f.values().iter().skip(j).step_by(width);
                let positives = column.clone().filter(|&&v| v == PRESENT).count();
                let known = column.filter(|&&v| v != UNKNOWN).count();
                if positives == 0 || positives == known {
                    let missing = if positives == 0 { "positive" } else { "negative" };
                    bail!(
                        "finding `{name}` has no {missing} among its {known} known {what} \
                         samples: a logistic regression needs both"
                    );
                }
            }
            let values = Tensor::from_slice(f.values()).view([n, width as i64]);
            Ok(lbfgs::Loss::Sigmoid {
                present: values.eq(PRESENT as i64).to_kind(Kind::Float),
                known: values.ne(UNKNOWN as i64).to_kind(Kind::Float),
            })
        }
    }
}
