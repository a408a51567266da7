//! Optimizers over tch tensors with checkpointable state.
//!
//! Three optimizers reproduce the update rules of the original PyTorch system:
//! [`adam::Adam`] (`torch.optim.Adam`, coupled L2 weight decay; `torch.optim.AdamW` with
//! decoupled decay), [`sgd::Sgd`]
//! (`torch.optim.SGD` with momentum, dampening 0, optional Nesterov) and [`lars::Lars`]
//! (LARS as in pl_bolts / solo-learn). They all work on a list of [`Param`]s, update the
//! tensors in place under `no_grad`, skip parameters whose gradient is undefined (torch
//! semantics), and expose every buffer needed to resume bit-exactly through
//! [`Optimizer::state`] / [`Optimizer::load_state`].
//!
//! State entries are named `optimizer.<param name>.<buffer>`: Adam has `exp_avg`,
//! `exp_avg_sq` and `step`; SGD and LARS have `momentum_buffer` (when momentum is not 0) and
//! `step`. `step` is a 0-dim `Int64` CPU tensor counting the steps in which the parameter had a
//! gradient; while it is 0 the buffers have not been created yet and are exported as zeros.
//! Parameter names must therefore be unique within one optimizer.
//!
//! Every parameter steps at the learning rate passed to [`Optimizer::step`] (the run's
//! schedule), except those an algorithm marks unscheduled ([`Param::scheduled`] false, SimSiam's
//! predictor) when [`OptimizerConfig::fixed_lr`] is set: they step at that fixed rate.

pub mod adam;
pub mod lars;
pub mod sgd;

use anyhow::{bail, Context, Result};
use ssl_plugin_api::tch::{self, COptimizer, Device, Kind, Tensor};
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

/// One trainable tensor handed to an optimizer.
#[derive(Debug)]
pub struct Param {
    /// Parameter name, used to name its state entries (`optimizer.<name>.<buffer>`).
    pub name: String,
    /// Shallow clone of the trainable tensor (`requires_grad`); updated in place under `no_grad`.
    pub tensor: Tensor,
    /// Whether [`OptimizerConfig::weight_decay`] applies to this parameter (else its decay is 0).
    pub weight_decay: bool,
    /// Whether LARS scales this parameter's update by the trust ratio (ignored by Adam and SGD).
    pub lars_adaptation: bool,
    /// Whether it steps at the learning rate of each step (the schedule); `false`: at
    /// [`OptimizerConfig::fixed_lr`] when that is set.
    pub scheduled: bool,
}

impl Clone for Param {
    /// Clones the metadata; the tensor is a shallow clone (same storage and gradient).
    fn clone(&self) -> Self {
        Param {
            name: self.name.clone(),
            tensor: self.tensor.shallow_clone(),
            weight_decay: self.weight_decay,
            lars_adaptation: self.lars_adaptation,
            scheduled: self.scheduled,
        }
    }
}

impl Param {
    /// A parameter with weight decay and LARS adaptation both enabled, following the schedule.
    pub fn new(name: impl Into<String>, tensor: &Tensor) -> Self {
        Param {
            name: name.into(),
            tensor: tensor.shallow_clone(),
            weight_decay: true,
            lars_adaptation: true,
            scheduled: true,
        }
    }
}

