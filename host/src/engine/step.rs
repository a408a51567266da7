//! The one step path. Every optimizer step of every task (the SSL loss, the online linear
//! head, a classifier) goes through [`StepPath::step`]:
//!
//! zero gradients → (scaled) backward → *gradient all-reduce point* → unscale and overflow
//! check (`16-mixed`) → optional gradient-norm clipping (`gradient_clip_val`) → optimizer step.
//!
//! The algorithm's after-step hook (BYOL's moving average) runs once per training step, after
//! all optimizer steps of that training step (the engine calls it; the online linear head
//! steps before it, as the original's Lightning callbacks do).
//!
//! An [`OptimizerSlot`] owns its optimizer: nothing outside this module can step one, so no
//! task can bypass the path.
//!
//! **No step reads a device value.** A read makes the host wait until the device has done
//! everything queued (a GPU then idles while the host queues the next step), so the path keeps
//! what it must decide on the device: whether the loss was finite, whether the scaled
//! gradients overflowed, the clipping coefficient. [`StepPath::check`] reads the flags of every
//! step since the last check at once; the engine calls it every few steps and before every
//! checkpoint and every epoch's metrics. With `nan_policy = stop` a non-finite loss stops the
//! run at that check, naming its step, so no checkpoint is ever written after it. A step that
//! may have to be left out (`nan_policy = skip_step`, or `16-mixed` whose gradients may
//! overflow) is applied on condition: the parameters and optimizer buffers take their old values
//! back on the device where its flag says so (as torch's fused optimizers skip on
//! `found_inf`), and the optimizer's step counts (kept on the host) are corrected at the check.
//! The one read a step may make: in a run of several processes whose step left some parameter of this
//! process without a gradient, which processes had one (see
//! [`StepPath::all_reduce_gradients`]). Reads count themselves in [`super::host_reads`].

use super::host_reads;
use crate::config::NanPolicy;
use crate::optim::{self, Optimizer, OptimizerConfig, Param};
use anyhow::{bail, Context, Result};
use ssl_plugin_api::tch::{self, Device, Kind, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

/// Dynamic loss scaling for `16-mixed` (as torch.cuda.amp.GradScaler): scale the loss, leave out
/// steps whose gradients overflowed and halve the scale, double it after 2000 good steps. The
/// scale and the count of good steps live on the device, so the decisions need no read.
pub struct LossScaler {
    /// The scale (Float, 0-dim).
    scale: Tensor,
    /// Steps since the scale last changed (Int64, 0-dim).
    good_steps: Tensor,
}

/// The first scale, as torch's GradScaler.
const INITIAL_SCALE: f64 = 65536.0;
/// Good steps after which the scale doubles.
const GROWTH_INTERVAL: i64 = 2000;

impl Default for LossScaler {
    fn default() -> Self {
        LossScaler {
            scale: Tensor::from(INITIAL_SCALE as f32),
            good_steps: Tensor::from(0i64),
        }
    }
}

impl LossScaler {
    /// Its state for the checkpoint (`scale` as Double, `good_steps`), so a resumed run scales
    /// as before (a read of the device, made when a checkpoint is written).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        vec![
            (
                "scale".into(),
                self.scale.to_kind(Kind::Double).to_device(Device::Cpu),
            ),
            ("good_steps".into(), self.good_steps.to_device(Device::Cpu)),
        ]
    }

    /// Restores [`LossScaler::state`] (names without prefix); a checkpoint of a run without
    /// loss scaling has none, and the scaler then starts afresh.
    pub fn load_state(&mut self, stored: &HashMap<String, Tensor>) -> Result<()> {
        if let (Some(scale), Some(good)) = (stored.get("scale"), stored.get("good_steps")) {
            let scale = scale.f_double_value(&[]).context("loss_scaler.scale")?;
            let good = good.f_int64_value(&[]).context("loss_scaler.good_steps")?;
            if !(scale.is_finite() && scale > 0.0) || good < 0 {
                bail!("the checkpoint's loss scaler has scale {scale} and good_steps {good}: expected a positive scale and a count ≥ 0");
            }
            let device = self.scale.device();
            self.scale = Tensor::from(scale as f32).to_device(device);
            self.good_steps = Tensor::from(good).to_device(device);
        }
        Ok(())
    }

    /// The scale and count, on `device`.
    fn on(&mut self, device: Device) {
        if self.scale.device() != device {
            self.scale = crate::loader::upload(self.scale.to_device(Device::Cpu), device);
            self.good_steps = crate::loader::upload(self.good_steps.to_device(Device::Cpu), device);
        }
    }

    /// `loss` times the scale.
    fn scale_loss(&mut self, loss: &Tensor) -> Tensor {
        self.on(loss.device());
        loss * &self.scale
    }

    /// Unscales the gradients of `params` in place (times the reciprocal scale, as torch) and
    /// updates the scale; returns whether any gradient is not finite (0-dim Bool on the device:
    /// the step must be left out). An error names the slot and parameter.
    fn unscale(&mut self, slot: &str, params: &[Param]) -> Result<Tensor> {
        tch::no_grad(|| {
            let inverse = self
                .scale
                .to_kind(Kind::Double)
                .reciprocal()
                .to_kind(Kind::Float);
            let mut checks = Vec::new();
            for p in params {
                let mut g = p.tensor.grad();
                if g.defined() {
                    let _ = g.f_mul_(&inverse).with_context(|| {
                        format!("unscaling the {slot} gradient of `{}`", p.name)
                    })?;
                    checks.push(g.isfinite().all());
                }
            }
            let overflow = if checks.is_empty() {
                Tensor::zeros([], (Kind::Bool, self.scale.device()))
            } else {
                Tensor::stack(&checks, 0).all().logical_not()
            };
            self.update(&overflow);
            Ok(overflow)
        })
    }

    /// After a step: halve the scale when `overflow`, else count the step and double the scale
    /// every [`GROWTH_INTERVAL`] good steps (torch's `_amp_update_scale_`), on the device.
    fn update(&mut self, overflow: &Tensor) {
        tch::no_grad(|| {
            let zero = self.good_steps.zeros_like();
            let good = zero.where_self(overflow, &(&self.good_steps + 1));
            let grow = good.ge(GROWTH_INTERVAL);
            let scale = (&self.scale * 0.5).where_self(
                overflow,
                &(&self.scale * 2.0).where_self(&grow, &self.scale),
            );
            let good = zero.where_self(&grow, &good);
            self.scale.copy_(&scale);
            self.good_steps.copy_(&good);
        })
    }
}

