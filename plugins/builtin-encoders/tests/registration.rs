//! The encoders as the host sees them: registered as a built-in plugin and made through the
//! plugin ABI.

use ssl_plugin_api::host::builtin_plugins;
use ssl_plugin_api::tch::{self, Device, Kind, Tensor};
use ssl_plugin_api::{Encoder, Params};

#[test]
fn the_four_encoders_are_registered_and_work_through_the_abi() {
    ssl_builtin_encoders::link();
    let plugins = builtin_plugins().expect("built-in plugins load");
    let plugin = plugins
        .iter()
        .find(|p| p.name == "builtin-encoders")
        .expect("builtin-encoders is registered");
    assert_eq!(plugin.version, env!("CARGO_PKG_VERSION"));
    let names: Vec<&str> = plugin.encoders.iter().map(|f| f.name()).collect();
    assert_eq!(names, ["resnet18", "resnet50", "resnet101", "densenet121"]);
    for (f, dim) in plugin.encoders.iter().zip(["512", "2048", "2048", "1024"]) {
        assert!(
            f.description().contains(dim),
            "{}: {}",
            f.name(),
            f.description()
        );
        assert!(f.description().contains("cifar_stem"), "{}", f.name());
    }

    let resnet18 = &plugin.encoders[0];
    let params = Params::from_json(r#"{"cifar_stem": true}"#).unwrap();
    let mut enc = resnet18.create(&params, Device::Cpu).expect("resnet18");
    assert_eq!(enc.output_dim(), 512);
    let conv1 = enc
        .named_parameters()
        .into_iter()
        .find(|(n, _)| n == "conv1.weight")
        .expect("conv1.weight")
        .1;
    assert_eq!(conv1.size(), [64, 3, 3, 3]);
    let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
    let y = tch::no_grad(|| enc.forward(&x, false)).expect("forward");
    assert_eq!(y.size(), [2, 512]);

    // Errors cross the ABI with the factory's message.
    let bad = Params::from_json(r#"{"cifar_stem": false, "widht": 2}"#).unwrap();
    let err = resnet18
        .create(&bad, Device::Cpu)
        .err()
        .expect("unknown name");
    assert!(err.message().contains("`widht`"), "{err}");
    let densenet = &plugin.encoders[3];
    let err = densenet
        .create(&params, Device::Cpu)
        .err()
        .expect("no CIFAR stem");
    assert!(
        err.message().contains("densenet121 has no CIFAR stem"),
        "{err}"
    );
    let bad_input = Tensor::zeros([2, 4, 32, 32], (Kind::Float, Device::Cpu));
    let err = enc.forward(&bad_input, false).expect_err("four channels");
    assert!(err.message().contains("[N, 3, H, W]"), "{err}");
}
