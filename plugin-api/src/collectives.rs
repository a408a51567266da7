//! The process group, as encoders and algorithms see it (feature `torch`).
//!
//! Under `torchrun`, the host joins a process group (c10d: Gloo on CPU, NCCL on CUDA) and
//! every process trains on its share of each batch. Most algorithms need nothing more; some
//! must see the whole world: SimCLR takes its negatives from every rank's batch, Barlow Twins
//! and VICReg their statistics over the global batch, MoCo queues every rank's keys, DINO
//! centres with the teacher outputs of every rank, and a synchronised BatchNorm ([`crate::nn::BatchNorm`]) normalises with the statistics of the
//! global batch. They do it through a [`Collectives`] handle:
//!
//! ```ignore
//! use ssl_plugin_api::tch::Tensor;
//! use ssl_plugin_api::{Collectives, Result};
//!
//! fn keys_of_every_rank(z: &Tensor) -> Result<Tensor> {
//!     // In a factory (or any time later): the handle of this process.
//!     let world = Collectives::current();
//!     // `[world_size * B, d]`, rank 0's rows first; the gradient reaches every rank's `z`.
//!     world.all_gather_with_grad(z)
//! }
//! ```
//!
//! The host installs its handle before it makes any encoder or algorithm, and hands it to
//! every factory through the ABI; the plugin's side installs it in the plugin's own copy of
//! this crate, so [`Collectives::current`] (and [`EncoderSpec::collectives`]) answer the same
//! in a built-in and in a `.so` plugin. With one process (no `torchrun`), the handle is
//! [`Collectives::single`]: rank 0 of 1, every operation the identity, so an algorithm written
//! for many processes runs unchanged on one.
//!
//! Every rank must call the same collective operations, in the same order, with tensors of
//! the same shape (c10d's rule): call them from code that every rank runs the same way
//! (the training loss, not a branch on the rank).
//!
//! [`EncoderSpec::collectives`]: crate::EncoderSpec::collectives

use crate::error::{FfiError, PluginError, Result};
use crate::ffi::{CollectivesFfi, TensorHandle};
use crate::guard::guard;
use crate::torch::{handle_from_tensor, tensor_from_handle};
use abi_stable::std_types::RResult;
use std::ffi::c_void;
use std::sync::{Arc, RwLock};
use tch::Tensor;

/// The reduction of an all-reduce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    /// The sum over all ranks.
    Sum,
    /// The mean over all ranks (the sum divided by the world size).
    Average,
}

/// The collective operations of a process group: what the host implements (on its c10d
/// process group); plugins never implement it, they use [`Collectives`].
pub trait CollectiveOps: Send + Sync + 'static {
    /// This process's rank, `0..world_size`.
    fn rank(&self) -> usize;
    /// The number of processes.
    fn world_size(&self) -> usize;
    /// `t` reduced over all ranks (a new tensor; `t` is left alone). `with_grad`:
    /// differentiable, the gradient of the sum being the sum of the gradients (only with
    /// [`ReduceOp::Sum`]).
    fn all_reduce(&self, t: &Tensor, op: ReduceOp, with_grad: bool) -> Result<Tensor>;
    /// Every rank's `t` concatenated along dimension 0, in rank order. `with_grad`: as
    /// `torch.distributed.nn.all_gather`, each rank's `t` receives its slice of the gradient
    /// summed over all ranks.
    fn all_gather(&self, t: &Tensor, with_grad: bool) -> Result<Tensor>;
}

/// Where a handle's operations go.
enum Backend {
    /// One process: identities.
    Single,
    /// The host's own implementation.
    Ops(Arc<dyn CollectiveOps>),
    /// The host's handle seen from a `.so` plugin, across the ABI.
    Foreign(CollectivesFfi),
}

struct Inner {
    backend: Backend,
    sync_batchnorm: bool,
}

impl Inner {
    fn rank(&self) -> usize {
        match &self.backend {
            Backend::Single => 0,
            Backend::Ops(ops) => ops.rank(),
            Backend::Foreign(ffi) => ffi.rank as usize,
        }
    }

    fn world_size(&self) -> usize {
        match &self.backend {
            Backend::Single => 1,
            Backend::Ops(ops) => ops.world_size(),
            Backend::Foreign(ffi) => ffi.world_size as usize,
        }
    }

