//! `torch.optim.Adam` (weight decay is coupled L2 added to the gradient) and
//! `torch.optim.AdamW` (decoupled: `p = p · (1 − lr · wd)` first, the gradient unchanged; the
//! optimizer of DINO and most vision transformers).
//!
//! Per parameter with a gradient `g`, with its own step count `t` (incremented first) and
//! weight decay `wd` only for parameters that opt in, in torch's order of operations:
//!
//! ```text
//! g     = g + wd * p
//! m     = lerp(m, g, 1 - beta1)                  (= beta1 m + (1 - beta1) g)
//! v     = beta2 v + (1 - beta2) g²
//! bc1   = 1 - beta1^t,  bc2 = 1 - beta2^t
//! denom = sqrt(v) / sqrt(bc2) + eps
//! p     = p + (-lr / bc1) * m / denom
//! ```
//!
//! All tensor math runs on the parameter's device; the step count lives on the host, so a
//! step never synchronises with the device. tch exposes no `alpha`/`value` arguments, so
//! `add(alpha)`, `addcmul(value)` and `addcdiv(value)` are written as a scalar multiply
//! followed by the operation; the result can differ from torch's fused kernels in the last
//! bit (torch's vectorised `add` uses an FMA), not more.

use super::{
    entry_name, export_buffer, grad_of, read_buffer, read_step, restore_buffer, step_tensor,
    GradReset, Optimizer, OptimizerConfig, Param,
};
use anyhow::{Context, Result};
use ssl_plugin_api::tch::{self, Kind, Tensor};
use std::collections::HashMap;

struct Slot {
    param: Param,
    weight_decay: f64,
    decoupled: bool,
    /// The learning rate of an unscheduled parameter (`None`: the step's).
    fixed_lr: Option<f64>,
    step: i64,
    /// Steps `step` counts that the device may have undone (see
    /// [`Optimizer::pending_undone`]).
    undone: Option<Tensor>,
    exp_avg: Option<Tensor>,
    exp_avg_sq: Option<Tensor>,
}

/// `torch.optim.Adam(betas=config.betas, eps=config.eps)` with weight decay
/// `config.weight_decay` on the parameters that opt in (0 on the others); unscheduled
/// parameters step at `config.fixed_lr` when it is set.
pub struct Adam {
    slots: Vec<Slot>,
    betas: (f64, f64),
    eps: f64,
    grads: GradReset,
}

impl Adam {
    /// Adam over `params` with the betas, eps and weight decay of `config`.
    pub fn new(config: &OptimizerConfig, params: Vec<Param>) -> Self {
        let grads = GradReset::new(&params);
        let decoupled = config.kind == super::OptimizerKind::AdamW;
        let slots = params
            .into_iter()
            .map(|param| Slot {
                weight_decay: config.decay_for(&param),
                decoupled,
                fixed_lr: config.fixed_lr_for(&param),
                param,
                step: 0,
                undone: None,
                exp_avg: None,
                exp_avg_sq: None,
            })
            .collect();
        Adam {
            slots,
            betas: config.betas,
            eps: config.eps,
            grads,
        }
    }
}

