//! Reads the contract version from `wit/policy.wit`, the one place it is written, into
//! `KNAS_CONTRACT_VERSION` (the SDK's `CONTRACT_VERSION`).

use std::path::Path;

fn main() {
    let wit = Path::new(env!("CARGO_MANIFEST_DIR")).join("wit/policy.wit");
    println!("cargo:rerun-if-changed={}", wit.display());
    let text = std::fs::read_to_string(&wit).unwrap_or_else(|e| panic!("cannot read {}: {e}", wit.display()));
    let version = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("package knas:policy@")?.strip_suffix(';'))
        .unwrap_or_else(|| panic!("{} has no `package knas:policy@VERSION;` line", wit.display()));
    println!("cargo:rustc-env=KNAS_CONTRACT_VERSION={version}");
}
