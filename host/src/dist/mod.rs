//! Distributed data-parallel plumbing on libtorch's own engine, c10d: the store through which
//! the processes of a run meet, a process group (Gloo on CPU, NCCL on CUDA when this build has
//! it) and the collectives the trainer and plugins need (bucketed all-reduce, broadcast,
//! all-gather with and without gradient, barrier).
//!
//! The C++ side is `host/csrc/c10d_shim.cpp`, compiled by `host/build.rs` against the headers of
//! the torch wheel; this module is its safe face. It deliberately knows nothing of training:
//! which tensors to reduce and when is the engine's business.
//!
//! Every collective must be issued in the same order on every rank, as with
//! `torch.distributed`, and every call issues at least one (an empty list too), so a rank never
//! skips what the others run. [`ProcessGroup::set_debug`] turns on a check before each
//! collective (its number, operation, dtype and shape compared across ranks) that stops at the
//! first one that differs, naming what each rank issued. A collective that fails (a peer closed
//! its connections, or the timeout passed) returns an error that names the ranks that are gone:
//! each process beats a counter `heartbeat/<rank>` in the store every [`HEARTBEAT_PERIOD`] on its
//! own connection, and a failed collective watches the others' counters for [`GONE_AFTER`]; the
//! ranks whose counter stood still are named.
//!
//! An exception that the communication library throws on one of its own threads (Gloo does when
//! ranks send different sizes) would end the process through `std::terminate`; the shim turns it
//! into the same kind of error, printed as `error: ...`, and exit code 1. A group is shut down
//! with [`ProcessGroup::shutdown`] (or when dropped) before the process exits: its heartbeat
//! stops, and its backend is destroyed, or left alone after a failed collective, whose threads
//! may be stuck.

mod env;
pub(crate) mod ffi;
mod store;

pub use env::DistEnv;
pub use store::Store;

use anyhow::{anyhow, bail, Result};
use ssl_plugin_api::tch::Tensor;
use std::ffi::{CStr, CString};
use std::fmt::Display;
use std::os::raw::{c_char, c_void};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use torch_sys::C_tensor;

/// The communication library of a process group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Gloo: CPU tensors, TCP between processes.
    Gloo,
    /// NCCL: CUDA tensors, one GPU per process.
    Nccl,
}

/// How [`ProcessGroup::all_reduce_`] combines the ranks' tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    /// The element-wise sum over ranks.
    Sum,
    /// The element-wise mean over ranks (the sum divided by the world size; floating point
    /// tensors only).
    Average,
}

/// The largest bucket [`ProcessGroup::all_reduce_`] and [`ProcessGroup::broadcast_`] send in
/// one collective by default (25 MiB, as PyTorch DDP's `bucket_cap_mb`).
pub const DEFAULT_BUCKET_BYTES: usize = 25 << 20;

/// How often each process beats its heartbeat counter in the store.
pub const HEARTBEAT_PERIOD: Duration = Duration::from_millis(500);

/// How long a failed collective watches the other ranks' heartbeats before it names the ones
/// whose counter stood still as gone.
pub const GONE_AFTER: Duration = Duration::from_secs(3);

/// What the bucketed collectives of a group have sent so far (for measurements).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// The number of all-reduce and broadcast collectives issued (one per bucket).
    pub collectives: u64,
    /// The bytes of tensor data passed to [`ProcessGroup::all_reduce_`] and
    /// [`ProcessGroup::broadcast_`].
    pub bytes: u64,
}

/// Whether this build of ssl-host can create NCCL process groups.
pub fn has_nccl() -> bool {
    // SAFETY: a pure query of a compile-time flag.
    unsafe { ffi::shim_has_nccl() != 0 }
}

/// Counts the groups this process created, so that each gets its own store prefix (every rank
/// creates its groups in the same order).
static GROUPS_CREATED: AtomicUsize = AtomicUsize::new(0);