/// What became of a step applied on condition, once [`StepPath::check`] has read its flag.
type Verdict = Arc<AtomicU8>;
const UNKNOWN: u8 = 0;
const APPLIED: u8 = 1;
const UNDONE: u8 = 2;

/// A step applied on condition, until its slot has settled its step counts.
struct Unsettled {
    verdict: Verdict,
    /// Which parameters stepped.
    stepped: Vec<bool>,
    /// Whether the device undid it (0-dim Bool).
    undo: Tensor,
}

/// An optimizer, the parameters it updates and, under `16-mixed`, its loss scaler.
pub struct OptimizerSlot {
    name: &'static str,
    optimizer: Box<dyn Optimizer>,
    params: Vec<Param>,
    scaler: Option<LossScaler>,
    clipped: bool,
    /// Steps applied on condition whose verdict the optimizer's step counts do not reflect
    /// yet, with the parameters that stepped.
    unsettled: Vec<Unsettled>,
}

impl OptimizerSlot {
    /// A slot called `name` (`ssl`, `linear_head`, `classifier`: what step counts are kept
    /// under) stepping `params` with the optimizer of `config`; with `scaled_loss` (16-mixed),
    /// its loss is scaled.
    pub fn new(
        name: &'static str,
        config: &OptimizerConfig,
        params: Vec<Param>,
        scaled_loss: bool,
    ) -> OptimizerSlot {
        // Shallow clones (same tensors), every hint carried.
        let shallow = params.clone();
        OptimizerSlot {
            name,
            optimizer: optim::build(config, shallow),
            params,
            scaler: scaled_loss.then(LossScaler::default),
            clipped: true,
            unsettled: Vec::new(),
        }
    }

    /// The same slot, never clipped (the online linear head's optimizer, as Lightning's
    /// `gradient_clip_val` leaves a callback's own optimizer alone).
    pub fn unclipped(mut self) -> OptimizerSlot {
        self.clipped = false;
        self
    }

