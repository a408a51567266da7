//! The processes of a run: rank, world size and the collectives the engine and tasks use
//! (gradient averaging, metric reductions, the run folder's name). A run not started by
//! torchrun is a world of one process, where every operation is the identity and nothing is
//! communicated. [`install`] sets the process's world once, at start
//! ([`crate::commands::train`] joins the group); [`current`] reads it everywhere else, and
//! [`shutdown`] ends it before the process exits (the world lives in a static, which is never
//! dropped).
//!
//! Whether an operation communicates never depends on what one process holds: an empty list
//! is still a collective, so every process takes part in the same ones.
//!
//! Tensors travel on the world's device (NCCL communicates CUDA tensors only); results come
//! back on the caller's device.

use anyhow::{bail, Context, Result};
use ssl_plugin_api::tch::{no_grad_guard, Device, Tensor};
use std::sync::{Arc, OnceLock};

/// How values are combined across processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduce {
    /// The sum over processes.
    Sum,
    /// The mean over processes.
    Average,
}

/// What a communication backend offers (the c10d process group, [`crate::dist`]).
pub trait Comm: Send + Sync {
    /// This process's rank.
    fn rank(&self) -> usize;
    /// The number of processes.
    fn world_size(&self) -> usize;
    /// Combines `tensors` in place across processes.
    fn all_reduce_(&self, tensors: &[Tensor], op: Reduce) -> Result<()>;
    /// Overwrites `tensors` in place with those of process `root`.
    fn broadcast_(&self, tensors: &[Tensor], root: usize) -> Result<()>;
    /// `[n, ...]` on every process → `[world·n, ...]`, in rank order (no gradient).
    fn all_gather(&self, tensor: &Tensor) -> Result<Tensor>;
    /// Waits for every process.
    fn barrier(&self) -> Result<()>;
    /// The error of a failed operation (e.g. a backward pass whose collectives failed),
    /// naming the processes that are gone.
    fn diagnose(&self, what: &str, error: anyhow::Error) -> anyhow::Error {
        error.context(format!("{what} failed"))
    }
    /// Stops communicating: background threads end and the backend is shut down (or left
    /// alone when a collective failed); later operations fail.
    fn shutdown(&self) {}
}

/// The processes of the run, as this process sees them.
#[derive(Clone)]
pub struct World {
    comm: Option<Arc<dyn Comm>>,
    device: Device,
    /// `LOCAL_RANK`: the process's index on its node (its GPU).
    pub local_rank: usize,
}

static WORLD: OnceLock<World> = OnceLock::new();

/// Sets the process's world; an error when one is set already.
pub fn install(world: World) -> Result<()> {
    WORLD
        .set(world)
        .map_err(|_| anyhow::anyhow!("the distributed world is set up once per process"))
}

/// Shuts the installed world's backend down (see [`Comm::shutdown`]); `main` calls it on every
/// exit path, so that no thread of it runs while the process's static objects are destroyed.
/// Nothing happens in a single process or when called again.
pub fn shutdown() {
    if let Some(comm) = WORLD.get().and_then(|w| w.comm.as_ref()) {
        comm.shutdown();
    }
}

/// The process's world: a single process unless [`install`] set one.
pub fn current() -> &'static World {
    static SINGLE: OnceLock<World> = OnceLock::new();
    WORLD
        .get()
        .unwrap_or_else(|| SINGLE.get_or_init(World::single))
}

impl World {
    /// One process.
    pub fn single() -> World {
        World {
            comm: None,
            device: Device::Cpu,
            local_rank: 0,
        }
    }

    /// Processes joined through `comm`, communicating tensors on `device`.
    pub fn new(comm: Arc<dyn Comm>, device: Device, local_rank: usize) -> World {
        World {
            comm: Some(comm),
            device,
            local_rank,
        }
    }

    /// This process's rank (0 in a single process).
    pub fn rank(&self) -> usize {
        self.comm.as_ref().map_or(0, |c| c.rank())
    }

    /// The number of processes (1 in a single process).
    pub fn size(&self) -> usize {
        self.comm.as_ref().map_or(1, |c| c.world_size())
    }

    /// Whether this process joined a process group (torchrun's variables were set), even a
    /// group of one: its collectives then run (as DDP's do with one process), so a run of one
    /// process under torchrun exercises the backend (`--dist_backend=nccl` on one GPU).
    pub fn is_distributed(&self) -> bool {
        self.comm.is_some()
    }

    /// Whether this process writes the run's files and prints progress (rank 0).
    pub fn is_main(&self) -> bool {
        self.rank() == 0
    }