impl Slot {
    fn step(&mut self, grad: Tensor, lr: f64, (beta1, beta2): (f64, f64), eps: f64) -> Result<()> {
        let step = self.step + 1;
        let p = &mut self.param.tensor;
        let grad = if self.decoupled {
            if self.weight_decay != 0.0 {
                let _ = p.f_mul_scalar_(1.0 - lr * self.weight_decay)?;
            }
            grad
        } else if self.weight_decay != 0.0 {
            grad.f_add(&p.f_mul_scalar(self.weight_decay)?)?
        } else {
            grad
        };
        let exp_avg = self.exp_avg.get_or_insert_with(|| p.zeros_like());
        let exp_avg_sq = self.exp_avg_sq.get_or_insert_with(|| p.zeros_like());
        let _ = exp_avg.f_lerp_(&grad, 1.0 - beta1)?;
        let _ = exp_avg_sq.f_mul_scalar_(beta2)?;
        let _ = exp_avg_sq.f_add_(&grad.f_mul_scalar(1.0 - beta2)?.f_mul(&grad)?)?;

        match &self.undone {
            None => {
                let t = step as f64;
                let bias_correction1 = 1.0 - beta1.powf(t);
                let bias_correction2 = 1.0 - beta2.powf(t);
                let step_size = lr / bias_correction1;
                let bias_correction2_sqrt = bias_correction2.sqrt();
                let mut denom = exp_avg_sq.f_sqrt()?.f_div_scalar(bias_correction2_sqrt)?;
                let _ = denom.f_add_scalar_(eps)?;
                let _ = p.f_add_(&exp_avg.f_mul_scalar(-step_size)?.f_div(&denom)?)?;
            }
            Some(undone) => {
                // The same in 0-dim Double tensors on the device, with the steps the device
                // undid taken off the count (the values are those of the host's f64 math).
                let t = (-undone.to_kind(Kind::Double)).f_add_scalar(step as f64)?;
                let power = |beta: f64| t.full_like(beta).f_pow(&t);
                let bias_correction1 = power(beta1)?.f_neg()?.f_add_scalar(1.0)?;
                let bias_correction2 = power(beta2)?.f_neg()?.f_add_scalar(1.0)?;
                let step_size = bias_correction1.full_like(lr).f_div(&bias_correction1)?;
                let bias_correction2_sqrt = bias_correction2.f_sqrt()?;
                let mut denom = exp_avg_sq.f_sqrt()?.f_div(&bias_correction2_sqrt)?;
                let _ = denom.f_add_scalar_(eps)?;
                let _ = p.f_add_(&exp_avg.f_mul(&step_size.f_neg()?)?.f_div(&denom)?)?;
            }
        }
        self.step = step;
        Ok(())
    }
}

impl Optimizer for Adam {
    fn step(&mut self, lr: f64) -> Result<()> {
        let (betas, eps) = (self.betas, self.eps);
        tch::no_grad(|| {
            for slot in &mut self.slots {
                if let Some(grad) = grad_of(&slot.param.tensor) {
                    let lr = slot.fixed_lr.unwrap_or(lr);
                    slot.step(grad, lr, betas, eps)
                        .with_context(|| format!("Adam step on `{}`", slot.param.name))?;
                }
            }
            Ok(())
        })
    }

    fn zero_grad(&mut self) {
        self.grads.reset();
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(self.slots.len() * 3);
        for s in &self.slots {
            let name = &s.param.name;
            out.push((
                entry_name(name, "exp_avg"),
                export_buffer(&s.exp_avg, &s.param.tensor),
            ));
            out.push((
                entry_name(name, "exp_avg_sq"),
                export_buffer(&s.exp_avg_sq, &s.param.tensor),
            ));
            out.push((entry_name(name, "step"), step_tensor(s.step)));
        }
        out
    }

    fn counts_steps(&self) -> bool {
        true
    }

    fn pending_undone(&mut self, undone: Vec<Option<Tensor>>) {
        for (slot, undone) in self.slots.iter_mut().zip(undone) {
            slot.undone = undone;
        }
    }