/// What the error of a failed collective says to rerun with when the ranks may have issued
/// different collectives.
const DEBUG_HINT: &str =
    "rerun with --dist_debug=true to name the first collective that differs between ranks";

/// The start and end of the shim's message when the debug check finds a collective that differs
/// between ranks.
const MISMATCH_START: &str = "distributed training: collective #";
const MISMATCH_END: &str = "(--dist_debug)";

/// A c10d process group joined by every process of a run, with its store and heartbeat.
pub struct ProcessGroup {
    group: *mut c_void,
    peers: Arc<Peers>,
    bucket_bytes: AtomicUsize,
    collectives: AtomicU64,
    bytes: AtomicU64,
    heartbeat: Mutex<Option<Heartbeat>>,
    /// Whether [`ProcessGroup::shutdown`] ran.
    shut_down: AtomicBool,
}

/// Who the other processes are and how to tell whether they still run: what an error needs to
/// name the ranks that are gone.
struct Peers {
    store: Store,
    /// Keys of this group live under this prefix of the store.
    prefix: String,
    rank: usize,
    world_size: usize,
    /// Who hosts the store, for messages.
    store_host: StoreHost,
    timeout: Duration,
}

/// The peers of the latest group, for errors reported by the shim's terminate handler.
static FATAL_PEERS: Mutex<Option<Weak<Peers>>> = Mutex::new(None);

/// Called by the shim's terminate handler, on whatever thread threw, before it ends the process
/// with exit code 1: prints the error as `main` prints one, naming the ranks that are gone as a
/// failed collective does.
extern "C" fn report_fatal(text: *const c_char) {
    let text = if text.is_null() {
        String::new()
    } else {
        // SAFETY: the shim passes a NUL-terminated string that lives for the call.
        unsafe { CStr::from_ptr(text) }
            .to_string_lossy()
            .into_owned()
    };
    let _ = std::panic::catch_unwind(move || {
        let what = "the communication library (an exception on one of its own threads)";
        let peers = FATAL_PEERS
            .try_lock()
            .ok()
            .and_then(|p| p.as_ref().and_then(Weak::upgrade));
        let mut message = match peers {
            Some(peers) => peers.diagnose(what, &text).to_string(),
            None => format!("distributed training: {what} failed: {text}"),
        };
        if !message.contains(DEBUG_HINT) {
            message.push_str(&format!(
                "\n(ranks that issue collectives of different sizes end this way: {DEBUG_HINT})"
            ));
        }
        eprintln!("error: {message}");
    });
}

