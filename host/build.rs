//! Lets `ssl-host` find libtorch (and the CUDA runtime libraries the PyPI wheel links) without
//! LD_LIBRARY_PATH: an rpath to the canonical libtorch folder, whose own `$ORIGIN`-relative
//! rpaths then find the wheel's CUDA libraries. `--no-as-needed` keeps libtorch_cuda linked so
//! CUDA is found at run time on GPU machines.
//!
//! It also compiles `csrc/c10d_shim.cpp`, the binding of libtorch's c10d (store, process
//! groups, collectives; see `src/dist/`), against the headers the torch wheel ships. Gloo's own
//! headers are not in the wheel: they come from Debian's `libgloo-dev`, which
//! `scripts/setup-libtorch.sh` installs. NCCL is compiled in when the wheel has
//! `libtorch_cuda.so` and the CUDA headers NCCL's header needs are beside it in the venv
//! (`nvidia/nccl/include/nccl.h`, and `nvidia/cu13/include` with `crt/` and `nv/target`, which
//! the nvidia-cuda-crt and nvidia-cuda-cccl wheels add); otherwise an NCCL group is an error
//! that says this build has no NCCL.
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let lib =
        std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys reports where libtorch lives");
    let lib = PathBuf::from(&lib)
        .canonicalize()
        .unwrap_or_else(|_| lib.into());
    compile_c10d_shim(&lib);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-ltorch_cuda");
    }
    println!("cargo:rustc-link-arg=-ltorch");
}

/// Compiles the c10d shim into a static library linked before libtorch's own libraries.
fn compile_c10d_shim(lib: &Path) {
    println!("cargo:rerun-if-changed=csrc/c10d_shim.cpp");
    let gloo = Path::new("/usr/include/gloo");
    if !gloo.join("config.h").exists() {
        panic!(
            "ssl-host: Gloo's headers ({}) are missing; they are needed to compile the c10d \
             binding (host/csrc/c10d_shim.cpp). Run scripts/setup-libtorch.sh, which installs \
             Debian's libgloo-dev.",
            gloo.display()
        );
    }
    // lib = .../site-packages/torch/lib
    let torch = lib.parent().expect("libtorch's lib folder has a parent");
    let include = torch.join("include");
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .file("csrc/c10d_shim.cpp")
        .flag("-std=c++17")
        .define("USE_C10D_GLOO", None)
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .debug(false)
        .opt_level(1)
        .warnings(false)
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-deprecated-declarations");
    let nvidia = torch.parent().map(|site| site.join("nvidia"));
    let nccl = nvidia.as_ref().map(|n| n.join("nccl/include"));
    let cuda = nvidia.as_ref().map(|n| n.join("cu13/include"));
    // ProcessGroupNCCL.hpp includes the CUDA runtime headers, which need the compiler's `crt/`
    // headers (the nvidia-cuda-crt wheel) and `nv/target` (the nvidia-cuda-cccl wheel); the
    // torch wheel pulls in neither, so without them this build has no NCCL.
    let with_nccl = lib.join("libtorch_cuda.so").exists()
        && nccl.as_ref().is_some_and(|d| d.join("nccl.h").exists())
        && cuda.as_ref().is_some_and(|d| {
            ["cuda_runtime_api.h", "crt/host_config.h", "nv/target"]
                .iter()
                .all(|f| d.join(f).exists())
        });
    // Installing the header wheels later (the set-up does) must rebuild the shim with NCCL.
    if let Some(cuda) = &cuda {
        if cuda.exists() {
            println!("cargo:rerun-if-changed={}", cuda.display());
        }
    }
    if with_nccl {
        build
            .define("USE_C10D_NCCL", None)
            .include(nccl.expect("checked"))
            .include(cuda.expect("checked"));
    }
    build.compile("c10d_shim");
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    if with_nccl {
        println!("cargo:rustc-link-lib=dylib=c10_cuda");
        println!("cargo:rustc-link-lib=dylib=torch_cuda");
    }
}
