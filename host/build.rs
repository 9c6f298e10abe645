//! Makes the `knas` binaries find libtorch without LD_LIBRARY_PATH.
//!
//! `torch-sys` reports where it found libtorch (`DEP_TCH_LIBTORCH_LIB`, from its
//! `links = "tch"` key). We bake that folder into every binary as an rpath, and we keep
//! `libtorch_cuda` linked even though no symbol of it is referenced directly: the linker's
//! default `--as-needed` would drop it, and with it libtorch's CUDA backend.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    let target = std::env::var("TARGET").unwrap_or_default();
    if target.contains("apple") || target.contains("linux") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
    if target.contains("linux") && Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--push-state,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--pop-state");
    }
}