    /// The optimizer's state for the checkpoint, its step counts those of the steps known to
    /// be applied (call after [`StepPath::check`]).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut state = self.optimizer.state();
        let mut undone = vec![0i64; self.params.len()];
        for u in &self.unsettled {
            if u.verdict.load(Ordering::SeqCst) == UNDONE {
                for (u, &s) in undone.iter_mut().zip(&u.stepped) {
                    *u += s as i64;
                }
            }
        }
        for (param, &u) in self.params.iter().zip(&undone) {
            if u == 0 {
                continue;
            }
            let key = optim::entry_name(&param.name, "step");
            if let Some((_, t)) = state.iter_mut().find(|(k, _)| *k == key) {
                let count = t.int64_value(&[]);
                *t = optim::step_tensor((count - u).max(0));
            }
        }
        state
    }

    /// The loss scaler's state, when there is one.
    pub fn scaler_state(&self) -> Vec<(String, Tensor)> {
        self.scaler
            .as_ref()
            .map(LossScaler::state)
            .unwrap_or_default()
    }

    /// Restores the optimizer's state.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        self.unsettled.clear();
        self.optimizer.load_state(state)
    }

    /// Restores the loss scaler's state (no-op without one).
    pub fn load_scaler_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        match &mut self.scaler {
            Some(scaler) => scaler.load_state(state),
            None => Ok(()),
        }
    }

    /// Takes the steps found undone off the optimizer's step counts.
    fn settle(&mut self) {
        let optimizer = &mut self.optimizer;
        self.unsettled
            .retain(|u| match u.verdict.load(Ordering::SeqCst) {
                UNKNOWN => true,
                APPLIED => false,
                _ => {
                    optimizer.uncount(&u.stepped);
                    false
                }
            });
    }

    /// Tells an optimizer that counts steps (Adam), per parameter, how many steps of its count
    /// the device may have undone (the unsettled ones), on the device. Every step of a slot
    /// stepped on condition passes a count, zero when nothing is pending, so Adam always takes
    /// the same (device) branch: its rounding does not depend on when the checks happen.
    fn pass_pending_undone(&mut self, stepped: &[bool], device: Device) {
        if !self.optimizer.counts_steps() {
            return;
        }
        let zero = Tensor::zeros([], (Kind::Int64, device));
        let sum = |flags: Vec<Tensor>| {
            if flags.is_empty() {
                zero.shallow_clone()
            } else {
                Tensor::stack(&flags, 0).sum(Kind::Int64)
            }
        };
        // Usually every pending step stepped every parameter that steps now: one sum.
        let all = sum(self
            .unsettled
            .iter()
            .map(|u| u.undo.to_kind(Kind::Int64))
            .collect());
        let per_param = stepped
            .iter()
            .enumerate()
            .map(|(i, &now)| {
                if !now {
                    return None;
                }
                if self.unsettled.iter().all(|u| u.stepped[i]) {
                    return Some(all.shallow_clone());
                }
                Some(sum(self
                    .unsettled
                    .iter()
                    .filter(|u| u.stepped[i])
                    .map(|u| u.undo.to_kind(Kind::Int64))
                    .collect()))
            })
            .collect();
        self.optimizer.pending_undone(per_param);
    }

    /// The tensors an optimizer step may change: the parameters that have a gradient
    /// (`stepped`) and the optimizer's floating-point buffers.
    fn changeable(&self, stepped: &[bool]) -> Vec<Tensor> {
        let mut out: Vec<Tensor> = self
            .params
            .iter()
            .zip(stepped)
            .filter(|(_, &s)| s)
            .map(|(p, _)| p.tensor.shallow_clone())
            .collect();
        out.extend(
            self.optimizer
                .state()
                .into_iter()
                .map(|(_, t)| t)
                .filter(|t| t.is_floating_point()),
        );
        out
    }

    /// An optimizer step at `lr` that the device undoes where `undo` (0-dim Bool) holds: every
    /// tensor it may change takes its old value back (`where(undo, old, new)`). The step counts
    /// are settled once the flag is read (the returned verdict).
    fn conditional_step(&mut self, lr: f64, undo: &Tensor) -> Result<Verdict> {
        let stepped: Vec<bool> = self
            .params
            .iter()
            .map(|p| p.tensor.grad().defined())
            .collect();
        tch::no_grad(|| self.pass_pending_undone(&stepped, undo.device()));
        let before: Vec<Tensor> = tch::no_grad(|| {
            self.changeable(&stepped)
                .iter()
                .map(|t| t.detach().copy())
                .collect()
        });
        self.optimizer
            .step(lr)
            .with_context(|| format!("the {} optimizer step", self.name))?;
        let after = self.changeable(&stepped);
        if after.len() != before.len() {
            bail!(
                "the {} optimizer changed its number of buffers in a step ({} → {})",
                self.name,
                before.len(),
                after.len()
            );
        }
        tch::no_grad(|| -> Result<()> {
            for (live, old) in after.iter().zip(&before) {
                let kept = old.f_where_self(undo, live)?;
                live.shallow_clone().f_copy_(&kept)?;
            }
            Ok(())
        })
        .with_context(|| format!("undoing a left-out {} step", self.name))?;
        let verdict = Verdict::default();
        self.unsettled.push(Unsettled {
            verdict: Arc::clone(&verdict),
            stepped,
            undo: undo.shallow_clone(),
        });
        Ok(verdict)
    }
}

/// Rescales the gradients of `params` so that their global L2 norm is at most `max_norm`
/// (`torch.nn.utils.clip_grad_norm_`, on the device: every gradient is multiplied by
/// `min(1, max_norm / (norm + 1e-6))`); returns the norm before clipping (0-dim, on the
/// device; `None` without gradients).
pub fn clip_grad_norm(params: &[Param], max_norm: f64) -> Result<Option<Tensor>> {
    tch::no_grad(|| {
        let grads: Vec<(&str, Tensor)> = params
            .iter()
            .map(|p| (p.name.as_str(), p.tensor.grad()))
            .filter(|(_, g)| g.defined())
            .collect();
        if grads.is_empty() {
            return Ok(None);
        }
        let norms: Vec<Tensor> = grads
            .iter()
            .map(|(_, g)| g.to_kind(Kind::Float).norm())
            .collect();
        let total = Tensor::stack(&norms, 0).norm();
        let coefficient = ((&total + 1e-6).reciprocal() * max_norm).clamp_max(1.0);
        for (name, g) in &grads {
            let mut g = g.shallow_clone();
            let _ = g
                .f_mul_(&coefficient.to_kind(g.kind()))
                .with_context(|| format!("scaling the gradient of `{name}`"))?;
        }
        Ok(Some(total))
    })
}

/// One optimizer step whose flags are not read yet.
struct Unchecked {
    slot: &'static str,
    /// (epoch, step within it).
    position: (usize, usize),
    /// Whether the loss was not finite (0-dim Bool; with several processes, on any of them).
    bad: Tensor,
    /// This process's loss, detached (for the message).
    loss: Tensor,
    /// Whether the device undid the step (0-dim Bool), for a step applied on condition, with
    /// the verdict to pass on to its slot.
    undone: Option<(Tensor, Verdict)>,
}