    fn uncount(&mut self, stepped: &[bool]) {
        for (slot, &stepped) in self.slots.iter_mut().zip(stepped) {
            if stepped {
                slot.step = (slot.step - 1).max(0);
            }
        }
    }

    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        // Validate everything first so that a failure leaves the optimizer untouched.
        let mut loaded = Vec::with_capacity(self.slots.len());
        for s in &self.slots {
            let name = &s.param.name;
            let exp_avg = read_buffer(state, &entry_name(name, "exp_avg"), &s.param.tensor)?;
            let exp_avg_sq = read_buffer(state, &entry_name(name, "exp_avg_sq"), &s.param.tensor)?;
            let step = read_step(state, &entry_name(name, "step"))?;
            loaded.push((step, exp_avg, exp_avg_sq));
        }
        for (s, (step, exp_avg, exp_avg_sq)) in self.slots.iter_mut().zip(loaded) {
            s.step = step;
            if step > 0 {
                restore_buffer(&mut s.exp_avg, &exp_avg, &s.param.tensor);
                restore_buffer(&mut s.exp_avg_sq, &exp_avg_sq, &s.param.tensor);
            } else {
                s.exp_avg = None;
                s.exp_avg_sq = None;
            }
        }
        Ok(())
    }

    fn name(&self) -> &'static str {
        if self.slots.first().is_some_and(|s| s.decoupled) {
            "adamw"
        } else {
            "adam"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::{OptimizerConfig, OptimizerKind};

    fn config() -> OptimizerConfig {
        OptimizerConfig {
            kind: OptimizerKind::Adam,
            weight_decay: 0.1,
            ..OptimizerConfig::default()
        }
    }

    /// Adam unrolled by hand in plain f64 (coupled L2 on `w` only, betas (0.9, 0.999),
    /// eps 1e-8), on the reference problem of `test_util::run_reference`.
    fn hand_unrolled() -> (Vec<f64>, Vec<f64>) {
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8);
        let mut w = vec![0.5f64, -1.0, 1.5, 2.0, -0.25, 0.75];
        let mut b = vec![0.1f64, -0.2, 0.3];
        let d = [1.0, -2.0, 0.5];
        let (mut mw, mut vw) = (vec![0.0; 6], vec![0.0; 6]);
        let (mut mb, mut vb) = (vec![0.0; 3], vec![0.0; 3]);
        for (t, (k, lr)) in [(1.0, 0.1), (2.0, 0.05), (3.0, 0.02)]
            .into_iter()
            .enumerate()
        {
            let t = (t + 1) as f64;
            let upd = |p: &mut f64, m: &mut f64, v: &mut f64, g: f64| {
                *m = b1 * *m + (1.0 - b1) * g;
                *v = b2 * *v + (1.0 - b2) * g * g;
                let m_hat = *m / (1.0 - b1.powf(t));
                let v_hat = *v / (1.0 - b2.powf(t));
                *p -= lr * m_hat / (v_hat.sqrt() + eps);
            };
            for i in 0..6 {
                let g = k * w[i] + 0.1 * w[i];
                upd(&mut w[i], &mut mw[i], &mut vw[i], g);
            }
            for i in 0..3 {
                let g = k * d[i];
                upd(&mut b[i], &mut mb[i], &mut vb[i], g);
            }
        }
        (w, b)
    }

    #[test]
    fn adam_matches_hand_unrolled_reference() {
        let (w, b) = run_reference(&config());
        let (ew, eb) = hand_unrolled();
        // torch's eps sits outside the bias correction of v: sqrt(v)/sqrt(bc2) + eps, which
        // is exactly sqrt(v_hat) + eps; only rounding separates the two forms.
        assert_close(&w, &ew, 1e-12);
        assert_close(&b, &eb, 1e-12);
    }

    // Expected values: torch 2.11.0 (/work/main/.deps/torch-venv), float64, param groups
    // [{w, weight_decay 0.1}, {b, weight_decay 0}], torch.optim.Adam(lr=0.1, betas=(0.9,
    // 0.999), eps=1e-8); for k, lr in (1, 0.1), (2, 0.05), (3, 0.02): set lr, zero_grad,
    // loss = sum(0.5 k w²) + sum(k [1, -2, 0.5] b), backward, step.
    #[test]
    fn adam_matches_torch() {
        let (w, b) = run_reference(&config());
        assert_close(
            &w,
            &[
                0.3307559929186644,
                -0.8314870403452004,
                1.3317386317549567,
                1.8318645422552629,
                -0.07989455494134633,
                0.5812374954586966,
            ],
            1e-13,
        );
        assert_close(
            &b,
            &[
                -0.06741912437921391,
                -0.032580874923866174,
                0.13258087701462595,
            ],
            1e-13,
        );
    }

    // As above with torch.optim.AdamW (decoupled decay; `b` has none, so it moves as Adam's).
    #[test]
    fn adamw_matches_torch() {
        let config = OptimizerConfig {
            kind: OptimizerKind::AdamW,
            ..config()
        };
        let (w, b) = run_reference(&config);
        assert_close(
            &w,
            &[
                0.32326854083840284,
                -0.8155904755597931,
                1.3073951969882265,
                1.7990670288916806,
                -0.07647869540502134,
                0.5695559868810411,
            ],
            1e-13,
        );
        assert_close(
            &b,
            &[
                -0.06741912437921391,
                -0.032580874923866174,
                0.13258087701462595,
            ],
            1e-13,
        );
        check_resume(&config);
    }

    #[test]
    fn adam_resume_is_bit_exact() {
        check_resume(&config());
    }

    #[test]
    fn adam_load_state_errors_name_the_entry() {
        check_load_errors(&config(), "exp_avg_sq");
    }

    #[test]
    fn adam_no_decay_without_flag() {
        check_no_decay(OptimizerKind::Adam);
    }
}
