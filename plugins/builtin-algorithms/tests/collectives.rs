//! SimCLR on several processes, simulated in one: the NT-Xent loss with negatives from every
//! rank against bolts' formula written out, and the process group reaching the algorithm and
//! its encoder through the plugin ABI.

mod common;

use common::{views, TinyEncoder, BATCH};
use ssl_builtin_algorithms::simclr::{nt_xent_loss, nt_xent_loss_across_ranks, PROJECTION_DIM};
use ssl_plugin_api::host::builtin_plugins;
use ssl_plugin_api::tch::{Device, Kind, Tensor};
use ssl_plugin_api::{
    CollectiveOps, Collectives, EncoderSpec, Params, Plugin, ReduceOp, Result, SslAlgorithm,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Rank 0 of 2: each all-gather returns the given tensor followed by the next of `others`
/// (the other rank's tensors, in call order); every gather is recorded.
struct TwoRanks {
    others: Mutex<Vec<Tensor>>,
    calls: Mutex<Vec<(Vec<i64>, bool)>>,
}

impl TwoRanks {
    fn new(others: Vec<Tensor>) -> Arc<TwoRanks> {
        Arc::new(TwoRanks {
            others: Mutex::new(others),
            calls: Mutex::new(Vec::new()),
        })
    }
}

impl CollectiveOps for TwoRanks {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        2
    }
    fn all_reduce(&self, _: &Tensor, _: ReduceOp, _: bool) -> Result<Tensor> {
        ssl_plugin_api::bail!("not used by SimCLR")
    }
    fn all_gather(&self, t: &Tensor, with_grad: bool) -> Result<Tensor> {
        self.calls.lock().unwrap().push((t.size(), with_grad));
        let mut others = self.others.lock().unwrap();
        // With no tensors given, the other rank has the same batch.
        let other = if others.is_empty() {
            t.detach().copy()
        } else {
            others.remove(0)
        };
        let out = Tensor::cat(&[t, &other], 0);
        Ok(if with_grad { out } else { out.detach() })
    }
}

fn unit_rows(n: i64, d: i64) -> Tensor {
    let z = Tensor::randn([n, d], (Kind::Double, Device::Cpu));
    &z / z.norm_scalaropt_dim(2.0, [1i64].as_slice(), true)
}

/// Bolts' loss under DDP, row by row: this rank's rows `z1, z2` against the keys
/// `[z1 of every rank, z2 of every rank]`.
fn reference(z1: &Tensor, z2: &Tensor, keys: &Tensor, t: f64) -> f64 {
    let rows = Tensor::cat(&[z1, z2], 0);
    let b = z1.size()[0];
    let dot = |a: &Tensor, c: &Tensor| (a * c).sum(Kind::Double).double_value(&[]);
    let mut total = 0.0;
    for i in 0..2 * b {
        let row = rows.get(i);
        let sum: f64 = (0..keys.size()[0])
            .map(|k| (dot(&row, &keys.get(k)) / t).exp())
            .sum();
        let neg = (sum - (1.0 / t).exp()).max(1e-6);
        let pos = (dot(&z1.get(i % b), &z2.get(i % b)) / t).exp();
        total += -(pos / (neg + 1e-6)).ln();
    }
    total / (2 * b) as f64
}

