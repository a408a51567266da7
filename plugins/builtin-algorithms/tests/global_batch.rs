//! Barlow Twins, VICReg, MoCo v2 and DINO on several processes, simulated in one: each gathers
//! where its paper gathers, and the result is checked against one process holding the global
//! batch.
//!
//! - Barlow Twins and VICReg: two ranks' losses built in one autograd graph, each with a
//!   collectives handle whose gather returns its own embeddings and the other rank's (graph
//!   attached). Backward of `L_0 + L_1` hands every rank's replica exactly what
//!   `all_gather_with_grad` hands it in a real run (its slice of the gradient summed over ranks);
//!   halving the sum of the two replicas' gradients is the host's averaging. Loss and averaged
//!   gradient must equal one process's on the concatenated batch.
//! - MoCo and DINO: two ranks in two threads, exchanging tensors through a shared mailbox (no
//!   gradient needed): the queues (MoCo) and centres (DINO) of both ranks must be identical and
//!   hold every rank's keys / the mean over every rank's teacher outputs.

mod common;

use common::{TinyEncoder, BATCH};
use ssl_builtin_algorithms::barlow_twins::{barlow_twins_loss, barlow_twins_loss_across_ranks};
use ssl_builtin_algorithms::moco::QUEUE_PTR_STATE_NAME;
use ssl_builtin_algorithms::vicreg::{vicreg_loss, vicreg_loss_across_ranks, VicRegCoeffs};
use ssl_builtin_algorithms::{Dino, Moco};
use ssl_plugin_api::tch::{self, Device, Kind, Tensor};
use ssl_plugin_api::{bail, CollectiveOps, Collectives, Params, ReduceOp, Result, SslAlgorithm};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// The tests of this file install process-wide collectives and seed libtorch's global
/// generator: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Barlow Twins and VICReg: the statistics of the global batch, the one-process gradient.

/// Rank `rank` of 2 in one autograd graph: each gather returns this rank's tensor and the next
/// of `others` (the other rank's tensor of that call, graph attached) in rank order.
struct GraphRank {
    rank: usize,
    others: Mutex<Vec<Tensor>>,
    gathers: Mutex<Vec<bool>>,
}

impl GraphRank {
    fn new(rank: usize, others: Vec<Tensor>) -> Arc<GraphRank> {
        Arc::new(GraphRank {
            rank,
            others: Mutex::new(others),
            gathers: Mutex::new(Vec::new()),
        })
    }
}

impl CollectiveOps for GraphRank {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        2
    }
    fn all_reduce(&self, _: &Tensor, _: ReduceOp, _: bool) -> Result<Tensor> {
        bail!("the losses of Barlow Twins and VICReg only gather")
    }
    fn all_gather(&self, t: &Tensor, with_grad: bool) -> Result<Tensor> {
        self.gathers.lock().unwrap().push(with_grad);
        let other = self.others.lock().unwrap().remove(0);
        let out = if self.rank == 0 {
            Tensor::cat(&[t, &other], 0)
        } else {
            Tensor::cat(&[&other, t], 0)
        };
        Ok(if with_grad { out } else { out.detach() })
    }
}

