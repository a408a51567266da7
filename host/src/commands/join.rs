//! Joining a distributed run: when torchrun (or a user) set `RANK`/`WORLD_SIZE`, this process
//! joins the c10d process group ([`crate::dist`]), installs the engine's
//! [`World`](crate::world::World) and the plugins' collectives handle, and turns on the debug
//! check of every collective when `dist_debug` asks for it ([`crate::commands::train`] then
//! checks that every process resolved the same config). Without those variables nothing
//! happens.

use crate::config::{DistBackend, RunConfig};
use crate::dist::{Backend, DistEnv, ProcessGroup, ReduceOp};
use crate::world::{self, Comm, Reduce, World};
use anyhow::{bail, Result};
use ssl_plugin_api::tch::{Device, Tensor};
use ssl_plugin_api::{CollectiveOps, Collectives, ReduceOp as PluginReduce};
use ssl_plugin_api::{PluginError, Result as PluginResult};
use std::sync::Arc;
use std::time::Duration;

impl Comm for ProcessGroup {
    fn rank(&self) -> usize {
        ProcessGroup::rank(self)
    }
    fn world_size(&self) -> usize {
        ProcessGroup::world_size(self)
    }
    fn all_reduce_(&self, tensors: &[Tensor], op: Reduce) -> Result<()> {
        let op = match op {
            Reduce::Sum => ReduceOp::Sum,
            Reduce::Average => ReduceOp::Average,
        };
        ProcessGroup::all_reduce_(self, tensors, op)
    }
    fn broadcast_(&self, tensors: &[Tensor], root: usize) -> Result<()> {
        ProcessGroup::broadcast_(self, tensors, root)
    }
    fn all_gather(&self, tensor: &Tensor) -> Result<Tensor> {
        ProcessGroup::all_gather(self, tensor)
    }
    fn barrier(&self) -> Result<()> {
        ProcessGroup::barrier(self)
    }
    fn diagnose(&self, what: &str, error: anyhow::Error) -> anyhow::Error {
        ProcessGroup::diagnose(self, what, format!("{error:#}"))
    }
    fn shutdown(&self) {
        ProcessGroup::shutdown(self)
    }
}

/// The process group as the plugins' [`CollectiveOps`]: tensors travel on the backend's
/// device (Gloo: the CPU) and come back where the algorithm made them. The collectives with
/// gradient take the algorithm's tensor as it is: their autograd node moves it inside its own
/// forward and backward, so the backward keeps them in graph order on the device's thread (see
/// `host/csrc/c10d_shim.cpp`); the others are moved here, without gradient.
struct PluginOps(Arc<ProcessGroup>, Device);

impl PluginOps {
    /// Runs `op` on `t` moved to the backend's device, and moves the result back (callers pass
    /// detached tensors: no gradient flows here).
    fn run(
        &self,
        t: &Tensor,
        op: impl FnOnce(&ProcessGroup, &Tensor) -> anyhow::Result<Tensor>,
    ) -> PluginResult<Tensor> {
        let home = t.device();
        let moved = if home == self.1 {
            t.shallow_clone()
        } else {
            t.to_device(self.1)
        };
        let out = op(&self.0, &moved).map_err(plugin_error)?;
        Ok(if home == self.1 {
            out
        } else {
            out.to_device(home)
        })
    }
}

fn plugin_error(e: anyhow::Error) -> PluginError {
    PluginError::msg(format!("{e:#}"))
}

