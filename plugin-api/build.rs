//! Records what this copy of the plugin API was built against, so that a plugin carries the
//! record inside itself and the host can compare it before calling anything else.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc_version = std::process::Command::new(rustc)
        .arg("-V")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=SSL_PLUGIN_API_RUSTC={rustc_version}");

    let (tch, libtorch, variant) = torch_build();
    println!("cargo:rustc-env=SSL_PLUGIN_API_TCH={tch}");
    println!("cargo:rustc-env=SSL_PLUGIN_API_LIBTORCH={libtorch}");
    println!("cargo:rustc-env=SSL_PLUGIN_API_LIBTORCH_VARIANT={variant}");
}

/// (tch version, libtorch version, `cpu`/`cuda`), all empty without the `torch` feature.
fn torch_build() -> (String, String, String) {
    // With the `torch` feature, torch-sys (links = "tch") tells us where libtorch lives.
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return (String::new(), String::new(), String::new());
    };
    let lib = PathBuf::from(lib);
    let lib = lib.canonicalize().unwrap_or(lib);
    let version = std::fs::read_to_string(lib.join("../version.py"))
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("__version__ = "))
                .map(|v| v.trim().trim_matches('\'').trim_matches('"').to_string())
        })
        .or_else(|| std::fs::read_to_string(lib.join("../build-version")).ok())
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let variant = if lib.join("libtorch_cuda.so").exists() {
        "cuda"
    } else {
        "cpu"
    };
    // tch is pinned to this exact version in Cargo.toml.
    ("0.24.0".to_string(), version, variant.to_string())
}