/// Two ranks, each with 3 images per view and its replica of a linear "network" `x W`: the
/// loss of each rank and the average of the replicas' gradients equal one process's loss and
/// gradient on the 6 images. `across`: the loss of two views' embeddings across ranks (gathers
/// with gradient or not); `one`: the same loss on one process.
fn check_global_batch(
    across: impl Fn(&Tensor, &Tensor, &Collectives, bool) -> Result<Tensor>,
    one: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
) {
    tch::manual_seed(3);
    let opts = (Kind::Double, Device::Cpu);
    let x: Vec<Tensor> = (0..4).map(|_| Tensor::randn([3, 5], opts)).collect();
    let (x1_a, x2_a, x1_b, x2_b) = (&x[0], &x[1], &x[2], &x[3]);
    let w = Tensor::randn([5, 4], opts);
    let replica = || w.copy().set_requires_grad(true);
    let (w_a, w_b) = (replica(), replica());
    let (z1_a, z2_a) = (x1_a.mm(&w_a), x2_a.mm(&w_a));
    let (z1_b, z2_b) = (x1_b.mm(&w_b), x2_b.mm(&w_b));
    let rank_a = GraphRank::new(0, vec![z1_b.shallow_clone(), z2_b.shallow_clone()]);
    let rank_b = GraphRank::new(1, vec![z1_a.shallow_clone(), z2_a.shallow_clone()]);
    let loss_a = across(
        &z1_a,
        &z2_a,
        &Collectives::from_ops(rank_a.clone(), false),
        true,
    )
    .unwrap();
    let loss_b = across(
        &z1_b,
        &z2_b,
        &Collectives::from_ops(rank_b.clone(), false),
        true,
    )
    .unwrap();
    assert_eq!(*rank_a.gathers.lock().unwrap(), [true, true]);
    (&loss_a + &loss_b).backward();
    let averaged = (w_a.grad() + w_b.grad()) / 2.0;

    let w_one = replica();
    let global = |a: &Tensor, b: &Tensor| Tensor::cat(&[a, b], 0).mm(&w_one);
    let loss_one = one(&global(x1_a, x1_b), &global(x2_a, x2_b)).unwrap();
    loss_one.backward();

    let l = loss_one.double_value(&[]);
    for loss in [&loss_a, &loss_b] {
        assert!((loss.double_value(&[]) - l).abs() < 1e-12 * (1.0 + l.abs()));
    }
    let diff = (&averaged - w_one.grad()).abs().max().double_value(&[]);
    let scale = w_one.grad().abs().max().double_value(&[]);
    assert!(scale > 1e-3, "a gradient to compare");
    assert!(
        diff < 1e-10 * scale,
        "averaged gradient off by {diff} (scale {scale})"
    );
    // Not the local statistics: a rank's own batch alone gives another loss.
    let local = one(&z1_a, &z2_a).unwrap().double_value(&[]);
    assert!((local - l).abs() > 1e-6 * (1.0 + l.abs()), "{local} vs {l}");

    // Validation gathers without gradient, to the same loss.
    let rank_a = GraphRank::new(0, vec![z1_b.detach(), z2_b.detach()]);
    let val = across(
        &z1_a,
        &z2_a,
        &Collectives::from_ops(rank_a.clone(), false),
        false,
    )
    .unwrap();
    assert!((val.double_value(&[]) - l).abs() < 1e-12 * (1.0 + l.abs()));
    assert_eq!(*rank_a.gathers.lock().unwrap(), [false, false]);

    // One process: exactly the local loss.
    let single = across(&z1_a, &z2_a, &Collectives::single(), true).unwrap();
    assert!(single.equal(&one(&z1_a, &z2_a).unwrap()));
}

/// Catches (each tried, the test failing, then restored): the loss on the local batch only
/// (no gathers: the loss differs); gathers without gradient in training (the loss carries no
/// gradient); the loss divided by the world size (tried on VICReg's: the loss and the averaged
/// gradient are halved).
#[test]
fn barlow_twins_statistics_are_the_global_batchs() {
    let _serial = serial();
    check_global_batch(
        |a, b, c, g| barlow_twins_loss_across_ranks(a, b, 0.0051, 1.0, c, g),
        |a, b| barlow_twins_loss(a, b, 0.0051, 1.0),
    );
}

/// Catches, as Barlow Twins': a local loss; gathers without gradient; the loss divided by the
/// world size.
#[test]
fn vicreg_statistics_are_the_global_batchs() {
    let _serial = serial();
    let coeffs = VicRegCoeffs::default();
    check_global_batch(
        |a, b, c, g| vicreg_loss_across_ranks(a, b, coeffs, c, g),
        |a, b| vicreg_loss(a, b, coeffs),
    );
}

// ---------------------------------------------------------------------------------------------
// MoCo and DINO: two ranks in two threads.

/// A world of `size` threads exchanging tensors (without gradient) through a mailbox.
struct ThreadWorld {
    size: usize,
    state: Mutex<Mailbox>,
    changed: Condvar,
}

#[derive(Default)]
struct Mailbox {
    /// This round's tensors, by rank.
    slots: Vec<Option<Tensor>>,
    /// Ranks that have read this round's tensors.
    read: usize,
    /// Completed exchanges.
    round: u64,
    /// Every exchange, in order: (rank, operation, shape).
    log: Vec<(usize, &'static str, Vec<i64>)>,
}

impl ThreadWorld {
    fn new(size: usize) -> Arc<ThreadWorld> {
        Arc::new(ThreadWorld {
            size,
            state: Mutex::new(Mailbox {
                slots: (0..size).map(|_| None).collect(),
                ..Default::default()
            }),
            changed: Condvar::new(),
        })
    }

    /// The handle of `rank`.
    fn rank(self: &Arc<Self>, rank: usize) -> Collectives {
        Collectives::from_ops(
            Arc::new(ThreadRank {
                rank,
                world: self.clone(),
            }),
            false,
        )
    }