// SAFETY: c10d process groups are built to be driven from several threads (torch.distributed
// releases the GIL around them); the shim's handle is only freed in Drop (shutdown leaves it
// valid: later collectives fail with an error). Callers must still issue collectives in the same
// order on every rank.
unsafe impl Send for ProcessGroup {}
// SAFETY: as above.
unsafe impl Sync for ProcessGroup {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StoreHost {
    Rank0,
    Agent,
}

struct Heartbeat {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Heartbeat {
    fn start(store: Store, key: String) -> Heartbeat {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("ssl-host-heartbeat".into())
            .spawn(move || loop {
                // A store that cannot be reached is diagnosed by the collective that fails.
                let _ = store.add(&key, 1);
                let (lock, wake) = &*flag;
                let stopped = lock.lock().unwrap_or_else(|e| e.into_inner());
                let (stopped, _) = wake
                    .wait_timeout(stopped, HEARTBEAT_PERIOD)
                    .unwrap_or_else(|e| e.into_inner());
                if *stopped {
                    break;
                }
            })
            .ok();
        Heartbeat { stop, thread }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        let (lock, wake) = &*self.stop;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn millis(timeout: Duration) -> i64 {
    i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX)
}

fn tensor_bytes(t: &Tensor) -> u64 {
    (t.numel() * t.kind().elt_size_in_bytes()) as u64
}

impl ProcessGroup {
    /// Joins the process group of the run described by `env`: connects to the store (torchrun's
    /// agent store when `env.agent_store`, else rank 0 hosts it and the others connect), starts
    /// this process's heartbeat, and creates the `backend` group. Every operation waits at most
    /// `timeout` for the other ranks. Gloo binds to the address this machine's hostname resolves
    /// to (loopback when none), or to the interfaces in `GLOO_SOCKET_IFNAME`, as torch does.
    pub fn connect(env: &DistEnv, backend: Backend, timeout: Duration) -> Result<ProcessGroup> {
        if backend == Backend::Nccl && !has_nccl() {
            bail!(
                "--dist_backend=nccl: this build of ssl-host has no NCCL (it needs libtorch_cuda.so \
                 and the CUDA and NCCL headers of the torch wheel's nvidia packages at build time); \
                 use gloo"
            );
        }
        let store_host = if env.agent_store {
            StoreHost::Agent
        } else {
            StoreHost::Rank0
        };
        let is_server = store_host == StoreHost::Rank0 && env.rank == 0;
        let (host, port) = (env.master_addr.as_str(), env.master_port);
        let who = match store_host {
            StoreHost::Agent => "torchrun's agent",
            StoreHost::Rank0 => "rank 0",
        };
        let store =
            Store::connect(host, port, is_server, Some(env.world_size), timeout).map_err(|e| {
                anyhow!(
                    "distributed training: rank {} of {} could not meet the others at the store \
                     {host}:{port} (hosted by {who}) within {timeout:?}: {e}",
                    env.rank,
                    env.world_size
                )
            })?;
        let number = GROUPS_CREATED.fetch_add(1, Ordering::SeqCst);
        let (backend_number, device_index) = match backend {
            Backend::Gloo => (0, -1),
            Backend::Nccl => (1, env.local_rank as i32),
        };
        let prefix = format!("ssl-host/attempt_{}/group_{number}/", env.restart_count);
        let beat_store = Store::connect(host, port, false, None, timeout)?;
        let heartbeat = Heartbeat::start(beat_store, format!("{prefix}heartbeat/{}", env.rank));

        let c_prefix = CString::new(format!("{prefix}c10d"))?;
        let ifnames = CString::new(std::env::var("GLOO_SOCKET_IFNAME").unwrap_or_default())
            .map_err(|_| anyhow!("GLOO_SOCKET_IFNAME contains a NUL byte"))?;
        let mut err: *mut c_char = ptr::null_mut();
        // SAFETY: the store handle is live for the call (the group keeps its own reference);
        // the strings outlive the call; err is an out-parameter.
        let group = unsafe {
            ffi::shim_pg_new(
                store.handle(),
                c_prefix.as_ptr(),
                backend_number,
                env.rank as i32,
                env.world_size as i32,
                device_index,
                millis(timeout),
                ifnames.as_ptr(),
                &mut err,
            )
        };
        if group.is_null() {
            // SAFETY: the shim failed and stored its message in err.
            let message = unsafe { ffi::take_error(err) };
            bail!(
                "distributed training: rank {} of {} could not create the {backend:?} process \
                 group: {message}",
                env.rank,
                env.world_size
            );
        }
        let peers = Arc::new(Peers {
            store,
            prefix,
            rank: env.rank,
            world_size: env.world_size,
            store_host,
            timeout,
        });
        *FATAL_PEERS.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::downgrade(&peers));
        // SAFETY: report_fatal is a plain function that lives as long as the process.
        unsafe { ffi::shim_set_fatal_hook(report_fatal) };
        Ok(ProcessGroup {
            group,
            peers,
            bucket_bytes: AtomicUsize::new(DEFAULT_BUCKET_BYTES),
            collectives: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            heartbeat: Mutex::new(Some(heartbeat)),
            shut_down: AtomicBool::new(false),
        })
    }

    /// This process's rank, `0..world_size`.
    pub fn rank(&self) -> usize {
        self.peers.rank
    }

    /// The number of processes in the group.
    pub fn world_size(&self) -> usize {
        self.peers.world_size
    }

    /// The timeout every operation of this group waits for the other ranks.
    pub fn timeout(&self) -> Duration {
        self.peers.timeout
    }

