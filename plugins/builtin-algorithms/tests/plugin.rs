//! The registered factories, used as the host uses them: through the plugin ABI, around an
//! encoder offered by another (test) plugin.

mod common;

use common::{find, views, TinyEncoder};
use ssl_plugin_api::host::{builtin_plugins, LoadedPlugin};
use ssl_plugin_api::tch::{Device, Tensor};
use ssl_plugin_api::torch::ForeignAlgorithm;
use ssl_plugin_api::{EncoderSpec, Params, Plugin, SslAlgorithm};

fn test_encoders() -> Plugin {
    Plugin::new("test-encoders", "0.0.0").encoder(
        "Tiny",
        "flatten, linear, BatchNorm, ReLU",
        |p: &Params, device: Device| Ok(TinyEncoder::new(p.get_or("dim", 8)?, device)),
    )
}
ssl_plugin_api::register_builtin!(test_encoders);

fn plugins() -> Vec<LoadedPlugin> {
    ssl_builtin_algorithms::link();
    builtin_plugins().unwrap()
}

fn create(algorithm: &str, params: &str) -> ssl_plugin_api::Result<ForeignAlgorithm> {
    let plugins = plugins();
    let factory = plugins
        .iter()
        .flat_map(|p| p.algorithms.iter())
        .find(|a| a.name() == algorithm)
        .unwrap_or_else(|| panic!("algorithm {algorithm} not registered"));
    let encoder = plugins
        .iter()
        .flat_map(|p| p.encoders.iter())
        .find(|e| e.name() == "Tiny")
        .expect("test encoder not registered");
    let spec = EncoderSpec {
        factory: encoder.clone(),
        params: Params::from_json(r#"{"dim": 12}"#).unwrap(),
    };
    factory.create(&Params::from_json(params).unwrap(), &spec, Device::Cpu)
}

#[test]
fn every_algorithm_is_registered() {
    let plugins = plugins();
    let ours = plugins
        .iter()
        .find(|p| p.name == "builtin-algorithms")
        .expect("builtin-algorithms not registered");
    let names: Vec<&str> = ours.algorithms.iter().map(|a| a.name()).collect();
    assert_eq!(
        names,
        [
            "BYOL",
            "SimCLR",
            "MoCo",
            "SimSiam",
            "BarlowTwins",
            "VICReg",
            "DINO"
        ]
    );
    assert_eq!(ours.version, env!("CARGO_PKG_VERSION"));
}

/// DINO's per-epoch hook crosses the ABI: the last layer gets no gradient in epoch 0 (frozen)
/// and one in epoch 1.
#[test]
fn dino_begin_epoch_through_the_abi() {
    let mut dino = create(
        "DINO",
        r#"{"out_dim": 16, "hidden_dim": 8, "bottleneck_dim": 4}"#,
    )
    .unwrap();
    let last_v = |d: &ForeignAlgorithm| {
        d.parameters()
            .into_iter()
            .find(|p| p.name == "student.head.last_layer.weight_v")
            .expect("last layer among the parameters")
            .tensor
    };
    dino.begin_epoch(0, 2).unwrap();
    dino.training_loss(&views()).unwrap().backward();
    assert!(!last_v(&dino).grad().defined(), "frozen in epoch 0");
    dino.begin_epoch(1, 2).unwrap();
    dino.training_loss(&views()).unwrap().backward();
    assert!(last_v(&dino).grad().defined(), "trained in epoch 1");
}

#[test]
fn byol_through_the_abi() {
    let mut byol = create("BYOL", "{}").unwrap();
    assert_eq!(byol.embedding_dim(), 12);
    assert_eq!(byol.embedding_encoder_prefix(), "target.encoder.");
    let state = byol.state();
    // Two encoders built from the spec, made identical.
    assert!(
        find(&state, "online.encoder.fc.weight").equal(find(&state, "target.encoder.fc.weight"))
    );
    let loss = byol.training_loss(&views()).unwrap();
    assert!((-1.0..=1.0).contains(&loss.double_value(&[])));
    loss.backward();
    let grad = byol.parameters()[0].tensor.grad();
    assert!(grad.defined() && grad.abs().sum(None).double_value(&[]) > 0.0);

    // The host restores the tau in place from a checkpoint.
    let mut tau = find(&state, "byol.current_tau").shallow_clone();
    tau.copy_(&Tensor::from(0.5f64));
    assert_eq!(byol.scalars().unwrap(), [("byol/tau".to_string(), 0.5)]);
    byol.after_optimizer_step(3, 10).unwrap();
    assert_eq!(
        find(&byol.state(), "byol.current_tau").double_value(&[]),
        ssl_builtin_algorithms::byol::tau(0.99, 3, 10)
    );
}

#[test]
fn simclr_through_the_abi() {
    let mut simclr = create("SimCLR", r#"{"temperature": 0.2}"#).unwrap();
    assert_eq!(simclr.embedding_dim(), 12);
    assert_eq!(simclr.embedding_encoder_prefix(), "encoder.");
    let loss = simclr.training_loss(&views()).unwrap();
    assert!(loss.double_value(&[]).is_finite());
    assert_eq!(simclr.parameters()[0].name, "encoder.fc.weight");
    assert_eq!(simclr.embed(&views()[0], false).unwrap().size(), [6, 12]);
}

#[test]
fn errors_cross_the_abi_with_their_message() {
    let e = create("BYOL", r#"{"momentum": 0.9}"#).err().unwrap();
    assert!(e.message().contains("`momentum`"), "{e}");
    assert!(e.message().contains("BYOL"), "{e}");
    let mut simclr = create("SimCLR", "{}").unwrap();
    let e = simclr.training_loss(&views()[..1]).unwrap_err();
    assert!(e.message().contains("exactly 2"), "{e}");
}

#[test]
fn barlow_twins_and_vicreg_through_the_abi() {
    for (name, prefix) in [("BarlowTwins", "barlowtwins"), ("VICReg", "vicreg")] {
        let mut algorithm = create(name, r#"{"projector_dims": [16, 10]}"#).unwrap();
        assert_eq!(algorithm.embedding_dim(), 12, "{name}");
        assert_eq!(algorithm.embedding_encoder_prefix(), "encoder.", "{name}");
        let loss = algorithm.training_loss(&views()).unwrap();
        assert!(loss.double_value(&[]).is_finite(), "{name}");
        assert_eq!(
            find(&algorithm.state(), "projector.3.weight").size(),
            [10, 16],
            "{name}"
        );
        let e = create(name, r#"{"projector_dims": "wide"}"#).err().unwrap();
        assert!(e.message().contains("projector_dims"), "{name}: {e}");
        let info = plugins()
            .iter()
            .flat_map(|p| p.algorithms.iter())
            .find(|a| a.name() == name)
            .map(|a| a.info())
            .unwrap();
        assert_eq!(info.metric_prefix, prefix);
        assert_eq!(info.lr_schedule, "warmup_cosine_step");
    }
}

/// SimSiam's predictor keeps the base learning rate (the paper): its tensors cross the ABI
/// unscheduled, every other tensor scheduled; `fixed_predictor_lr = false` schedules them all.
///
/// Catches (tried, then restored): `ForeignAlgorithm` not carrying `scheduled` across the ABI
/// (every tensor scheduled).
#[test]
fn simsiam_predictor_is_unscheduled_through_the_abi() {
    let scheduled = |params: &str| -> Vec<(String, bool)> {
        create("SimSiam", params)
            .unwrap()
            .parameters()
            .into_iter()
            .map(|p| (p.name, p.scheduled))
            .collect()
    };
    let small = r#"{"projector_dim": 16, "predictor_hidden": 4}"#;
    let list = scheduled(small);
    let predictor: Vec<&str> = list
        .iter()
        .filter(|(_, s)| !s)
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(
        predictor,
        [
            "predictor.model.0.weight",
            "predictor.model.1.weight",
            "predictor.model.1.bias",
            "predictor.model.3.weight",
            "predictor.model.3.bias"
        ]
    );
    assert!(list.iter().any(|(n, s)| n.starts_with("encoder.") && *s));
    assert!(list.iter().any(|(n, s)| n.starts_with("projector.") && *s));
    let decayed = r#"{"projector_dim": 16, "predictor_hidden": 4, "fixed_predictor_lr": false}"#;
    assert!(scheduled(decayed).iter().all(|(_, s)| *s));
}