/// The step path of a run: its clipping setting and a count of the steps of every slot.
pub struct StepPath {
    /// Clip the global gradient norm of each step to this (0: off).
    pub gradient_clip_val: f64,
    counts: BTreeMap<&'static str, u64>,
    /// Gradient all-reduce since [`StepPath::take_all_reduce`] was last called.
    all_reduce: AllReduceStats,
    /// What a NaN or infinite loss does.
    pub nan_policy: NanPolicy,
    /// (epoch, step within it) of the current step, for messages (the engine sets it).
    pub position: (usize, usize),
    /// Steps not applied because their loss was not finite (`nan_policy = skip_step`) since
    /// [`StepPath::take_skipped_nonfinite`], as far as checked.
    skipped_nonfinite: u64,
    /// With several processes: the stop signal every process agreed on at a check (0: none),
    /// see [`StepPath::stop_signal`].
    agreed_signal: i32,
    /// The steps since the last check.
    unchecked: Vec<Unchecked>,
    /// With several processes: the stop-signal flags of the last gradient all-reduce, read at
    /// the next check.
    signal_flags: Option<Tensor>,
}

/// What became of one optimizer step, as far as the host knows without reading the device.
#[derive(Debug)]
pub struct StepOutcome {
    /// With `nan_policy = skip_step`: whether the step's loss counts (0-dim Bool; false: not
    /// finite, the step left out). `None`: it counts (a non-finite loss stops the run at the
    /// next check).
    counted: Option<Tensor>,
}

impl StepOutcome {
    /// Whether the step's loss counts in the epoch's sums and metrics (0-dim Bool on the
    /// device), `None` when it does whatever happened.
    pub fn counted(&self) -> Option<&Tensor> {
        self.counted.as_ref()
    }

    /// `value` where the step counts, else zeros (a NaN left out too).
    pub fn keep(&self, value: &Tensor) -> Tensor {
        match &self.counted {
            None => value.shallow_clone(),
            Some(counted) => value.where_self(counted, &value.zeros_like()),
        }
    }

    /// 1 when the step was left out, else 0 (Int64, 0-dim on the device); `None` when it
    /// counts whatever happened.
    pub fn left_out(&self) -> Option<Tensor> {
        self.counted
            .as_ref()
            .map(|c| c.logical_not().to_kind(Kind::Int64))
    }
}

/// What the gradient all-reduce of a distributed run cost.
#[derive(Clone, Copy, Debug, Default)]
pub struct AllReduceStats {
    /// Bytes of gradients reduced.
    pub bytes: u64,
    /// Seconds spent in the all-reduce (queueing it: on a GPU it runs on asynchronously).
    pub seconds: f64,
    /// Optimizer steps that reduced.
    pub steps: u64,
}

/// The signals a process may have received, in the order of the flags that carry them through
/// the gradient all-reduce; the agreed signal is the largest one any process received.
const STOP_SIGNALS: [i32; 2] = [libc::SIGINT, libc::SIGTERM];

impl StepPath {
    /// A path clipping at `gradient_clip_val` (0: off).
    pub fn new(gradient_clip_val: f64) -> StepPath {
        StepPath {
            gradient_clip_val,
            counts: BTreeMap::new(),
            all_reduce: AllReduceStats::default(),
            nan_policy: NanPolicy::Stop,
            position: (0, 0),
            skipped_nonfinite: 0,
            agreed_signal: 0,
            unchecked: Vec::new(),
            signal_flags: None,
        }
    }

    /// Steps skipped for a non-finite loss since the last call (and resets the count); call
    /// after [`StepPath::check`].
    pub fn take_skipped_nonfinite(&mut self) -> u64 {
        std::mem::take(&mut self.skipped_nonfinite)
    }

    /// The gradient all-reduce's volume and time since the last call (and resets them).
    pub fn take_all_reduce(&mut self) -> AllReduceStats {
        std::mem::take(&mut self.all_reduce)
    }

    /// Optimizer steps since the last check.
    pub fn unchecked(&self) -> usize {
        self.unchecked.len()
    }

    /// The signal (SIGTERM, SIGINT) that asks the run to stop after the current step, if any.
    /// With several processes it is the one they agreed on at the last check (the largest
    /// signal number any of them had received by the step checked), so every process stops at
    /// the same step with the same signal, with no collective of its own.
    pub fn stop_signal(&self) -> Option<i32> {
        if crate::world::current().is_distributed() {
            (self.agreed_signal != 0).then_some(self.agreed_signal)
        } else {
            super::signals::requested()
        }
    }

