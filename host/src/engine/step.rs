//! The one step path. Every optimizer step of every task (the SSL loss, the online linear
//! head, a classifier) goes through [`StepPath::step`]:
//!
//! zero gradients → (scaled) backward → *gradient all-reduce point* → unscale and finite
//! check (mixed precision) → optional gradient-norm clipping (`gradient_clip_val`) → optimizer
//! step.
//!
//! The algorithm's after-step hook (BYOL's moving average) runs once per training step, after
//! all optimizer steps of that training step (the engine calls it; the online linear head
//! steps before it, as the original's Lightning callbacks do).
//!
//! An [`OptimizerSlot`] owns its optimizer: nothing outside this module can step one, so no
//! task can bypass the path.

use crate::config::NanPolicy;
use crate::optim::{self, Optimizer, OptimizerConfig, Param};
use anyhow::{bail, Context, Result};
use ssl_plugin_api::tch::{self, Kind, Tensor};
use std::collections::{BTreeMap, HashMap};

/// Dynamic loss scaling for mixed precision (as torch.cuda.amp.GradScaler): scale the loss,
/// skip steps whose gradients overflowed and halve the scale, double it after 2000 good steps.
pub struct LossScaler {
    scale: f64,
    good_steps: u32,
}

impl Default for LossScaler {
    fn default() -> Self {
        LossScaler {
            scale: 65536.0,
            good_steps: 0,
        }
    }
}

impl LossScaler {
    /// Its state for the checkpoint (`scale`, `good_steps`), so a resumed run scales as before.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        vec![
            ("scale".into(), Tensor::from(self.scale)),
            ("good_steps".into(), Tensor::from(self.good_steps as i64)),
        ]
    }

    /// Restores [`LossScaler::state`] (names without prefix); a checkpoint of a run without
    /// mixed precision has none, and the scaler then starts afresh.
    pub fn load_state(&mut self, stored: &HashMap<String, Tensor>) -> Result<()> {
        if let (Some(scale), Some(good)) = (stored.get("scale"), stored.get("good_steps")) {
            self.scale = scale.f_double_value(&[])?;
            self.good_steps = u32::try_from(good.f_int64_value(&[])?)
                .context("loss_scaler.good_steps in the checkpoint")?;
        }
        Ok(())
    }

    /// Unscales gradients in place; false when any is not finite (skip the step). An error
    /// (a gradient that cannot be divided or read) names the slot.
    fn unscale(&mut self, slot: &str, params: &[Param]) -> Result<bool> {
        // One host synchronisation per step (the skip decision), as torch's GradScaler: the
        // per-gradient checks stay on the device until then.
        let finite = tch::no_grad(|| -> Result<bool> {
            let mut checks = Vec::new();
            for p in params {
                let mut g = p.tensor.grad();
                if g.defined() {
                    let _ = g.f_div_scalar_(self.scale).with_context(|| {
                        format!("unscaling the {slot} gradient of `{}`", p.name)
                    })?;
                    checks.push(g.isfinite().all());
                }
            }
            if checks.is_empty() {
                return Ok(true);
            }
            bool::try_from(Tensor::stack(&checks, 0).all())
                .with_context(|| format!("reading whether the {slot} gradients are finite"))
        })?;
        if finite {
            self.good_steps += 1;
            if self.good_steps >= 2000 {
                self.scale *= 2.0;
                self.good_steps = 0;
            }
        } else {
            self.scale /= 2.0;
            self.good_steps = 0;
        }
        Ok(finite)
    }
}

/// An optimizer, the parameters it updates and, under mixed precision, its loss scaler.
pub struct OptimizerSlot {
    name: &'static str,
    optimizer: Box<dyn Optimizer>,
    params: Vec<Param>,
    scaler: Option<LossScaler>,
    clipped: bool,
}

impl OptimizerSlot {
    /// A slot called `name` (`ssl`, `linear_head`, `classifier`: what step counts are kept
    /// under) stepping `params` with the optimizer of `config`; with `mixed_precision`, its
    /// loss is scaled.
    pub fn new(
        name: &'static str,
        config: &OptimizerConfig,
        params: Vec<Param>,
        mixed_precision: bool,
    ) -> OptimizerSlot {
        // Shallow clones (same tensors), every hint carried.
        let shallow = params.clone();
        OptimizerSlot {
            name,
            optimizer: optim::build(config, shallow),
            params,
            scaler: mixed_precision.then(LossScaler::default),
            clipped: true,
        }
    }

