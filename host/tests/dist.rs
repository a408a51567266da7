//! The c10d binding (`ssl_host::dist`) between real processes on loopback, with Gloo.
//!
//! Each `two_ranks_*` test starts this test binary twice more, as rank 0 and rank 1, running
//! one `child_*` test (ignored in a normal run, and a no-op without `SSL_HOST_DIST_CHILD`),
//! and checks how the children ended. `torchrun_*` does the same under torchrun.

use ssl_host::dist::{Backend, DistEnv, ProcessGroup, ReduceOp, DEFAULT_BUCKET_BYTES};
use ssl_host::world::{self, Comm, Reduce, World};
use ssl_plugin_api::tch::{self, Kind, Tensor};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const CHILD: &str = "SSL_HOST_DIST_CHILD";

/// A port nobody listens on now.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

/// How one child process ended, with what it printed.
struct Ended {
    status: ExitStatus,
    output: String,
}

fn child_args(test: &str) -> Vec<String> {
    [
        test,
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Waits for `child` until `deadline`, killing it past that; returns its status and output.
fn wait_until(mut child: std::process::Child, log: &Path, deadline: Instant) -> Ended {
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll a child") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break child.wait().expect("wait for a killed child");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = std::fs::read_to_string(log).unwrap_or_default();
    Ended { status, output }
}

/// Runs the child test `test` as ranks 0..world of one run (rank 0 hosts the store).
fn run_ranks(test: &str, world: usize, limit: Duration) -> Vec<Ended> {
    let deadline = Instant::now() + limit;
    let (_dir, children) = spawn_ranks(test, world);
    children
        .into_iter()
        .map(|(child, log)| wait_until(child, &log, deadline))
        .collect()
}

/// Starts the child test `test` as ranks 0..world of one run, each with its log file in the
/// returned folder.
fn spawn_ranks(
    test: &str,
    world: usize,
) -> (tempfile::TempDir, Vec<(std::process::Child, PathBuf)>) {
    let exe = std::env::current_exe().expect("the test binary");
    let dir = tempfile::tempdir().expect("a temporary folder");
    let port = free_port().to_string();
    let children: Vec<_> = (0..world)
        .map(|rank| {
            let log = dir.path().join(format!("rank{rank}.log"));
            let file = std::fs::File::create(&log).expect("a log file");
            let child = Command::new(&exe)
                .args(child_args(test))
                .env(CHILD, "1")
                .env("RANK", rank.to_string())
                .env("WORLD_SIZE", world.to_string())
                .env("LOCAL_RANK", rank.to_string())
                .env("LOCAL_WORLD_SIZE", world.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                .env_remove("TORCHELASTIC_USE_AGENT_STORE")
                .env_remove("TORCHELASTIC_RESTART_COUNT")
                .stdin(Stdio::null())
                .stdout(file.try_clone().expect("a log handle"))
                .stderr(file)
                .spawn()
                .expect("start a child rank");
            (child, log)
        })
        .collect();
    (dir, children)
}

fn assert_all_passed(ended: &[Ended]) {
    for (rank, e) in ended.iter().enumerate() {
        assert!(
            e.status.success() && e.output.contains("test result: ok. 1 passed"),
            "rank {rank} failed ({}):\n{}",
            e.status,
            e.output
        );
    }
}

/// Shows the lines of a child's output that contain `needle` (seen with --nocapture).
fn print_lines_with(ended: &Ended, needle: &str) {
    for line in ended.output.lines().filter(|l| l.contains(needle)) {
        eprintln!("{line}");
    }
}

/// The environment of a child, or None when this is not a child (a normal `--ignored` run).
fn child_env() -> Option<DistEnv> {
    std::env::var_os(CHILD)?;
    Some(
        DistEnv::from_env()
            .expect("the parent sets a valid environment")
            .expect("the parent sets RANK and WORLD_SIZE"),
    )
}

fn connect(env: &DistEnv, timeout: Duration) -> ProcessGroup {
    let pg = ProcessGroup::connect(env, Backend::Gloo, timeout).expect("join the group");
    assert_eq!((pg.rank(), pg.world_size()), (env.rank, env.world_size));
    pg
}

/// Rank `rank`'s tensors for the reduction checks: several shapes and dtypes.
fn tensors_of(rank: usize) -> Vec<Tensor> {
    tch::manual_seed(100 + rank as i64);
    vec![
        Tensor::randn([3, 4], (Kind::Float, tch::Device::Cpu)),
        Tensor::randn([5], (Kind::Double, tch::Device::Cpu)),
        Tensor::randn([2, 3, 2], (Kind::Float, tch::Device::Cpu)),
        Tensor::randn([7], (Kind::Double, tch::Device::Cpu)),
        Tensor::randn([1], (Kind::Float, tch::Device::Cpu)),
    ]
}

fn assert_close(what: &str, got: &Tensor, expected: &Tensor, tol: f64) {
    assert_eq!(got.size(), expected.size(), "{what}: shape");
    let diff = (got - expected).abs().max().double_value(&[]);
    let scale = expected.abs().max().double_value(&[]).max(1.0);
    assert!(diff <= tol * scale, "{what}: max difference {diff}");
}

#[test]
#[ignore = "a child of two_ranks_run_the_collectives"]
fn child_collectives() {
    let Some(env) = child_env() else { return };
    let pg = connect(&env, Duration::from_secs(30));
    let (rank, world) = (pg.rank(), pg.world_size());

    // The store: each rank posts, each reads the other's.
    pg.store_set(&format!("hello/{rank}"), format!("from {rank}").as_bytes())
        .unwrap();
    let other = 1 - rank;
    let got = pg.store_get(&format!("hello/{other}")).unwrap();
    assert_eq!(got, format!("from {other}").into_bytes());

    // Sum over several shapes and dtypes, in buckets of 64 bytes: more than one per dtype.
    let expected_sum: Vec<Tensor> = {
        let all: Vec<Vec<Tensor>> = (0..world).map(tensors_of).collect();
        (0..all[0].len())
            .map(|i| all.iter().map(|ts| ts[i].shallow_clone()).sum::<Tensor>())
            .collect()
    };
    let mine = tensors_of(rank);
    pg.set_bucket_bytes(64);
    let before = pg.traffic();
    pg.all_reduce_(&mine, ReduceOp::Sum).unwrap();
    let calls = pg.traffic().collectives - before.collectives;
    assert!(calls >= 4, "tiny buckets gave only {calls} collectives");
    for (i, (got, expected)) in mine.iter().zip(&expected_sum).enumerate() {
        assert_close(&format!("sum of tensor {i}"), got, expected, 1e-6);
    }

    // Average with the default buckets: one collective per dtype, and a strided view is
    // written through.
    pg.set_bucket_bytes(DEFAULT_BUCKET_BYTES);
    let mut mine = tensors_of(rank);
    let base =
        Tensor::arange(15, (Kind::Float, tch::Device::Cpu)).view([5, 3]) * (rank as f64 + 1.0);
    let strided = base.transpose(0, 1);
    mine.push(strided.shallow_clone());
    let before = pg.traffic();
    pg.all_reduce_(&mine, ReduceOp::Average).unwrap();
    assert_eq!(pg.traffic().collectives - before.collectives, 2);
    for (i, expected) in expected_sum.iter().enumerate() {
        assert_close(
            &format!("average of tensor {i}"),
            &mine[i],
            &(expected / world as f64),
            1e-6,
        );
    }
    let mean_factor = (1..=world).sum::<usize>() as f64 / world as f64;
    let expected_base =
        Tensor::arange(15, (Kind::Float, tch::Device::Cpu)).view([5, 3]) * mean_factor;
    assert_close(
        "average through a strided view",
        &base,
        &expected_base,
        1e-6,
    );

    // Sums of integers are exact; their average is refused.
    let counts = Tensor::from_slice(&[rank as i64 + 1, 10]);
    pg.all_reduce_(&[counts.shallow_clone()], ReduceOp::Sum)
        .unwrap();
    assert_eq!(Vec::<i64>::try_from(&counts).unwrap(), vec![3, 20]);
    let err = pg.all_reduce_(&[counts], ReduceOp::Average).unwrap_err();
    assert!(err.to_string().contains("not floating point"), "{err}");

    // Broadcast from rank 1, in tiny buckets too.
    pg.set_bucket_bytes(64);
    let mine = tensors_of(rank);
    pg.broadcast_(&mine, 1).unwrap();
    for (i, (got, expected)) in mine.iter().zip(tensors_of(1)).enumerate() {
        assert_close(&format!("broadcast tensor {i}"), got, &expected, 0.0);
    }
    assert!(pg
        .broadcast_(&mine, 2)
        .unwrap_err()
        .to_string()
        .contains("rank 2"));

    // All-gather: rows in rank order.
    let rows = |r: usize| {
        Tensor::from_slice(&[r as f32, 10.0 + r as f32])
            .view([1, 2])
            .repeat([3, 1])
    };
    let gathered = pg.all_gather(&rows(rank)).unwrap();
    let expected = Tensor::cat(&(0..world).map(rows).collect::<Vec<_>>(), 0);
    assert_close("all-gather", &gathered, &expected, 0.0);

    pg.barrier().unwrap();
}

#[test]
fn two_ranks_run_the_collectives() {
    let ended = run_ranks("child_collectives", 2, Duration::from_secs(90));
    assert_all_passed(&ended);
}

/// Rank `rank`'s loss of the gathered (or reduced) tensor: a different function on each rank.
fn loss_of(rank: usize, y: &Tensor) -> Tensor {
    tch::manual_seed(500 + rank as i64);
    let w = Tensor::randn([y.size()[1], 3], (Kind::Double, tch::Device::Cpu));
    let r = rank as f64 + 1.0;
    (y.matmul(&w) * r).tanh().sum(Kind::Double) + (y.pow_tensor_scalar(3) * r).mean(Kind::Double)
}

/// Rank `rank`'s input rows of the gradient checks.
fn input_of(rank: usize) -> Tensor {
    tch::manual_seed(700 + rank as i64);
    Tensor::randn([4, 5], (Kind::Double, tch::Device::Cpu))
}

/// The gradients of Σ_r loss_r(combine(x_0, .., x_{n-1})) with respect to each x_r, in one
/// process: what the distributed backward must give each rank.
fn single_process_grads(world: usize, combine: impl Fn(&[Tensor]) -> Tensor) -> Vec<Tensor> {
    let xs: Vec<Tensor> = (0..world)
        .map(|r| input_of(r).set_requires_grad(true))
        .collect();
    let y = combine(&xs);
    let total = (0..world).map(|r| loss_of(r, &y)).sum::<Tensor>();
    total.backward();
    xs.iter().map(|x| x.grad().copy()).collect()
}

#[test]
#[ignore = "a child of two_ranks_backward_matches_one_process"]
fn child_gradients() {
    let Some(env) = child_env() else { return };
    let pg = connect(&env, Duration::from_secs(30));
    let (rank, world) = (pg.rank(), pg.world_size());

    // all_gather_with_grad: forward is the concatenation, backward this rank's slice of the
    // summed gradient.
    let x = input_of(rank).set_requires_grad(true);
    let y = pg.all_gather_with_grad(&x).unwrap();
    let expected_y = Tensor::cat(&(0..world).map(input_of).collect::<Vec<_>>(), 0);
    assert_close("gathered forward", &y.detach(), &expected_y, 0.0);
    loss_of(rank, &y).backward();
    let expected = single_process_grads(world, |xs| Tensor::cat(xs, 0));
    assert_close("all-gather backward", &x.grad(), &expected[rank], 1e-10);
    // A rank's gradient is not simply the gradient of its own loss.
    let own = {
        let xs: Vec<Tensor> = (0..world)
            .map(|r| input_of(r).set_requires_grad(true))
            .collect();
        loss_of(rank, &Tensor::cat(&xs, 0)).backward();
        xs[rank].grad().copy()
    };
    let apart = (&own - &expected[rank]).abs().max().double_value(&[]);
    assert!(apart > 1e-3, "the check could not tell the gradients apart");

    // all_reduce_sum_with_grad: forward the sum, backward the summed gradient.
    let x = input_of(rank).set_requires_grad(true);
    let z = pg.all_reduce_sum_with_grad(&x).unwrap();
    let expected_z = (0..world).map(input_of).sum::<Tensor>();
    assert_close("reduced forward", &z.detach(), &expected_z, 1e-12);
    loss_of(rank, &z).backward();
    let expected = single_process_grads(world, |xs| xs.iter().map(|x| x.shallow_clone()).sum());
    assert_close("all-reduce backward", &x.grad(), &expected[rank], 1e-10);

    pg.barrier().unwrap();
}

#[test]
fn two_ranks_backward_matches_one_process() {
    let ended = run_ranks("child_gradients", 2, Duration::from_secs(90));
    assert_all_passed(&ended);
}

#[test]
#[ignore = "a child of two_ranks_name_a_dead_peer"]
fn child_dead_peer() {
    let Some(env) = child_env() else { return };
    let pg = connect(&env, Duration::from_secs(10));
    pg.barrier().unwrap();
    if pg.rank() == 1 {
        std::process::exit(1);
    }
    std::thread::sleep(Duration::from_millis(300));
    let start = Instant::now();
    let t = Tensor::ones([1000], (Kind::Float, tch::Device::Cpu));
    let err = pg
        .all_reduce_(&[t], ReduceOp::Sum)
        .expect_err("the all-reduce with a dead peer fails")
        .to_string();
    let took = start.elapsed();
    println!("rank 0 got, after {took:?}: {err}");
    assert!(err.contains("rank 1 of 2 is gone"), "{err}");
    assert!(err.contains("this process (rank 0) stops"), "{err}");
    assert!(took < Duration::from_secs(15), "took {took:?}");
}

#[test]
fn two_ranks_name_a_dead_peer() {
    let ended = run_ranks("child_dead_peer", 2, Duration::from_secs(60));
    assert!(
        ended[0].status.success() && ended[0].output.contains("is gone"),
        "rank 0 ({}):\n{}",
        ended[0].status,
        ended[0].output
    );
    assert_eq!(
        ended[1].status.code(),
        Some(1),
        "rank 1:\n{}",
        ended[1].output
    );
    print_lines_with(&ended[0], "rank 0 got");
}

#[test]
#[ignore = "a child of two_ranks_name_the_store_host_when_it_dies"]
fn child_store_host_dies() {
    let Some(env) = child_env() else { return };
    let pg = connect(&env, Duration::from_secs(10));
    pg.barrier().unwrap();
    if pg.rank() == 0 {
        std::process::exit(1);
    }
    std::thread::sleep(Duration::from_millis(300));
    let t = Tensor::ones([1000], (Kind::Float, tch::Device::Cpu));
    let err = pg
        .all_reduce_(&[t], ReduceOp::Sum)
        .expect_err("the all-reduce with a dead rank 0 fails")
        .to_string();
    println!("rank 1 got: {err}");
    assert!(err.contains("rank 0 of 2"), "{err}");
    assert!(err.contains("is gone"), "{err}");
}

#[test]
fn two_ranks_name_the_store_host_when_it_dies() {
    let ended = run_ranks("child_store_host_dies", 2, Duration::from_secs(60));
    assert!(
        ended[1].status.success() && ended[1].output.contains("is gone"),
        "rank 1 ({}):\n{}",
        ended[1].status,
        ended[1].output
    );
    assert_eq!(
        ended[0].status.code(),
        Some(1),
        "rank 0:\n{}",
        ended[0].output
    );
    print_lines_with(&ended[1], "rank 1 got");
}

#[test]
#[ignore = "a child of two_ranks_time_a_25_mib_all_reduce"]
fn child_timing() {
    let Some(env) = child_env() else { return };
    let pg = connect(&env, Duration::from_secs(60));
    let n = DEFAULT_BUCKET_BYTES / 4;
    let t = Tensor::full(
        [n as i64],
        pg.rank() as f64 + 1.0,
        (Kind::Float, tch::Device::Cpu),
    );
    pg.all_reduce_(&[t.shallow_clone()], ReduceOp::Sum).unwrap(); // warm-up
    let rounds = 5;
    let start = Instant::now();
    for _ in 0..rounds {
        pg.all_reduce_(&[t.shallow_clone()], ReduceOp::Average)
            .unwrap();
    }
    let each = start.elapsed() / rounds;
    // 3 after the warm-up; averaging keeps it at 3.
    assert_eq!(t.double_value(&[0]), 3.0);
    assert_eq!(t.double_value(&[n as i64 - 1]), 3.0);
    println!(
        "rank {}: all-reduce of 25 MiB (f32) between 2 processes: {:.1} ms",
        pg.rank(),
        each.as_secs_f64() * 1e3
    );
}

#[test]
fn two_ranks_time_a_25_mib_all_reduce() {
    let ended = run_ranks("child_timing", 2, Duration::from_secs(120));
    assert_all_passed(&ended);
    for e in &ended {
        print_lines_with(e, "all-reduce of 25 MiB");
    }
}

#[test]
#[ignore = "a child of torchrun_runs_two_ranks_on_its_agent_store"]
fn child_torchrun() {
    let Some(env) = child_env() else { return };
    assert!(
        env.agent_store,
        "torchrun sets TORCHELASTIC_USE_AGENT_STORE=True"
    );
    let pg = connect(&env, Duration::from_secs(30));
    let t = Tensor::from_slice(&[pg.rank() as f32 + 1.0]);
    pg.all_reduce_(&[t.shallow_clone()], ReduceOp::Sum).unwrap();
    assert_eq!(t.double_value(&[0]), 3.0);
    let g = pg
        .all_gather(&Tensor::from_slice(&[pg.rank() as i64]))
        .unwrap();
    assert_eq!(Vec::<i64>::try_from(&g).unwrap(), vec![0, 1]);
    pg.barrier().unwrap();
    println!("torchrun child rank {} ok", pg.rank());
}

fn torchrun() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.deps/torch-venv/bin/torchrun")
}

#[test]
fn torchrun_runs_two_ranks_on_its_agent_store() {
    let torchrun = torchrun();
    if !torchrun.exists() {
        eprintln!("skipped: no torchrun at {}", torchrun.display());
        return;
    }
    let exe = std::env::current_exe().expect("the test binary");
    let dir = tempfile::tempdir().expect("a temporary folder");
    let log = dir.path().join("torchrun.log");
    let file = std::fs::File::create(&log).expect("a log file");
    let child = Command::new(&torchrun)
        .arg("--nproc_per_node=2")
        .arg(format!("--master_port={}", free_port()))
        .arg("--no-python")
        .arg(&exe)
        .args(child_args("child_torchrun"))
        .env(CHILD, "1")
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("a log handle"))
        .stderr(file)
        .spawn()
        .expect("start torchrun");
    let ended = wait_until(child, &log, Instant::now() + Duration::from_secs(90));
    assert!(
        ended.status.success(),
        "torchrun ({}):\n{}",
        ended.status,
        ended.output
    );
    for rank in 0..2 {
        assert!(
            ended
                .output
                .contains(&format!("torchrun child rank {rank} ok")),
            "rank {rank} did not finish:\n{}",
            ended.output
        );
    }
}

#[test]
#[ignore = "a child of two_ranks_report_a_peer_that_hangs"]
fn child_hung_peer() {
    let Some(env) = child_env() else { return };
    let pg = connect(&env, Duration::from_secs(3));
    pg.barrier().unwrap();
    if pg.rank() == 1 {
        // Alive (its heartbeat beats) but never joins the collective.
        std::thread::sleep(Duration::from_secs(9));
        return;
    }
    let start = Instant::now();
    let t = Tensor::ones([10], (Kind::Float, tch::Device::Cpu));
    let err = pg
        .all_reduce_(&[t], ReduceOp::Sum)
        .expect_err("the all-reduce with a hung peer times out")
        .to_string();
    let took = start.elapsed();
    println!("rank 0 got, after {took:?}: {err}");
    assert!(err.contains("while every rank still runs"), "{err}");
    assert!(took < Duration::from_secs(8), "took {took:?}");
}

#[test]
fn two_ranks_report_a_peer_that_hangs() {
    let ended = run_ranks("child_hung_peer", 2, Duration::from_secs(60));
    assert_all_passed(&ended);
    print_lines_with(&ended[0], "rank 0 got");
}

#[test]
#[ignore = "a child of two_ranks_name_the_collective_that_differs_with_dist_debug"]
fn child_debug_mismatch() {
    let Some(env) = child_env() else { return };
    let pg = connect(&env, Duration::from_secs(20));
    let (rank, world) = (pg.rank(), pg.world_size());
    pg.set_debug(true);

    // Collectives that agree pass the check, those with gradient too (forward and backward).
    pg.barrier().unwrap();
    let t = Tensor::ones([3], (Kind::Float, tch::Device::Cpu));
    pg.all_reduce_(&[t.shallow_clone()], ReduceOp::Sum).unwrap();
    assert_eq!(t.double_value(&[0]), 2.0);
    let x = input_of(rank).set_requires_grad(true);
    loss_of(rank, &pg.all_gather_with_grad(&x).unwrap()).backward();
    let expected = single_process_grads(world, |xs| Tensor::cat(xs, 0));
    assert_close("all-gather backward", &x.grad(), &expected[rank], 1e-10);

    // Rank 1 gathers fewer rows: both ranks fail at that collective, naming what each issued.
    let rows = if rank == 0 { 8 } else { 4 };
    let start = Instant::now();
    let err = pg
        .all_gather(&Tensor::zeros([rows, 128], (Kind::Float, tch::Device::Cpu)))
        .expect_err("an all-gather of another shape on rank 1 fails")
        .to_string();
    println!("rank {rank} got, after {:?}: {err}", start.elapsed());
    assert!(
        err.starts_with("distributed training: collective #"),
        "{err}"
    );
    assert!(
        err.ends_with(
            " differs between ranks: rank 0 all-gather float [8, 128], rank 1 all-gather float \
             [4, 128] (--dist_debug)"
        ),
        "{err}"
    );
    assert!(start.elapsed() < Duration::from_secs(5), "no waiting");

    // Nothing was sent, so the group goes on. A backward whose collective rank 1 does not
    // issue fails on both ranks, at the backward's all-reduce and at rank 1's barrier.
    let x = input_of(rank).set_requires_grad(true);
    let y = pg.all_gather_with_grad(&x).unwrap();
    let err = if rank == 0 {
        loss_of(rank, &y)
            .f_backward()
            .map_err(|e| pg.diagnose("the backward pass", e))
            .expect_err("a backward that rank 1 skips fails")
    } else {
        pg.barrier()
            .expect_err("a barrier where rank 0 runs a backward fails")
    }
    .to_string();
    println!("rank {rank} got: {err}");
    assert!(
        err.starts_with("distributed training: collective #")
            && err.ends_with(
                " differs between ranks: rank 0 backward of an all-gather with gradient \
                 (all-reduce) double [8, 5], rank 1 barrier (--dist_debug)"
            ),
        "{err}"
    );
    pg.barrier().unwrap();
}

#[test]
fn two_ranks_name_the_collective_that_differs_with_dist_debug() {
    let ended = run_ranks("child_debug_mismatch", 2, Duration::from_secs(60));
    assert_all_passed(&ended);
    print_lines_with(&ended[0], "got");
}

#[test]
#[ignore = "a child of two_ranks_take_part_in_collectives_of_empty_lists"]
fn child_empty_lists() {
    let Some(env) = child_env() else { return };
    let pg = std::sync::Arc::new(connect(&env, Duration::from_secs(20)));
    let rank = pg.rank();
    let world = World::new(
        pg.clone() as std::sync::Arc<dyn Comm>,
        tch::Device::Cpu,
        rank,
    );

    // An empty list, or a list of empty tensors, is still a collective that meets the other
    // ranks (Gloo itself returns at once from a collective of no data): rank 0 waits there for
    // rank 1, which comes late.
    let late = Duration::from_millis(800);
    for call in 0..3 {
        if rank == 1 {
            std::thread::sleep(late);
        }
        let start = Instant::now();
        match call {
            0 => pg.all_reduce_(&[], ReduceOp::Sum).unwrap(),
            1 => pg.broadcast_(&[], 0).unwrap(),
            _ => assert!(world
                .all_reduce_f64(&[], Reduce::Average)
                .unwrap()
                .is_empty()),
        }
        if rank == 0 {
            let waited = start.elapsed();
            assert!(
                waited >= late / 2,
                "call {call}: rank 0 did not wait ({waited:?})"
            );
        }
    }

    // Each is one collective.
    let before = pg.traffic().collectives;
    pg.all_reduce_(&[], ReduceOp::Sum).unwrap();
    pg.broadcast_(&[], 0).unwrap();
    assert_eq!(pg.traffic().collectives - before, 2);
    assert_eq!(
        world.all_reduce_f64(&[], Reduce::Sum).unwrap(),
        Vec::<f64>::new()
    );
    assert_eq!(world.diverged(&[]).unwrap(), Vec::<String>::new());
    assert_eq!(
        world
            .all_reduce_f64(&[rank as f64 + 1.0], Reduce::Sum)
            .unwrap(),
        vec![3.0]
    );

    // A rank whose list is empty where the other's is not takes part all the same: with the
    // debug check, both fail at that very collective instead of rank 0 going on alone.
    pg.set_debug(true);
    let values: &[f64] = if rank == 0 { &[] } else { &[2.0] };
    let err = world
        .all_reduce_f64(values, Reduce::Sum)
        .expect_err("lists of different lengths fail")
        .to_string();
    println!("rank {rank} got: {err}");
    assert!(
        err.ends_with(
            " differs between ranks: rank 0 all-reduce double [0], rank 1 all-reduce double [1] \
             (--dist_debug)"
        ),
        "{err}"
    );
    pg.barrier().unwrap();
}

#[test]
fn two_ranks_take_part_in_collectives_of_empty_lists() {
    let ended = run_ranks("child_empty_lists", 2, Duration::from_secs(60));
    assert_all_passed(&ended);
    print_lines_with(&ended[0], "got");
}

#[test]
#[ignore = "a child of two_ranks_end_with_an_error_when_their_collectives_differ_in_size"]
fn child_size_mismatch() {
    let Some(env) = child_env() else { return };
    let pg = connect(&env, Duration::from_secs(10));
    pg.barrier().unwrap();
    // Rank 1 all-reduces another size, without the debug check.
    let n = if pg.rank() == 0 { 100_000 } else { 10 };
    let t = Tensor::ones([n], (Kind::Float, tch::Device::Cpu));
    let outcome = pg.all_reduce_(&[t], ReduceOp::Sum);
    // As `main` ends: the error, the shutdown, exit code 1.
    match outcome {
        Ok(()) => eprintln!("rank {}: the all-reduce returned", pg.rank()),
        Err(e) => eprint!("{}", ssl_host::error_report(&e)),
    }
    pg.shutdown();
    std::process::exit(1);
}

#[test]
fn two_ranks_end_with_an_error_when_their_collectives_differ_in_size() {
    let ended = run_ranks("child_size_mismatch", 2, Duration::from_secs(60));
    for (rank, e) in ended.iter().enumerate() {
        print_lines_with(e, "error:");
        assert_eq!(
            e.status.code(),
            Some(1),
            "rank {rank} ({}):\n{}",
            e.status,
            e.output
        );
        assert!(
            !e.output.contains("terminate called"),
            "rank {rank}:\n{}",
            e.output
        );
        assert!(
            e.output.contains("error: distributed training: "),
            "rank {rank}:\n{}",
            e.output
        );
    }
    assert!(
        ended
            .iter()
            .any(|e| e.output.contains("rerun with --dist_debug=true")),
        "no rank suggests --dist_debug"
    );
}

#[test]
#[ignore = "a child of two_ranks_exit_soon_after_a_collective_times_out"]
fn child_timeout_exit() {
    let Some(env) = child_env() else { return };
    let pg = std::sync::Arc::new(connect(&env, Duration::from_secs(3)));
    let rank = pg.rank();
    world::install(World::new(
        pg.clone() as std::sync::Arc<dyn Comm>,
        tch::Device::Cpu,
        rank,
    ))
    .unwrap();
    drop(pg);
    world::current().barrier().unwrap();
    if rank == 1 {
        // Alive (its heartbeat beats) but never joins the collective; the parent kills it.
        std::thread::sleep(Duration::from_secs(120));
        return;
    }
    let t = Tensor::ones([10], (Kind::Float, tch::Device::Cpu));
    let err = world::current()
        .all_reduce_(&[t], Reduce::Sum)
        .expect_err("the all-reduce with a hung peer times out");
    println!("rank 0 got: {err}");
    // As `main` ends; the process then exits (the world is never dropped).
    world::shutdown();
}

#[test]
fn two_ranks_exit_soon_after_a_collective_times_out() {
    let timeout = Duration::from_secs(3);
    let start = Instant::now();
    let (_dir, mut children) = spawn_ranks("child_timeout_exit", 2);
    let (hung, hung_log) = children.pop().expect("rank 1");
    let (child, log) = children.pop().expect("rank 0");
    let ended = wait_until(child, &log, start + timeout + Duration::from_secs(10));
    let took = start.elapsed();
    let hung = wait_until(hung, &hung_log, Instant::now());
    assert!(
        ended.status.success()
            && ended.output.contains("test result: ok. 1 passed")
            && ended.output.contains("while every rank still runs"),
        "rank 0 did not end with its error within {:?} ({}, after {took:?}):\n{}\nrank 1:\n{}",
        timeout + Duration::from_secs(10),
        ended.status,
        ended.output,
        hung.output
    );
    println!("rank 0 ended {took:?} after it started");
}

#[test]
#[ignore = "a child of two_ranks_see_a_shut_down_world_stop"]
fn child_shutdown() {
    let Some(env) = child_env() else { return };
    let pg = std::sync::Arc::new(connect(&env, Duration::from_secs(20)));
    let rank = pg.rank();
    world::install(World::new(
        pg.clone() as std::sync::Arc<dyn Comm>,
        tch::Device::Cpu,
        rank,
    ))
    .unwrap();
    world::current().barrier().unwrap();
    if rank == 0 {
        // As `main` ends: the heartbeat stops and the backend goes; the process lives on a
        // while, so that rank 1 can see that.
        world::shutdown();
        world::shutdown();
        let err = world::current()
            .barrier()
            .expect_err("a shut-down group fails");
        println!("rank 0 got: {err:#}");
        assert!(
            format!("{err:#}").contains("the process group was shut down"),
            "{err:#}"
        );
        std::thread::sleep(Duration::from_secs(8));
        return;
    }
    std::thread::sleep(Duration::from_secs(1));
    let seen = pg.diagnose("a probe", "nothing failed").to_string();
    println!("rank 1 got: {seen}");
    assert!(seen.contains("rank 0 of 2 is gone"), "{seen}");
}

#[test]
fn two_ranks_see_a_shut_down_world_stop() {
    let ended = run_ranks("child_shutdown", 2, Duration::from_secs(60));
    assert_all_passed(&ended);
    print_lines_with(&ended[0], "got");
    print_lines_with(&ended[1], "got");
}

#[test]
#[ignore = "a child of two_ranks_start_from_rank_0s_live_state"]
fn child_start_state() {
    use ssl_host::config::RunConfig;
    use ssl_host::engine::Task;
    use ssl_host::registry::Registry;
    use std::collections::HashMap;
    let Some(env) = child_env() else { return };
    let registry = Registry::load(&[]).expect("the built-in plugins");
    let tmp = tempfile::tempdir().expect("a temporary folder");
    let overrides: Vec<(String, String)> = [
        ("device", "cpu"),
        ("output_dir", &tmp.path().display().to_string()),
        ("ssl_dataset_params.num_samples", "40"),
        ("linear_head_dataset_params.num_samples", "40"),
        ("ssl_dataset_params.image_size", "32"),
        ("linear_head_dataset_params.image_size", "32"),
        ("ssl_encoder", "resnet18"),
        ("optimizer", "sgd"),
        ("num_workers", "1"),
        ("dist_timeout", "60"),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), v.to_string()))
    .collect();
    let config = RunConfig::resolve("ShapesSimCLR", &overrides, &registry).unwrap();
    ssl_host::commands::join::join_if_distributed(&config).unwrap();
    let mut task =
        ssl_host::tasks::ssl::SslTask::build(&registry, config, tch::Device::Cpu, None).unwrap();
    let world = world::current();
    if env.rank == 1 {
        // Other weights and another optimizer state (step counters, momentum): as a process
        // that resumed from another checkpoint.
        let changed: HashMap<String, Tensor> = task
            .checkpoint_tensors()
            .into_iter()
            .map(|(name, t)| (name, t.detach().copy().f_add_scalar(1).unwrap()))
            .collect();
        task.restore(&changed).unwrap();
    }
    let differ = world.diverged(&task.checkpoint_tensors()).unwrap();
    assert_eq!(
        differ.is_empty(),
        env.rank == 0,
        "rank {}: {differ:?}",
        env.rank
    );
    assert!(
        env.rank == 0 || differ.iter().any(|n| n.ends_with(".step")),
        "{differ:?}"
    );
    ssl_host::engine::share_main_state(&mut task).unwrap();
    let differ = world.diverged(&task.checkpoint_tensors()).unwrap();
    assert!(differ.is_empty(), "rank {}: {differ:?}", env.rank);
    println!("rank {}: every state tensor equals rank 0's", env.rank);
}

/// Rank 0's state reaches every process's live state at the start (item 4 of issue 19): rank 1
/// starts with other weights and optimizer state (step counters and buffers that
/// `checkpoint_tensors` hands out as copies); after `share_main_state` every tensor equals rank
/// 0's. Sending into `checkpoint_tensors()` alone left rank 1's step counters as they were.
#[test]
fn two_ranks_start_from_rank_0s_live_state() {
    let ended = run_ranks("child_start_state", 2, Duration::from_secs(240));
    assert_all_passed(&ended);
}