/// An optimizer over a fixed list of [`Param`]s.
pub trait Optimizer: Send {
    /// Applies one update with learning rate `lr` to every parameter whose gradient is defined.
    fn step(&mut self, lr: f64) -> Result<()>;
    /// Resets the gradients to undefined (torch's `zero_grad(set_to_none=True)`), so that a
    /// parameter that receives no gradient in the next backward pass is skipped by [`step`].
    ///
    /// [`step`]: Optimizer::step
    fn zero_grad(&mut self);
    /// Every buffer needed to continue bit-exactly, named `optimizer.<param name>.<buffer>`.
    ///
    /// The tensors share storage with the live buffers: save (or copy) them before the next
    /// [`step`](Optimizer::step).
    fn state(&self) -> Vec<(String, Tensor)>;
    /// Restores the state written by [`state`](Optimizer::state) by copying into this
    /// optimizer's buffers. Entries not belonging to this optimizer are ignored. Fails, naming
    /// the entry, when one is missing or has the wrong shape; nothing is changed then.
    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()>;
    /// Takes one step back off the step count of every parameter marked in `stepped` (in
    /// parameter order): a step whose update the step path undid on the device (a skipped
    /// step), known only when its flag was read.
    fn uncount(&mut self, stepped: &[bool]);
    /// Before a step: per parameter, how many of the steps its count includes the device may
    /// have undone (Int64, 0-dim, on the device; `None`: none), until [`uncount`] settles
    /// them. An optimizer whose update depends on the count (Adam's bias correction) takes it
    /// into account on the device; the others ignore it.
    ///
    /// [`uncount`]: Optimizer::uncount
    fn pending_undone(&mut self, _undone: Vec<Option<Tensor>>) {}
    /// Whether [`pending_undone`](Optimizer::pending_undone) matters to it (Adam).
    fn counts_steps(&self) -> bool {
        false
    }
    /// Short name: `adam`, `adamw`, `sgd` or `lars`.
    fn name(&self) -> &'static str;
}

/// Which optimizer [`build`] makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptimizerKind {
    /// `torch.optim.Adam` with coupled L2 weight decay.
    Adam,
    /// `torch.optim.AdamW`: Adam with decoupled weight decay.
    AdamW,
    /// `torch.optim.SGD` with momentum (dampening 0) and optional Nesterov.
    Sgd,
    /// LARS (layer-wise adaptive rate scaling) on top of SGD with momentum.
    Lars,
}

impl OptimizerKind {
    /// Every accepted name, in the order of the variants.
    pub const NAMES: [&'static str; 4] = ["adam", "adamw", "sgd", "lars"];

    /// The name accepted by [`FromStr`].
    pub fn as_str(self) -> &'static str {
        match self {
            OptimizerKind::Adam => "adam",
            OptimizerKind::AdamW => "adamw",
            OptimizerKind::Sgd => "sgd",
            OptimizerKind::Lars => "lars",
        }
    }
}

impl fmt::Display for OptimizerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OptimizerKind {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "adam" => Ok(OptimizerKind::Adam),
            "adamw" => Ok(OptimizerKind::AdamW),
            "sgd" => Ok(OptimizerKind::Sgd),
            "lars" => Ok(OptimizerKind::Lars),
            other => bail!(
                "unknown optimizer `{other}` (choices: {})",
                Self::NAMES.join(", ")
            ),
        }
    }
}

/// Hyper-parameters of every optimizer; each one reads the fields it needs.
#[derive(Debug, Clone, PartialEq)]
pub struct OptimizerConfig {
    /// Which optimizer to build.
    pub kind: OptimizerKind,
    /// Coupled L2 weight decay, applied to parameters with [`Param::weight_decay`] set.
    pub weight_decay: f64,
    /// Adam's `(beta1, beta2)`.
    pub betas: (f64, f64),
    /// Adam's denominator epsilon; LARS uses it in the trust-ratio denominator.
    pub eps: f64,
    /// Momentum of SGD and LARS (0 disables the momentum buffer).
    pub momentum: f64,
    /// Nesterov momentum for SGD and LARS.
    pub nesterov: bool,
    /// LARS trust coefficient (`eta`).
    pub trust_coefficient: f64,
    /// The learning rate of the parameters with [`Param::scheduled`] false (the run's base
    /// learning rate); `None`: every parameter steps at the learning rate of the step.
    pub fixed_lr: Option<f64>,
}

impl Default for OptimizerConfig {
    /// Adam, no weight decay, betas (0.9, 0.999), eps 1e-8, momentum 0.9, no Nesterov,
    /// LARS trust coefficient 0.001, every parameter scheduled (no fixed learning rate).
    fn default() -> Self {
        OptimizerConfig {
            kind: OptimizerKind::Adam,
            weight_decay: 0.0,
            betas: (0.9, 0.999),
            eps: 1e-8,
            momentum: 0.9,
            nesterov: false,
            trust_coefficient: 0.001,
            fixed_lr: None,
        }
    }
}

impl OptimizerConfig {
    /// The weight decay that applies to `param`: [`weight_decay`](Self::weight_decay) when the
    /// parameter opts in, else 0.
    pub fn decay_for(&self, param: &Param) -> f64 {
        if param.weight_decay {
            self.weight_decay
        } else {
            0.0
        }
    }

