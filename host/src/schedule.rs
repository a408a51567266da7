//! Learning-rate schedules of the original system, as pure functions of the epoch or step.
//!
//! - [`byol_epoch_lr`]: pl_bolts `LinearWarmupCosineAnnealingLR` stepped once per epoch
//!   (BYOL).
//! - [`simclr_step_lr`]: pl_bolts `linear_warmup_decay(cosine=True)` in a `LambdaLR` stepped
//!   once per optimizer step (SimCLR).
//! - [`polynomial_epoch_lr`]: InnerEye's polynomial schedule (`LambdaLR` with
//!   `(1 - epoch/num_epochs)^gamma` per epoch; the linear classifier).
//!
//! [`LrSchedule`] selects one of them by name and evaluates it for a given epoch / step.

use std::f64::consts::PI;
use std::fmt;
use std::str::FromStr;

/// The factor of `l_rate` with several processes: their number with
/// `scale_lr_by_world_size` (the original's rule for a global batch that grows with them),
/// else 1.
pub fn world_lr_scale(config: &crate::config::RunConfig) -> f64 {
    if config.scale_lr_by_world_size {
        crate::world::current().size() as f64
    } else {
        1.0
    }
}

/// Default exponent of [`polynomial_epoch_lr`] (InnerEye's classifier uses 1e-4, which keeps
/// the learning rate practically constant).
pub const DEFAULT_POLYNOMIAL_GAMMA: f64 = 1e-4;

/// Default number of warm-up epochs of the warm-up + cosine schedules (hard-coded to 10 in the
/// original BYOL and SimCLR modules).
pub const DEFAULT_WARMUP_EPOCHS: usize = 10;

/// Learning rate of epoch `epoch` (0-based) under pl_bolts' `LinearWarmupCosineAnnealingLR`
/// with `warmup_start_lr = 0` and `eta_min = 0`, stepped once per epoch:
///
/// - `epoch < warmup_epochs`: `base * epoch / (warmup_epochs - 1)`: epoch 0 trains at 0 and
///   `base` is reached at `warmup_epochs - 1` (with `warmup_epochs == 1` only epoch 0 is in
///   the warm-up, at 0);
/// - `epoch == warmup_epochs`: `base` (so with `warmup_epochs == 0` there is no warm-up and
///   epoch 0 trains at `base`);
/// - `epoch > warmup_epochs`: `0.5 * base * (1 + cos(pi * (epoch - warmup) / (max_epochs -
///   warmup)))`, which reaches 0 at `epoch == max_epochs` (beyond it the cosine rises again,
///   as bolts' does). When `max_epochs <= warmup_epochs` there is no annealing phase and every
///   epoch after the warm-up returns 0 instead of dividing by zero.
pub fn byol_epoch_lr(base: f64, epoch: usize, warmup_epochs: usize, max_epochs: usize) -> f64 {
    use std::cmp::Ordering;
    match epoch.cmp(&warmup_epochs) {
        Ordering::Less => {
            if epoch == 0 {
                0.0
            } else {
                // epoch >= 1 and epoch < warmup, so warmup - 1 >= 1.
                base * epoch as f64 / (warmup_epochs - 1) as f64
            }
        }
        Ordering::Equal => base,
        Ordering::Greater => {
            if max_epochs <= warmup_epochs {
                return 0.0;
            }
            let progress = (epoch - warmup_epochs) as f64 / (max_epochs - warmup_epochs) as f64;
            0.5 * base * (1.0 + (PI * progress).cos())
        }
    }
}

