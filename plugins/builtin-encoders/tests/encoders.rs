//! Shapes, initialisation, parameters and BatchNorm behaviour of the built-in encoders.

mod common;

use common::{build, find, params};
use ssl_builtin_encoders::{DenseNet, ResNet};
use ssl_plugin_api::tch::{self, Device, Kind, Tensor};
use ssl_plugin_api::Encoder;

fn images(n: i64, size: i64) -> Tensor {
    Tensor::randn([n, 3, size, size], (Kind::Float, Device::Cpu))
}

fn assert_output(name: &str, dim: i64) {
    let mut enc = build(name, "{}");
    assert_eq!(enc.output_dim(), dim, "{name}");
    let x = images(2, 32);
    for train in [false, true] {
        let y = tch::no_grad(|| enc.forward(&x, train)).unwrap();
        assert_eq!(y.size(), [2, dim], "{name}, train={train}");
        assert!(
            y.isfinite().all().to_kind(Kind::Int64).int64_value(&[]) == 1,
            "{name}: non-finite output"
        );
    }
}

#[test]
fn resnet18_gives_512_features() {
    assert_output("resnet18", 512);
}

#[test]
fn resnet50_gives_2048_features() {
    assert_output("resnet50", 2048);
}

#[test]
fn resnet101_gives_2048_features() {
    assert_output("resnet101", 2048);
}

#[test]
fn densenet121_gives_1024_features() {
    assert_output("densenet121", 1024);
}

#[test]
fn densenet121_runs_at_32_and_224_pixels() {
    let mut enc = build("densenet121", "{}");
    for size in [32, 224] {
        let y = tch::no_grad(|| enc.forward(&images(1, size), false)).unwrap();
        assert_eq!(y.size(), [1, 1024], "at {size} px");
    }
    let err = tch::no_grad(|| enc.forward(&images(1, 28), false)).expect_err("28 px is too small");
    assert!(err.message().contains("too small"), "{err}");
}

#[test]
fn densenet121_has_no_final_relu() {
    // In train mode at 32 px, norm5 sees 1×1 maps and standardises each channel over the
    // batch, so half of the features are negative unless a ReLU follows it.
    let mut enc = build("densenet121", "{}");
    let y = tch::no_grad(|| enc.forward(&images(2, 32), true)).unwrap();
    assert!(
        y.min().double_value(&[]) < 0.0,
        "all features are non-negative: a ReLU after norm5?"
    );
}

