//! LARS (layer-wise adaptive rate scaling, You et al. 2017) as implemented by pl_bolts'
//! `LARS` and solo-learn's `LARS`: a per-tensor trust ratio scales the weight-decayed gradient,
//! then SGD with momentum applies it.
//!
//! For a parameter `p` with gradient `g`, weight decay `wd` (`config.weight_decay` when the
//! parameter opts in, else 0), `eta = config.trust_coefficient` and `eps = config.eps`:
//!
//! ```text
//! lars_adaptation set:
//!     if ||p|| > 0 and ||g|| > 0:
//!         trust = eta * ||p|| / (||g|| + wd * ||p|| + eps)
//!         d     = (g + wd * p) * trust
//!     else:
//!         d     = g                  (trust ratio 1; like bolts/solo-learn, no decay either)
//! lars_adaptation not set (biases, norm layers):
//!     d = g + wd * p                 (plain SGD; with the usual exclusion wd is 0)
//! then SGD momentum on d (see `super::sgd`): buf = d on the first step, else
//! buf = momentum * buf + d; d = buf (or d + momentum * buf with Nesterov); p = p - lr * d.
//! ```
//!
//! The norms and the choice between the two branches are computed on the parameter's device
//! (`where`), so no step synchronises with the host. (With `||p|| = 0` the decay term is 0
//! anyway; with `||g|| = 0` and `||p|| > 0` the parameter gets no update, as in both
//! reference implementations.)

use super::sgd::{coupled_decay, MomentumSlots};
use super::{Optimizer, OptimizerConfig, Param};
use anyhow::Result;
use ssl_plugin_api::tch::Tensor;
use std::collections::HashMap;

/// LARS on top of SGD with momentum; see the module documentation for the formula. Unscheduled
/// parameters step at `config.fixed_lr` when it is set.
pub struct Lars {
    slots: MomentumSlots,
    weight_decay: f64,
    trust_coefficient: f64,
    eps: f64,
}

impl Lars {
    /// LARS over `params` with the momentum, Nesterov, weight decay, trust coefficient and eps
    /// of `config`.
    pub fn new(config: &OptimizerConfig, params: Vec<Param>) -> Self {
        Lars {
            slots: MomentumSlots::new(config, params),
            weight_decay: config.weight_decay,
            trust_coefficient: config.trust_coefficient,
            eps: config.eps,
        }
    }
}

/// The LARS-scaled update direction of one parameter (before momentum).
fn lars_direction(p: &Tensor, grad: Tensor, wd: f64, eta: f64, eps: f64) -> Result<Tensor> {
    let p_norm = p.f_norm()?;
    let g_norm = grad.f_norm()?;
    // trust = (||p|| / (||g|| + ||p|| * wd + eps)) * eta, in the reference order.
    let mut denom = g_norm.f_add(&p_norm.f_mul_scalar(wd)?)?;
    let _ = denom.f_add_scalar_(eps)?;
    let trust = p_norm.f_div(&denom)?.f_mul_scalar(eta)?;
    let both_positive = p_norm.f_gt(0.0)?.f_logical_and(&g_norm.f_gt(0.0)?)?;
    let decayed = if wd != 0.0 {
        grad.f_add(&p.f_mul_scalar(wd)?)?
    } else {
        grad.shallow_clone()
    };
    let scaled = decayed.f_mul(&trust)?;
    Ok(scaled.f_where_self(&both_positive, &grad)?)
}

