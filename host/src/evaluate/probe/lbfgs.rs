//! The probe's solver: L2-regularised logistic regression by a preconditioned L-BFGS, many
//! independent problems at once, so that one pass over the features (two GEMMs) serves every
//! finding and every penalty of the grid.
//!
//! Problem `p` has penalty `C` (scikit-learn's parametrisation) and minimises the mean-scaled
//! objective scikit-learn's L-BFGS minimises,
//! `f(W, b) = (1/n) Σᵢ loss(W xᵢ + b, yᵢ) + ‖W‖² / (2 C n)` (the intercept `b` is not
//! penalised; `n` counts the samples whose target is known), which has the minimiser of
//! `C · Σᵢ loss + ½‖W‖²`. The loss is the binary cross-entropy of one column of logits
//! (a finding, or the positive class of a binary dataset) or the cross-entropy of a softmax
//! over `k` classes (`W` is then `[k × d]`, every class penalised, as scikit-learn's
//! multinomial fit). Each problem stops when its gradient's largest entry is at most the
//! tolerance (scipy's `gtol`, which scikit-learn sets to its `tol`), when a line search finds
//! no decrease (the precision of the objective is reached), or at the iteration limit.
//!
//! Why this and not linfa-logistic or argmin's L-BFGS: both solve one problem at a time on
//! `ndarray` (f64, no BLAS by default), so 14 findings × 8 penalties are 112 fits, each
//! iteration of each a pass over the features, where here one pass with 112 columns serves
//! them all (compute-bound GEMMs instead of 112 memory-bound matrix-vector products).
//! Measured on the benchmark's data (`scripts/bench/probe`: 80,640 training × 2,048 features,
//! NIH-like findings; 2 cores):
//!
//! | solver                                     | what                                 | seconds |
//! |--------------------------------------------|--------------------------------------|--------:|
//! | this one (float32, quiet machine)          | all 14 findings × 8 C                |    21.5 |
//! | linfa-logistic 0.7 (argmin L-BFGS)         | 1 finding, C = 1e-4 (the easiest)    |     350 |
//! | linfa-logistic 0.7                         | 1 finding, C = 1                     |  > 850 (stopped) |
//! | scikit-learn 1.7.2 (lbfgs, tol 1e-4)       | 1 finding × 8 C (busy machine)       |     210 |
//!
//! scikit-learn extrapolates to ~2,900 s for the grid (busy machine, where this solver took
//! 71.5 s), and reaches the same test AUROC (0.8253 for the finding timed).
//!
//! Preconditioning: the Hessian of the data term is at most `¼·XᵀX/n` (binary; softmax
//! behaves alike), so `H₀ = (¼·R + λI)⁻¹` (λ = 1/(Cn), the penalty's curvature, and `R` the
//! features' correlation matrix `XᵀX/n`, its eigenvalues floored at [`EIGENVALUE_FLOOR`] of
//! their mean) is the initial inverse Hessian of the two-loop recursion, scaled by the usual
//! `sᵀy / yᵀH₀y`. `R` is taken once from a subsample of rows and diagonalised, so `H₀` costs
//! two `d × d` GEMMs per application. Correlated features (those of real encoders are) make
//! plain L-BFGS slow for weak penalties; the preconditioner takes most of that away. It changes
//! the path, never the minimiser.

use anyhow::{bail, Result};
use ssl_plugin_api::tch::{Device, Kind, Tensor};
use std::collections::VecDeque;

/// Curvature pairs kept (scipy's default `maxcor`).
const MEMORY: usize = 10;
/// Armijo's sufficient-decrease constant.
const ARMIJO: f64 = 1e-4;
/// Trial steps per line search before a problem is given up as stalled.
const MAX_TRIALS: usize = 12;
/// The bound on the loss's curvature the preconditioner assumes (¼: binary cross-entropy).
const CURVATURE: f64 = 0.25;
/// The preconditioner's smallest eigenvalue, relative to their mean (1 for standardised
/// features): directions of almost no variance are not amplified. Near-separable problems
/// (scikit-learn's digits at C = 1000) need it: their Hessian lives on the few samples near the
/// boundary, whose spread has little to do with the features' correlation, and an unfloored
/// preconditioner took 2,291 iterations there against 129 with this floor (and 105 with none),
/// while the correlated synthetic sets of the tests keep most of the gain (30 iterations
/// against 372 with none, 16 unfloored).
const EIGENVALUE_FLOOR: f64 = 0.03;
/// Rows the preconditioner's correlation matrix is estimated from (at most; spread evenly):
/// twice the dimension, and at least this many.
const PRECONDITIONER_ROWS: i64 = 4096;