    /// One optimizer step of `slot` on `loss` with learning rate `lr`. Nothing is read from
    /// the device (see the module's documentation).
    pub fn step(
        &mut self,
        slot: &mut OptimizerSlot,
        loss: &Tensor,
        lr: f64,
    ) -> Result<StepOutcome> {
        // A plugin's loss that is not a differentiable scalar is an error, not a libtorch abort.
        if loss.dim() != 0 || !loss.requires_grad() {
            bail!(
                "the {} loss must be a scalar tensor that requires gradients; got shape {:?}{}",
                slot.name,
                loss.size(),
                if loss.requires_grad() {
                    ""
                } else {
                    " without gradients (detached?)"
                }
            );
        }
        *self.counts.entry(slot.name).or_default() += 1;
        slot.settle();
        let world = crate::world::current();
        // The non-finite check, on the device.
        let nonfinite = tch::no_grad(|| loss.detach().isfinite().logical_not());
        slot.optimizer.zero_grad();
        let scaled = match &mut slot.scaler {
            Some(scaler) => scaler.scale_loss(loss),
            None => loss.shallow_clone(),
        };
        scaled
            .f_backward()
            .map_err(|e| {
                world.diagnose(
                    &format!("the backward pass of the {} loss", slot.name),
                    e.into(),
                )
            })
            .with_context(|| format!("backward pass of the {} loss", slot.name))?;
        // Every process runs the backward pass (collectives inside it match), then one
        // all-reduce averages the gradients and carries the non-finite flag and the stop
        // signals, so every process decides alike.
        let bad = if world.is_distributed() {
            self.all_reduce_gradients(slot, &nonfinite)?
        } else {
            nonfinite
        };
        let overflow = match &mut slot.scaler {
            Some(scaler) => Some(scaler.unscale(slot.name, &slot.params)?),
            None => None,
        };
        if slot.clipped && self.gradient_clip_val > 0.0 {
            clip_grad_norm(&slot.params, self.gradient_clip_val)
                .with_context(|| format!("clipping the {} gradients", slot.name))?;
        }
        let skip_bad = self.nan_policy == NanPolicy::SkipStep;
        // With `stop`, a non-finite loss ends the run at the next check, whatever its update
        // did; with `skip_step` the step is undone on the device, as an overflow is.
        let undo = match (skip_bad, overflow) {
            (true, Some(overflow)) => Some(bad.logical_or(&overflow)),
            (true, None) => Some(bad.shallow_clone()),
            (false, overflow) => overflow,
        };
        let undone = match undo {
            Some(undo) => {
                let verdict = slot.conditional_step(lr, &undo)?;
                Some((undo, verdict))
            }
            None => {
                slot.optimizer
                    .step(lr)
                    .with_context(|| format!("the {} optimizer step", slot.name))?;
                None
            }
        };
        let counted = skip_bad.then(|| bad.logical_not());
        self.unchecked.push(Unchecked {
            slot: slot.name,
            position: self.position,
            bad,
            loss: loss.detach(),
            undone,
        });
        Ok(StepOutcome { counted })
    }

    /// Reads the flags of every step since the last check in one read of the device, together
    /// with `extra` (the progress bar's loss, returned), and acts on them: the steps left out
    /// are counted and settled, with several processes the stop signal they agreed on is
    /// taken, and with `nan_policy = stop` a non-finite loss is an error naming the first
    /// step that had one. The engine calls it every few steps, before every checkpoint and at
    /// the end of every training pass, at the same steps on every process.
    pub fn check(&mut self, extra: Option<&Tensor>) -> Result<Option<f64>> {
        let entries = std::mem::take(&mut self.unchecked);
        let signals = self.signal_flags.take();
        if entries.is_empty() && signals.is_none() && extra.is_none() {
            return Ok(None);
        }
        let device = entries
            .first()
            .map(|e| e.bad.device())
            .or(signals.as_ref().map(Tensor::device))
            .or(extra.map(Tensor::device))
            .unwrap_or(Device::Cpu);
        let one = |t: &Tensor| {
            t.detach()
                .to_kind(Kind::Double)
                .to_device(device)
                .reshape([1])
        };
        let values: Vec<f64> = tch::no_grad(|| -> Result<Vec<f64>> {
            let mut parts = Vec::with_capacity(entries.len() * 3 + 3);
            for e in &entries {
                parts.push(one(&e.bad));
                parts.push(one(&e.loss));
                if let Some((undone, _)) = &e.undone {
                    parts.push(one(undone));
                }
            }
            if let Some(signals) = &signals {
                parts.push(signals.to_kind(Kind::Double).reshape([-1]));
            }
            if let Some(extra) = extra {
                parts.push(one(extra));
            }
            host_reads::note();
            Vec::<f64>::try_from(&Tensor::cat(&parts, 0).to_device(Device::Cpu))
                .context("reading the training steps' flags")
        })?;
        let mut values = values.into_iter();
        let mut first_bad = None;
        for e in entries {
            let bad = values.next().unwrap_or(0.0) > 0.0;
            let loss = values.next().unwrap_or(f64::NAN);
            if let Some((_, verdict)) = &e.undone {
                let undone = values.next().unwrap_or(0.0) > 0.0;
                verdict.store(if undone { UNDONE } else { APPLIED }, Ordering::SeqCst);
            }
            if bad {
                match self.nan_policy {
                    NanPolicy::SkipStep => self.skipped_nonfinite += 1,
                    NanPolicy::Stop => {
                        first_bad.get_or_insert((e.slot, e.position, loss));
                    }
                }
            }
        }
        if signals.is_some() {
            let flags: Vec<f64> = values.by_ref().take(STOP_SIGNALS.len()).collect();
            let signal = STOP_SIGNALS
                .iter()
                .zip(&flags)
                .filter(|(_, &f)| f > 0.0)
                .map(|(&s, _)| s)
                .max()
                .unwrap_or(0);
            self.agreed_signal = self.agreed_signal.max(signal);
        }
        let extra = extra.and_then(|_| values.next());
        if let Some((slot, (epoch, step), loss)) = first_bad {
            let world = crate::world::current();
            bail!(
                "the {slot} loss is {} at epoch {}, step {}{}: the run stops (the last checkpoint \
                 is kept as it was). A lower learning rate, gradient clipping \
                 (--gradient_clip_val) or --nan_policy=skip_step may help",
                if loss.is_finite() {
                    "not finite on some process".to_string()
                } else {
                    format!("{loss}")
                },
                epoch + 1,
                step + 1,
                if world.is_distributed() {
                    format!(" (rank {} of {})", world.rank(), world.size())
                } else {
                    String::new()
                }
            );
        }
        Ok(extra)
    }