/// Learning rate of optimizer step `step` (0-based, counted over the whole run) under pl_bolts'
/// `linear_warmup_decay(warmup_steps, total_steps, cosine=True)` in a `LambdaLR`:
/// `base * factor` with
///
/// - `step < warmup_steps`: `factor = step / max(1, warmup_steps)` (0 at step 0);
/// - otherwise: `factor = 0.5 * (1 + cos(pi * (step - warmup) / max(1, total - warmup)))`
///   (`base` at `step == warmup_steps`, 0 at `step == total_steps`).
pub fn simclr_step_lr(base: f64, step: usize, warmup_steps: usize, total_steps: usize) -> f64 {
    let factor = if step < warmup_steps {
        step as f64 / warmup_steps.max(1) as f64
    } else {
        let progress =
            (step - warmup_steps) as f64 / total_steps.saturating_sub(warmup_steps).max(1) as f64;
        0.5 * (1.0 + (PI * progress).cos())
    };
    base * factor
}

/// InnerEye's polynomial schedule: `base * (1 - epoch / num_epochs)^gamma` (see
/// [`DEFAULT_POLYNOMIAL_GAMMA`]). `num_epochs == 0` returns `base`; epochs at or past
/// `num_epochs` return 0 (the original would produce 0 at the end and NaN past it).
pub fn polynomial_epoch_lr(base: f64, epoch: usize, num_epochs: usize, gamma: f64) -> f64 {
    if num_epochs == 0 {
        return base;
    }
    if epoch >= num_epochs {
        return 0.0;
    }
    base * (1.0 - epoch as f64 / num_epochs as f64).powf(gamma)
}

/// A learning-rate schedule chosen by name.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LrSchedule {
    /// [`byol_epoch_lr`]: linear warm-up then cosine, one value per epoch.
    WarmupCosinePerEpoch {
        /// Warm-up length in epochs.
        warmup_epochs: usize,
    },
    /// [`simclr_step_lr`]: linear warm-up then cosine, one value per optimizer step.
    WarmupCosinePerStep {
        /// Warm-up length in epochs (converted to steps with the steps per epoch).
        warmup_epochs: usize,
    },
    /// [`polynomial_epoch_lr`] per epoch.
    Polynomial {
        /// Exponent of `(1 - epoch / max_epochs)`.
        gamma: f64,
    },
    /// The base learning rate throughout.
    Constant,
}

impl LrSchedule {
    /// The same schedule with `warmup_epochs` of warm-up (schedules without one unchanged).
    pub fn with_warmup_epochs(self, warmup_epochs: usize) -> LrSchedule {
        match self {
            LrSchedule::WarmupCosinePerEpoch { .. } => {
                LrSchedule::WarmupCosinePerEpoch { warmup_epochs }
            }
            LrSchedule::WarmupCosinePerStep { .. } => {
                LrSchedule::WarmupCosinePerStep { warmup_epochs }
            }
            other => other,
        }
    }

    /// Every accepted name, in the order of the variants.
    pub const NAMES: [&'static str; 4] = [
        "warmup_cosine_epoch",
        "warmup_cosine_step",
        "polynomial",
        "constant",
    ];

    /// The name accepted by [`FromStr`].
    pub fn name(&self) -> &'static str {
        match self {
            LrSchedule::WarmupCosinePerEpoch { .. } => "warmup_cosine_epoch",
            LrSchedule::WarmupCosinePerStep { .. } => "warmup_cosine_step",
            LrSchedule::Polynomial { .. } => "polynomial",
            LrSchedule::Constant => "constant",
        }
    }

    /// The learning rate to use for the optimizer step `step_in_run` (0-based over the whole
    /// run), which lies in epoch `epoch` (0-based). Per-epoch schedules read only `epoch`;
    /// the per-step one uses `warmup_steps = steps_per_epoch * warmup_epochs` and
    /// `total_steps = steps_per_epoch * max_epochs`.
    pub fn lr(
        &self,
        base: f64,
        epoch: usize,
        step_in_run: usize,
        steps_per_epoch: usize,
        max_epochs: usize,
    ) -> f64 {
        match *self {
            LrSchedule::WarmupCosinePerEpoch { warmup_epochs } => {
                byol_epoch_lr(base, epoch, warmup_epochs, max_epochs)
            }
            LrSchedule::WarmupCosinePerStep { warmup_epochs } => simclr_step_lr(
                base,
                step_in_run,
                steps_per_epoch.saturating_mul(warmup_epochs),
                steps_per_epoch.saturating_mul(max_epochs),
            ),
            LrSchedule::Polynomial { gamma } => polynomial_epoch_lr(base, epoch, max_epochs, gamma),
            LrSchedule::Constant => base,
        }
    }
}