impl CollectiveOps for PluginOps {
    fn rank(&self) -> usize {
        self.0.rank()
    }
    fn world_size(&self) -> usize {
        self.0.world_size()
    }
    fn all_reduce(&self, t: &Tensor, op: PluginReduce, with_grad: bool) -> PluginResult<Tensor> {
        if with_grad {
            if !matches!(op, PluginReduce::Sum) {
                return Err(PluginError::msg(
                    "an all-reduce with gradient sums (divide by the world size after it)",
                ));
            }
            return self.0.all_reduce_sum_with_grad(t).map_err(plugin_error);
        }
        let op = match op {
            PluginReduce::Sum => ReduceOp::Sum,
            PluginReduce::Average => ReduceOp::Average,
        };
        self.run(&t.detach(), |pg, t| {
            let out = t.copy();
            pg.all_reduce_(std::slice::from_ref(&out), op)?;
            Ok(out)
        })
    }
    fn all_gather(&self, t: &Tensor, with_grad: bool) -> PluginResult<Tensor> {
        if with_grad {
            self.0.all_gather_with_grad(t).map_err(plugin_error)
        } else {
            self.run(&t.detach(), |pg, t| pg.all_gather(t))
        }
    }
}

/// The training device of this process: with several processes on CUDA, `cuda:LOCAL_RANK`.
pub fn process_device(chosen: Device) -> Device {
    let world = world::current();
    match chosen {
        Device::Cuda(_) if world.is_distributed() => Device::Cuda(world.local_rank),
        other => other,
    }
}

/// Joins the distributed run the environment describes, if any (see the module docs).
pub fn join_if_distributed(config: &RunConfig) -> Result<()> {
    let Some(env) = DistEnv::from_env()? else {
        return Ok(());
    };
    let chosen = crate::device::choose(config.device.as_deref())?;
    let backend = match (config.dist_backend, chosen) {
        (DistBackend::Nccl, Device::Cpu) => {
            bail!("--dist_backend=nccl needs CUDA, but this run trains on the CPU (--device)")
        }
        (DistBackend::Nccl, _) => Backend::Nccl,
        (DistBackend::Auto, Device::Cuda(_)) if crate::dist::has_nccl() => Backend::Nccl,
        (DistBackend::Auto, Device::Cuda(_)) => {
            if env.rank == 0 {
                eprintln!(
                    "note: this build of ssl-host has no NCCL (the set-up installs the CUDA \
                     headers it needs, see docs/distributed.md); the processes communicate \
                     through Gloo on the CPU"
                );
            }
            Backend::Gloo
        }
        _ => Backend::Gloo,
    };
    let comm_device = match backend {
        Backend::Nccl => Device::Cuda(env.local_rank),
        Backend::Gloo => Device::Cpu,
    };
    if let Device::Cuda(_) = chosen {
        let count = ssl_plugin_api::tch::Cuda::device_count() as usize;
        if env.local_rank >= count {
            bail!(
                "distributed training: LOCAL_RANK={} but this node has {count} CUDA device(s); \
                 start at most {count} processes per node (--nproc_per_node)",
                env.local_rank
            );
        }
    }
    let group = Arc::new(ProcessGroup::connect(
        &env,
        backend,
        Duration::from_secs(config.dist_timeout as u64),
    )?);
    world::install(World::new(
        Arc::clone(&group) as Arc<dyn Comm>,
        comm_device,
        env.local_rank,
    ))?;
    Collectives::install(Collectives::from_ops(
        Arc::new(PluginOps(Arc::clone(&group), comm_device)),
        config.sync_batchnorm,
    ));
    let world = world::current();
    // The debug check is on everywhere when any process asks for it, agreed in one collective
    // before any other: a process checking alone would send fingerprints where the others send
    // data. (The config check after the join names processes whose arguments differ.)
    let asked = f64::from(u8::from(config.dist_debug));
    let debug = world.all_reduce_f64(&[asked], Reduce::Sum)?[0] > 0.0;
    group.set_debug(debug);
    if world.is_main() {
        eprintln!(
            "distributed: {} processes joined ({:?}; this node: {} process(es)){}",
            world.size(),
            backend,
            env.local_world_size,
            if debug {
                "; --dist_debug: every collective is compared across processes first"
            } else {
                ""
            }
        );
    }
    Ok(())
}
