//! `torch.optim.SGD` with momentum (dampening 0), optional Nesterov and coupled weight decay.
//!
//! Per parameter with a gradient `g` (weight decay `wd` only for parameters that opt in):
//!
//! ```text
//! g   = g + wd * p
//! buf = g                      on the first step (no momentum applied yet)
//! buf = momentum * buf + g     afterwards
//! d   = g + momentum * buf     with Nesterov, else d = buf   (d = g when momentum is 0)
//! p   = p - lr * d
//! ```

use super::{
    entry_name, export_buffer, grad_of, read_buffer, read_step, restore_buffer, step_tensor,
    GradReset, Optimizer, OptimizerConfig, Param,
};
use anyhow::{Context, Result};
use ssl_plugin_api::tch::{self, Tensor};
use std::collections::HashMap;

/// Momentum state shared by [`Sgd`] and [`super::lars::Lars`]: per parameter a step count and
/// a lazily created momentum buffer.
pub(crate) struct MomentumSlots {
    pub(crate) params: Vec<Param>,
    /// Steps in which each parameter had a gradient.
    steps: Vec<i64>,
    buffers: Vec<Option<Tensor>>,
    /// Per parameter, the learning rate of an unscheduled one (`None`: the step's).
    fixed_lrs: Vec<Option<f64>>,
    momentum: f64,
    nesterov: bool,
    grads: GradReset,
}

impl MomentumSlots {
    pub(crate) fn new(config: &OptimizerConfig, params: Vec<Param>) -> Self {
        let n = params.len();
        MomentumSlots {
            grads: GradReset::new(&params),
            fixed_lrs: params.iter().map(|p| config.fixed_lr_for(p)).collect(),
            params,
            steps: vec![0; n],
            buffers: (0..n).map(|_| None).collect(),
            momentum: config.momentum,
            nesterov: config.nesterov,
        }
    }

    /// For every parameter with a gradient, turns the gradient into an update direction `d`
    /// with `direction(param, grad)`, applies momentum and does `p -= lr * d` (`lr` the fixed
    /// learning rate for an unscheduled parameter).
    pub(crate) fn step(
        &mut self,
        lr: f64,
        mut direction: impl FnMut(&Param, Tensor) -> Result<Tensor>,
    ) -> Result<()> {
        let momentum = self.momentum;
        let nesterov = self.nesterov;
        tch::no_grad(|| {
            for (((param, step), buffer), fixed_lr) in self
                .params
                .iter_mut()
                .zip(&mut self.steps)
                .zip(&mut self.buffers)
                .zip(&self.fixed_lrs)
            {
                let Some(grad) = grad_of(&param.tensor) else {
                    continue;
                };
                let lr = fixed_lr.unwrap_or(lr);
                let update = (|| -> Result<()> {
                    let d_p = direction(param, grad)?;
                    let d_p = if momentum != 0.0 {
                        let buf = match buffer {
                            None => buffer.insert(d_p.copy()),
                            Some(buf) => {
                                let _ = buf.f_mul_scalar_(momentum)?;
                                let _ = buf.f_add_(&d_p)?;
                                buf
                            }
                        };
                        if nesterov {
                            d_p.f_add(&buf.f_mul_scalar(momentum)?)?
                        } else {
                            buf.shallow_clone()
                        }
                    } else {
                        d_p
                    };
                    let _ = param.tensor.f_add_(&d_p.f_mul_scalar(-lr)?)?;
                    Ok(())
                })();
                update.with_context(|| format!("optimizer step on `{}`", param.name))?;
                *step += 1;
            }
            Ok(())
        })
    }

    pub(crate) fn zero_grad(&mut self) {
        self.grads.reset();
    }

    pub(crate) fn uncount(&mut self, stepped: &[bool]) {
        for (step, &stepped) in self.steps.iter_mut().zip(stepped) {
            if stepped {
                *step = (*step - 1).max(0);
            }
        }
    }

    pub(crate) fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(self.params.len() * 2);
        for ((param, step), buffer) in self.params.iter().zip(&self.steps).zip(&self.buffers) {
            if self.momentum != 0.0 {
                out.push((
                    entry_name(&param.name, "momentum_buffer"),
                    export_buffer(buffer, &param.tensor),
                ));
            }
            out.push((entry_name(&param.name, "step"), step_tensor(*step)));
        }
        out
    }

    pub(crate) fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        // Validate everything first so that a failure leaves the optimizer untouched.
        let mut loaded = Vec::with_capacity(self.params.len());
        for param in &self.params {
            let step = read_step(state, &entry_name(&param.name, "step"))?;
            let buffer = if self.momentum != 0.0 {
                Some(read_buffer(
                    state,
                    &entry_name(&param.name, "momentum_buffer"),
                    &param.tensor,
                )?)
            } else {
                None
            };
            loaded.push((step, buffer));
        }
        for (i, (step, buffer)) in loaded.into_iter().enumerate() {
            self.steps[i] = step;
            match buffer {
                Some(src) if step > 0 => {
                    restore_buffer(&mut self.buffers[i], &src, &self.params[i].tensor)
                }
                _ => self.buffers[i] = None,
            }
        }
        Ok(())
    }
}