    /// The same slot, never clipped (the online linear head's optimizer, as Lightning's
    /// `gradient_clip_val` leaves a callback's own optimizer alone).
    pub fn unclipped(mut self) -> OptimizerSlot {
        self.clipped = false;
        self
    }

    /// Whether its loss is scaled (mixed precision).
    pub fn mixed_precision(&self) -> bool {
        self.scaler.is_some()
    }

    /// The optimizer's state for the checkpoint.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.optimizer.state()
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
        self.optimizer.load_state(state)
    }

    /// Restores the loss scaler's state (no-op without one).
    pub fn load_scaler_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        match &mut self.scaler {
            Some(scaler) => scaler.load_state(state),
            None => Ok(()),
        }
    }
}

/// Rescales the gradients of `params` so that their global L2 norm is at most `max_norm`
/// (`torch.nn.utils.clip_grad_norm_`); returns the norm before clipping.
pub fn clip_grad_norm(params: &[Param], max_norm: f64) -> Result<f64> {
    tch::no_grad(|| {
        let grads: Vec<(&str, Tensor)> = params
            .iter()
            .map(|p| (p.name.as_str(), p.tensor.grad()))
            .filter(|(_, g)| g.defined())
            .collect();
        if grads.is_empty() {
            return Ok(0.0);
        }
        let norms: Vec<Tensor> = grads
            .iter()
            .map(|(_, g)| g.to_kind(Kind::Float).norm())
            .collect();
        let total = Tensor::stack(&norms, 0)
            .norm()
            .f_double_value(&[])
            .context("reading the gradients' global norm")?;
        let coefficient = (max_norm / (total + 1e-6)).min(1.0);
        if coefficient < 1.0 {
            for (name, g) in &grads {
                let mut g = g.shallow_clone();
                let _ = g
                    .f_mul_scalar_(coefficient)
                    .with_context(|| format!("scaling the gradient of `{name}`"))?;
            }
        }
        Ok(total)
    })
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
    /// [`StepPath::take_skipped_nonfinite`].
    skipped_nonfinite: u64,
    /// With several processes: the stop signal every process agreed on at a gradient
    /// all-reduce (0: none), see [`StepPath::stop_signal`].
    agreed_signal: i32,
}

/// What became of one optimizer step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepOutcome {
    /// The optimizer updated the parameters.
    Applied,
    /// Mixed precision: the gradients overflowed; the loss scale was halved and nothing
    /// updated (the loss itself was finite and counts in the epoch's metrics).
    Overflowed,
    /// The loss was not finite on some process and `nan_policy = skip_step` left the step out:
    /// neither the update nor the loss count anywhere.
    SkippedNonFinite,
}

impl StepOutcome {
    /// Whether the step's loss counts in the epoch's sums and metrics.
    pub fn counts(self) -> bool {
        self != StepOutcome::SkippedNonFinite
    }
}

/// What the gradient all-reduce of a distributed run cost.
#[derive(Clone, Copy, Debug, Default)]
pub struct AllReduceStats {
    /// Bytes of gradients reduced.
    pub bytes: u64,
    /// Seconds spent in the all-reduce.
    pub seconds: f64,
    /// Optimizer steps that reduced.
    pub steps: u64,
}

/// The signals a process may have received, in the order of the flags that carry them through
/// the gradient all-reduce; the agreed signal is the largest one any process received.
const STOP_SIGNALS: [i32; 2] = [libc::SIGINT, libc::SIGTERM];

