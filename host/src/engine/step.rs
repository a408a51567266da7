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

    /// Unscales gradients in place; false when any is not finite (skip the step).
    fn unscale(&mut self, params: &[Param]) -> bool {
        // One host synchronisation per step (the skip decision), as torch's GradScaler: the
        // per-gradient checks stay on the device until then.
        let finite = tch::no_grad(|| {
            let checks: Vec<Tensor> = params
                .iter()
                .filter_map(|p| {
                    let mut g = p.tensor.grad();
                    g.defined().then(|| {
                        let _ = g.f_div_scalar_(self.scale);
                        g.isfinite().all()
                    })
                })
                .collect();
            checks.is_empty() || bool::try_from(Tensor::stack(&checks, 0).all()).unwrap_or(false)
        });
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
        finite
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
pub fn clip_grad_norm(params: &[Param], max_norm: f64) -> f64 {
    tch::no_grad(|| {
        let grads: Vec<Tensor> = params
            .iter()
            .map(|p| p.tensor.grad())
            .filter(Tensor::defined)
            .collect();
        if grads.is_empty() {
            return 0.0;
        }
        let norms: Vec<Tensor> = grads
            .iter()
            .map(|g| g.to_kind(Kind::Float).norm())
            .collect();
        let total = Tensor::stack(&norms, 0).norm();
        let coefficient = (max_norm / (total.double_value(&[]) + 1e-6)).min(1.0);
        if coefficient < 1.0 {
            for g in &grads {
                let mut g = g.shallow_clone();
                let _ = g.f_mul_scalar_(coefficient);
            }
        }
        total.double_value(&[])
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

    /// One optimizer step of `slot` on `loss` with learning rate `lr`. Returns false when the
    /// step was skipped (mixed precision: gradients overflowed).
    pub fn step(&mut self, slot: &mut OptimizerSlot, loss: &Tensor, lr: f64) -> Result<bool> {
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
        // A NaN or infinite loss (on any process) stops the run or skips the step, before the
        // backward pass: nothing of it reaches the parameters. One read of the loss per step.
        let mut nonfinite = !tch::no_grad(|| bool::try_from(loss.isfinite()).unwrap_or(false));
        let world = crate::world::current();
        if world.is_distributed() {
            nonfinite = world
                .all_reduce_f64(&[nonfinite as u8 as f64], crate::world::Reduce::Sum)?[0]
                > 0.0;
        }
        if nonfinite {
            let (epoch, step) = self.position;
            match self.nan_policy {
                NanPolicy::Stop => bail!(
                    "the {} loss is {} at epoch {}, step {}{}: the run stops (the last checkpoint \
                     is kept as it was). A lower learning rate, gradient clipping \
                     (--gradient_clip_val) or --nan_policy=skip_step may help",
                    slot.name,
                    if world.is_distributed() {
                        "not finite on some process".to_string()
                    } else {
                        format!("{}", loss.double_value(&[]))
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
                    *self.counts.entry(slot.name).or_default() += 1;
                    return Ok(false);
                }
            }
        }
        slot.optimizer.zero_grad();
        match &slot.scaler {
            Some(scaler) => (loss * scaler.scale).f_backward(),
            None => loss.f_backward(),
        }
        .map_err(|e| {
            crate::world::current().diagnose(
                &format!("the backward pass of the {} loss", slot.name),
                e.into(),
            )
        })
        .with_context(|| format!("backward pass of the {} loss", slot.name))?;
        // Data parallelism: every process's gradients are averaged (bucketed all-reduce), so
        // the steps below see those of the global batch and every process stays equal.
        let world = crate::world::current();
        if world.is_distributed() {
            let grads: Vec<Tensor> = slot
                .params
                .iter()
                .map(|p| p.tensor.grad())
                .filter(|g| g.defined())
                .collect();
            let started = std::time::Instant::now();
            world
                .all_reduce_(&grads, crate::world::Reduce::Average)
                .with_context(|| {
                    format!("averaging the {} gradients between processes", slot.name)
                })?;
            self.all_reduce.seconds += started.elapsed().as_secs_f64();
            self.all_reduce.bytes += grads
                .iter()
                .map(|g| (g.numel() * g.kind().elt_size_in_bytes()) as u64)
                .sum::<u64>();
            self.all_reduce.steps += 1;
        }
        let finite = match &mut slot.scaler {
            Some(scaler) => scaler.unscale(&slot.params),
            None => true,
        };
        *self.counts.entry(slot.name).or_default() += 1;
        if !finite {
            return Ok(false);
        }
        if slot.clipped && self.gradient_clip_val > 0.0 {
            clip_grad_norm(&slot.params, self.gradient_clip_val);
        }
        slot.optimizer.step(lr)?;
        Ok(true)
    }

    /// How many steps went through the path, by slot name.
    pub fn counts(&self) -> &BTreeMap<&'static str, u64> {
        &self.counts
    }
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
        assert!(scaler.unscale(&[]));
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
        let norm = clip_grad_norm(&params, 6.5);
        assert!((norm - 13.0).abs() < 1e-5, "{norm}");
        let g: Vec<f32> = Vec::try_from(&params[0].tensor.grad()).unwrap();
        let coefficient = 6.5 / (13.0 + 1e-6);
        assert!((g[0] as f64 - 3.0 * coefficient).abs() < 1e-6, "{g:?}");
        assert!((g[1] as f64 - 4.0 * coefficient).abs() < 1e-6, "{g:?}");
        // Under the limit: unchanged.
        assert!((clip_grad_norm(&params, 100.0) - 6.5).abs() < 1e-4);
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
            assert!(path.step(&mut slot, &loss, 1.0).unwrap());
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