    /// Turns the debug check of every later collective on or off: each first compares its
    /// number, operation, dtype and shape across ranks (a small all-gather) and, where they
    /// differ, fails on every rank with an error naming what each rank issued, such as
    /// "collective #57 differs between ranks: rank 0 all-gather float [8, 128], rank 1
    /// all-gather float [4, 128]". Every rank must turn it on between the same collectives.
    pub fn set_debug(&self, on: bool) {
        // SAFETY: the group handle is live until Drop.
        unsafe { ffi::shim_pg_set_debug(self.group, on as i32) };
    }

    /// Stops this process's heartbeat and shuts the backend down, so that nothing of the group
    /// runs when the process exits; later operations of the group fail. After a collective
    /// failed, the backend is left alone rather than destroyed (its destructor would join
    /// threads that may be stuck in the failed operation). Returns at once when called again.
    pub fn shutdown(&self) {
        self.shut_down.store(true, Ordering::SeqCst);
        let heartbeat = self
            .heartbeat
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        drop(heartbeat);
        // SAFETY: the group handle is live until Drop; the shim shuts a group down once.
        unsafe { ffi::shim_pg_shutdown(self.group) };
    }

    /// Sets the largest bucket of the bucketed collectives (default [`DEFAULT_BUCKET_BYTES`]);
    /// every rank must use the same size.
    pub fn set_bucket_bytes(&self, bytes: usize) {
        self.bucket_bytes.store(bytes.max(1), Ordering::Relaxed);
    }

