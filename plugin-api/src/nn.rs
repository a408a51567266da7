//! Layers that behave differently when training on several processes (feature `torch`).
//!
//! [`BatchNorm`] is the BatchNorm of PyTorch for encoders and heads: on one process (or with
//! synchronisation off) exactly libtorch's `batch_norm`, and under `torchrun` with
//! `sync_batchnorm` on, PyTorch's `SyncBatchNorm`: the statistics of the global batch, with
//! gradients through them.
//!
//! ```ignore
//! use ssl_plugin_api::nn::{BatchNorm, BatchNormConfig};
//! use ssl_plugin_api::tch::nn as tnn;
//! use ssl_plugin_api::Collectives;
//!
//! let vs = tnn::VarStore::new(device);
//! // Variables `bn1.weight`, `bn1.bias`, `bn1.running_mean`, `bn1.running_var`.
//! let bn1 = BatchNorm::new(&vs.root() / "bn1", 64, BatchNormConfig::default(), &Collectives::current());
//! let y = bn1.forward(&x, train)?;
//! ```

use crate::bail;
use crate::collectives::Collectives;
use crate::error::Result;
use std::borrow::Borrow;
use tch::nn::{Init, Path};
use tch::{Kind, Tensor};

/// Options of a [`BatchNorm`]; the default is PyTorch's (`eps` 1e-5, `momentum` 0.1, affine).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchNormConfig {
    /// Added to the variance before the square root.
    pub eps: f64,
    /// Weight of the new batch in the running statistics.
    pub momentum: f64,
    /// With a learnt per-channel scale (`weight`, initially 1) and shift (`bias`, initially 0).
    pub affine: bool,
}

impl Default for BatchNormConfig {
    fn default() -> Self {
        BatchNormConfig {
            eps: 1e-5,
            momentum: 0.1,
            affine: true,
        }
    }
}

/// PyTorch's `BatchNorm1d`/`2d` (inputs `[N, C]`, `[N, C, L]`, `[N, C, H, W]`, ...), with
/// PyTorch's initialisation (weight 1, bias 0, running mean 0, running variance 1) and the
/// variable names of tch's `nn::batch_norm*d` (`weight`, `bias`, `running_mean`,
/// `running_var`), so checkpoints and torchvision names are unchanged.
///
/// In evaluation mode, on one process, or when the [`Collectives`] it was built with have
/// `sync_batchnorm` off, it is exactly libtorch's `batch_norm` (the same outputs, bit for bit).
/// Training on several processes with `sync_batchnorm` on, it is PyTorch's `SyncBatchNorm`:
/// each rank's per-channel count, mean and sum of squared deviations are all-gathered (with
/// gradient), combined into the mean and biased variance of the global batch, which normalise
/// the local batch; the running statistics move towards the global mean and the unbiased
/// global variance.
pub struct BatchNorm {
    config: BatchNormConfig,
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    running_mean: Tensor,
    running_var: Tensor,
    collectives: Collectives,
}

impl BatchNorm {
    /// A BatchNorm over `channels` channels, its variables created under `path`, talking to the
    /// other processes through `collectives` (usually [`Collectives::current`]).
    pub fn new<'a, P: Borrow<Path<'a>>>(
        path: P,
        channels: i64,
        config: BatchNormConfig,
        collectives: &Collectives,
    ) -> BatchNorm {
        let path = path.borrow();
        let (weight, bias) = if config.affine {
            (
                Some(path.var("weight", &[channels], Init::Const(1.0))),
                Some(path.var("bias", &[channels], Init::Const(0.0))),
            )
        } else {
            (None, None)
        };
        BatchNorm {
            config,
            weight,
            bias,
            running_mean: path.zeros_no_train("running_mean", &[channels]),
            running_var: path.ones_no_train("running_var", &[channels]),
            collectives: collectives.clone(),
        }
    }

    /// The options it was built with.
    pub fn config(&self) -> BatchNormConfig {
        self.config
    }

    /// The learnt scale (`None` unless affine).
    pub fn weight(&self) -> Option<&Tensor> {
        self.weight.as_ref()
    }