    /// Every rank's `t`, in rank order; an error instead of a hang when a rank never comes.
    fn exchange(&self, rank: usize, op: &'static str, t: &Tensor) -> Result<Vec<Tensor>> {
        let timeout = Duration::from_secs(60);
        let mut state = self.state.lock().unwrap();
        // Wait until the previous round has been read by everyone.
        while state.slots[rank].is_some() {
            let (s, wait) = self.changed.wait_timeout(state, timeout).unwrap();
            state = s;
            if wait.timed_out() {
                bail!("rank {rank}: the previous {op} never completed");
            }
        }
        state.slots[rank] = Some(t.detach().copy());
        state.log.push((rank, op, t.size()));
        let round = state.round;
        self.changed.notify_all();
        while state.slots.iter().any(Option::is_none) && state.round == round {
            let (s, wait) = self.changed.wait_timeout(state, timeout).unwrap();
            state = s;
            if wait.timed_out() {
                bail!("rank {rank}: the other ranks never joined the {op}");
            }
        }
        let all: Vec<Tensor> = state.slots.iter().flatten().map(|t| t.copy()).collect();
        state.read += 1;
        if state.read == self.size {
            state.read = 0;
            state.round += 1;
            state.slots = (0..self.size).map(|_| None).collect();
            self.changed.notify_all();
        }
        Ok(all)
    }
}

struct ThreadRank {
    rank: usize,
    world: Arc<ThreadWorld>,
}

impl CollectiveOps for ThreadRank {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world.size
    }
    fn all_reduce(&self, t: &Tensor, op: ReduceOp, with_grad: bool) -> Result<Tensor> {
        if with_grad {
            bail!("the thread world reduces without gradient only");
        }
        let all = self.world.exchange(self.rank, "all_reduce", t)?;
        let sum = all.iter().skip(1).fold(all[0].copy(), |acc, t| acc + t);
        Ok(match op {
            ReduceOp::Sum => sum,
            ReduceOp::Average => sum / self.world.size as f64,
        })
    }
    fn all_gather(&self, t: &Tensor, with_grad: bool) -> Result<Tensor> {
        if with_grad {
            bail!("the thread world gathers without gradient only");
        }
        Ok(Tensor::cat(
            &self.world.exchange(self.rank, "all_gather", t)?,
            0,
        ))
    }
}

/// `make()` under `collectives` (the handle it takes at build time), from a seeded generator
/// so that every rank starts alike.
fn build_in<A>(collectives: Collectives, make: impl Fn() -> A) -> A {
    Collectives::install(collectives);
    tch::manual_seed(42);
    let a = make();
    Collectives::install(Collectives::single());
    a
}

/// Two views of `BATCH` images for rank `rank` (different for each rank).
fn rank_views(rank: usize) -> Vec<Tensor> {
    tch::manual_seed(100 + rank as i64);
    (0..2)
        .map(|_| Tensor::rand([BATCH, 3, 4, 4], (Kind::Float, Device::Cpu)))
        .collect()
}