    /// The fixed learning rate `param` steps at whatever the step's: [`fixed_lr`](Self::fixed_lr)
    /// when the parameter is not scheduled, else `None` (the step's learning rate).
    pub fn fixed_lr_for(&self, param: &Param) -> Option<f64> {
        if param.scheduled {
            None
        } else {
            self.fixed_lr
        }
    }
}

/// Makes the optimizer selected by `config.kind` over `params`.
pub fn build(config: &OptimizerConfig, params: Vec<Param>) -> Box<dyn Optimizer> {
    match config.kind {
        OptimizerKind::Adam | OptimizerKind::AdamW => Box::new(adam::Adam::new(config, params)),
        OptimizerKind::Sgd => Box::new(sgd::Sgd::new(config, params)),
        OptimizerKind::Lars => Box::new(lars::Lars::new(config, params)),
    }
}

/// Name of the state entry `buffer` of parameter `param`.
pub(crate) fn entry_name(param: &str, buffer: &str) -> String {
    format!("optimizer.{param}.{buffer}")
}

/// A step counter as a 0-dim `Int64` CPU tensor.
pub(crate) fn step_tensor(step: i64) -> Tensor {
    Tensor::scalar_tensor(step as f64, (Kind::Int64, Device::Cpu))
}

/// The gradient of `tensor`, or `None` when it is undefined.
pub(crate) fn grad_of(tensor: &Tensor) -> Option<Tensor> {
    let grad = tensor.grad();
    grad.defined().then_some(grad)
}

/// Looks up `key` in `state`.
pub(crate) fn lookup<'a>(state: &'a HashMap<String, Tensor>, key: &str) -> Result<&'a Tensor> {
    state
        .get(key)
        .with_context(|| format!("optimizer state entry `{key}` is missing"))
}

/// Reads the step counter `key` (a one-element tensor holding a non-negative whole number).
pub(crate) fn read_step(state: &HashMap<String, Tensor>, key: &str) -> Result<i64> {
    let t = lookup(state, key)?;
    if t.numel() != 1 {
        bail!(
            "optimizer state entry `{key}` has shape {:?}, expected a single step count",
            t.size()
        );
    }
    let value = t
        .f_to_kind(Kind::Double)
        .and_then(|d| d.f_reshape([1]))
        .and_then(|d| d.f_double_value(&[0]))
        .with_context(|| format!("reading optimizer state entry `{key}`"))?;
    if !(value >= 0.0 && value.fract() == 0.0 && value < 9.0e15) {
        bail!("optimizer state entry `{key}` = {value} is not a valid step count");
    }
    Ok(value as i64)
}

/// Looks up `key` and checks that its shape equals the shape of `param`.
pub(crate) fn read_buffer(
    state: &HashMap<String, Tensor>,
    key: &str,
    param: &Tensor,
) -> Result<Tensor> {
    let t = lookup(state, key)?;
    if t.size() != param.size() {
        bail!(
            "optimizer state entry `{key}` has shape {:?}, but the parameter has shape {:?}",
            t.size(),
            param.size()
        );
    }
    Ok(t.shallow_clone())
}

/// Copies `src` into `slot` in place, creating the buffer (like `param`) when it is absent.
pub(crate) fn restore_buffer(slot: &mut Option<Tensor>, src: &Tensor, param: &Tensor) {
    tch::no_grad(|| {
        let buf = slot.get_or_insert_with(|| param.zeros_like());
        buf.copy_(src);
    });
}

/// The live buffer, or zeros shaped like `param` when it has not been created yet.
pub(crate) fn export_buffer(slot: &Option<Tensor>, param: &Tensor) -> Tensor {
    match slot {
        Some(b) => b.shallow_clone(),
        None => tch::no_grad(|| param.zeros_like()),
    }
}

/// Sets gradients to undefined, as `torch.optim.Optimizer.zero_grad(set_to_none=True)` does.
///
/// tch only offers zero-filling (`Tensor::zero_grad`), which would leave the gradient defined
/// and make later steps update parameters that got no gradient. libtorch's C++ optimizers do
/// reset gradients to undefined, so a parameter-less-state C++ SGD holding the same tensors is
/// used for exactly that (it never steps).
pub(crate) struct GradReset {
    inner: Option<COptimizer>,
    tensors: Vec<Tensor>,
}