/// The targets, encoded for the loss.
pub(super) enum Loss {
    /// Softmax over `classes` logits; `labels` `[n]` int64.
    Softmax { labels: Tensor, classes: i64 },
    /// One binary problem per column: `present` and `known` `[n, outputs]` f32 in {0, 1}.
    Sigmoid { present: Tensor, known: Tensor },
}

impl Loss {
    /// Logit columns per problem.
    fn width(&self) -> i64 {
        match self {
            Loss::Softmax { classes, .. } => *classes,
            Loss::Sigmoid { .. } => 1,
        }
    }

    /// Problems per penalty.
    fn per_penalty(&self) -> i64 {
        match self {
            Loss::Softmax { .. } => 1,
            Loss::Sigmoid { present, .. } => present.size()[1],
        }
    }

    /// The number of samples each problem of one penalty averages over.
    fn counts(&self) -> Vec<f64> {
        match self {
            Loss::Softmax { labels, .. } => vec![labels.size()[0] as f64],
            Loss::Sigmoid { known, .. } => {
                Vec::<f64>::try_from(known.sum_dim_intlist(0, false, Kind::Double))
                    .expect("a 1-d double tensor")
            }
        }
    }
}

/// When to stop.
#[derive(Clone, Copy, Debug)]
pub(super) struct Settings {
    pub max_iter: usize,
    pub tolerance: f64,
}

/// The solution of every problem: `theta` `[P, k, d + 1]` (weights, then the bias in the last
/// column), problem `g·per_penalty + j` being output `j` under penalty `g`; and the
/// preconditioner, for a refit on much the same features.
pub(super) struct Solution {
    pub theta: Tensor,
    pub iterations: Vec<usize>,
    pub converged: Vec<bool>,
    pub preconditioner: Preconditioner,
}

/// Solves every (penalty, output) problem on the standardised features `x` `[n, d]` (float32
/// or float64), from `init` (`[P, k, d + 1]`) or zeros, with `preconditioner` or one made
/// from `x`.
pub(super) fn solve(
    x: &Tensor,
    loss: &Loss,
    penalties: &[f64],
    init: Option<Tensor>,
    preconditioner: Option<Preconditioner>,
    settings: Settings,
) -> Result<Solution> {
    let preconditioner = preconditioner.unwrap_or_else(|| Preconditioner::new(x));
    let objective = Objective::new(x, loss, penalties, preconditioner);
    let (p, k, d) = (objective.problems, loss.width(), objective.d);
    let theta = match init {
        Some(t) => {
            if t.size() != [p, k, d + 1] {
                bail!("a warm start of shape {:?} for {p} problems", t.size());
            }
            t.to_kind(x.kind()).contiguous()
        }
        None => Tensor::zeros([p, k, d + 1], (x.kind(), Device::Cpu)),
    };
    Lbfgs::new(objective, theta, settings).run()
}

/// The objectives of all problems, evaluated on any subset of them at once.
struct Objective<'a> {
    x: &'a Tensor,
    loss: &'a Loss,
    d: i64,
    problems: i64,
    /// 1 / (samples of problem p), `[P]` in the features' kind and f64.
    scale: Tensor,
    scale64: Vec<f64>,
    /// λ = 1 / (C n) per problem, `[P]` in the features' kind and f64.
    lambda: Tensor,
    lambda64: Vec<f64>,
    preconditioner: Preconditioner,
}