#[test]
fn negatives_come_from_every_rank() {
    tch_seed();
    let (b, d, t) = (3, 5, 0.3);
    let (z1, z2) = (
        unit_rows(b, d).set_requires_grad(true),
        unit_rows(b, d).set_requires_grad(true),
    );
    let (o1, o2) = (
        unit_rows(b, d).set_requires_grad(true),
        unit_rows(b, d).set_requires_grad(true),
    );
    let fake = TwoRanks::new(vec![o1.shallow_clone(), o2.shallow_clone()]);
    let world = Collectives::from_ops(fake.clone(), false);
    let loss = nt_xent_loss_across_ranks(&z1, &z2, t, &world, true).unwrap();
    let keys = Tensor::cat(&[&z1, &o1, &z2, &o2], 0);
    let want = reference(&z1, &z2, &keys, t);
    assert!((loss.double_value(&[]) - want).abs() < 1e-12);
    // Not the local loss: the other rank's negatives count.
    let local = nt_xent_loss(&z1, &z2, t).unwrap().double_value(&[]);
    assert!((local - want).abs() > 1e-3);
    assert_eq!(
        *fake.calls.lock().unwrap(),
        [(vec![b, d], true), (vec![b, d], true)]
    );
    // Gradients flow into the gathered keys (in a real run, to the rank they came from).
    loss.backward();
    assert!(o1.grad().abs().max().double_value(&[]) > 0.0);
    assert!(z1.grad().abs().max().double_value(&[]) > 0.0);

    // Validation gathers without gradient.
    let fake = TwoRanks::new(vec![o1.detach(), o2.detach()]);
    let world = Collectives::from_ops(fake.clone(), false);
    let val = nt_xent_loss_across_ranks(&z1, &z2, t, &world, false).unwrap();
    assert!((val.double_value(&[]) - want).abs() < 1e-12);
    assert!(fake.calls.lock().unwrap().iter().all(|c| !c.1));
}

#[test]
fn one_process_is_the_local_loss_exactly() {
    tch_seed();
    let (z1, z2) = (unit_rows(4, 6), unit_rows(4, 6));
    let single = Collectives::single();
    let a = nt_xent_loss_across_ranks(&z1, &z2, 0.1, &single, true).unwrap();
    assert!(a.equal(&nt_xent_loss(&z1, &z2, 0.1).unwrap()));
}

fn tch_seed() {
    ssl_plugin_api::tch::manual_seed(11);
}

/// The world size the test encoder's factory saw.
static ENCODER_SAW_WORLD: AtomicUsize = AtomicUsize::new(0);

fn test_encoders() -> Plugin {
    Plugin::new("test-encoders", "0.0.0").encoder(
        "Tiny",
        "flatten, linear, BatchNorm, ReLU",
        |_: &Params, device: Device| {
            ENCODER_SAW_WORLD.store(Collectives::current().world_size(), Ordering::SeqCst);
            Ok(TinyEncoder::new(12, device))
        },
    )
}
ssl_plugin_api::register_builtin!(test_encoders);

/// The installed process group reaches SimCLR and its encoder through the ABI (as the host
/// makes them); `gather_negatives = false` keeps the negatives local.
#[test]
fn the_process_group_reaches_simclr_through_the_abi() {
    ssl_builtin_algorithms::link();
    let plugins = builtin_plugins().unwrap();
    let factory = plugins
        .iter()
        .flat_map(|p| p.algorithms.iter())
        .find(|a| a.name() == "SimCLR")
        .unwrap();
    let encoder = plugins
        .iter()
        .flat_map(|p| p.encoders.iter())
        .find(|e| e.name() == "Tiny")
        .unwrap();
    let spec = EncoderSpec {
        factory: encoder.clone(),
        params: Params::from_json("{}").unwrap(),
    };
    assert_eq!(spec.collectives().world_size(), 1, "nothing installed yet");

    let fake = TwoRanks::new(Vec::new());
    Collectives::install(Collectives::from_ops(fake.clone(), false));
    assert_eq!(spec.collectives().world_size(), 2);
    let create = |json: &str| {
        factory
            .create(&Params::from_json(json).unwrap(), &spec, Device::Cpu)
            .unwrap()
    };

    let mut gathering = create("{}");
    assert_eq!(ENCODER_SAW_WORLD.load(Ordering::SeqCst), 2);
    let v = views();
    let loss = gathering.training_loss(&v).unwrap();
    assert!(loss.double_value(&[]).is_finite());
    assert_eq!(
        *fake.calls.lock().unwrap(),
        [
            (vec![BATCH, PROJECTION_DIM], true),
            (vec![BATCH, PROJECTION_DIM], true)
        ]
    );
    let _ = gathering.validation_loss(&v).unwrap();
    assert_eq!(fake.calls.lock().unwrap().len(), 4);
    assert!(
        !fake.calls.lock().unwrap()[3].1,
        "validation gathers without gradient"
    );

    let mut local = create(r#"{"gather_negatives": false}"#);
    let _ = local.training_loss(&v).unwrap();
    assert_eq!(fake.calls.lock().unwrap().len(), 4, "no gather");
    Collectives::install(Collectives::single());
}