    /// What the bucketed collectives of this group have sent so far.
    pub fn traffic(&self) -> Traffic {
        Traffic {
            collectives: self.collectives.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }

    /// Replaces every tensor of `tensors` by its sum or mean over the ranks. Tensors of one
    /// dtype and device are packed into buckets of at most the bucket size (one collective per
    /// bucket); every rank must pass tensors of the same shapes in the same order.
    pub fn all_reduce_(&self, tensors: &[Tensor], op: ReduceOp) -> Result<()> {
        let op_number = match op {
            ReduceOp::Sum => 0,
            ReduceOp::Average => 1,
        };
        if op == ReduceOp::Average {
            if let Some((i, t)) = tensors
                .iter()
                .enumerate()
                .find(|(_, t)| !t.is_floating_point())
            {
                bail!(
                    "all-reduce average of tensor {i}: its dtype {:?} is not floating point",
                    t.kind()
                );
            }
        }
        self.bucketed("all-reduce", tensors, |ptrs, n, bucket, calls, err| {
            // SAFETY: ptrs holds n live tensors of the caller; the out-parameters are valid.
            unsafe { ffi::shim_pg_all_reduce(self.group, ptrs, n, op_number, bucket, calls, err) }
        })
    }

    /// Replaces every tensor of `tensors` by rank `root`'s (bucketed as [`Self::all_reduce_`]).
    pub fn broadcast_(&self, tensors: &[Tensor], root: usize) -> Result<()> {
        if root >= self.peers.world_size {
            bail!(
                "broadcast from rank {root}: the group has {} ranks",
                self.peers.world_size
            );
        }
        self.bucketed("broadcast", tensors, |ptrs, n, bucket, calls, err| {
            // SAFETY: ptrs holds n live tensors of the caller; the out-parameters are valid.
            unsafe { ffi::shim_pg_broadcast(self.group, ptrs, n, root as i32, bucket, calls, err) }
        })
    }

    /// The concatenation along dim 0, in rank order, of every rank's `t` (shape `[n, ...]`,
    /// the same on every rank): `[world_size·n, ...]`. No gradient flows through it.
    pub fn all_gather(&self, t: &Tensor) -> Result<Tensor> {
        self.tensor_op("all-gather", t, ffi::shim_pg_all_gather)
    }

    /// As [`Self::all_gather`], with a gradient: the backward sums the incoming gradient over
    /// the ranks and returns this rank's rows of it (the semantics of
    /// `torch.distributed.nn.all_gather`), so the gradient of this rank's input is that of the
    /// sum of every rank's loss. Every rank must run the backward. The backward finds the group
    /// through the shim's registry of live groups (a group dropped before the backward is an
    /// error there); a backward that fails returns its error through tch's `f_backward`, which
    /// [`Self::diagnose`] turns into one that names the ranks that are gone.
    pub fn all_gather_with_grad(&self, t: &Tensor) -> Result<Tensor> {
        self.tensor_op("all-gather", t, ffi::shim_pg_all_gather_with_grad)
    }

    /// The sum over ranks of `t` (a new tensor), with a gradient: the backward sums the
    /// incoming gradient over the ranks. Every rank must run the backward.
    pub fn all_reduce_sum_with_grad(&self, t: &Tensor) -> Result<Tensor> {
        self.tensor_op("all-reduce", t, ffi::shim_pg_all_reduce_sum_with_grad)
    }

    /// Waits until every rank reached this barrier (at most the group's timeout).
    pub fn barrier(&self) -> Result<()> {
        let mut err: *mut c_char = ptr::null_mut();
        // SAFETY: the group is live; err is an out-parameter.
        let rc = unsafe { ffi::shim_pg_barrier(self.group, millis(self.peers.timeout), &mut err) };
        if rc != 0 {
            // SAFETY: the shim failed and stored its message in err.
            let message = unsafe { ffi::take_error(err) };
            return Err(self.diagnose("barrier", message));
        }
        Ok(())
    }

    /// Sets `key` in the run's store (under this group's prefix).
    pub fn store_set(&self, key: &str, value: &[u8]) -> Result<()> {
        self.peers
            .store
            .set(&self.user_key(key), value)
            .map_err(|e| self.diagnose("store set", e))
    }

    /// The value of `key` in the run's store, waiting up to the group's timeout for a rank to
    /// set it.
    pub fn store_get(&self, key: &str) -> Result<Vec<u8>> {
        self.peers
            .store
            .get(&self.user_key(key), self.peers.timeout)
            .map_err(|e| self.diagnose("store get", e))
    }

    /// Turns the failure of a distributed operation `what` (such as a backward through
    /// [`Self::all_gather_with_grad`] that returned `error`) into an error that names the
    /// ranks that are gone, after watching their heartbeats for up to [`GONE_AFTER`]. A
    /// collective that the debug check found to differ between ranks is reported as it is.
    pub fn diagnose(&self, what: &str, error: impl Display) -> anyhow::Error {
        if self.shut_down.load(Ordering::SeqCst) {
            return anyhow!(
                "distributed training: {what} failed on rank {} of {}: the process group was \
                 shut down",
                self.rank(),
                self.world_size()
            );
        }
        self.peers.diagnose(what, error)
    }

    fn user_key(&self, key: &str) -> String {
        format!("{}user/{key}", self.peers.prefix)
    }

    fn bucketed(
        &self,
        what: &str,
        tensors: &[Tensor],
        call: impl FnOnce(*const *mut C_tensor, usize, i64, *mut i64, *mut *mut c_char) -> i32,
    ) -> Result<()> {
        let ptrs: Vec<*mut C_tensor> = tensors.iter().map(|t| t.as_ptr() as *mut _).collect();
        let bucket = self.bucket_bytes.load(Ordering::Relaxed) as i64;
        let mut calls = 0i64;
        let mut err: *mut c_char = ptr::null_mut();
        let rc = call(ptrs.as_ptr(), ptrs.len(), bucket, &mut calls, &mut err);
        if rc != 0 {
            // SAFETY: the shim failed and stored its message in err.
            let message = unsafe { ffi::take_error(err) };
            return Err(self.diagnose(what, message));
        }
        self.collectives.fetch_add(calls as u64, Ordering::Relaxed);
        let bytes: u64 = tensors.iter().map(tensor_bytes).sum();
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        Ok(())
    }

    fn tensor_op(
        &self,
        what: &str,
        t: &Tensor,
        f: unsafe extern "C" fn(*mut c_void, *mut C_tensor, *mut *mut c_char) -> *mut C_tensor,
    ) -> Result<Tensor> {
        let mut err: *mut c_char = ptr::null_mut();
        // SAFETY: the group and t are live; the shim only reads t and returns a new tensor.
        let out = unsafe { f(self.group, t.as_ptr() as *mut _, &mut err) };
        if out.is_null() {
            // SAFETY: the shim failed and stored its message in err.
            let message = unsafe { ffi::take_error(err) };
            return Err(self.diagnose(what, message));
        }
        // SAFETY: the shim returned a new torch::Tensor* that we now own.
        Ok(unsafe { Tensor::from_ptr(out) })
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.shutdown();
        // SAFETY: the handle came from shim_pg_new and is freed once, here.
        unsafe { ffi::shim_pg_free(self.group) };
    }
}

/// The shim's message in `error` when the debug check found a collective that differs between
/// ranks (every rank fails there; nobody is gone).
fn debug_mismatch(error: &str) -> Option<&str> {
    let start = error.find(MISMATCH_START)?;
    let len = error[start..].find(MISMATCH_END)? + MISMATCH_END.len();
    Some(&error[start..start + len])
}

impl Peers {
    fn diagnose(&self, what: &str, error: impl Display) -> anyhow::Error {
        let error = error.to_string();
        if let Some(mismatch) = debug_mismatch(&error) {
            return anyhow!("{mismatch}");
        }
        let (rank, world) = (self.rank, self.world_size);
        let address = &self.store.address;
        match self.gone_ranks() {
            Err(store_error) => {
                let host = match self.store_host {
                    StoreHost::Rank0 => format!("rank 0 of {world}, which hosts the store"),
                    StoreHost::Agent => "torchrun's agent, which hosts the store".to_string(),
                };
                anyhow!(
                    "distributed training: {host} at {address}, is gone (the store is \
                     unreachable: {store_error}); this process (rank {rank}) stops. {what} \
                     failed: {error}"
                )
            }
            Ok(gone) if gone.is_empty() => anyhow!(
                "distributed training: {what} failed on rank {rank} of {world} while every rank \
                 still runs (a peer that hangs past the timeout of {:?}, or ranks that issued \
                 different collectives: {DEBUG_HINT}): {error}",
                self.timeout
            ),
            Ok(gone) => {
                let names = gone
                    .iter()
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                let (noun, verb, whose) = if gone.len() == 1 {
                    ("rank", "is", "its process")
                } else {
                    ("ranks", "are", "their processes")
                };
                anyhow!(
                    "distributed training: {noun} {names} of {world} {verb} gone ({whose} \
                     stopped: no heartbeat in the store for {GONE_AFTER:?}); this process \
                     (rank {rank}) stops. {what} failed: {error}"
                )
            }
        }
    }

    /// The other ranks whose heartbeat counter did not move for [`GONE_AFTER`], or why the
    /// store could not be read.
    fn gone_ranks(&self) -> std::result::Result<Vec<usize>, String> {
        let others: Vec<usize> = (0..self.world_size).filter(|&r| r != self.rank).collect();
        let read = |r: usize| -> std::result::Result<i64, String> {
            self.store
                .add(&format!("{}heartbeat/{r}", self.prefix), 0)
                .map_err(|e| e.to_string())
        };
        let first = others
            .iter()
            .map(|&r| read(r))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let mut still: Vec<(usize, i64)> = others.into_iter().zip(first).collect();
        let start = Instant::now();
        while !still.is_empty() && start.elapsed() < GONE_AFTER {
            std::thread::sleep(HEARTBEAT_PERIOD / 2);
            let mut next = Vec::new();
            for (r, before) in still {
                if read(r)? == before {
                    next.push((r, before));
                }
            }
            still = next;
        }
        Ok(still.into_iter().map(|(r, _)| r).collect())
    }
}