impl fmt::Display for LrSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for LrSchedule {
    type Err = anyhow::Error;

    /// Parses a schedule name; the warm-up schedules get [`DEFAULT_WARMUP_EPOCHS`] and the
    /// polynomial one [`DEFAULT_POLYNOMIAL_GAMMA`] (change the fields afterwards if needed).
    fn from_str(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "warmup_cosine_epoch" => LrSchedule::WarmupCosinePerEpoch {
                warmup_epochs: DEFAULT_WARMUP_EPOCHS,
            },
            "warmup_cosine_step" => LrSchedule::WarmupCosinePerStep {
                warmup_epochs: DEFAULT_WARMUP_EPOCHS,
            },
            "polynomial" => LrSchedule::Polynomial {
                gamma: DEFAULT_POLYNOMIAL_GAMMA,
            },
            "constant" => LrSchedule::Constant,
            other => anyhow::bail!(
                "unknown learning-rate schedule `{other}` (choices: {})",
                Self::NAMES.join(", ")
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * (1.0 + b.abs())
    }

    #[test]
    fn byol_warmup_then_cosine() {
        let (base, warmup, max) = (0.3, 10, 40);
        let lrs: Vec<f64> = (0..max)
            .map(|e| byol_epoch_lr(base, e, warmup, max))
            .collect();
        assert_eq!(lrs[0], 0.0, "epoch 0 trains at LR 0");
        for e in 1..warmup {
            assert!(
                close(lrs[e], base * e as f64 / 9.0),
                "epoch {e}: {}",
                lrs[e]
            );
            assert!(lrs[e] > lrs[e - 1]);
        }
        assert!(close(lrs[warmup - 1], base), "peak reached at warmup - 1");
        assert_eq!(lrs[warmup], base, "peak at warmup");
        for e in warmup + 1..max {
            assert!(lrs[e] < lrs[e - 1], "epoch {e} not decreasing: {lrs:?}");
            assert!(lrs[e] > 0.0);
        }
        assert!(
            lrs[max - 1] < 0.01 * base,
            "~0 at the end: {}",
            lrs[max - 1]
        );
        assert!(byol_epoch_lr(base, max, warmup, max).abs() < 1e-15);
        // Halfway through the annealing: base / 2.
        assert!(close(byol_epoch_lr(base, 25, warmup, max), base / 2.0));
        let max_lr = lrs.iter().cloned().fold(f64::MIN, f64::max);
        assert!(close(max_lr, base));
    }

    #[test]
    fn byol_edge_cases_do_not_divide_by_zero() {
        // No warm-up: epoch 0 at base, then cosine.
        assert_eq!(byol_epoch_lr(1.0, 0, 0, 4), 1.0);
        assert!(close(byol_epoch_lr(1.0, 2, 0, 4), 0.5));
        // Warm-up of one epoch: 0, then base.
        assert_eq!(byol_epoch_lr(1.0, 0, 1, 4), 0.0);
        assert_eq!(byol_epoch_lr(1.0, 1, 1, 4), 1.0);
        // Warm-up as long as (or longer than) the run.
        for (warmup, max) in [(5, 5), (10, 5), (3, 0)] {
            for e in 0..12 {
                let lr = byol_epoch_lr(1.0, e, warmup, max);
                assert!(
                    lr.is_finite() && (0.0..=1.0).contains(&lr),
                    "{e} {warmup} {max}: {lr}"
                );
            }
        }
        assert_eq!(byol_epoch_lr(1.0, 6, 5, 5), 0.0);
        assert_eq!(byol_epoch_lr(1.0, 5, 5, 5), 1.0);
        assert!(close(byol_epoch_lr(1.0, 4, 5, 5), 1.0));
    }

    #[test]
    fn simclr_warmup_then_cosine() {
        // 100 samples, batch 20: 5 steps per epoch; 10 epochs, warm-up 2 epochs.
        let (base, warmup, total) = (0.5, 10, 50);
        let lrs: Vec<f64> = (0..total)
            .map(|s| simclr_step_lr(base, s, warmup, total))
            .collect();
        assert_eq!(lrs[0], 0.0);
        assert!(close(lrs[9], 0.9 * base));
        assert_eq!(lrs[warmup], base);
        for s in 1..=warmup {
            assert!(lrs[s] > lrs[s - 1], "step {s} not increasing");
        }
        for s in warmup + 1..total {
            assert!(lrs[s] < lrs[s - 1], "step {s} not decreasing");
        }
        let argmax = (0..total)
            .max_by(|&a, &b| lrs[a].total_cmp(&lrs[b]))
            .unwrap();
        assert_eq!(argmax, warmup);
        assert!(simclr_step_lr(base, total, warmup, total).abs() < 1e-15);
        assert!(close(simclr_step_lr(base, 30, warmup, total), base / 2.0));
    }

    #[test]
    fn simclr_edge_cases() {
        assert_eq!(simclr_step_lr(1.0, 0, 0, 10), 1.0);
        assert_eq!(simclr_step_lr(1.0, 0, 0, 0), 1.0);
        assert!(simclr_step_lr(1.0, 3, 5, 2).is_finite());
        assert!(simclr_step_lr(1.0, 7, 5, 2).is_finite());
    }

    #[test]
    fn polynomial_is_nearly_constant() {
        let base = 1e-4;
        for e in 0..100 {
            let lr = polynomial_epoch_lr(base, e, 100, DEFAULT_POLYNOMIAL_GAMMA);
            assert!(lr <= base && lr > 0.999 * base, "epoch {e}: {lr}");
        }
        assert_eq!(
            polynomial_epoch_lr(base, 0, 100, DEFAULT_POLYNOMIAL_GAMMA),
            base
        );
        assert!(close(polynomial_epoch_lr(1.0, 50, 100, 1.0), 0.5));
        assert!(polynomial_epoch_lr(1.0, 60, 100, 1.0) < polynomial_epoch_lr(1.0, 50, 100, 1.0));
        assert_eq!(polynomial_epoch_lr(1.0, 100, 100, 1.0), 0.0);
        assert_eq!(polynomial_epoch_lr(1.0, 3, 0, 1.0), 1.0);
    }

    #[test]
    fn schedule_parses_and_dispatches() {
        for name in LrSchedule::NAMES {
            assert_eq!(name.parse::<LrSchedule>().unwrap().to_string(), name);
        }
        let err = "cosine".parse::<LrSchedule>().unwrap_err().to_string();
        assert!(
            err.contains("cosine") && err.contains("warmup_cosine_step"),
            "{err}"
        );
        assert_eq!(
            "warmup_cosine_epoch".parse::<LrSchedule>().unwrap(),
            LrSchedule::WarmupCosinePerEpoch { warmup_epochs: 10 }
        );

        let epoch = LrSchedule::WarmupCosinePerEpoch { warmup_epochs: 2 };
        assert_eq!(epoch.lr(1.0, 3, 17, 5, 10), byol_epoch_lr(1.0, 3, 2, 10));
        let step = LrSchedule::WarmupCosinePerStep { warmup_epochs: 2 };
        assert_eq!(step.lr(1.0, 3, 17, 5, 10), simclr_step_lr(1.0, 17, 10, 50));
        let poly = LrSchedule::Polynomial { gamma: 1.0 };
        assert!(close(poly.lr(1.0, 5, 17, 5, 10), 0.5));
        assert_eq!(LrSchedule::Constant.lr(0.25, 5, 17, 5, 10), 0.25);
    }
}