impl GradReset {
    /// Tracks the gradients of `params`.
    pub(crate) fn new(params: &[Param]) -> Self {
        let tensors: Vec<Tensor> = params.iter().map(|p| p.tensor.shallow_clone()).collect();
        let inner = COptimizer::sgd(0.0, 0.0, 0.0, 0.0, false)
            .ok()
            .and_then(|mut c| {
                tensors
                    .iter()
                    .try_for_each(|t| c.add_parameters(t, 0))
                    .ok()
                    .map(|()| c)
            });
        GradReset { inner, tensors }
    }

    /// Makes every tracked gradient undefined (falls back to zero-filling if libtorch refuses).
    pub(crate) fn reset(&mut self) {
        if let Some(c) = &self.inner {
            if c.zero_grad().is_ok() {
                return;
            }
        }
        for t in &mut self.tensors {
            t.zero_grad();
        }
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    use super::*;

    /// `[[0.5, -1, 1.5], [2, -0.25, 0.75]]` (decayed) and `[0.1, -0.2, 0.3]` (not decayed), f64.
    pub fn reference_params() -> (Tensor, Tensor) {
        let w = Tensor::from_slice(&[0.5f64, -1.0, 1.5, 2.0, -0.25, 0.75])
            .reshape([2, 3])
            .set_requires_grad(true);
        let b = Tensor::from_slice(&[0.1f64, -0.2, 0.3]).set_requires_grad(true);
        (w, b)
    }

    /// `loss_k = sum(0.5 k w²) + sum(k d b)` with `d = [1, -2, 0.5]`, i.e. `grad w = k w`,
    /// `grad b = k d`.
    pub fn reference_backward(w: &Tensor, b: &Tensor, k: i64) {
        let d = Tensor::from_slice(&[1.0f64, -2.0, 0.5]);
        let loss =
            (w * w * (0.5 * k as f64)).sum(Kind::Double) + (&d * b * k as f64).sum(Kind::Double);
        loss.backward();
    }

    /// Runs the three reference steps (lr 0.1, 0.05, 0.02) and returns `(w, b)` flattened.
    pub fn run_reference(config: &OptimizerConfig) -> (Vec<f64>, Vec<f64>) {
        let (w, b) = reference_params();
        let params = vec![
            Param {
                name: "w".into(),
                tensor: w.shallow_clone(),
                weight_decay: true,
                lars_adaptation: true,
                scheduled: true,
            },
            Param {
                name: "b".into(),
                tensor: b.shallow_clone(),
                weight_decay: false,
                lars_adaptation: false,
                scheduled: true,
            },
        ];
        let mut opt = build(config, params);
        for (k, lr) in [(1, 0.1), (2, 0.05), (3, 0.02)] {
            opt.zero_grad();
            reference_backward(&w, &b, k);
            opt.step(lr).unwrap();
        }
        (to_vec(&w), to_vec(&b))
    }

    pub fn to_vec(t: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(t.detach().to_kind(Kind::Double).flatten(0, -1)).unwrap()
    }

    pub fn assert_close(actual: &[f64], expected: &[f64], tol: f64) {
        assert_eq!(actual.len(), expected.len());
        for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
            assert!(
                (a - e).abs() <= tol * (1.0 + e.abs()),
                "element {i}: got {a}, expected {e} (all: {actual:?} vs {expected:?})"
            );
        }
    }

