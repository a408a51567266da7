//! The in-process tests load plugins into a test binary linked with libtorch: give it the same
//! rpath as ssl-host.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let lib =
        std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys reports where libtorch lives");
    let lib = std::path::PathBuf::from(&lib)
        .canonicalize()
        .unwrap_or_else(|_| lib.into());
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
}