/// `torch.optim.SGD(momentum=config.momentum, dampening=0, nesterov=config.nesterov)` with
/// coupled weight decay `config.weight_decay` on parameters that opt in; unscheduled parameters
/// step at `config.fixed_lr` when it is set.
pub struct Sgd {
    slots: MomentumSlots,
    weight_decay: f64,
}

impl Sgd {
    /// SGD over `params` with the momentum, Nesterov and weight-decay settings of `config`.
    pub fn new(config: &OptimizerConfig, params: Vec<Param>) -> Self {
        Sgd {
            slots: MomentumSlots::new(config, params),
            weight_decay: config.weight_decay,
        }
    }
}

/// `g + wd * p`, or `g` when `wd` is 0.
pub(crate) fn coupled_decay(param: &Param, grad: Tensor, wd: f64) -> Result<Tensor> {
    if wd != 0.0 {
        Ok(grad.f_add(&param.tensor.f_mul_scalar(wd)?)?)
    } else {
        Ok(grad)
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, lr: f64) -> Result<()> {
        let wd = self.weight_decay;
        self.slots.step(lr, |param, grad| {
            let wd = if param.weight_decay { wd } else { 0.0 };
            coupled_decay(param, grad, wd)
        })
    }

    fn zero_grad(&mut self) {
        self.slots.zero_grad();
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        self.slots.state()
    }

    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        self.slots.load_state(state)
    }

    fn uncount(&mut self, stepped: &[bool]) {
        self.slots.uncount(stepped);
    }

    fn name(&self) -> &'static str {
        "sgd"
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::{OptimizerConfig, OptimizerKind};

    fn config(nesterov: bool) -> OptimizerConfig {
        OptimizerConfig {
            kind: OptimizerKind::Sgd,
            weight_decay: 0.1,
            momentum: 0.9,
            nesterov,
            ..OptimizerConfig::default()
        }
    }

    // Expected values: torch 2.11.0 (/work/main/.deps/torch-venv), float64, param groups
    // [{w, weight_decay 0.1}, {b, weight_decay 0}], torch.optim.SGD(lr=0.1, momentum=0.9
    // [, nesterov=True]); for k, lr in (1, 0.1), (2, 0.05), (3, 0.02): set lr, zero_grad,
    // loss = sum(0.5 k w²) + sum(k [1, -2, 0.5] b), backward, step.
    #[test]
    fn sgd_momentum_matches_torch() {
        let (w, b) = run_reference(&config(false));
        assert_close(
            &w,
            &[
                0.32463545,
                -0.6492709,
                0.9739063499999998,
                1.2985418,
                -0.162317725,
                0.4869531749999999,
            ],
            1e-13,
        );
        assert_close(&b, &[-0.2572, 0.5144, 0.1214], 1e-13);
    }

    #[test]
    fn sgd_nesterov_matches_torch() {
        let (w, b) = run_reference(&config(true));
        assert_close(
            &w,
            &[
                0.23817762004999996,
                -0.4763552400999999,
                0.7145328601500001,
                0.9527104801999998,
                -0.11908881002499998,
                0.35726643007500003,
            ],
            1e-13,
        );
        assert_close(&b, &[-0.48148, 0.96296, 0.009259999999999971], 1e-13);
    }

    #[test]
    fn sgd_without_momentum_is_plain_gradient_descent() {
        let c = OptimizerConfig {
            momentum: 0.0,
            ..config(false)
        };
        let (w, b) = run_reference(&c);
        // Hand-unrolled: grad w = k w + 0.1 w, grad b = k d.
        let mut ew = [0.5f64, -1.0, 1.5, 2.0, -0.25, 0.75];
        let mut eb = [0.1f64, -0.2, 0.3];
        let d = [1.0, -2.0, 0.5];
        for (k, lr) in [(1.0, 0.1), (2.0, 0.05), (3.0, 0.02)] {
            for x in &mut ew {
                *x -= lr * (k * *x + 0.1 * *x);
            }
            for (x, d) in eb.iter_mut().zip(d) {
                *x -= lr * k * d;
            }
        }
        assert_close(&w, &ew, 1e-13);
        assert_close(&b, &eb, 1e-13);
    }

    #[test]
    fn sgd_resume_is_bit_exact() {
        check_resume(&config(false));
        check_resume(&config(true));
    }

    #[test]
    fn sgd_load_state_errors_name_the_entry() {
        check_load_errors(&config(false), "momentum_buffer");
    }

    #[test]
    fn sgd_no_decay_without_flag() {
        check_no_decay(OptimizerKind::Sgd);
    }
}