    /// A small f32 model: two used params and one that never gets a gradient.
    /// The values come from `seed` alone, not from libtorch's global generator, which tests
    /// running in parallel threads would race on.
    pub fn resume_params(seed: i64) -> Vec<Param> {
        let offset = std::cell::Cell::new(0i64);
        let mk = |shape: &[i64]| {
            let n: i64 = shape.iter().product();
            let values: Vec<f32> = (0..n)
                .map(|i| {
                    let k = (seed * 1000 + offset.get() + i) as f64;
                    ((k * 12.9898).sin() * 43758.5453).fract() as f32 * 2.0
                })
                .collect();
            offset.set(offset.get() + n);
            Tensor::from_slice(&values)
                .reshape(shape)
                .set_requires_grad(true)
        };
        vec![
            Param {
                name: "layer.weight".into(),
                tensor: mk(&[4, 3]),
                weight_decay: true,
                lars_adaptation: true,
                scheduled: true,
            },
            Param {
                name: "layer.bias".into(),
                tensor: mk(&[4]),
                weight_decay: false,
                lars_adaptation: false,
                scheduled: true,
            },
            Param {
                name: "unused.weight".into(),
                tensor: mk(&[2]),
                weight_decay: true,
                lars_adaptation: true,
                scheduled: true,
            },
        ]
    }

    pub fn resume_backward(params: &[Param], k: i64) {
        let x = Tensor::from_slice(&[0.3f32, -1.2, 0.7]).reshape([1, 3]) * (1.0 + 0.1 * k as f64);
        let y = x.matmul(&params[0].tensor.tr()) + &params[1].tensor;
        let loss = (y.tanh() * y).sum(Kind::Float);
        loss.backward();
    }

    fn clone_params(params: &[Param]) -> Vec<Param> {
        params
            .iter()
            .map(|p| Param {
                name: p.name.clone(),
                tensor: p.tensor.detach().copy().set_requires_grad(true),
                weight_decay: p.weight_decay,
                lars_adaptation: p.lars_adaptation,
                scheduled: p.scheduled,
            })
            .collect()
    }

    /// 5 uninterrupted steps vs 3 steps, state → fresh optimizer → 2 steps: bit-identical.
    pub fn check_resume(config: &OptimizerConfig) {
        let lrs = [0.1, 0.08, 0.05, 0.03, 0.02];
        let straight = resume_params(7);
        let a = clone_params(&straight);
        let mut opt_a = build(config, a.to_vec());
        for (k, lr) in lrs.iter().enumerate() {
            opt_a.zero_grad();
            resume_backward(&a, k as i64);
            opt_a.step(*lr).unwrap();
        }

        let b = clone_params(&straight);
        let mut opt_b = build(config, b.to_vec());
        for (k, lr) in lrs.iter().enumerate().take(3) {
            opt_b.zero_grad();
            resume_backward(&b, k as i64);
            opt_b.step(*lr).unwrap();
        }
        let saved: HashMap<String, Tensor> = opt_b
            .state()
            .into_iter()
            .map(|(k, v)| (k, v.copy()))
            .collect();
        let c = clone_params(&b);
        drop(opt_b);
        let mut opt_c = build(config, c.to_vec());
        opt_c.load_state(&saved).unwrap();
        for (k, lr) in lrs.iter().enumerate().skip(3) {
            opt_c.zero_grad();
            resume_backward(&c, k as i64);
            opt_c.step(*lr).unwrap();
        }
        for (pa, pc) in a.iter().zip(&c) {
            assert!(
                pa.tensor.equal(&pc.tensor),
                "{}: resumed run differs from the uninterrupted one",
                pa.name
            );
        }
        let before = resume_params(7);
        assert!(
            a[2].tensor.equal(&before[2].tensor),
            "a parameter without gradient moved"
        );
        assert!(
            !a[0].tensor.equal(&before[0].tensor),
            "the parameters did not move"
        );
        // The full state round-trips too.
        let sa: HashMap<String, Tensor> = opt_a.state().into_iter().collect();
        for (name, t) in opt_c.state() {
            assert!(
                t.equal(&sa[&name]),
                "state entry {name} differs after resuming"
            );
        }
    }

    /// load_state must name a missing entry and a shape mismatch.
    pub fn check_load_errors(config: &OptimizerConfig, buffer: &str) {
        let params = resume_params(1);
        let opt = build(config, params.to_vec());
        let good: HashMap<String, Tensor> = opt.state().into_iter().collect();

        let mut missing = good.clone_shallow();
        let key = entry_name("layer.weight", buffer);
        missing.remove(&key);
        let mut fresh = build(config, params.to_vec());
        let err = fresh.load_state(&missing).unwrap_err().to_string();
        assert!(err.contains(&key) && err.contains("missing"), "{err}");

        let mut wrong = good.clone_shallow();
        wrong.insert(
            key.clone(),
            Tensor::zeros([3, 4], (Kind::Float, Device::Cpu)),
        );
        let err = fresh.load_state(&wrong).unwrap_err().to_string();
        assert!(err.contains(&key) && err.contains("shape"), "{err}");

        let mut missing_step = good.clone_shallow();
        let step_key = entry_name("layer.bias", "step");
        missing_step.remove(&step_key);
        let err = fresh.load_state(&missing_step).unwrap_err().to_string();
        assert!(err.contains(&step_key), "{err}");

        fresh.load_state(&good).unwrap();
    }