    /// A world of one needs no communication: reductions and gathers are identities.
    fn all_reduce(&self, t: &Tensor, op: ReduceOp, with_grad: bool) -> Result<Tensor> {
        if self.world_size() == 1 {
            return Ok(identity(t, with_grad));
        }
        match &self.backend {
            Backend::Single => Ok(identity(t, with_grad)),
            Backend::Ops(ops) => ops.all_reduce(t, op, with_grad),
            Backend::Foreign(ffi) => {
                let out = (ffi.all_reduce)(
                    ffi.ctx,
                    handle_from_tensor(t.shallow_clone()),
                    op == ReduceOp::Average,
                    with_grad,
                )
                .into_result()?;
                Ok(tensor_from_handle(out))
            }
        }
    }

    fn all_gather(&self, t: &Tensor, with_grad: bool) -> Result<Tensor> {
        if self.world_size() == 1 {
            return Ok(identity(t, with_grad));
        }
        match &self.backend {
            Backend::Single => Ok(identity(t, with_grad)),
            Backend::Ops(ops) => ops.all_gather(t, with_grad),
            Backend::Foreign(ffi) => {
                let out =
                    (ffi.all_gather)(ffi.ctx, handle_from_tensor(t.shallow_clone()), with_grad)
                        .into_result()?;
                Ok(tensor_from_handle(out))
            }
        }
    }
}

/// A collective over one process: the tensor itself (detached when no gradient is wanted, as
/// a real collective's result would be).
fn identity(t: &Tensor, with_grad: bool) -> Tensor {
    if with_grad {
        t.shallow_clone()
    } else {
        t.detach()
    }
}

/// The handle algorithms and encoders use to reach the other processes: rank, world size,
/// whether BatchNorm layers synchronise, all-reduce and all-gather. Cheap to clone. In a world
/// of one ([`Collectives::single`]) every operation is the identity.
#[derive(Clone)]
pub struct Collectives {
    inner: Arc<Inner>,
}

/// The handle of this copy of the crate (each `.so` has its own; built-ins share the host's).
static CURRENT: RwLock<Option<Collectives>> = RwLock::new(None);

impl Collectives {
    /// Rank 0 of a world of one: every operation is the identity.
    pub fn single() -> Collectives {
        Collectives {
            inner: Arc::new(Inner {
                backend: Backend::Single,
                sync_batchnorm: false,
            }),
        }
    }

    /// The host's handle on its process group; `sync_batchnorm` makes the BatchNorm layers of
    /// encoders and heads ([`crate::nn::BatchNorm`]) normalise with global statistics.
    pub fn from_ops(ops: Arc<dyn CollectiveOps>, sync_batchnorm: bool) -> Collectives {
        Collectives {
            inner: Arc::new(Inner {
                backend: Backend::Ops(ops),
                sync_batchnorm,
            }),
        }
    }

    /// The handle installed in this process ([`Collectives::single`] when none is). Inside a
    /// plugin's factories and everything they make, it is the host's.
    pub fn current() -> Collectives {
        let current = CURRENT.read().unwrap_or_else(|e| e.into_inner());
        current.clone().unwrap_or_else(Collectives::single)
    }

    /// Makes `c` the handle of this process: the host calls it once, after joining its
    /// process group and before making any encoder or algorithm.
    pub fn install(c: Collectives) {
        *CURRENT.write().unwrap_or_else(|e| e.into_inner()) = Some(c);
    }

    /// This process's rank, `0..world_size`.
    pub fn rank(&self) -> usize {
        self.inner.rank()
    }

    /// The number of processes.
    pub fn world_size(&self) -> usize {
        self.inner.world_size()
    }

    /// Whether BatchNorm layers use the statistics of the global batch when training.
    pub fn sync_batchnorm(&self) -> bool {
        self.inner.sync_batchnorm
    }

    /// `t` summed (or averaged) over all ranks, without gradient.
    pub fn all_reduce(&self, t: &Tensor, op: ReduceOp) -> Result<Tensor> {
        self.inner
            .all_reduce(t, op, false)
            .map_err(|e| self.context(e, "all_reduce", t))
    }

    /// `t` summed over all ranks, differentiable: the gradient reaching each rank's `t` is the
    /// sum of the gradients of every rank's result.
    pub fn all_reduce_with_grad(&self, t: &Tensor) -> Result<Tensor> {
        self.inner
            .all_reduce(t, ReduceOp::Sum, true)
            .map_err(|e| self.context(e, "all_reduce_with_grad", t))
    }

    /// Every rank's `t` concatenated along dimension 0 in rank order, without gradient.
    pub fn all_gather(&self, t: &Tensor) -> Result<Tensor> {
        self.inner
            .all_gather(t, false)
            .map_err(|e| self.context(e, "all_gather", t))
    }