    /// The learnt shift (`None` unless affine).
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// The running mean (a buffer, updated in place when training).
    pub fn running_mean(&self) -> &Tensor {
        &self.running_mean
    }

    /// The running variance (a buffer, updated in place when training).
    pub fn running_var(&self) -> &Tensor {
        &self.running_var
    }

    /// Normalises `xs` (`[N, C, ...]`): with the batch's statistics when `train` (the global
    /// batch's when synchronised), updating the running ones; with the running ones otherwise.
    pub fn forward(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let size = xs.size();
        let channels = self.running_mean.size()[0];
        if size.len() < 2 || size[1] != channels {
            bail!("BatchNorm({channels}): expected input [N, {channels}, ...], got {size:?}");
        }
        if train && self.collectives.sync_batchnorm() && self.collectives.world_size() > 1 {
            self.forward_synchronised(xs)
        } else {
            Ok(Tensor::f_batch_norm(
                xs,
                self.weight.as_ref(),
                self.bias.as_ref(),
                Some(&self.running_mean),
                Some(&self.running_var),
                train,
                self.config.momentum,
                self.config.eps,
                true,
            )?)
        }
    }

    fn forward_synchronised(&self, xs: &Tensor) -> Result<Tensor> {
        // Statistics in single precision at least, as PyTorch's SyncBatchNorm.
        let kind = match xs.kind() {
            Kind::Half | Kind::BFloat16 => Kind::Float,
            kind => kind,
        };
        let x = xs.f_to_kind(kind)?;
        let gathered = self
            .collectives
            .all_gather_with_grad(&local_statistics(&x)?)?;
        let (mean, var, count) = combine_statistics(&gathered)?;
        self.update_running_statistics(&mean, &var, &count)?;
        let shape = channel_shape(&x);
        let invstd = var.f_add_scalar(self.config.eps)?.f_rsqrt()?;
        let mut y = x
            .f_sub(&mean.f_view(shape.as_slice())?)?
            .f_mul(&invstd.f_view(shape.as_slice())?)?;
        if let (Some(w), Some(b)) = (&self.weight, &self.bias) {
            y = y
                .f_mul(&w.f_to_kind(kind)?.f_view(shape.as_slice())?)?
                .f_add(&b.f_to_kind(kind)?.f_view(shape.as_slice())?)?;
        }
        Ok(y.f_to_kind(xs.kind())?)
    }

    /// `running = (1 - momentum) * running + momentum * batch`, with the unbiased variance
    /// (`var * N / (N - 1)`), without gradient.
    fn update_running_statistics(&self, mean: &Tensor, var: &Tensor, count: &Tensor) -> Result<()> {
        let m = self.config.momentum;
        tch::no_grad(|| -> Result<()> {
            let unbiased = var.f_mul(&count.f_div(&count.f_sub_scalar(1.0)?)?)?;
            for (running, batch) in [(&self.running_mean, mean), (&self.running_var, &unbiased)] {
                let new = running
                    .f_mul_scalar(1.0 - m)?
                    .f_add(&batch.f_to_kind(running.kind())?.f_mul_scalar(m)?)?;
                running.shallow_clone().f_copy_(&new)?;
            }
            Ok(())
        })
    }
}

/// `[1, C, 1, ...]` for broadcasting per-channel values over `x`.
fn channel_shape(x: &Tensor) -> Vec<i64> {
    let mut shape = vec![1i64; x.dim()];
    shape[1] = x.size()[1];
    shape
}

/// This rank's per-channel statistics of `x` (`[N, C, ...]`), as one `[1, 3, C]` tensor:
/// element count, mean and M2 (the sum of squared deviations from that mean). An empty batch
/// gives count 0, mean 0, M2 0.
fn local_statistics(x: &Tensor) -> Result<Tensor> {
    let channels = x.size()[1];
    let count = x.numel() as i64 / channels.max(1);
    let dims: Vec<i64> = (0..x.dim() as i64).filter(|&d| d != 1).collect();
    let (mean, m2) = if count == 0 {
        let zeros = Tensor::f_zeros([channels], (x.kind(), x.device()))?;
        (zeros.shallow_clone(), zeros)
    } else {
        let mean = x.f_mean_dim(dims.as_slice(), false, None::<Kind>)?;
        let m2 = x
            .f_sub(&mean.f_view(channel_shape(x).as_slice())?)?
            .f_square()?
            .f_sum_dim_intlist(dims.as_slice(), false, None::<Kind>)?;
        (mean, m2)
    };
    let count = Tensor::f_full([channels], count, (x.kind(), x.device()))?;
    Ok(Tensor::f_stack(&[count, mean, m2], 0)?.f_unsqueeze(0)?)
}