    /// The backend, for code that needs more than this module offers (the plugins'
    /// collectives handle).
    pub fn comm(&self) -> Option<&Arc<dyn Comm>> {
        self.comm.as_ref()
    }

    /// Combines `tensors` in place (each stays on its device; no autograd record).
    pub fn all_reduce_(&self, tensors: &[Tensor], op: Reduce) -> Result<()> {
        let Some(comm) = self.comm.as_ref().filter(|_| self.is_distributed()) else {
            return Ok(());
        };
        let _guard = no_grad_guard();
        if tensors.iter().all(|t| t.device() == self.device) {
            return comm.all_reduce_(tensors, op);
        }
        let moved: Vec<Tensor> = tensors.iter().map(|t| t.to_device(self.device)).collect();
        comm.all_reduce_(&moved, op)?;
        for (t, m) in tensors.iter().zip(&moved) {
            t.shallow_clone().copy_(m);
        }
        Ok(())
    }

    /// Combines plain numbers (in double precision): one collective, even for an empty list.
    pub fn all_reduce_f64(&self, values: &[f64], op: Reduce) -> Result<Vec<f64>> {
        if !self.is_distributed() {
            return Ok(values.to_vec());
        }
        let t = Tensor::from_slice(values).to_device(self.device);
        self.all_reduce_(std::slice::from_ref(&t), op)?;
        Ok(Vec::<f64>::try_from(&t.to_device(Device::Cpu))?)
    }

    /// Overwrites `tensors` in place with rank 0's (parameters too: no autograd record).
    pub fn broadcast_from_main(&self, tensors: &[Tensor]) -> Result<()> {
        let Some(comm) = self.comm.as_ref().filter(|_| self.is_distributed()) else {
            return Ok(());
        };
        let _guard = no_grad_guard();
        let moved: Vec<Tensor> = tensors.iter().map(|t| t.to_device(self.device)).collect();
        comm.broadcast_(&moved, 0)?;
        for (t, m) in tensors.iter().zip(&moved) {
            if t.device() != self.device {
                t.shallow_clone().copy_(m);
            }
        }
        Ok(())
    }

    /// Every process's `[n_r, ...]` rows (`n_r` may differ between processes), concatenated in
    /// rank order, on the caller's device. No gradient.
    pub fn gather_rows(&self, tensor: &Tensor) -> Result<Tensor> {
        let Some(comm) = self.comm.as_ref().filter(|_| self.is_distributed()) else {
            return Ok(tensor.shallow_clone());
        };
        let _guard = no_grad_guard();
        let home = tensor.device();
        let t = tensor.to_device(self.device).contiguous();
        let n = t.size()[0];
        let counts = comm.all_gather(&Tensor::from_slice(&[n]).to_device(self.device))?;
        let counts = Vec::<i64>::try_from(&counts.to_device(Device::Cpu))?;
        let most = counts.iter().copied().max().unwrap_or(0);
        let padded = if n < most {
            let mut shape = t.size();
            shape[0] = most - n;
            let zeros = Tensor::zeros(&shape, (t.kind(), self.device));
            Tensor::cat(&[t, zeros], 0)
        } else {
            t
        };
        let all = comm.all_gather(&padded)?;
        let parts: Vec<Tensor> = counts
            .iter()
            .enumerate()
            .map(|(r, &c)| all.narrow(0, r as i64 * most, c))
            .collect();
        Ok(Tensor::cat(&parts, 0).to_device(home))
    }

    /// Rank 0's `text` on every process (`text` is ignored elsewhere).
    pub fn broadcast_text(&self, text: &str) -> Result<String> {
        let bytes = self.broadcast_bytes(text.as_bytes())?;
        String::from_utf8(bytes).context("the text rank 0 sent is not UTF-8")
    }

    /// Rank 0's `bytes` on every process (`bytes` is ignored elsewhere): its length, then its
    /// bytes.
    pub fn broadcast_bytes(&self, bytes: &[u8]) -> Result<Vec<u8>> {
        if !self.is_distributed() {
            return Ok(bytes.to_vec());
        }
        let len = Tensor::from_slice(&[bytes.len() as i64]);
        self.broadcast_from_main(std::slice::from_ref(&len))?;
        let len = len.int64_value(&[0]) as usize;
        let t = if self.is_main() {
            Tensor::from_slice(bytes)
        } else {
            Tensor::zeros(
                [len as i64],
                (ssl_plugin_api::tch::Kind::Uint8, Device::Cpu),
            )
        };
        self.broadcast_from_main(std::slice::from_ref(&t))?;
        Ok(Vec::<u8>::try_from(&t)?)
    }