    /// Every rank's `t` concatenated along dimension 0 in rank order; each rank's `t` receives
    /// its slice of the gradient summed over all ranks (`torch.distributed.nn.all_gather`).
    pub fn all_gather_with_grad(&self, t: &Tensor) -> Result<Tensor> {
        self.inner
            .all_gather(t, true)
            .map_err(|e| self.context(e, "all_gather_with_grad", t))
    }

    fn context(&self, e: PluginError, op: &str, t: &Tensor) -> PluginError {
        e.context(format!(
            "{op} of a {:?} tensor on rank {} of {}",
            t.size(),
            self.rank(),
            self.world_size()
        ))
    }

    /// The ABI pointer that identifies the host's handle behind this one.
    fn host_ctx(&self) -> *const c_void {
        match &self.inner.backend {
            Backend::Foreign(ffi) => ffi.ctx,
            _ => Arc::as_ptr(&self.inner) as *const c_void,
        }
    }

    /// The handle across the ABI (a `.so`'s handle passes the host's on unchanged).
    pub(crate) fn to_ffi(&self) -> CollectivesFfi {
        if let Backend::Foreign(ffi) = &self.inner.backend {
            return ffi.clone();
        }
        CollectivesFfi {
            rank: self.rank() as u64,
            world_size: self.world_size() as u64,
            sync_batchnorm: self.sync_batchnorm(),
            ctx: Arc::into_raw(self.inner.clone()) as *const c_void,
            all_reduce: ffi_all_reduce,
            all_gather: ffi_all_gather,
            retain: ffi_retain,
            release: ffi_release,
        }
    }

    /// A handle calling the host's through the ABI.
    pub(crate) fn from_ffi(ffi: &CollectivesFfi) -> Collectives {
        Collectives {
            inner: Arc::new(Inner {
                backend: Backend::Foreign(ffi.clone()),
                sync_batchnorm: ffi.sync_batchnorm,
            }),
        }
    }

    /// Installs the host's handle, received by a factory, in this copy of the crate, unless it
    /// is there already (always so for built-ins, which share the host's copy).
    pub(crate) fn adopt(ffi: &CollectivesFfi) {
        if Collectives::current().host_ctx() != ffi.ctx {
            Collectives::install(Collectives::from_ffi(ffi));
        }
    }
}

/// # Safety
/// `ctx` must come from [`Collectives::to_ffi`] of this library and still be retained.
unsafe fn inner_of<'a>(ctx: *const c_void) -> &'a Inner {
    // SAFETY: guaranteed by the caller: `ctx` is a live `Arc<Inner>` pointer.
    unsafe { &*(ctx as *const Inner) }
}

extern "C" fn ffi_all_reduce(
    ctx: *const c_void,
    t: TensorHandle,
    op_average: bool,
    with_grad: bool,
) -> RResult<TensorHandle, FfiError> {
    // SAFETY: the caller holds the `CollectivesFfi` that pairs this function with `ctx`.
    let inner = unsafe { inner_of(ctx) };
    let t = tensor_from_handle(t);
    let op = if op_average {
        ReduceOp::Average
    } else {
        ReduceOp::Sum
    };
    guard("the host's all_reduce", || {
        Ok(handle_from_tensor(inner.all_reduce(&t, op, with_grad)?))
    })
}

extern "C" fn ffi_all_gather(
    ctx: *const c_void,
    t: TensorHandle,
    with_grad: bool,
) -> RResult<TensorHandle, FfiError> {
    // SAFETY: as in `ffi_all_reduce`.
    let inner = unsafe { inner_of(ctx) };
    let t = tensor_from_handle(t);
    guard("the host's all_gather", || {
        Ok(handle_from_tensor(inner.all_gather(&t, with_grad)?))
    })
}

extern "C" fn ffi_retain(ctx: *const c_void) {
    // SAFETY: `ctx` came from `Arc::into_raw` in `to_ffi` and is still counted.
    unsafe { Arc::increment_strong_count(ctx as *const Inner) }
}

