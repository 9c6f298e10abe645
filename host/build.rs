//! Reads the policy contract's version from its WIT file (the one place it is written),
//! generates the Katib suggestion API's Rust types from `proto/katib_suggestion.proto`,
//! compiles the built-in random policy for the binary to carry, and makes the `knas`
//! binaries find libtorch without LD_LIBRARY_PATH.
//!
//! `torch-sys` reports where it found libtorch (`DEP_TCH_LIBTORCH_LIB`, from its
//! `links = "tch"` key). We bake that folder into every binary as an rpath, and we keep
//! `libtorch_cuda` linked even though no symbol of it is referenced directly: the linker's
//! default `--as-needed` would drop it, and with it libtorch's CUDA backend.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    contract_version();
    katib_api();
    builtin_policy();
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        panic!("torch-sys did not say where libtorch is (DEP_TCH_LIBTORCH_LIB), so measures/cuda_stream.cpp cannot be compiled against it");
    };
    cuda_stream_shim(Path::new(&lib));
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

/// `measures/cuda_stream.cpp`, compiled against libtorch's headers with the C++ standard
/// and string ABI torch-sys compiles its own glue with (the ABI must match libtorch's).
fn cuda_stream_shim(lib: &Path) {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/measures/cuda_stream.cpp");
    println!("cargo:rerun-if-changed={}", source.display());
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    println!("cargo:rerun-if-env-changed=LIBTORCH_INCLUDE");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_USE_PYTORCH");
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_string());
    // torch-sys's rule: with LIBTORCH_USE_PYTORCH, Python's torch, whose headers are beside
    // lib/; otherwise headers under $LIBTORCH_INCLUDE, else under $LIBTORCH (which
    // .cargo/config.toml sets), else beside lib/.
    let beside_lib = || lib.parent().unwrap_or(lib).to_path_buf();
    let root = if std::env::var_os("LIBTORCH_USE_PYTORCH").is_some() {
        beside_lib()
    } else {
        ["LIBTORCH_INCLUDE", "LIBTORCH"].iter().find_map(std::env::var_os).map(PathBuf::from).unwrap_or_else(beside_lib)
    };
    let include = root.join("include");
    cc::Build::new()
        .cpp(true)
        .file(&source)
        .include(&include)
        .flag("-std=c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", abi.as_str())
        .warnings(false)
        .compile("knas_cuda_stream");
}

/// `KNAS_CONTRACT_VERSION`: the package version in `sdk/wit/policy.wit`.
fn contract_version() {
    let wit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk/wit/policy.wit");
    println!("cargo:rerun-if-changed={}", wit.display());
    let text = std::fs::read_to_string(&wit).unwrap_or_else(|e| panic!("cannot read {}: {e}", wit.display()));
    let version = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("package knas:policy@")?.strip_suffix(';'))
        .unwrap_or_else(|| panic!("{} has no `package knas:policy@VERSION;` line", wit.display()));
    println!("cargo:rustc-env=KNAS_CONTRACT_VERSION={version}");
}

/// The Katib suggestion service's messages and server/client stubs, compiled from the
/// `.proto` by protox (pure Rust: a clean machine needs no `protoc`).
fn katib_api() {
    let proto = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto/katib_suggestion.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    let include = proto.parent().unwrap_or(Path::new("."));
    let descriptors = protox::compile([&proto], [include]).unwrap_or_else(|e| panic!("cannot compile {}: {e:?}", proto.display()));
    tonic_prost_build::configure()
        .compile_fds(descriptors)
        .unwrap_or_else(|e| panic!("cannot generate the Katib API from {}: {e}", proto.display()));
}

/// `$OUT_DIR/random.core.wasm`: the random policy (`policies/random`, KNAS's own protocol)
/// as a core module, which `policy::builtin` wraps into a component at run time. The
/// binary carries it so that `knas select` and `knas search --policy random` need no
/// policy file.
///
/// Cargo cannot depend on a crate built for another target (artifact dependencies are
/// unstable), so this runs a second cargo for `wasm32-unknown-unknown` with its own target
/// folder (the outer build holds the lock of the usual one): `embedded-policy/` beside the
/// outer target folder's profiles, shared by debug, release and check builds, or under
/// `OUT_DIR` when that folder cannot be found. The jobserver is shared through the
/// inherited environment, so both stay within `-j`.
fn builtin_policy() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for input in ["policies/random", "sdk", "Cargo.toml", "Cargo.lock", ".cargo/config.toml"] {
        println!("cargo:rerun-if-changed={}", root.join(input).display());
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    // OUT_DIR is TARGET/PROFILE/build/knas-HASH/out; TARGET holds cargo's CACHEDIR.TAG.
    let target_dir = match out.ancestors().nth(4) {
        Some(target) if target.join("CACHEDIR.TAG").is_file() => target.join("embedded-policy"),
        _ => out.join("embedded-policy"),
    };
    let sysroot = Command::new(std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()))
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if let Some(sysroot) = sysroot
        && !sysroot.join("lib/rustlib/wasm32-unknown-unknown").is_dir()
    {
        panic!(
            "knas carries its random policy, built for wasm32-unknown-unknown, and that target is not installed: \
             `rustup target add wasm32-unknown-unknown` (scripts/setup.sh does it)"
        );
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(&root)
        .args(["build", "--locked", "--quiet", "-p", "knas-policy-random", "--target", "wasm32-unknown-unknown", "--profile", "policy"])
        .arg("--target-dir")
        .arg(&target_dir);
    if std::env::var_os("CARGO_NET_OFFLINE").is_some_and(|v| v == "true") {
        command.arg("--offline");
    }
    // What configures the host's build (flags, a lint driver, the target) is not the guest's.
    for var in ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_BUILD_RUSTFLAGS", "CARGO_BUILD_TARGET", "RUSTC_WORKSPACE_WRAPPER", "CLIPPY_ARGS"] {
        command.env_remove(var);
    }
    // Cargo reads a build script's stdout for instructions: the nested build's goes to stderr.
    if let Ok(stderr) = std::io::stderr().as_fd().try_clone_to_owned() {
        command.stdout(stderr);
    }
    let status = command.status().unwrap_or_else(|e| panic!("cannot run cargo to build the built-in random policy: {e}"));
    if !status.success() {
        panic!("building the built-in random policy (policies/random) for wasm32-unknown-unknown failed ({status}); see cargo's output above");
    }
    let module = target_dir.join("wasm32-unknown-unknown/policy/knas_policy_random.wasm");
    let copy = out.join("random.core.wasm");
    std::fs::copy(&module, &copy).unwrap_or_else(|e| panic!("cannot copy {} to {}: {e}", module.display(), copy.display()));
}