    /// Data parallelism: averages every process's gradients of `slot` (bucketed all-reduce), so
    /// the update sees those of the global batch and every process stays equal. The buckets
    /// are laid out from the slot's parameter list, the same on every process: a gradient this
    /// process lacks (a parameter its step did not use) travels as zeros, and a flag per
    /// parameter says which processes had one. When this process lacks one, it reads the
    /// flags (the one read a step may make): the parameter gets the average as its gradient
    /// when any process had one (as DDP), and stays without gradient (skipped by the
    /// optimizer) when none had. The flags also carry `nonfinite` (this process's loss) and
    /// the stop signals this process has received; returns whether the loss was not finite on
    /// any process (0-dim Bool on the device) and keeps the signals' flags for the next check.
    fn all_reduce_gradients(&mut self, slot: &OptimizerSlot, nonfinite: &Tensor) -> Result<Tensor> {
        let world = crate::world::current();
        let device = nonfinite.device();
        let grads: Vec<Tensor> = slot.params.iter().map(|p| p.tensor.grad()).collect();
        let mut flags: Vec<f32> = grads.iter().map(|g| g.defined() as u8 as f32).collect();
        let received = super::signals::requested().unwrap_or(0);
        flags.extend(STOP_SIGNALS.iter().map(|&s| (received == s) as u8 as f32));
        let flags = tch::no_grad(|| {
            Tensor::cat(
                &[
                    crate::loader::upload(Tensor::from_slice(&flags), device),
                    nonfinite.to_kind(Kind::Float).reshape([1]),
                ],
                0,
            )
        });
        let mut list: Vec<Tensor> = grads
            .iter()
            .zip(&slot.params)
            .map(|(g, p)| {
                if g.defined() {
                    g.shallow_clone()
                } else {
                    tch::no_grad(|| p.tensor.zeros_like())
                }
            })
            .collect();
        list.push(flags.shallow_clone());
        let started = std::time::Instant::now();
        world
            .all_reduce_(&list, crate::world::Reduce::Average)
            .with_context(|| format!("averaging the {} gradients between processes", slot.name))?;
        self.all_reduce.seconds += started.elapsed().as_secs_f64();
        self.all_reduce.bytes += list
            .iter()
            .map(|g| (g.numel() * g.kind().elt_size_in_bytes()) as u64)
            .sum::<u64>();
        self.all_reduce.steps += 1;
        let n = slot.params.len();
        // In a world of one, a parameter without a gradient here had none anywhere.
        if world.size() > 1 && grads.iter().any(|g| !g.defined()) {
            host_reads::note();
            let had: Vec<f32> =
                Vec::<f32>::try_from(&flags.narrow(0, 0, n as i64).to_device(Device::Cpu))
                    .with_context(|| {
                        format!("reading which processes had {} gradients", slot.name)
                    })?;
            for ((p, g), (reduced, &flag)) in
                slot.params.iter().zip(&grads).zip(list.iter().zip(&had))
            {
                if !g.defined() && flag > 0.0 {
                    set_grad(p, reduced)
                        .with_context(|| format!("the {} gradient of `{}`", slot.name, p.name))?;
                }
            }
        }
        self.signal_flags = Some(flags.narrow(0, n as i64, STOP_SIGNALS.len() as i64));
        Ok(tch::no_grad(|| {
            flags
                .narrow(0, (n + STOP_SIGNALS.len()) as i64, 1)
                .reshape([])
                .gt(0.0)
        }))
    }

    /// How many steps went through the path, by slot name.
    pub fn counts(&self) -> &BTreeMap<&'static str, u64> {
        &self.counts
    }
}