/// One training step (no optimizer: the parameters stay) of `algorithms[r]` on rank `r`'s
/// views, every rank in its own thread.
fn step_every_rank<A: SslAlgorithm>(algorithms: Vec<A>) -> Vec<Result<A>> {
    let views: Vec<Vec<Tensor>> = (0..algorithms.len()).map(rank_views).collect();
    let handles: Vec<_> = algorithms
        .into_iter()
        .zip(views)
        .map(|(mut a, v)| {
            std::thread::spawn(move || -> Result<A> {
                let _ = a.training_loss(&v)?;
                a.after_optimizer_step(1, 10)?;
                Ok(a)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn moco(params: &str) -> Moco {
    Moco::from_encoders(
        &Params::from_json(params).unwrap(),
        TinyEncoder::boxed(12),
        TinyEncoder::boxed(12),
        Device::Cpu,
    )
    .unwrap()
}

const MOCO_PARAMS: &str = r#"{"queue_size": 24, "head_dims": [16, 8], "momentum": 0.9}"#;

/// Every rank's keys enter every rank's queue, in rank order, and the pointer moves by the
/// global batch: after one step on 2 ranks of 6 images, rows 0–5 of both queues hold rank 0's
/// keys, rows 6–11 rank 1's (each the keys one process computes on that rank's views), the rest
/// is the initial queue, and both pointers are 12.
///
/// Catches (tried, then restored): no gather before the enqueue (the pointer moves by 6, the
/// queues differ).
#[test]
fn moco_queues_the_keys_of_every_rank() {
    let _serial = serial();
    let world = ThreadWorld::new(2);
    let ranks: Vec<Moco> = (0..2)
        .map(|r| build_in(world.rank(r), || moco(MOCO_PARAMS)))
        .collect();
    let initial = ranks[0].queue().copy();
    assert!(initial.equal(&ranks[1].queue()), "every rank starts alike");
    let ranks: Vec<Moco> = step_every_rank(ranks)
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    // Each rank's own keys, from one process on that rank's views.
    let alone: Vec<Moco> = (0..2)
        .map(|_| build_in(Collectives::single(), || moco(MOCO_PARAMS)))
        .collect();
    let alone: Vec<Tensor> = step_every_rank(alone)
        .into_iter()
        .map(|r| r.unwrap().queue().narrow(0, 0, BATCH))
        .collect();
    let want = Tensor::cat(&[&alone[0], &alone[1], &initial.narrow(0, 12, 12)], 0);
    for (r, m) in ranks.iter().enumerate() {
        let d = (m.queue() - &want).abs().max().double_value(&[]);
        assert!(d < 1e-6, "rank {r}: queue off by {d}");
        let state = m.state();
        let ptr = &state
            .iter()
            .find(|(n, _)| n == QUEUE_PTR_STATE_NAME)
            .unwrap()
            .1;
        assert_eq!(ptr.int64_value(&[]), 12, "rank {r}: pointer");
    }
    assert!(ranks[0].queue().equal(&ranks[1].queue()));
    let log = world.state.lock().unwrap().log.clone();
    assert_eq!(log.len(), 2, "one gather per rank: {log:?}");
    assert!(log
        .iter()
        .all(|(_, op, shape)| *op == "all_gather" && *shape == [BATCH, 8]));
}

/// On several processes `queue_size` must be a multiple of the keys of a step (world × batch):
/// an error naming the parameter at the first step. One process keeps the ring for any size.
#[test]
fn moco_queue_size_must_divide_by_the_global_batch() {
    let _serial = serial();
    let params = r#"{"queue_size": 18, "head_dims": [16, 8]}"#;
    let world = ThreadWorld::new(2);
    let ranks: Vec<Moco> = (0..2)
        .map(|r| build_in(world.rank(r), || moco(params)))
        .collect();
    for result in step_every_rank(ranks) {
        let e = result
            .err()
            .expect("18 is not a multiple of 12")
            .to_string();
        assert!(e.contains("`queue_size` (18)"), "{e}");
        assert!(e.contains("2 processes"), "{e}");
        assert!(e.contains("12"), "{e}");
    }
    let single = build_in(Collectives::single(), || moco(params));
    let single = step_every_rank(vec![single]).pop().unwrap().unwrap();
    let state = single.state();
    let ptr = &state
        .iter()
        .find(|(n, _)| n == QUEUE_PTR_STATE_NAME)
        .unwrap()
        .1;
    assert_eq!(ptr.int64_value(&[]), BATCH);
}

fn dino() -> Dino {
    Dino::from_encoders(
        &Params::from_json(r#"{"out_dim": 16, "hidden_dim": 8, "bottleneck_dim": 4}"#).unwrap(),
        TinyEncoder::boxed(12),
        TinyEncoder::boxed(12),
        Device::Cpu,
    )
    .unwrap()
}

/// The centre follows the mean teacher output over every rank: after one step on 2 ranks,
/// both centres equal the average of the centres two single processes reach on each rank's
/// views (the centre starts at 0 and moves linearly in the batch mean).
///
/// Catches (tried, then restored): no all-reduce of the batch mean (each rank keeps its own
/// centre).
#[test]
fn dino_centre_follows_every_rank() {
    let _serial = serial();
    let world = ThreadWorld::new(2);
    let ranks: Vec<Dino> = (0..2).map(|r| build_in(world.rank(r), dino)).collect();
    let ranks: Vec<Dino> = step_every_rank(ranks)
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let alone: Vec<Dino> = (0..2)
        .map(|_| build_in(Collectives::single(), dino))
        .collect();
    let alone: Vec<Tensor> = step_every_rank(alone)
        .into_iter()
        .map(|r| r.unwrap().center())
        .collect();
    assert!((&alone[0] - &alone[1]).abs().max().double_value(&[]) > 1e-4);
    let want = (&alone[0] + &alone[1]) / 2.0;
    for (r, d) in ranks.iter().enumerate() {
        let diff = (d.center() - &want).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "rank {r}: centre off by {diff}");
    }
    let log = world.state.lock().unwrap().log.clone();
    assert_eq!(log.len(), 2, "one reduction per rank: {log:?}");
    assert!(log
        .iter()
        .all(|(_, op, shape)| *op == "all_reduce" && *shape == [1, 16]));
}