extern "C" fn ffi_release(ctx: *const c_void) {
    // SAFETY: as above; each `CollectivesFfi` releases the count it holds exactly once.
    unsafe { Arc::decrement_strong_count(ctx as *const Inner) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// Two ranks in one process: rank 0 holds `local`, the other rank `other`.
    struct FakeTwoRanks {
        other: std::sync::Mutex<Tensor>,
    }

    impl CollectiveOps for FakeTwoRanks {
        fn rank(&self) -> usize {
            0
        }
        fn world_size(&self) -> usize {
            2
        }
        fn all_reduce(&self, t: &Tensor, op: ReduceOp, with_grad: bool) -> Result<Tensor> {
            let other = self.other.lock().unwrap().shallow_clone();
            let sum = t + other;
            let out = if op == ReduceOp::Average {
                sum / 2
            } else {
                sum
            };
            Ok(if with_grad { out } else { out.detach() })
        }
        fn all_gather(&self, t: &Tensor, with_grad: bool) -> Result<Tensor> {
            let other = self.other.lock().unwrap().shallow_clone();
            let out = Tensor::cat(&[t, &other], 0);
            Ok(if with_grad { out } else { out.detach() })
        }
    }

    fn fake() -> Collectives {
        let other = Tensor::from_slice(&[10.0f64, 20.0]);
        Collectives::from_ops(
            Arc::new(FakeTwoRanks {
                other: std::sync::Mutex::new(other),
            }),
            true,
        )
    }

    #[test]
    fn single_is_the_identity() {
        let c = Collectives::single();
        assert_eq!(
            (c.rank(), c.world_size(), c.sync_batchnorm()),
            (0, 1, false)
        );
        let t = Tensor::from_slice(&[1.0f64, 2.0]).set_requires_grad(true);
        assert!(c.all_reduce(&t, ReduceOp::Average).unwrap().equal(&t));
        assert!(!c.all_gather(&t).unwrap().requires_grad());
        assert!(c.all_gather_with_grad(&t).unwrap().requires_grad());
        assert!(c.all_reduce_with_grad(&t).unwrap().equal(&t));
    }

    #[test]
    fn the_ffi_path_reaches_the_host_ops_with_gradients() {
        let host = fake();
        let ffi = host.to_ffi();
        // What a `.so` plugin builds from the handle it receives.
        let plugin = Collectives::from_ffi(&ffi);
        drop(ffi);
        assert_eq!((plugin.rank(), plugin.world_size()), (0, 2));
        assert!(plugin.sync_batchnorm());
        let t = Tensor::from_slice(&[1.0f64, 2.0]).set_requires_grad(true);
        let avg = plugin.all_reduce(&t, ReduceOp::Average).unwrap();
        assert_eq!(Vec::<f64>::try_from(&avg).unwrap(), [5.5, 11.0]);
        let gathered = plugin.all_gather_with_grad(&t).unwrap();
        assert_eq!(
            Vec::<f64>::try_from(&gathered).unwrap(),
            [1.0, 2.0, 10.0, 20.0]
        );
        let weights = Tensor::from_slice(&[3.0f64, 4.0, 5.0, 6.0]);
        (gathered * weights).sum(Kind::Double).backward();
        assert_eq!(Vec::<f64>::try_from(&t.grad()).unwrap(), [3.0, 4.0]);
        // A handle passed on by the plugin is the host's, not a wrapper of a wrapper.
        let again = plugin.to_ffi();
        assert_eq!(again.ctx, host.host_ctx());
        assert!(!plugin
            .all_gather(&t.to_device(Device::Cpu))
            .unwrap()
            .requires_grad());
    }

    #[test]
    fn the_ffi_handle_counts_its_copies() {
        let host = fake();
        let before = Arc::strong_count(&host.inner);
        let ffi = host.to_ffi();
        let copy = ffi.clone();
        assert_eq!(Arc::strong_count(&host.inner), before + 2);
        drop(ffi);
        drop(copy);
        assert_eq!(Arc::strong_count(&host.inner), before);
    }

    #[test]
    fn errors_name_the_operation_and_the_rank() {
        struct Failing;
        impl CollectiveOps for Failing {
            fn rank(&self) -> usize {
                1
            }
            fn world_size(&self) -> usize {
                2
            }
            fn all_reduce(&self, _: &Tensor, _: ReduceOp, _: bool) -> Result<Tensor> {
                Err(PluginError::msg("connection reset by peer"))
            }
            fn all_gather(&self, _: &Tensor, _: bool) -> Result<Tensor> {
                Err(PluginError::msg("connection reset by peer"))
            }
        }
        let c = Collectives::from_ops(Arc::new(Failing), false);
        let through_ffi = Collectives::from_ffi(&c.to_ffi());
        let t = Tensor::zeros([3, 2], (Kind::Float, Device::Cpu));
        for c in [c, through_ffi] {
            let e = c.all_gather_with_grad(&t).err().unwrap().message();
            assert!(e.contains("all_gather_with_grad"), "{e}");
            assert!(e.contains("rank 1 of 2"), "{e}");
            assert!(e.contains("connection reset by peer"), "{e}");
        }
    }
}
