//! The example plugins at work: an external encoder trained one step by the host, and an
//! external dataset read through `dump`.

use e2e::*;
use ssl_plugin_api::host::load_plugin_file;
use ssl_plugin_api::tch::{self, Device, Kind, Tensor};
use ssl_plugin_api::{Encoder, Params};

#[test]
fn external_encoder_forward_backward_step_in_process() {
    let plugin = load_plugin_file(&artifact("libexample_tiny_cnn.so")).expect("plugin loads");
    let factory = plugin
        .encoders
        .iter()
        .find(|e| e.name() == "TinyCNN")
        .expect("TinyCNN offered");
    let params = Params::from_json(r#"{"dim": 24, "width": 8}"#).unwrap();
    tch::manual_seed(1);
    let mut encoder = factory.create(&params, Device::Cpu).expect("encoder made");
    assert_eq!(encoder.output_dim(), 24);
    let parameters = encoder.named_parameters();
    let names: Vec<&str> = parameters.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        names.contains(&"conv1.weight") && names.contains(&"fc.bias"),
        "{names:?}"
    );
    let before: Vec<Tensor> = parameters.iter().map(|(_, t)| t.detach().copy()).collect();

    // Forward in the plugin, loss and backward in the host.
    let images = Tensor::rand([5, 3, 32, 32], (Kind::Float, Device::Cpu));
    let out = encoder.forward(&images, true).unwrap();
    assert_eq!(out.size(), vec![5, 24]);
    let target = Tensor::ones([5, 24], (Kind::Float, Device::Cpu));
    let loss = (&out - &target).square().mean(Kind::Float);
    let loss_before = loss.double_value(&[]);
    loss.backward();

    // A host-side SGD step on the plugin's own tensors.
    tch::no_grad(|| {
        for (name, t) in &parameters {
            let grad = t.grad();
            assert!(grad.defined(), "no gradient reached {name}");
            let mut t = t.shallow_clone();
            let _ = t.f_sub_(&(grad * 0.05)).unwrap();
        }
    });
    for ((name, t), b) in encoder.named_parameters().iter().zip(&before) {
        assert!(
            !t.equal(b),
            "{name} did not change after the optimizer step"
        );
    }
    let loss_after = (&encoder.forward(&images, true).unwrap() - &target)
        .square()
        .mean(Kind::Float)
        .double_value(&[]);
    assert!(
        loss_after < loss_before,
        "loss did not go down: {loss_before} -> {loss_after}"
    );
}

#[test]
fn external_encoder_errors_reach_the_host() {
    let plugin = load_plugin_file(&artifact("libexample_tiny_cnn.so")).unwrap();
    let factory = plugin
        .encoders
        .iter()
        .find(|e| e.name() == "TinyCNN")
        .unwrap();
    let err = factory
        .create(&Params::from_json(r#"{"dim": -3}"#).unwrap(), Device::Cpu)
        .err()
        .expect("invalid dim is refused");
    assert!(err.message().contains("must be positive"), "{err}");
    // A libtorch error inside the plugin (wrong channel count) is an error, not an abort.
    let mut encoder = factory.create(&Params::default(), Device::Cpu).unwrap();
    let wrong = Tensor::rand([2, 5, 16, 16], (Kind::Float, Device::Cpu));
    let err = encoder
        .forward(&wrong, true)
        .expect_err("wrong input is refused");
    assert!(err.message().contains("Encoder::forward"), "{err}");
}

#[test]
fn check_encoder_command_trains_an_external_encoder() {
    let so = artifact("libexample_tiny_cnn.so");
    let run = ssl_host(&[
        "check-encoder",
        "--encoder=TinyCNN",
        "--dim=32",
        "--plugin",
        so.to_str().unwrap(),
    ]);
    run.assert_ok();
    assert!(run.stdout.contains("output [4, 32]"), "{}", run.stdout);
    assert!(
        run.stdout.contains("6 of 6 parameter tensors changed"),
        "{}",
        run.stdout
    );
}

fn write_png(path: &std::path::Path, width: u32, height: u32, rgb: &[u8]) {
    let file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut encoder = png::Encoder::new(file, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder
        .write_header()
        .unwrap()
        .write_image_data(rgb)
        .unwrap();
}

fn read_png(path: &std::path::Path) -> (u32, u32, Vec<u8>) {
    let decoder = png::Decoder::new(std::fs::File::open(path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buffer = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buffer).unwrap();
    buffer.truncate(info.buffer_size());
    (info.width, info.height, buffer)
}

#[test]
fn external_dataset_through_dump() {
    let data = tempfile::tempdir().unwrap();
    let images: Vec<Vec<u8>> = (0..3u8)
        .map(|k| {
            (0..4 * 3 * 3)
                .map(|i| (i as u8).wrapping_mul(7).wrapping_add(k * 50))
                .collect()
        })
        .collect();
    for (k, rgb) in images.iter().enumerate() {
        write_png(&data.path().join(format!("img{k}.png")), 4, 3, rgb);
    }
    std::fs::write(
        data.path().join("labels.csv"),
        "file,label\nimg0.png,1\nimg1.png,0\nimg2.png,\n",
    )
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    let so = artifact("libexample_png_folder.so");
    let run = ssl_host(&[
        "--plugin",
        so.to_str().unwrap(),
        "dump",
        "--dataset=PngFolder",
        &format!("--local_dataset={}", data.path().display()),
        &format!("--out={}", out.path().display()),
    ]);
    run.assert_ok();
    let labels = std::fs::read_to_string(out.path().join("labels.csv")).unwrap();
    assert_eq!(
        labels,
        "index,id,label\n0,img0.png,1\n1,img1.png,0\n2,img2.png,\n"
    );
    for (k, rgb) in images.iter().enumerate() {
        assert_eq!(
            read_png(&out.path().join(format!("{k}.png"))),
            (4, 3, rgb.clone()),
            "image {k} differs"
        );
    }

    // A label that is not a number is an error naming the file and row.
    std::fs::write(
        data.path().join("labels.csv"),
        "file,label\nimg0.png,1\nimg1.png,cat\n",
    )
    .unwrap();
    let run = ssl_host(&[
        "--plugin",
        so.to_str().unwrap(),
        "dump",
        "--dataset=PngFolder",
        &format!("--local_dataset={}", data.path().display()),
        &format!("--out={}", out.path().display()),
    ]);
    run.assert_clear_error(&["labels.csv row 3", "`cat`"]);
}

#[test]
fn builtin_shapes_through_dump() {
    let out = tempfile::tempdir().unwrap();
    let run = ssl_host(&[
        "dump",
        "--dataset=Shapes",
        "--limit=12",
        "--image_size=40",
        &format!("--out={}", out.path().display()),
    ]);
    run.assert_ok();
    let labels = std::fs::read_to_string(out.path().join("labels.csv")).unwrap();
    assert_eq!(labels.lines().count(), 13, "{labels}");
    let (w, h, rgb) = read_png(&out.path().join("11.png"));
    assert_eq!((w, h, rgb.len()), (40, 40, 40 * 40 * 3));
}