    trait CloneShallow {
        fn clone_shallow(&self) -> Self;
    }

    impl CloneShallow for HashMap<String, Tensor> {
        fn clone_shallow(&self) -> Self {
            self.iter()
                .map(|(k, v)| (k.clone(), v.shallow_clone()))
                .collect()
        }
    }

    /// Params with zero gradient: the decayed one moves, the other must stay exactly put.
    pub fn check_no_decay(kind: OptimizerKind) {
        let config = OptimizerConfig {
            kind,
            weight_decay: 0.5,
            ..OptimizerConfig::default()
        };
        let decayed = Tensor::from_slice(&[1.0f32, -2.0, 3.0]).set_requires_grad(true);
        let kept = Tensor::from_slice(&[1.0f32, -2.0, 3.0]).set_requires_grad(true);
        let mut opt = build(
            &config,
            vec![
                Param {
                    name: "decayed".into(),
                    tensor: decayed.shallow_clone(),
                    weight_decay: true,
                    lars_adaptation: false,
                    scheduled: true,
                },
                Param {
                    name: "kept".into(),
                    tensor: kept.shallow_clone(),
                    weight_decay: false,
                    lars_adaptation: false,
                    scheduled: true,
                },
            ],
        );
        for _ in 0..3 {
            opt.zero_grad();
            ((&decayed + &kept) * 0.0).sum(Kind::Float).backward();
            assert!(kept.grad().defined());
            opt.step(0.1).unwrap();
        }
        let original = Tensor::from_slice(&[1.0f32, -2.0, 3.0]);
        assert!(
            kept.equal(&original),
            "{kind}: param without weight decay moved"
        );
        assert!(
            !decayed.equal(&original),
            "{kind}: weight decay had no effect"
        );
        // Decay shrinks towards zero.
        let ratio = to_vec(&(decayed.abs() / original.abs()));
        assert!(ratio.iter().all(|r| *r < 1.0), "{kind}: {ratio:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::*;
    use super::*;

    #[test]
    fn kind_parses_and_lists_choices() {
        assert_eq!(
            "adam".parse::<OptimizerKind>().unwrap(),
            OptimizerKind::Adam
        );
        assert_eq!("sgd".parse::<OptimizerKind>().unwrap(), OptimizerKind::Sgd);
        assert_eq!(
            "lars".parse::<OptimizerKind>().unwrap(),
            OptimizerKind::Lars
        );
        let err = "nadam".parse::<OptimizerKind>().unwrap_err().to_string();
        assert!(
            err.contains("nadam") && err.contains("adam, adamw, sgd, lars"),
            "{err}"
        );
        for name in OptimizerKind::NAMES {
            assert_eq!(name.parse::<OptimizerKind>().unwrap().to_string(), name);
        }
    }

    #[test]
    fn defaults() {
        let c = OptimizerConfig::default();
        assert_eq!(c.betas, (0.9, 0.999));
        assert_eq!(c.eps, 1e-8);
        assert_eq!(c.momentum, 0.9);
        assert!(!c.nesterov);
        assert_eq!(c.trust_coefficient, 0.001);
    }

    #[test]
    fn build_names() {
        for kind in [OptimizerKind::Adam, OptimizerKind::Sgd, OptimizerKind::Lars] {
            let config = OptimizerConfig {
                kind,
                ..OptimizerConfig::default()
            };
            assert_eq!(build(&config, resume_params(0)).name(), kind.as_str());
        }
    }

    #[test]
    fn zero_grad_makes_gradients_undefined() {
        for kind in [OptimizerKind::Adam, OptimizerKind::Sgd, OptimizerKind::Lars] {
            let params = resume_params(3);
            let tensors: Vec<Tensor> = params.iter().map(|p| p.tensor.shallow_clone()).collect();
            let config = OptimizerConfig {
                kind,
                weight_decay: 0.1,
                ..OptimizerConfig::default()
            };
            let mut opt = build(&config, params);
            resume_backward_tensors(&tensors);
            assert!(tensors[0].grad().defined());
            opt.zero_grad();
            assert!(tensors.iter().all(|t| !t.grad().defined()), "{kind}");
            // A step with no gradients changes nothing, even with weight decay.
            let before: Vec<Tensor> = tensors.iter().map(|t| t.detach().copy()).collect();
            opt.step(0.1).unwrap();
            for (t, b) in tensors.iter().zip(&before) {
                assert!(t.equal(b), "{kind}");
            }
        }
    }

    fn resume_backward_tensors(tensors: &[Tensor]) {
        let x = Tensor::from_slice(&[0.3f32, -1.2, 0.7]).reshape([1, 3]);
        (x.matmul(&tensors[0].tr()) + &tensors[1])
            .sum(Kind::Float)
            .backward();
    }

    /// A scheduled and an unscheduled parameter, the gradient 1 everywhere, the step's learning
    /// rate changing (0.1, 0.05, 0.02) and `fixed_lr` 0.3: the unscheduled one moves at 0.3 in
    /// every step. Hand-computed: SGD/LARS (momentum 0.9, buffers 1, 1.9, 2.71) move the
    /// scheduled one by 0.1 + 0.05·1.9 + 0.02·2.71 = 0.2492 and the other by 0.3·5.61 = 1.683;
    /// Adam (constant gradient: each step moves by lr · 1/(1 + eps)) by 0.17 and 0.9. Without
    /// `fixed_lr`, both follow the step's learning rate. Catches (tried, then restored): SGD's
    /// (and so LARS') or Adam's step ignoring the fixed rate.
    #[test]
    fn unscheduled_params_step_at_the_fixed_learning_rate() {
        let cases = [
            (OptimizerKind::Sgd, 0.2492, 1.683),
            (OptimizerKind::Lars, 0.2492, 1.683),
            (OptimizerKind::Adam, 0.17, 0.9),
            (OptimizerKind::AdamW, 0.17, 0.9),
        ];
        for (kind, scheduled_moves, fixed_moves) in cases {
            for fixed_lr in [Some(0.3), None] {
                let config = OptimizerConfig {
                    kind,
                    momentum: 0.9,
                    fixed_lr,
                    ..OptimizerConfig::default()
                };
                let a = Tensor::zeros([2], (Kind::Double, Device::Cpu)).set_requires_grad(true);
                let b = Tensor::zeros([2], (Kind::Double, Device::Cpu)).set_requires_grad(true);
                let param = |name: &str, t: &Tensor, scheduled: bool| Param {
                    // LARS without adaptation: its update is SGD's, computable by hand.
                    lars_adaptation: false,
                    scheduled,
                    ..Param::new(name, t)
                };
                let mut opt = build(
                    &config,
                    vec![param("scheduled", &a, true), param("fixed", &b, false)],
                );
                for lr in [0.1, 0.05, 0.02] {
                    opt.zero_grad();
                    (a.sum(Kind::Double) + b.sum(Kind::Double)).backward();
                    opt.step(lr).unwrap();
                }
                let b_moves = if fixed_lr.is_some() {
                    fixed_moves
                } else {
                    scheduled_moves
                };
                assert_close(&to_vec(&a), &[-scheduled_moves; 2], 1e-7);
                assert_close(&to_vec(&b), &[-b_moves; 2], 1e-7);
            }
        }
    }

    #[test]
    fn step_counter_tensor_round_trips() {
        let mut state = HashMap::new();
        state.insert("s".to_string(), step_tensor(12345));
        assert_eq!(read_step(&state, "s").unwrap(), 12345);
        state.insert("f".to_string(), Tensor::from(3.0f32));
        assert_eq!(read_step(&state, "f").unwrap(), 3);
        state.insert("bad".to_string(), Tensor::from(-1.0f32));
        assert!(read_step(&state, "bad").is_err());
    }
}