/// Gives `param`, whose gradient is undefined, the gradient `value`. tch cannot assign a
/// gradient, so a backward pass of `sum(param · 0)` creates a zero one first (a one-node graph).
fn set_grad(param: &Param, value: &Tensor) -> Result<()> {
    tch::with_grad(|| (&param.tensor * 0.0).sum(param.tensor.kind()))
        .f_backward()
        .context("creating the gradient")?;
    let mut grad = param.tensor.grad();
    tch::no_grad(|| grad.f_copy_(value)).context("setting the gradient")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::prefixed;
    use crate::optim::OptimizerKind;
    use ssl_plugin_api::tch::Device;

    #[test]
    fn the_loss_scaler_state_survives_a_checkpoint_and_grows_and_backs_off_on_the_device() {
        let mut scaler = LossScaler::default();
        scaler
            .load_state(&HashMap::from([
                ("scale".to_string(), Tensor::from(1024.0f64)),
                ("good_steps".to_string(), Tensor::from(1999i64)),
            ]))
            .unwrap();
        let stored: HashMap<String, Tensor> = scaler.state().into_iter().collect();
        let mut resumed = LossScaler::default();
        resumed.load_state(&stored).unwrap();
        let read = |s: &LossScaler| (s.scale.double_value(&[]), s.good_steps.int64_value(&[]));
        assert_eq!(read(&resumed), (1024.0, 1999));
        // A checkpoint without it (a run in 32-bit floats) leaves a fresh scaler.
        let mut fresh = LossScaler::default();
        fresh.load_state(&HashMap::new()).unwrap();
        assert_eq!(read(&fresh), (65536.0, 0));
        // The 2000th good step doubles the scale; an overflow halves it and resets the count.
        let overflow = resumed.unscale("test", &[]).unwrap();
        assert!(!bool::try_from(&overflow).unwrap());
        assert_eq!(read(&resumed), (2048.0, 0));
        resumed.update(&Tensor::from(true));
        assert_eq!(read(&resumed), (1024.0, 0));
        resumed.update(&Tensor::from(false));
        assert_eq!(read(&resumed), (1024.0, 1));
        let _ = prefixed("loss_scaler.", resumed.state());
        let bad = HashMap::from([
            ("scale".to_string(), Tensor::from(0.0f64)),
            ("good_steps".to_string(), Tensor::from(3i64)),
        ]);
        assert!(fresh
            .load_state(&bad)
            .unwrap_err()
            .to_string()
            .contains("positive scale"));
    }

    fn param(values: &[f32]) -> Param {
        let t = Tensor::from_slice(values)
            .to_device(Device::Cpu)
            .set_requires_grad(true);
        Param::new("w", &t)
    }

    #[test]
    fn clipping_matches_torchs_clip_grad_norm() {
        // Gradients (3, 4) and (12): global norm 13; clipped to 6.5 every gradient halves
        // (up to torch's 1e-6 in the coefficient).
        let a = param(&[0.0, 0.0]);
        let b = param(&[0.0]);
        let loss = (&a.tensor * Tensor::from_slice(&[3.0f32, 4.0])).sum(Kind::Float)
            + (&b.tensor * 12.0).sum(Kind::Float);
        loss.backward();
        let params = [a, b];
        let norm = clip_grad_norm(&params, 6.5)
            .unwrap()
            .unwrap()
            .double_value(&[]);
        assert!((norm - 13.0).abs() < 1e-5, "{norm}");
        let g: Vec<f32> = Vec::try_from(&params[0].tensor.grad()).unwrap();
        let coefficient = 6.5 / (13.0 + 1e-6);
        assert!((g[0] as f64 - 3.0 * coefficient).abs() < 1e-6, "{g:?}");
        assert!((g[1] as f64 - 4.0 * coefficient).abs() < 1e-6, "{g:?}");
        // Under the limit: unchanged.
        let norm = clip_grad_norm(&params, 100.0)
            .unwrap()
            .unwrap()
            .double_value(&[]);
        assert!((norm - 6.5).abs() < 1e-4, "{norm}");
        let g: Vec<f32> = Vec::try_from(&params[1].tensor.grad()).unwrap();
        assert!((g[0] as f64 - 12.0 * coefficient).abs() < 1e-5, "{g:?}");
    }

    #[test]
    fn a_clipped_step_moves_by_at_most_the_clip_value_with_sgd() {
        let config = OptimizerConfig {
            kind: OptimizerKind::Sgd,
            momentum: 0.0,
            weight_decay: 0.0,
            ..Default::default()
        };
        for (clip, moved) in [(0.0, 10.0), (1.0, 1.0)] {
            let p = param(&[0.0]);
            let mut slot = OptimizerSlot::new("test", &config, vec![p.clone()], false);
            let mut path = StepPath::new(clip);
            let loss = (&p.tensor * 10.0).sum(Kind::Float);
            assert!(path
                .step(&mut slot, &loss, 1.0)
                .unwrap()
                .counted()
                .is_none());
            let v = p.tensor.double_value(&[0]);
            assert!((v + moved).abs() < 1e-5, "clip {clip}: moved to {v}");
            assert_eq!(path.counts()["test"], 1);
        }
    }

    #[test]
    fn a_loss_that_is_not_a_differentiable_scalar_is_an_error() {
        let config = OptimizerConfig::default();
        let p = param(&[1.0, 2.0]);
        let mut slot = OptimizerSlot::new("ssl", &config, vec![p.clone()], false);
        let mut path = StepPath::new(0.0);
        let vector = &p.tensor * 2.0;
        let e = path.step(&mut slot, &vector, 1.0).unwrap_err().to_string();
        assert!(
            e.contains("ssl loss must be a scalar") && e.contains("[2]"),
            "{e}"
        );
        let detached = (&p.tensor * 2.0).sum(Kind::Float).detach();
        let e = path
            .step(&mut slot, &detached, 1.0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("without gradients"), "{e}");
        assert!(path.counts().is_empty());
    }

    /// A slot over one parameter `[1, 2]` with `optimizer`, momentum 0.9, no decay.
    fn slot_of(kind: OptimizerKind, scaled: bool) -> (Param, OptimizerSlot) {
        let config = OptimizerConfig {
            kind,
            weight_decay: 0.0,
            ..Default::default()
        };
        let p = param(&[1.0, 2.0]);
        let slot = OptimizerSlot::new("ssl", &config, vec![p.clone()], scaled);
        (p, slot)
    }

    /// `sum(w · factor)` (gradient `factor`), or NaN · w.
    fn loss_of(p: &Param, factor: f64) -> Tensor {
        (&p.tensor * factor).sum(Kind::Float)
    }

    fn values(t: &Tensor) -> Vec<f32> {
        Vec::try_from(&t.detach()).unwrap()
    }

    #[test]
    fn steps_read_nothing_from_the_device_and_a_check_reads_once() {
        for (policy, clip, scaled) in [
            (NanPolicy::Stop, 0.0, false),
            (NanPolicy::Stop, 1.0, false),
            (NanPolicy::Stop, 0.0, true),
            (NanPolicy::SkipStep, 1.0, true),
        ] {
            let (p, mut slot) = slot_of(OptimizerKind::Adam, scaled);
            let mut path = StepPath::new(clip);
            path.nan_policy = policy;
            let before = host_reads::count();
            for _ in 0..5 {
                path.step(&mut slot, &loss_of(&p, 3.0), 0.1).unwrap();
            }
            assert_eq!(
                host_reads::count() - before,
                0,
                "{policy:?} clip {clip} scaled {scaled}"
            );
            assert_eq!(path.unchecked(), 5);
            let loss = loss_of(&p, 1.0).detach();
            let read = path.check(Some(&loss)).unwrap().unwrap();
            assert_eq!(host_reads::count() - before, 1);
            assert!((read - loss.double_value(&[])).abs() < 1e-6);
            assert_eq!(path.unchecked(), 0);
        }
    }

    #[test]
    fn a_nonfinite_loss_with_stop_fails_at_the_check_naming_its_step() {
        let (p, mut slot) = slot_of(OptimizerKind::Sgd, false);
        let mut path = StepPath::new(0.0);
        path.position = (1, 4);
        path.step(&mut slot, &loss_of(&p, 1.0), 0.1).unwrap();
        path.position = (1, 5);
        path.step(&mut slot, &loss_of(&p, f64::NAN), 0.1).unwrap();
        path.position = (1, 6);
        path.step(&mut slot, &loss_of(&p, f64::NAN), 0.1).unwrap();
        let e = path.check(None).unwrap_err().to_string();
        assert!(e.contains("the ssl loss is NaN at epoch 2, step 6"), "{e}");
        assert!(e.contains("last checkpoint is kept"), "{e}");
    }

    /// The state of `slot` by name, as f64 values.
    fn state_of(slot: &OptimizerSlot) -> BTreeMap<String, Vec<f64>> {
        slot.state()
            .into_iter()
            .map(|(k, t)| {
                let v = Vec::<f64>::try_from(t.to_kind(Kind::Double).reshape([-1])).unwrap();
                (k, v)
            })
            .collect()
    }

    #[test]
    fn a_skipped_step_leaves_parameters_buffers_and_step_counts_as_they_were() {
        for kind in [OptimizerKind::Adam, OptimizerKind::Sgd, OptimizerKind::Lars] {
            // Steps 3, NaN, 5 with skip_step against steps 3, 5 alone.
            let (p, mut slot) = slot_of(kind, false);
            let mut path = StepPath::new(0.0);
            path.nan_policy = NanPolicy::SkipStep;
            let (q, mut straight) = slot_of(kind, false);
            let mut plain = StepPath::new(0.0);
            path.step(&mut slot, &loss_of(&p, 3.0), 0.1).unwrap();
            plain.step(&mut straight, &loss_of(&q, 3.0), 0.1).unwrap();
            let outcome = path.step(&mut slot, &loss_of(&p, f64::NAN), 0.1).unwrap();
            let counted = outcome.counted().unwrap();
            assert!(!bool::try_from(counted).unwrap());
            let kept = outcome.keep(&Tensor::from(f64::NAN));
            assert_eq!(kept.double_value(&[]), 0.0);
            assert_eq!(outcome.left_out().unwrap().int64_value(&[]), 1);
            assert_eq!(values(&p.tensor), values(&q.tensor), "{kind:?}");
            path.step(&mut slot, &loss_of(&p, 5.0), 0.1).unwrap();
            plain.step(&mut straight, &loss_of(&q, 5.0), 0.1).unwrap();
            path.check(None).unwrap();
            plain.check(None).unwrap();
            assert_eq!(path.take_skipped_nonfinite(), 1);
            assert_eq!(values(&p.tensor), values(&q.tensor), "{kind:?}");
            // The count of the undone step is taken back in the checkpoint at once and in the
            // optimizer at its next step.
            assert_eq!(state_of(&slot), state_of(&straight), "{kind:?}");
            path.step(&mut slot, &loss_of(&p, 2.0), 0.1).unwrap();
            plain.step(&mut straight, &loss_of(&q, 2.0), 0.1).unwrap();
            path.check(None).unwrap();
            assert_eq!(state_of(&slot), state_of(&straight), "{kind:?}");
            assert_eq!(values(&p.tensor), values(&q.tensor), "{kind:?}");
        }
    }

    #[test]
    fn an_overflowing_scaled_step_is_undone_and_the_scale_halves() {
        let (p, mut slot) = slot_of(OptimizerKind::Sgd, true);
        let mut path = StepPath::new(0.0);
        // Gradient 1e36 · 65536 overflows f32; the loss itself is finite and counts.
        let outcome = path.step(&mut slot, &loss_of(&p, 1e36), 0.1).unwrap();
        assert!(outcome.counted().is_none());
        assert_eq!(values(&p.tensor), [1.0, 2.0]);
        path.check(None).unwrap();
        let scale = slot.scaler.as_ref().unwrap().scale.double_value(&[]);
        assert_eq!(scale, 32768.0);
        assert_eq!(state_of(&slot)["optimizer.w.step"], [0.0]);
        // A good step: unscaled exactly, applied (SGD, first step: p − lr · g).
        path.step(&mut slot, &loss_of(&p, 2.0), 0.1).unwrap();
        path.check(None).unwrap();
        assert_eq!(values(&p.tensor), [0.8, 1.8]);
        assert_eq!(state_of(&slot)["optimizer.w.step"], [1.0]);
    }
}