impl<'a> Objective<'a> {
    fn new(
        x: &'a Tensor,
        loss: &'a Loss,
        penalties: &[f64],
        preconditioner: Preconditioner,
    ) -> Objective<'a> {
        let d = x.size()[1];
        let counts = loss.counts();
        let mut scale64 = Vec::new();
        let mut lambda64 = Vec::new();
        for &c in penalties {
            for &n in &counts {
                scale64.push(1.0 / n);
                lambda64.push(1.0 / (c * n));
            }
        }
        let f32_of = |v: &[f64]| Tensor::from_slice(v).to_kind(x.kind());
        Objective {
            x,
            loss,
            d,
            problems: scale64.len() as i64,
            scale: f32_of(&scale64),
            lambda: f32_of(&lambda64),
            scale64,
            lambda64,
            preconditioner,
        }
    }

    /// The objectives `[A]` and their gradients `[A, k, d + 1]` of the problems `index`
    /// (`[A]` int64) at `theta` (`[A, k, d + 1]`).
    fn evaluate(&self, index: &Tensor, theta: &Tensor) -> (Vec<f64>, Tensor) {
        let (a, k, d) = (index.size()[0], self.loss.width(), self.d);
        let n = self.x.size()[0];
        let w = theta.narrow(2, 0, d);
        let bias = theta.narrow(2, d, 1).reshape([a * k]);
        let logits = Tensor::addmm(&bias, self.x, &w.reshape([a * k, d]).tr());
        let scale = self.scale.index_select(0, index);
        let (data, dlogits) = match self.loss {
            Loss::Sigmoid { present, known } => {
                let columns = index.remainder(self.loss.per_penalty());
                let y = present.index_select(1, &columns);
                let m = known.index_select(1, &columns);
                // log(1 + e^z) − y z, stably: max(z, 0) − y z + log1p(e^−|z|).
                let per_sample =
                    (logits.relu() - &logits * &y + (-logits.abs()).exp().log1p()) * &m;
                let data = per_sample.sum_dim_intlist(0, false, Kind::Double);
                let dlogits = (logits.sigmoid() - y) * m * scale.view([1, a]);
                (data, dlogits)
            }
            Loss::Softmax { labels, .. } => {
                let log_p = logits.view([n, a, k]).log_softmax(2, logits.kind());
                let target = labels.view([n, 1, 1]).expand([n, a, 1], false);
                let picked = log_p.gather(2, &target, false);
                let data = -picked.sum_dim_intlist([0, 2].as_slice(), false, Kind::Double);
                // softmax − one-hot, without an [n, k] one-hot.
                let minus_one = Tensor::full([n, a, 1], -1.0, (log_p.kind(), Device::Cpu));
                let dlogits =
                    log_p.exp().scatter_add(2, &target, &minus_one) * scale.view([1, a, 1]);
                (data, dlogits.view([n, a * k]))
            }
        };
        let lambda = self.lambda.index_select(0, index);
        let grad_w = dlogits.tr().mm(self.x).view([a, k, d]) + &w * lambda.view([a, 1, 1]);
        let grad_b = dlogits
            .sum_dim_intlist(0, false, dlogits.kind())
            .view([a, k, 1]);
        let squares = Vec::<f64>::try_from(w.square().sum_dim_intlist(
            [1, 2].as_slice(),
            false,
            Kind::Double,
        ))
        .expect("a 1-d double tensor");
        let data = Vec::<f64>::try_from(data).expect("a 1-d double tensor");
        let problems = Vec::<i64>::try_from(index).expect("an int64 index");
        let values = problems
            .iter()
            .zip(data.iter().zip(&squares))
            .map(|(&p, (&l, &sq))| {
                let p = p as usize;
                l * self.scale64[p] + 0.5 * self.lambda64[p] * sq
            })
            .collect();
        (values, Tensor::cat(&[grad_w, grad_b], 2))
    }
}

/// `H₀ = (¼·R + λI)⁻¹` on the weights (R = XᵀX/n = V diag(e) Vᵀ) and `4` on the bias.
pub(super) struct Preconditioner {
    basis: Tensor,
    eigenvalues: Tensor,
}

impl Preconditioner {
    fn new(x: &Tensor) -> Preconditioner {
        let n = x.size()[0];
        let wanted = PRECONDITIONER_ROWS.max(2 * x.size()[1]);
        let step = (n + wanted - 1) / wanted;
        let rows = x.slice(0, 0, n, step.max(1));
        let m = rows.size()[0].max(1);
        let correlation = (rows.tr().mm(&rows) / m as f64).to_kind(Kind::Float);
        // float32 is plenty for a preconditioner, and 4× faster than float64 at d = 2048.
        let (eigenvalues, basis) = correlation.linalg_eigh("L");
        let floor = EIGENVALUE_FLOOR * eigenvalues.mean(Kind::Float).double_value(&[]);
        Preconditioner {
            basis: basis.to_kind(x.kind()),
            eigenvalues: eigenvalues.clamp_min(floor.max(0.0)).to_kind(x.kind()),
        }
    }

    /// `H₀ q` for `q` `[A, k, d + 1]` of problems with penalties `lambda` `[A]`.
    fn apply(&self, q: &Tensor, lambda: &Tensor) -> Tensor {
        let (a, k, d1) = (q.size()[0], q.size()[1], q.size()[2]);
        let d = d1 - 1;
        let rows = q.narrow(2, 0, d).reshape([a * k, d]);
        let denominator = self.eigenvalues.view([1, d]) * CURVATURE
            + lambda
                .view([a, 1])
                .expand([a, k], false)
                .reshape([a * k, 1]);
        let weights = (rows.mm(&self.basis) / denominator).mm(&self.basis.tr());
        let bias = q.narrow(2, d, 1) / CURVATURE;
        Tensor::cat(&[weights.view([a, k, d]), bias], 2)
    }
}