/// What the processes agreed on at one gradient all-reduce.
struct Agreed {
    /// Some process's loss was not finite.
    nonfinite: bool,
    /// The stop signal (0: none).
    signal: i32,
}

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
        }
    }

    /// Steps skipped for a non-finite loss since the last call (and resets the count).
    pub fn take_skipped_nonfinite(&mut self) -> u64 {
        std::mem::take(&mut self.skipped_nonfinite)
    }

    /// The gradient all-reduce's volume and time since the last call (and resets them).
    pub fn take_all_reduce(&mut self) -> AllReduceStats {
        std::mem::take(&mut self.all_reduce)
    }

    /// The signal (SIGTERM, SIGINT) that asks the run to stop after the current step, if any.
    /// With several processes it is the one they agreed on at this step's gradient all-reduces
    /// (the largest signal number any of them had received by then), so every process stops
    /// at the same step with the same signal, with no collective of its own.
    pub fn stop_signal(&self) -> Option<i32> {
        if crate::world::current().is_distributed() {
            (self.agreed_signal != 0).then_some(self.agreed_signal)
        } else {
            super::signals::requested()
        }
    }

    /// One optimizer step of `slot` on `loss` with learning rate `lr`.
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
        let world = crate::world::current();
        // The non-finite check: a NaN or infinite loss (on any process) stops the run or skips
        // the step before anything reaches the parameters. One read of the loss per step.
        let nonfinite = tch::no_grad(|| loss.detach().isfinite().logical_not());
        if !world.is_distributed() {
            let bad = bool::try_from(&nonfinite)
                .with_context(|| format!("reading whether the {} loss is finite", slot.name))?;
            if bad {
                return self.nonfinite(slot, Some(loss));
            }
        }
        slot.optimizer.zero_grad();
        match &slot.scaler {
            Some(scaler) => (loss * scaler.scale).f_backward(),
            None => loss.f_backward(),
        }
        .map_err(|e| {
            world.diagnose(
                &format!("the backward pass of the {} loss", slot.name),
                e.into(),
            )
        })
        .with_context(|| format!("backward pass of the {} loss", slot.name))?;
        if world.is_distributed() {
            // Every process runs the backward pass (collectives inside it match), then one
            // all-reduce averages the gradients and carries the non-finite flag and the stop
            // signals, so every process decides alike.
            let agreed = self.all_reduce_gradients(slot, &nonfinite)?;
            self.agreed_signal = self.agreed_signal.max(agreed.signal);
            if agreed.nonfinite {
                return self.nonfinite(slot, None);
            }
        }
        let finite = match &mut slot.scaler {
            Some(scaler) => scaler.unscale(slot.name, &slot.params)?,
            None => true,
        };
        if !finite {
            return Ok(StepOutcome::Overflowed);
        }
        if slot.clipped && self.gradient_clip_val > 0.0 {
            clip_grad_norm(&slot.params, self.gradient_clip_val)
                .with_context(|| format!("clipping the {} gradients", slot.name))?;
        }
        slot.optimizer
            .step(lr)
            .with_context(|| format!("the {} optimizer step", slot.name))?;
        Ok(StepOutcome::Applied)
    }

    /// A step whose loss was not finite (on this process: `loss`; on some process: `None`):
    /// the run stops, or with `nan_policy = skip_step` the step is left out.
    fn nonfinite(
        &mut self,
        slot: &mut OptimizerSlot,
        loss: Option<&Tensor>,
    ) -> Result<StepOutcome> {
        let (epoch, step) = self.position;
        let world = crate::world::current();
        match self.nan_policy {
            NanPolicy::Stop => bail!(
                "the {} loss is {} at epoch {}, step {}{}: the run stops (the last checkpoint \
                 is kept as it was). A lower learning rate, gradient clipping \
                 (--gradient_clip_val) or --nan_policy=skip_step may help",
                slot.name,
                match loss {
                    Some(loss) => format!("{}", loss.double_value(&[])),
                    None => "not finite on some process".to_string(),
                },
                epoch + 1,
                step + 1,
                if world.is_distributed() {
                    format!(" (rank {} of {})", world.rank(), world.size())
                } else {
                    String::new()
                }
            ),
            NanPolicy::SkipStep => {
                slot.optimizer.zero_grad();
                self.skipped_nonfinite += 1;
                Ok(StepOutcome::SkippedNonFinite)
            }
        }
    }

    /// Data parallelism: averages every process's gradients of `slot` (bucketed all-reduce), so
    /// the update sees those of the global batch and every process stays equal. The buckets
    /// are laid out from the slot's parameter list, the same on every process: a gradient this
    /// process lacks (a parameter its step did not use) travels as zeros, and a flag per
    /// parameter says which processes had one. After the all-reduce a parameter gets the
    /// average as its gradient when any process had one (as DDP), and stays without gradient
    /// (skipped by the optimizer) when none had. The flags also carry `nonfinite` (this
    /// process's loss) and the stop signals this process has received.
    fn all_reduce_gradients(&mut self, slot: &OptimizerSlot, nonfinite: &Tensor) -> Result<Agreed> {
        let world = crate::world::current();
        let device = nonfinite.device();
        let grads: Vec<Tensor> = slot.params.iter().map(|p| p.tensor.grad()).collect();
        let mut flags: Vec<f32> = grads.iter().map(|g| g.defined() as u8 as f32).collect();
        let received = super::signals::requested().unwrap_or(0);
        flags.extend(STOP_SIGNALS.iter().map(|&s| (received == s) as u8 as f32));
        let flags = tch::no_grad(|| {
            Tensor::cat(
                &[
                    Tensor::from_slice(&flags).to_device(device),
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
        let flags = Vec::<f32>::try_from(&flags.to_device(tch::Device::Cpu))
            .with_context(|| format!("reading the {} step's flags", slot.name))?;
        self.all_reduce.seconds += started.elapsed().as_secs_f64();
        self.all_reduce.bytes += list
            .iter()
            .map(|g| (g.numel() * g.kind().elt_size_in_bytes()) as u64)
            .sum::<u64>();
        self.all_reduce.steps += 1;
        let n = slot.params.len();
        for ((p, g), (reduced, &flag)) in slot
            .params
            .iter()
            .zip(&grads)
            .zip(list.iter().zip(&flags[..n]))
        {
            if !g.defined() && flag > 0.0 {
                set_grad(p, reduced)
                    .with_context(|| format!("the {} gradient of `{}`", slot.name, p.name))?;
            }
        }
        let signal = STOP_SIGNALS
            .iter()
            .zip(&flags[n..n + STOP_SIGNALS.len()])
            .filter(|(_, &f)| f > 0.0)
            .map(|(&s, _)| s)
            .max()
            .unwrap_or(0);
        Ok(Agreed {
            nonfinite: flags[n + STOP_SIGNALS.len()] > 0.0,
            signal,
        })
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
    fn the_loss_scaler_state_survives_a_checkpoint() {
        let mut scaler = LossScaler {
            scale: 1024.0,
            good_steps: 77,
        };
        let stored: HashMap<String, Tensor> = scaler.state().into_iter().collect();
        let mut resumed = LossScaler::default();
        resumed.load_state(&stored).unwrap();
        assert_eq!((resumed.scale, resumed.good_steps), (1024.0, 77));
        // A checkpoint without it (a run in 32-bit floats) leaves a fresh scaler.
        let mut fresh = LossScaler::default();
        fresh.load_state(&HashMap::new()).unwrap();
        assert_eq!((fresh.scale, fresh.good_steps), (65536.0, 0));
        scaler.good_steps = 1999;
        assert!(scaler.unscale("test", &[]).unwrap());
        assert_eq!((scaler.scale, scaler.good_steps), (2048.0, 0));
        let _ = prefixed("loss_scaler.", scaler.state());
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
        let norm = clip_grad_norm(&params, 6.5).unwrap();
        assert!((norm - 13.0).abs() < 1e-5, "{norm}");
        let g: Vec<f32> = Vec::try_from(&params[0].tensor.grad()).unwrap();
        let coefficient = 6.5 / (13.0 + 1e-6);
        assert!((g[0] as f64 - 3.0 * coefficient).abs() < 1e-6, "{g:?}");
        assert!((g[1] as f64 - 4.0 * coefficient).abs() < 1e-6, "{g:?}");
        // Under the limit: unchanged.
        assert!((clip_grad_norm(&params, 100.0).unwrap() - 6.5).abs() < 1e-4);
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
            assert_eq!(
                path.step(&mut slot, &loss, 1.0).unwrap(),
                StepOutcome::Applied
            );
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
}
