//! Checks a policy file against the contract before anything is compiled: is it wasm, is
//! it a component, which contract version does it export, what does it import.

use sha2::{Digest, Sha256};
use wasmparser::{Encoding, Parser, Payload};

/// The WIT package of the contract.
pub const CONTRACT_PACKAGE: &str = "knas:policy";
/// The current contract version: the package version of `sdk/wit/policy.wit`, read from
/// that file at build time (see `host/build.rs`).
pub const CONTRACT_VERSION: &str = env!("KNAS_CONTRACT_VERSION");
/// Every contract version this host runs, newest first: the current one and each frozen
/// one under `sdk/wit/past/` it keeps an adapter for (`super::versions`).
pub const SUPPORTED_VERSIONS: [&str; 2] = [CONTRACT_VERSION, super::versions::V0_1];
/// Custom section the Rust SDK embeds (`knas-policy-sdk <version>`).
pub const SDK_SECTION: &str = "knas-policy-sdk";

/// Interfaces a policy of contract `version` may import: that contract's own.
fn allowed_import(name: &str, version: &str) -> bool {
    name == format!("{CONTRACT_PACKAGE}/host@{version}")
        || name == format!("{CONTRACT_PACKAGE}/types@{version}")
        // What other languages' tool-chains import, linked to grant nothing (wasi.rs).
        || super::wasi::allowed_import(name)
}

/// Why a file is not a loadable policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read it: {0}")]
    Io(String),
    #[error("not a WebAssembly file (it starts with {0})")]
    NotWasm(String),
    #[error(
        "a core WebAssembly module, not a component: build policies with `knas policy build` (or wrap the module with `wasm-tools component new`)"
    )]
    CoreModule,
    #[error("malformed WebAssembly: {0}")]
    Malformed(String),
    #[error("not a knas policy: it exports no `{CONTRACT_PACKAGE}/policy` interface (it exports: {0})")]
    NotAPolicy(String),
    #[error(
        "built against contract {CONTRACT_PACKAGE}@{found}, which this host does not run (it runs {}): rebuild it with a knas-policy-sdk of one of those",
        SUPPORTED_VERSIONS.join(", ")
    )]
    WrongContract { found: String },
    #[error(
        "imports `{0}`, which knas does not provide: policies may import {CONTRACT_PACKAGE}/host and WASI 0.2's io, clocks, random, cli, filesystem and sockets interfaces (linked to grant nothing: no files, network, environment or real clocks)"
    )]
    ForbiddenImport(String),
    #[error("does not compile: {0}")]
    Compile(String),
    #[error("does not instantiate: {0}")]
    Instantiate(String),
}

/// What a policy file declares.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ContractInfo {
    /// Contract version of the exported policy interface.
    pub contract_version: String,
    /// The SDK that built it, when it says (`knas-policy-sdk 0.1.0`).
    pub sdk: Option<String>,
    pub imports: Vec<String>,
    pub exports: Vec<String>,
    /// Size in bytes.
    pub size: usize,
    /// SHA-256 of the file, hex.
    pub sha256: String,
}

impl ContractInfo {
    /// A short content version: the first 8 hex digits of the hash.
    pub fn short_hash(&self) -> &str {
        &self.sha256[..8]
    }
}

/// The SHA-256 of `bytes` in hex: a module's content version.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Inspects `bytes` and checks them against the contract.
pub fn inspect(bytes: &[u8]) -> Result<ContractInfo, LoadError> {
    if !bytes.starts_with(b"\0asm") {
        let head: Vec<String> = bytes.iter().take(4).map(|b| format!("{b:02x}")).collect();
        return Err(LoadError::NotWasm(if head.is_empty() { "nothing: the file is empty".into() } else { format!("bytes {}", head.join(" ")) }));
    }
    let mut imports = Vec::new();
    let mut exports = Vec::new();
    let mut sdk = None;
    // Nesting depth: top-level imports and exports are the component's own.
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|e| LoadError::Malformed(e.to_string()))?;
        match payload {
            Payload::Version { encoding, .. } => {
                if depth == 0 && encoding == Encoding::Module {
                    return Err(LoadError::CoreModule);
                }
            }
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(reader) if depth == 0 => {
                for import in reader {
                    let import = import.map_err(|e| LoadError::Malformed(e.to_string()))?;
                    imports.push(import.name.0.to_owned());
                }
            }
            Payload::ComponentExportSection(reader) if depth == 0 => {
                for export in reader {
                    let export = export.map_err(|e| LoadError::Malformed(e.to_string()))?;
                    exports.push(export.name.0.to_owned());
                }
            }
            Payload::CustomSection(reader) if reader.name() == SDK_SECTION => {
                sdk = Some(String::from_utf8_lossy(reader.data()).into_owned());
            }
            _ => {}
        }
    }
    let prefix = format!("{CONTRACT_PACKAGE}/policy@");
    let Some(version) = exports.iter().find_map(|e| e.strip_prefix(&prefix)) else {
        return Err(LoadError::NotAPolicy(if exports.is_empty() { "nothing".into() } else { exports.join(", ") }));
    };
    if !SUPPORTED_VERSIONS.contains(&version) {
        return Err(LoadError::WrongContract { found: version.to_owned() });
    }
    if let Some(forbidden) = imports.iter().find(|name| !allowed_import(name, version)) {
        return Err(LoadError::ForbiddenImport(forbidden.clone()));
    }
    Ok(ContractInfo {
        contract_version: version.to_owned(),
        sdk,
        imports,
        exports,
        size: bytes.len(),
        sha256: sha256_hex(bytes),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_what_is_not_a_component() {
        assert_eq!(inspect(b""), Err(LoadError::NotWasm("nothing: the file is empty".into())));
        assert_eq!(inspect(b"PK\x03\x04zip"), Err(LoadError::NotWasm("bytes 50 4b 03 04".into())));
        // The smallest core module: magic and version 1.
        assert_eq!(inspect(b"\0asm\x01\0\0\0"), Err(LoadError::CoreModule));
        assert!(matches!(inspect(b"\0asm\x0d\0\x01\0\xff"), Err(LoadError::Malformed(_))));
        // An empty component exports nothing.
        assert_eq!(inspect(b"\0asm\x0d\0\x01\0"), Err(LoadError::NotAPolicy("nothing".into())));
    }

    #[test]
    fn the_current_version_is_the_wit_files_and_older_ones_are_listed() {
        let wit = include_str!("../../../sdk/wit/policy.wit");
        assert!(wit.contains(&format!("package knas:policy@{CONTRACT_VERSION};")));
        assert_eq!(SUPPORTED_VERSIONS[0], CONTRACT_VERSION);
        let message = LoadError::WrongContract { found: "9.0.0".into() }.to_string();
        assert!(message.contains("knas:policy@9.0.0") && message.contains(&format!("runs {CONTRACT_VERSION}, 0.1.0")), "{message}");
    }
}
