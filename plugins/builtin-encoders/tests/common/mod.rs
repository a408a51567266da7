//! Helpers shared by the integration tests.
#![allow(dead_code)]

use ssl_builtin_encoders::{DenseNet, ResNet};
use ssl_plugin_api::tch::{Device, Tensor};
use ssl_plugin_api::{Encoder, Params};
use std::path::PathBuf;
use std::process::Command;

/// The project's Python (torch 2.11, torchvision 0.26), set up with libtorch.
pub const PYTHON: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../.deps/torch-venv/bin/python"
);

/// Parameters from JSON text.
pub fn params(json: &str) -> Params {
    Params::from_json(json).expect("valid JSON parameters")
}

/// Builds one of the four encoders by name on the CPU.
pub fn build(name: &str, json: &str) -> Box<dyn Encoder> {
    let p = params(json);
    let cpu = Device::Cpu;
    match name {
        "resnet18" => Box::new(ResNet::resnet18(&p, cpu).unwrap()),
        "resnet50" => Box::new(ResNet::resnet50(&p, cpu).unwrap()),
        "resnet101" => Box::new(ResNet::resnet101(&p, cpu).unwrap()),
        "densenet121" => Box::new(DenseNet::densenet121(&p, cpu).unwrap()),
        other => panic!("no encoder `{other}`"),
    }
}

/// The named tensor of a list, or a panic naming it.
pub fn find<'a>(list: &'a [(String, Tensor)], name: &str) -> &'a Tensor {
    &list
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no tensor `{name}`"))
        .1
}

/// Runs the project's Python with `args`; panics with its output unless it succeeds.
pub fn run_python(args: &[&str]) -> String {
    assert!(
        std::path::Path::new(PYTHON).exists(),
        "{PYTHON} is missing: run scripts/setup-libtorch.sh"
    );
    let out = Command::new(PYTHON)
        .arg("-W")
        .arg("ignore")
        .args(args)
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "python failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A fresh directory under cargo's temporary directory for integration tests.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("builtin-encoders")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Writes tensors as `manifest.tsv` (`name<TAB>d0,d1,...` per line) and `data.f32` (their
/// float32 values, little-endian, in manifest order) under `dir`.
pub fn dump(dir: &std::path::Path, tensors: &[(String, Tensor)]) {
    std::fs::create_dir_all(dir).expect("create dump dir");
    let mut manifest = String::new();
    let mut data: Vec<u8> = Vec::new();
    for (name, t) in tensors {
        let dims: Vec<String> = t.size().iter().map(|d| d.to_string()).collect();
        manifest.push_str(&format!("{name}\t{}\n", dims.join(",")));
        let flat = t
            .detach()
            .to_device(Device::Cpu)
            .contiguous()
            .flatten(0, -1);
        let values = Vec::<f32>::try_from(&flat).expect("float tensor");
        data.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    }
    std::fs::write(dir.join("manifest.tsv"), manifest).expect("write manifest");
    std::fs::write(dir.join("data.f32"), data).expect("write data");
}