/// Per-problem inner products of `[P, k, d + 1]` tensors, `[P]` f64.
fn dot(a: &Tensor, b: &Tensor) -> Tensor {
    (a * b).sum_dim_intlist([1, 2].as_slice(), false, Kind::Double)
}

/// `[P]` f64 scalars as a `[P, 1, 1]` factor of `kind`.
fn per_problem(v: &Tensor, kind: Kind) -> Tensor {
    v.to_kind(kind).view([-1, 1, 1])
}

fn to_vec(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double)).expect("a 1-d tensor")
}

fn index_of(problems: &[usize]) -> Tensor {
    Tensor::from_slice(&problems.iter().map(|&p| p as i64).collect::<Vec<_>>())
}

/// One curvature pair of every problem; `rho` is 0 for problems without a pair this time.
struct Pair {
    s: Tensor,
    y: Tensor,
    rho: Tensor,
}

struct Lbfgs<'a> {
    objective: Objective<'a>,
    settings: Settings,
    theta: Tensor,
    value: Vec<f64>,
    grad: Tensor,
    history: VecDeque<Pair>,
    /// The scaling of H₀ per problem, `[P]` f64.
    gamma: Tensor,
    iterations: Vec<usize>,
    converged: Vec<bool>,
    done: Vec<bool>,
}