#[test]
fn cifar_stem_switches_conv1_to_3x3() {
    let default = build("resnet18", "{}");
    let cifar = build("resnet18", r#"{"cifar_stem": true}"#);
    let off = build("resnet50", r#"{"cifar_stem": false}"#);
    let k = |e: &dyn Encoder| find(&e.named_parameters(), "conv1.weight").size();
    assert_eq!(k(default.as_ref()), [64, 3, 7, 7]);
    assert_eq!(k(cifar.as_ref()), [64, 3, 3, 3]);
    assert_eq!(k(off.as_ref()), [64, 3, 7, 7]);
    let cifar50 = build("resnet50", r#"{"cifar_stem": true}"#);
    assert_eq!(k(cifar50.as_ref()), [64, 3, 3, 3]);
}

#[test]
fn batchnorm_starts_at_one_and_zero() {
    for name in ["resnet18", "resnet50", "densenet121"] {
        let enc = build(name, "{}");
        let mut seen = 0;
        for (n, t) in enc.named_parameters() {
            let is_bn = n.contains(".bn") || n.starts_with("bn") || n.contains("norm");
            let is_bn = is_bn || n.contains("downsample.1.");
            if !is_bn {
                assert!(n.ends_with(".weight") && t.dim() == 4, "{name}: odd `{n}`");
                continue;
            }
            seen += 1;
            let want = if n.ends_with(".weight") { 1.0 } else { 0.0 };
            let max_err = (&t - want).abs().max().double_value(&[]);
            assert_eq!(max_err, 0.0, "{name}: `{n}` is not all {want}");
        }
        assert!(seen > 0, "{name}: no BatchNorm parameters");
        for (n, t) in enc.named_buffers() {
            let want = if n.ends_with("running_var") { 1.0 } else { 0.0 };
            let max_err = (&t - want).abs().max().double_value(&[]);
            assert_eq!(max_err, 0.0, "{name}: buffer `{n}` is not all {want}");
        }
    }
}

fn assert_std(enc: &dyn Encoder, name: &str, fan: i64) {
    let params = enc.named_parameters();
    let w = find(&params, name);
    let want = (2.0 / fan as f64).sqrt();
    let std = w.std(true).double_value(&[]);
    let mean = w.mean(Kind::Float).double_value(&[]);
    assert!(
        (std / want - 1.0).abs() < 0.1,
        "`{name}` {:?}: std {std}, expected {want}",
        w.size()
    );
    assert!(mean.abs() < 0.1 * want, "`{name}`: mean {mean}");
}

#[test]
fn resnet_convs_are_kaiming_normal_fan_out() {
    // Non-square convolutions, so fan_in and fan_out give different standard deviations.
    let r18 = build("resnet18", "{}");
    assert_std(r18.as_ref(), "layer4.0.conv1.weight", 512 * 3 * 3);
    assert_std(r18.as_ref(), "layer3.0.downsample.0.weight", 256);
    assert_std(r18.as_ref(), "conv1.weight", 64 * 7 * 7);
    let r50 = build("resnet50", "{}");
    assert_std(r50.as_ref(), "layer4.0.conv3.weight", 2048);
    assert_std(r50.as_ref(), "layer4.2.conv1.weight", 512);
}

#[test]
fn densenet_convs_are_kaiming_normal_fan_in() {
    let d = build("densenet121", "{}");
    let p = "features.denseblock4.denselayer16";
    assert_std(d.as_ref(), &format!("{p}.conv1.weight"), 992);
    assert_std(d.as_ref(), &format!("{p}.conv2.weight"), 128 * 9);
    assert_std(d.as_ref(), "features.transition3.conv.weight", 1024);
}

#[test]
fn parameters_and_buffers_are_sorted_shared_and_split() {
    let enc = build("resnet18", "{}");
    let (p1, p2) = (enc.named_parameters(), enc.named_parameters());
    let names: Vec<&str> = p1.iter().map(|(n, _)| n.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted);
    assert!(!names.iter().any(|n| n.starts_with("fc")));
    for ((n, a), (_, b)) in p1.iter().zip(&p2) {
        assert!(a.requires_grad(), "`{n}` is not trainable");
        assert_eq!(a.data_ptr(), b.data_ptr(), "`{n}` is a copy");
    }
    let buffers = enc.named_buffers();
    assert_eq!(
        buffers.len(),
        2 * 20,
        "two buffers per BatchNorm (20 in ResNet-18)"
    );
    for (n, t) in &buffers {
        assert!(n.ends_with(".running_mean") || n.ends_with(".running_var"));
        assert!(!t.requires_grad(), "buffer `{n}` is trainable");
    }
    // Changing a returned tensor in place changes the encoder's own.
    let w = find(&p1, "conv1.weight");
    tch::no_grad(|| {
        let _ = w.shallow_clone().fill_(0.5);
    });
    let again = enc.named_parameters();
    let w2 = find(&again, "conv1.weight");
    assert_eq!(w2.mean(Kind::Float).double_value(&[]), 0.5);
}

#[test]
fn every_parameter_gets_a_gradient() {
    for name in ["resnet18", "densenet121"] {
        let mut enc = build(name, "{}");
        let y = enc.forward(&images(2, 32), true).unwrap();
        (&y * y.detach()).sum(Kind::Float).backward();
        for (n, t) in enc.named_parameters() {
            let g = t.grad();
            assert!(g.defined(), "{name}: `{n}` got no gradient");
        }
    }
}

#[test]
fn train_mode_updates_running_stats_and_eval_does_not() {
    for name in ["resnet18", "densenet121"] {
        let mut enc = build(name, "{}");
        let x = images(4, 32) * 3.0 + 1.0;
        let key = if name == "resnet18" {
            "bn1.running_mean"
        } else {
            "features.norm0.running_mean"
        };
        let snapshot = |e: &dyn Encoder| find(&e.named_buffers(), key).copy();
        let before = snapshot(enc.as_ref());
        let _ = tch::no_grad(|| enc.forward(&x, false)).unwrap();
        let after_eval = snapshot(enc.as_ref());
        assert!(
            before.equal(&after_eval),
            "{name}: eval forward changed {key}"
        );
        let _ = tch::no_grad(|| enc.forward(&x, true)).unwrap();
        let after_train = snapshot(enc.as_ref());
        let moved = (&after_train - &before).abs().max().double_value(&[]);
        assert!(moved > 1e-4, "{name}: train forward left {key} unchanged");
    }
}

#[test]
fn eval_mode_is_deterministic_and_batch_independent() {
    let mut enc = build("resnet18", "{}");
    let x = images(3, 32);
    let all = tch::no_grad(|| enc.forward(&x, false)).unwrap();
    let one = tch::no_grad(|| enc.forward(&x.narrow(0, 1, 1), false)).unwrap();
    let diff = (all.narrow(0, 1, 1) - one).abs().max().double_value(&[]);
    assert!(diff < 1e-4, "eval output depends on the batch ({diff})");
}

#[test]
fn parameters_are_checked() {
    let cpu = Device::Cpu;
    let err = ResNet::resnet18(&params(r#"{"cifar_stem": true, "depth": 3, "fc": 1}"#), cpu)
        .err()
        .expect("unknown names");
    let msg = err.message();
    assert!(msg.contains("`depth`") && msg.contains("`fc`"), "{msg}");
    assert!(msg.contains("resnet18"), "{msg}");
    let err = ResNet::resnet50(&params(r#"{"cifar_stem": "yes"}"#), cpu)
        .err()
        .expect("a string is not a bool");
    assert!(err.message().contains("cifar_stem"), "{err}");
    let err = DenseNet::densenet121(&params(r#"{"cifar_stem": true}"#), cpu)
        .err()
        .expect("densenet has no CIFAR stem");
    assert!(
        err.message().contains("densenet121 has no CIFAR stem"),
        "{err}"
    );
    assert!(DenseNet::densenet121(&params(r#"{"cifar_stem": false}"#), cpu).is_ok());
    let err = DenseNet::densenet121(&params(r#"{"growth": 12}"#), cpu)
        .err()
        .expect("unknown name");
    assert!(err.message().contains("`growth`"), "{err}");
}

#[test]
fn bad_inputs_are_errors_not_crashes() {
    let mut enc = build("resnet18", "{}");
    let gray = Tensor::zeros([2, 1, 32, 32], (Kind::Float, Device::Cpu));
    let err = enc.forward(&gray, false).expect_err("one channel");
    assert!(err.message().contains("[N, 3, H, W]"), "{err}");
    let flat = Tensor::zeros([2, 3 * 32 * 32], (Kind::Float, Device::Cpu));
    assert!(enc.forward(&flat, false).is_err());
}