    /// An error unless every process has the same `text` (e.g. its resolved config), naming
    /// the processes that differ from rank 0 and `what` the text is.
    pub fn check_same(&self, text: &str, what: &str) -> Result<()> {
        if !self.is_distributed() {
            return Ok(());
        }
        let hash = crate::seeds::seed_of(&text_words(text)) as i64;
        let hashes = self.gather_rows(&Tensor::from_slice(&[hash]))?;
        let hashes = Vec::<i64>::try_from(&hashes)?;
        let differ: Vec<String> = hashes
            .iter()
            .enumerate()
            .filter(|(_, &h)| h != hashes[0])
            .map(|(r, _)| r.to_string())
            .collect();
        if !differ.is_empty() {
            bail!(
                "distributed training: the {what} of rank(s) {} differs from rank 0's (this \
                 process is rank {} of {}); every process must be started with the same \
                 arguments",
                differ.join(", "),
                self.rank(),
                self.size()
            );
        }
        Ok(())
    }

    /// `error` of `what`, naming the processes that are gone when several train together.
    pub fn diagnose(&self, what: &str, error: anyhow::Error) -> anyhow::Error {
        match self.comm.as_ref().filter(|_| self.is_distributed()) {
            Some(comm) => comm.diagnose(what, error),
            None => error,
        }
    }

    /// The names of `tensors` whose values differ from rank 0's (compared through a per-tensor
    /// checksum: the sum and the sum of squares in double precision). Every process must pass
    /// the same list. Empty in a single process.
    pub fn diverged(&self, tensors: &[(String, Tensor)]) -> Result<Vec<String>> {
        if !self.is_distributed() {
            return Ok(Vec::new());
        }
        let _guard = no_grad_guard();
        let sums: Vec<f64> = tensors
            .iter()
            .flat_map(|(_, t)| {
                let t = t.to_kind(ssl_plugin_api::tch::Kind::Double);
                [
                    t.sum(None).double_value(&[]),
                    t.square().sum(None).double_value(&[]),
                ]
            })
            .collect();
        let mine = Tensor::from_slice(&sums).to_device(self.device);
        let main = mine.copy();
        self.broadcast_from_main(std::slice::from_ref(&main))?;
        let (mine, main) = (
            Vec::<f64>::try_from(&mine.to_device(Device::Cpu))?,
            Vec::<f64>::try_from(&main.to_device(Device::Cpu))?,
        );
        Ok(tensors
            .iter()
            .enumerate()
            .filter(|(i, _)| mine[2 * i..2 * i + 2] != main[2 * i..2 * i + 2])
            .map(|(_, (name, _))| name.clone())
            .collect())
    }

    /// Waits for every process.
    pub fn barrier(&self) -> Result<()> {
        match self.comm.as_ref().filter(|_| self.is_distributed()) {
            Some(comm) => comm.barrier(),
            None => Ok(()),
        }
    }

    /// Rows `[rank·n, (rank+1)·n)` of a tensor made for the whole global batch of
    /// `world·n` rows: how a random draw of the one-process run (dropout masks) is split
    /// between processes so that each draws what its samples drew there.
    pub fn my_rows(&self, global: &Tensor, n: i64) -> Tensor {
        if !self.is_distributed() {
            return global.shallow_clone();
        }
        global.narrow(0, self.rank() as i64 * n, n)
    }
}

/// The bytes of `text` as 64-bit words, for hashing.
fn text_words(text: &str) -> Vec<u64> {
    let mut words: Vec<u64> = text
        .as_bytes()
        .chunks(8)
        .map(|c| {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            u64::from_le_bytes(w)
        })
        .collect();
    words.push(text.len() as u64);
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_process_world_is_the_identity() {
        let w = World::single();
        assert_eq!((w.rank(), w.size(), w.is_main()), (0, 1, true));
        let t = Tensor::from_slice(&[1.0f32, 2.0]);
        w.all_reduce_(std::slice::from_ref(&t), Reduce::Average)
            .unwrap();
        assert_eq!(Vec::<f32>::try_from(&t).unwrap(), vec![1.0, 2.0]);
        assert_eq!(w.all_reduce_f64(&[3.0], Reduce::Sum).unwrap(), vec![3.0]);
        assert_eq!(w.broadcast_text("run").unwrap(), "run");
        w.check_same("a", "config").unwrap();
        assert_eq!(w.gather_rows(&t).unwrap().size(), vec![2]);
        assert_eq!(w.my_rows(&t, 2).size(), vec![2]);
        assert_ne!(text_words("ab"), text_words("ab\0"));
    }
}