impl<'a> Lbfgs<'a> {
    fn new(objective: Objective<'a>, theta: Tensor, settings: Settings) -> Lbfgs<'a> {
        let p = objective.problems;
        let all: Vec<usize> = (0..p as usize).collect();
        let (value, grad) = objective.evaluate(&index_of(&all), &theta);
        Lbfgs {
            objective,
            settings,
            theta,
            value,
            grad,
            history: VecDeque::new(),
            gamma: Tensor::ones([p], (Kind::Double, Device::Cpu)),
            iterations: vec![0; p as usize],
            converged: vec![false; p as usize],
            done: vec![false; p as usize],
        }
    }

    fn run(mut self) -> Result<Solution> {
        self.check_convergence();
        while let Some(active) = self.active() {
            if let Some(bad) = self.value.iter().position(|v| !v.is_finite()) {
                bail!(
                    "the probe's objective became {} (problem {bad})",
                    self.value[bad]
                );
            }
            for &p in &active {
                self.iterations[p] += 1;
            }
            let direction = self.direction();
            let slope = to_vec(&dot(&self.grad, &direction));
            let accepted = self.line_search(&active, &direction, &slope);
            self.remember(accepted);
            self.check_convergence();
            for &p in &active {
                if self.iterations[p] >= self.settings.max_iter {
                    self.done[p] = true;
                }
            }
        }
        Ok(Solution {
            theta: self.theta,
            iterations: self.iterations,
            converged: self.converged,
            preconditioner: self.objective.preconditioner,
        })
    }

    fn active(&self) -> Option<Vec<usize>> {
        let active: Vec<usize> = (0..self.done.len()).filter(|&p| !self.done[p]).collect();
        (!active.is_empty()).then_some(active)
    }

    fn check_convergence(&mut self) {
        let largest = to_vec(&self.grad.abs().amax([1, 2].as_slice(), false));
        for (p, g) in largest.into_iter().enumerate() {
            if g <= self.settings.tolerance && !self.done[p] {
                self.done[p] = true;
                self.converged[p] = true;
            }
        }
    }

    /// The L-BFGS direction of every problem (two-loop recursion with the preconditioned,
    /// scaled H₀); a problem whose direction is not a descent one restarts from `−H₀ g`.
    fn direction(&mut self) -> Tensor {
        let lambda = &self.objective.lambda;
        let mut q = self.grad.copy();
        let mut alphas = Vec::with_capacity(self.history.len());
        for pair in self.history.iter().rev() {
            let alpha = &pair.rho * dot(&pair.s, &q);
            q -= &pair.y * per_problem(&alpha, self.theta.kind());
            alphas.push(alpha);
        }
        let mut r = self.objective.preconditioner.apply(&q, lambda)
            * per_problem(&self.gamma, self.theta.kind());
        for (pair, alpha) in self.history.iter().zip(alphas.iter().rev()) {
            let beta = &pair.rho * dot(&pair.y, &r);
            r += &pair.s * per_problem(&(alpha - beta), self.theta.kind());
        }
        let direction = -r;
        let not_descent = dot(&self.grad, &direction).ge(0.0);
        if bool::try_from(not_descent.any()).unwrap_or(false) {
            let keep = not_descent.logical_not().to_kind(Kind::Double);
            for pair in self.history.iter_mut() {
                pair.rho = &pair.rho * &keep;
            }
            self.gamma = &self.gamma * &keep + (1.0 - &keep);
            let steepest = -self.objective.preconditioner.apply(&self.grad, lambda);
            return direction.where_self(&not_descent.logical_not().view([-1, 1, 1]), &steepest);
        }
        direction
    }

    /// Backtracking (Armijo, quadratic interpolation) from step 1 for each active problem;
    /// moves the problems that found a decrease and returns their `(s, y)` as `[P, k, d+1]`
    /// tensors (zero rows elsewhere) with the mask of those problems. A problem with no
    /// decrease after [`MAX_TRIALS`] steps is done (stalled).
    fn line_search(
        &mut self,
        active: &[usize],
        direction: &Tensor,
        slope: &[f64],
    ) -> (Tensor, Tensor, Vec<bool>) {
        let mut s_all = Tensor::zeros_like(&self.theta);
        let mut y_all = Tensor::zeros_like(&self.theta);
        let mut moved = vec![false; self.done.len()];
        let mut step = vec![1.0f64; self.done.len()];
        let mut pending = active.to_vec();
        for _ in 0..MAX_TRIALS {
            if pending.is_empty() {
                break;
            }
            let index = index_of(&pending);
            let steps: Vec<f64> = pending.iter().map(|&p| step[p]).collect();
            let start = self.theta.index_select(0, &index);
            let trial = &start
                + direction.index_select(0, &index)
                    * per_problem(&Tensor::from_slice(&steps), self.theta.kind());
            let (values, grads) = self.objective.evaluate(&index, &trial);
            let mut accepted = Vec::new();
            let mut still = Vec::new();
            for (i, &p) in pending.iter().enumerate() {
                let (f0, f1, a) = (self.value[p], values[i], step[p]);
                if f1.is_finite() && f1 <= f0 + ARMIJO * a * slope[p] {
                    accepted.push(i as i64);
                    self.value[p] = f1;
                    moved[p] = true;
                } else {
                    // Minimiser of the quadratic through f(0), f'(0) and f(a), kept in
                    // [a/10, a/2].
                    let curvature = f1 - f0 - slope[p] * a;
                    let next = if f1.is_finite() && curvature > 0.0 {
                        -slope[p] * a * a / (2.0 * curvature)
                    } else {
                        a / 10.0
                    };
                    step[p] = next.clamp(a / 10.0, a / 2.0);
                    still.push(p);
                }
            }
            if !accepted.is_empty() {
                let rows = Tensor::from_slice(&accepted);
                let problems = index.index_select(0, &rows);
                let new_theta = trial.index_select(0, &rows);
                let new_grad = grads.index_select(0, &rows);
                let old_grad = self.grad.index_select(0, &problems);
                s_all =
                    s_all.index_copy(0, &problems, &(&new_theta - start.index_select(0, &rows)));
                y_all = y_all.index_copy(0, &problems, &(&new_grad - old_grad));
                self.theta = self.theta.index_copy(0, &problems, &new_theta);
                self.grad = self.grad.index_copy(0, &problems, &new_grad);
            }
            pending = still;
        }
        for p in pending {
            self.done[p] = true;
        }
        (s_all, y_all, moved)
    }

    /// Keeps the step's curvature pairs (problems whose `sᵀy` is not clearly positive keep
    /// none this time) and rescales H₀.
    fn remember(&mut self, (s, y, moved): (Tensor, Tensor, Vec<bool>)) {
        let sy = dot(&s, &y);
        let ss = dot(&s, &s);
        let yy = dot(&y, &y);
        let moved = Tensor::from_slice(&moved);
        let valid = sy
            .gt_tensor(&((ss * &yy).sqrt() * 1e-10))
            .logical_and(&moved);
        let rho = sy.reciprocal().where_self(&valid, &sy.zeros_like());
        let hy = self
            .objective
            .preconditioner
            .apply(&y, &self.objective.lambda);
        let gamma = &sy / dot(&y, &hy);
        self.gamma = gamma.where_self(&valid, &self.gamma);
        if self.history.len() == MEMORY {
            self.history.pop_front();
        }
        self.history.push_back(Pair { s, y, rho });
    }
}
