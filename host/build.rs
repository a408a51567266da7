//! Lets `ssl-host` find libtorch (and the CUDA runtime libraries the PyPI wheel links) without
//! LD_LIBRARY_PATH: an rpath to the canonical libtorch folder, whose own `$ORIGIN`-relative
//! rpaths then find the wheel's CUDA libraries. `--no-as-needed` keeps libtorch_cuda linked so
//! CUDA is found at run time on GPU machines.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let lib =
        std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys reports where libtorch lives");
    let lib = std::path::PathBuf::from(&lib)
        .canonicalize()
        .unwrap_or_else(|_| lib.into());
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-ltorch_cuda");
    }
    println!("cargo:rustc-link-arg=-ltorch");
}