/// The global per-channel mean, biased variance and count from every rank's
/// [`local_statistics`] (`[W, 3, C]`), by the parallel-variance formula (Chan et al.):
/// `mean = Σ n_r m_r / N`, `M2 = Σ (M2_r + n_r (m_r - mean)²)`, `var = M2 / N`.
fn combine_statistics(gathered: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    let counts = gathered.f_select(1, 0)?;
    let means = gathered.f_select(1, 1)?;
    let m2s = gathered.f_select(1, 2)?;
    let total = counts.f_sum_dim_intlist([0i64].as_slice(), false, None::<Kind>)?;
    let mean = counts
        .f_mul(&means)?
        .f_sum_dim_intlist([0i64].as_slice(), false, None::<Kind>)?
        .f_div(&total)?;
    let spread = means
        .f_sub(&mean.f_unsqueeze(0)?)?
        .f_square()?
        .f_mul(&counts)?;
    let m2 = m2s
        .f_add(&spread)?
        .f_sum_dim_intlist([0i64].as_slice(), false, None::<Kind>)?;
    let var = m2.f_div(&total)?;
    Ok((mean, var, total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectives::{CollectiveOps, ReduceOp};
    use std::sync::{Arc, Mutex};
    use tch::nn::{self, ModuleT, VarStore};
    use tch::Device;

    fn tch_batch_norm(vs: &VarStore, dims: usize, channels: i64, affine: bool) -> nn::BatchNorm {
        let config = nn::BatchNormConfig {
            affine,
            ws_init: Init::Const(1.0),
            bs_init: Init::Const(0.0),
            ..Default::default()
        };
        if dims == 2 {
            nn::batch_norm1d(vs.root() / "bn", channels, config)
        } else {
            nn::batch_norm2d(vs.root() / "bn", channels, config)
        }
    }

    fn ours(vs: &VarStore, channels: i64, affine: bool, c: &Collectives) -> BatchNorm {
        let config = BatchNormConfig {
            affine,
            ..Default::default()
        };
        BatchNorm::new(vs.root() / "bn", channels, config, c)
    }

    fn sorted_names(vs: &VarStore) -> Vec<(String, Vec<i64>, bool)> {
        let mut v: Vec<_> = vs
            .variables()
            .into_iter()
            .map(|(n, t)| (n, t.size(), t.requires_grad()))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn one_process_is_libtorch_batch_norm_bit_for_bit() {
        tch::manual_seed(3);
        for (shape, affine) in [
            (vec![6i64, 5], true),
            (vec![6, 5], false),
            (vec![4, 5, 3, 3], true),
        ] {
            let (vs_a, vs_b) = (VarStore::new(Device::Cpu), VarStore::new(Device::Cpu));
            let reference = tch_batch_norm(&vs_a, shape.len(), 5, affine);
            // Not synchronised even when asked to: one process.
            let single = Collectives::from_ops(Arc::new(Fake::new(0, 1)), true);
            let bn = ours(&vs_b, 5, affine, &single);
            assert_eq!(sorted_names(&vs_a), sorted_names(&vs_b));
            for step in 0..3 {
                let x = Tensor::randn(shape.as_slice(), (Kind::Float, Device::Cpu)) * 3 + 1;
                let train = step < 2;
                let want = reference.forward_t(&x, train);
                let got = bn.forward(&x, train).unwrap();
                assert!(got.equal(&want), "{shape:?} step {step}: outputs differ");
                assert!(bn.running_mean().equal(&reference.running_mean));
                assert!(bn.running_var().equal(&reference.running_var));
            }
            assert!(!bn
                .running_mean()
                .equal(&Tensor::zeros([5], (Kind::Float, Device::Cpu))));
        }
    }

    #[test]
    fn synchronisation_off_is_local_batch_norm() {
        let vs_a = VarStore::new(Device::Cpu);
        let vs_b = VarStore::new(Device::Cpu);
        let reference = tch_batch_norm(&vs_a, 2, 3, true);
        let c = Collectives::from_ops(Arc::new(Fake::new(0, 2)), false);
        let bn = ours(&vs_b, 3, true, &c);
        let x = Tensor::randn([4, 3], (Kind::Float, Device::Cpu));
        assert!(bn
            .forward(&x, true)
            .unwrap()
            .equal(&reference.forward_t(&x, true)));
        assert!(bn.running_var().equal(&reference.running_var));
    }

    #[test]
    fn wrong_channels_is_an_error() {
        let vs = VarStore::new(Device::Cpu);
        let bn = ours(&vs, 3, true, &Collectives::single());
        let e = bn
            .forward(&Tensor::zeros([4, 5], (Kind::Float, Device::Cpu)), true)
            .err()
            .unwrap()
            .message();
        assert!(e.contains("expected input [N, 3, ...]"), "{e}");
    }

    /// Rank `rank` of `world` in one process: the all-gather puts the tensor it is given in
    /// this rank's slot and the tensors in `others` in the other slots.
    struct Fake {
        rank: usize,
        world: usize,
        others: Mutex<Vec<Option<Tensor>>>,
    }

    impl Fake {
        fn new(rank: usize, world: usize) -> Fake {
            Fake {
                rank,
                world,
                others: Mutex::new((0..world).map(|_| None).collect()),
            }
        }
        fn with(self, rank: usize, stats: Tensor) -> Fake {
            self.others.lock().unwrap()[rank] = Some(stats);
            self
        }
    }

    impl CollectiveOps for Fake {
        fn rank(&self) -> usize {
            self.rank
        }
        fn world_size(&self) -> usize {
            self.world
        }
        fn all_reduce(&self, _: &Tensor, _: ReduceOp, _: bool) -> Result<Tensor> {
            bail!("the fake process group does not all-reduce")
        }
        fn all_gather(&self, t: &Tensor, with_grad: bool) -> Result<Tensor> {
            assert!(with_grad, "BatchNorm gathers its statistics with gradient");
            let others = self.others.lock().unwrap();
            let parts: Vec<Tensor> = (0..self.world)
                .map(|r| match &others[r] {
                    _ if r == self.rank => t.shallow_clone(),
                    Some(s) => s.shallow_clone(),
                    None => panic!("no statistics for rank {r}"),
                })
                .collect();
            Ok(Tensor::cat(&parts, 0))
        }
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    /// Two ranks simulated in one process equal `batch_norm` on the whole batch: outputs,
    /// running statistics, and the gradients of the summed loss of both ranks.
    ///
    /// Rank `r`'s gather returns its own statistics with the other rank's, computed (with
    /// gradient) from the other rank's input. Backpropagating both ranks' losses together then
    /// sums, at each rank's statistics, the gradients that every rank's use of them receives:
    /// what the real gather's backward (the all-reduce of the gathered gradient, this rank's
    /// slice kept) delivers.
    #[test]
    fn two_synchronised_ranks_are_one_big_batch() {
        tch::manual_seed(7);
        for shape in [vec![5i64, 4], vec![3, 4, 2, 3]] {
            let opts = (Kind::Double, Device::Cpu);
            // Ranks with different batch sizes and spreads.
            let mut shape1 = shape.clone();
            shape1[0] += 2;
            let x0 = (Tensor::randn(shape.as_slice(), opts) * 2 + 3).set_requires_grad(true);
            let x1 = (Tensor::randn(shape1.as_slice(), opts) * 0.5 - 1).set_requires_grad(true);
            let g0 = Tensor::randn(shape.as_slice(), opts);
            let g1 = Tensor::randn(shape1.as_slice(), opts);

            let rank = |r: usize, other: &Tensor| {
                let mut vs = VarStore::new(Device::Cpu);
                let fake = Fake::new(r, 2).with(1 - r, local_statistics(other).unwrap());
                let c = Collectives::from_ops(Arc::new(fake), true);
                let bn = ours(&vs, 4, true, &c);
                vs.double();
                // Weights other than 1 and 0, the same on both ranks.
                tch::no_grad(|| {
                    bn.weight()
                        .unwrap()
                        .shallow_clone()
                        .copy_(&Tensor::from_slice(&[0.5, 2.0, -1.0, 1.5]));
                    bn.bias()
                        .unwrap()
                        .shallow_clone()
                        .copy_(&Tensor::from_slice(&[0.1, -0.2, 0.3, 0.0]));
                });
                (vs, bn)
            };
            let (_vs0, bn0) = rank(0, &x1);
            let (_vs1, bn1) = rank(1, &x0);
            let y0 = bn0.forward(&x0, true).unwrap();
            let y1 = bn1.forward(&x1, true).unwrap();
            ((&y0 * &g0).sum(Kind::Double) + (&y1 * &g1).sum(Kind::Double)).backward();

            let x = Tensor::cat(&[x0.detach(), x1.detach()], 0).set_requires_grad(true);
            let w = Tensor::from_slice(&[0.5, 2.0, -1.0, 1.5]).set_requires_grad(true);
            let b = Tensor::from_slice(&[0.1, -0.2, 0.3, 0.0]).set_requires_grad(true);
            let rm = Tensor::zeros([4], opts);
            let rv = Tensor::ones([4], opts);
            let y = Tensor::batch_norm(
                &x,
                Some(&w),
                Some(&b),
                Some(&rm),
                Some(&rv),
                true,
                0.1,
                1e-5,
                false,
            );
            (&y * Tensor::cat(&[&g0, &g1], 0))
                .sum(Kind::Double)
                .backward();

            let n0 = shape[0];
            let tol = 1e-10;
            assert!(
                max_diff(&y0, &y.narrow(0, 0, n0)) < tol,
                "{shape:?}: rank 0 output"
            );
            assert!(
                max_diff(&y1, &y.narrow(0, n0, shape1[0])) < tol,
                "{shape:?}: rank 1 output"
            );
            for bn in [&bn0, &bn1] {
                assert!(
                    max_diff(bn.running_mean(), &rm) < tol,
                    "{shape:?}: running mean"
                );
                assert!(
                    max_diff(bn.running_var(), &rv) < tol,
                    "{shape:?}: running var"
                );
            }
            // The running variance moved with the unbiased variance: not the initial 1.
            assert!(max_diff(&rv, &Tensor::ones([4], opts)) > 1e-3);
            let grad = x.grad();
            assert!(
                max_diff(&x0.grad(), &grad.narrow(0, 0, n0)) < 1e-9,
                "{shape:?}: rank 0 input gradient"
            );
            assert!(
                max_diff(&x1.grad(), &grad.narrow(0, n0, shape1[0])) < 1e-9,
                "{shape:?}: rank 1 input gradient"
            );
            // Parameter gradients: the sum over ranks (DDP then averages them).
            let w_sum = bn0.weight().unwrap().grad() + bn1.weight().unwrap().grad();
            let b_sum = bn0.bias().unwrap().grad() + bn1.bias().unwrap().grad();
            assert!(
                max_diff(&w_sum, &w.grad()) < 1e-9,
                "{shape:?}: weight gradient"
            );
            assert!(
                max_diff(&b_sum, &b.grad()) < 1e-9,
                "{shape:?}: bias gradient"
            );
        }
    }

    #[test]
    fn synchronised_evaluation_uses_the_running_statistics() {
        let vs_a = VarStore::new(Device::Cpu);
        let vs_b = VarStore::new(Device::Cpu);
        let reference = tch_batch_norm(&vs_a, 2, 3, true);
        let c = Collectives::from_ops(Arc::new(Fake::new(0, 2)), true);
        let bn = ours(&vs_b, 3, true, &c);
        let x = Tensor::randn([4, 3], (Kind::Float, Device::Cpu));
        // No gather happens (the fake would panic without the other rank's statistics).
        assert!(bn
            .forward(&x, false)
            .unwrap()
            .equal(&reference.forward_t(&x, false)));
    }
}