impl Optimizer for Lars {
    fn step(&mut self, lr: f64) -> Result<()> {
        let (wd, eta, eps) = (self.weight_decay, self.trust_coefficient, self.eps);
        self.slots.step(lr, |param: &Param, grad| {
            let wd = if param.weight_decay { wd } else { 0.0 };
            if param.lars_adaptation {
                lars_direction(&param.tensor, grad, wd, eta, eps)
            } else {
                coupled_decay(param, grad, wd)
            }
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
        "lars"
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::{build, OptimizerConfig, OptimizerKind, Param};
    use ssl_plugin_api::tch::{Kind, Tensor};

    fn config() -> OptimizerConfig {
        OptimizerConfig {
            kind: OptimizerKind::Lars,
            weight_decay: 0.1,
            momentum: 0.9,
            trust_coefficient: 0.001,
            eps: 1e-8,
            ..OptimizerConfig::default()
        }
    }

    fn param(t: &Tensor, weight_decay: bool, lars_adaptation: bool) -> Param {
        Param {
            name: "p".into(),
            tensor: t.shallow_clone(),
            weight_decay,
            lars_adaptation,
            scheduled: true,
        }
    }

    /// Gradient `c` for `p`: backward of `sum(c * p)`.
    fn set_grad(p: &Tensor, c: &[f64]) {
        (Tensor::from_slice(c) * p).sum(Kind::Double).backward();
    }

    #[test]
    fn trust_ratio_on_a_known_case() {
        // p = [3, 4] (norm 5), g = [0.6, 0.8] (norm 1), wd 0.1, eta 0.001, eps 1e-8:
        // trust = 0.001 * 5 / (1 + 0.1 * 5 + 1e-8); d = (g + 0.1 p) * trust = [0.9, 1.2] * trust.
        let p = Tensor::from_slice(&[3.0f64, 4.0]).set_requires_grad(true);
        let mut opt = build(&config(), vec![param(&p, true, true)]);
        set_grad(&p, &[0.6, 0.8]);
        let lr = 0.5;
        opt.step(lr).unwrap();
        let trust = 0.001 * 5.0 / (1.0 + 0.5 + 1e-8);
        let mut expected = [3.0 - lr * 0.9 * trust, 4.0 - lr * 1.2 * trust];
        assert_close(&to_vec(&p), &expected, 1e-14);
        // Second step, same gradient: momentum buffer = 0.9 * d1 + d2.
        let d1 = [0.9 * trust, 1.2 * trust];
        let pn = (expected[0] * expected[0] + expected[1] * expected[1]).sqrt();
        let trust2 = 0.001 * pn / (1.0 + 0.1 * pn + 1e-8);
        let d2 = [
            (0.6 + 0.1 * expected[0]) * trust2,
            (0.8 + 0.1 * expected[1]) * trust2,
        ];
        opt.zero_grad();
        set_grad(&p, &[0.6, 0.8]);
        opt.step(lr).unwrap();
        for i in 0..2 {
            expected[i] -= lr * (0.9 * d1[i] + d2[i]);
        }
        assert_close(&to_vec(&p), &expected, 1e-14);
        assert!(trust < 0.01, "the trust ratio scaled the step down");
    }

    #[test]
    fn trust_ratio_is_one_when_a_norm_is_zero() {
        // ||p|| = 0: d = g.
        let p = Tensor::from_slice(&[0.0f64, 0.0]).set_requires_grad(true);
        let mut opt = build(&config(), vec![param(&p, true, true)]);
        set_grad(&p, &[0.6, -0.8]);
        opt.step(0.5).unwrap();
        assert_close(&to_vec(&p), &[-0.3, 0.4], 1e-15);
        // ||g|| = 0 with ||p|| > 0: no update (no decay either).
        let q = Tensor::from_slice(&[3.0f64, 4.0]).set_requires_grad(true);
        let mut opt = build(&config(), vec![param(&q, true, true)]);
        set_grad(&q, &[0.0, 0.0]);
        opt.step(0.5).unwrap();
        assert_close(&to_vec(&q), &[3.0, 4.0], 0.0);
    }

    #[test]
    fn excluded_params_get_plain_sgd_momentum() {
        let p = Tensor::from_slice(&[3.0f64, 4.0]).set_requires_grad(true);
        let mut opt = build(&config(), vec![param(&p, false, false)]);
        let mut expected = [3.0, 4.0];
        let g = [0.6, 0.8];
        let mut buf = [0.0; 2];
        for step in 0..3 {
            opt.zero_grad();
            set_grad(&p, &g);
            opt.step(0.5).unwrap();
            for i in 0..2 {
                buf[i] = if step == 0 { g[i] } else { 0.9 * buf[i] + g[i] };
                expected[i] -= 0.5 * buf[i];
            }
        }
        assert_close(&to_vec(&p), &expected, 1e-14);
    }

    #[test]
    fn lars_reference_problem_moves_less_than_sgd() {
        // LARS scales the decayed weight's step by ~eta; the excluded bias follows plain SGD.
        let (w_lars, b_lars) = run_reference(&config());
        let sgd = OptimizerConfig {
            kind: OptimizerKind::Sgd,
            ..config()
        };
        let (_, b_sgd) = run_reference(&sgd);
        assert_close(&b_lars, &b_sgd, 0.0);
        let w0 = [0.5f64, -1.0, 1.5, 2.0, -0.25, 0.75];
        for (a, b) in w_lars.iter().zip(w0) {
            assert!((a - b).abs() < 1e-2 * b.abs() && a != &b, "{a} vs {b}");
        }
    }

    #[test]
    fn lars_resume_is_bit_exact() {
        check_resume(&config());
        check_resume(&OptimizerConfig {
            nesterov: true,
            ..config()
        });
    }

    #[test]
    fn lars_load_state_errors_name_the_entry() {
        check_load_errors(&config(), "momentum_buffer");
    }

    #[test]
    fn lars_no_decay_without_flag() {
        check_no_decay(OptimizerKind::Lars);
    }
}
