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
        short_hash(&self.sha256)
    }
}

/// The first 8 hex digits of a SHA-256 in hex: a module's short content version.
pub fn short_hash(sha256: &str) -> &str {
    sha256.get(..8).unwrap_or(sha256)
}

/// The SHA-256 of `bytes` in hex: a module's content version.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// The most bytes of a name or string from a policy file that its errors and reports show.
const NAME_BYTES: usize = 256;

/// A name from the file (an import, an export, the SDK string) as errors and reports show
/// it: the file's author chose it, so it stays on one line and is capped.
fn shown(name: &str) -> String {
    super::runtime::printable(name, NAME_BYTES)
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
            Payload::Version { encoding, .. } if depth == 0 && encoding == Encoding::Module => return Err(LoadError::CoreModule),
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
                sdk = Some(shown(&String::from_utf8_lossy(reader.data())));
            }
            _ => {}
        }
    }
    let prefix = format!("{CONTRACT_PACKAGE}/policy@");
    let Some(version) = exports.iter().find_map(|e| e.strip_prefix(&prefix)) else {
        return Err(LoadError::NotAPolicy(if exports.is_empty() { "nothing".into() } else { shown(&exports.join(", ")) }));
    };
    if !SUPPORTED_VERSIONS.contains(&version) {
        return Err(LoadError::WrongContract { found: shown(version) });
    }
    if let Some(forbidden) = imports.iter().find(|name| !allowed_import(name, version)) {
        return Err(LoadError::ForbiddenImport(shown(forbidden)));
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

    /// A component that imports and exports instances under the given names (what a name
    /// says is all `inspect` reads; nothing else needs to be valid).
    fn component(imports: &[&str], exports: &[&str]) -> Vec<u8> {
        // Unsigned LEB128, as the binary format writes lengths.
        fn leb(mut n: usize, out: &mut Vec<u8>) {
            loop {
                let byte = (n & 0x7f) as u8;
                n >>= 7;
                out.push(if n > 0 { byte | 0x80 } else { byte });
                if n == 0 {
                    break;
                }
            }
        }
        let mut bytes = b"\0asm\x0d\0\x01\0".to_vec();
        for (id, names, tail) in [(10u8, imports, &[0x05u8, 0x00][..]), (11, exports, &[0x05, 0x00, 0x00])] {
            let mut section = Vec::new();
            leb(names.len(), &mut section);
            for name in names {
                section.push(0x00);
                leb(name.len(), &mut section);
                section.extend(name.as_bytes());
                section.extend(tail);
            }
            bytes.push(id);
            leb(section.len(), &mut bytes);
            bytes.extend(section);
        }
        bytes
    }

    #[test]
    fn names_from_the_file_stay_on_one_line_in_errors() {
        let policy = format!("{CONTRACT_PACKAGE}/policy@{CONTRACT_VERSION}");
        let forged = "x\n2026-01-01T00:00:00Z  INFO knas: run done";
        for (bytes, what) in [
            (component(&[forged], &[&policy]), "forbidden import"),
            (component(&[], &[forged]), "not a policy"),
            (component(&[], &[&format!("{CONTRACT_PACKAGE}/policy@9\n9")]), "wrong contract"),
        ] {
            let message = inspect(&bytes).expect_err(what).to_string();
            assert!(!message.contains('\n') && message.contains("\\n"), "{what}: {message}");
        }
        let long = "y".repeat(100);
        let message = inspect(&component(&[&long, &long], &[&long, &long, &long])).unwrap_err().to_string();
        assert!(message.contains("… [truncated]") && message.len() < 600, "{message}");
        // A well-formed name is shown as it is.
        let message = inspect(&component(&["wasi:http/types@0.2.0"], &[&policy])).unwrap_err().to_string();
        assert!(message.contains("imports `wasi:http/types@0.2.0`, which knas does not provide"), "{message}");
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
