//! `knas policy build`: compiles policies to WebAssembly components: Rust crates, Python
//! folders (an `app.py`) through componentize-py and JavaScript folders (an `app.js`)
//! through ComponentizeJS.
//!
//! A policy crate is a `cdylib` built for `wasm32-unknown-unknown` against the SDK. Cargo
//! produces a core module carrying the world's type in a custom section; `wit-component`
//! wraps it into a component whose only imports are the contract's. The component is named
//! after the crate's `[package.metadata.knas] policy = "…"` key (else the package name).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cargo_metadata::{Message, MetadataCommand, Package};

use super::contract;

/// The Rust target policies are compiled for.
pub const WASM_TARGET: &str = "wasm32-unknown-unknown";

/// Why a policy could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("cannot read the cargo metadata of {path}: {message}")]
    Metadata { path: PathBuf, message: String },
    #[error("{0} is not a crate of its workspace")]
    NotAPackage(PathBuf),
    #[error("cargo build failed for {crates} (see the compiler output above); is the target installed? `rustup target add {WASM_TARGET}`")]
    Cargo { crates: String },
    #[error("cannot run cargo: {0}")]
    Spawn(std::io::Error),
    #[error("cargo built no .wasm for {0}: is its crate-type [\"cdylib\"]?")]
    NoArtifact(String),
    #[error("{crate_name}: cannot make a component of {module}: {message}")]
    Componentize { crate_name: String, module: PathBuf, message: String },
    #[error("{crate_name}: the component does not satisfy the contract: {source}")]
    Contract { crate_name: String, source: contract::LoadError },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{dir}: cannot run {tool} ({source}); {install}")]
    NoToolchain { dir: PathBuf, tool: String, install: &'static str, source: std::io::Error },
    #[error("{dir}: {tool} failed (see its output above); {install}")]
    Toolchain { dir: PathBuf, tool: String, install: &'static str },
}

/// The contract's WIT, for tool-chains that read it.
const CONTRACT_WIT: &str = include_str!("../../../sdk/wit/policy.wit");

/// Builds `app.js` into a component with ComponentizeJS: `node … SOURCE WIT OUT`. The
/// fetch/HTTP support ComponentizeJS adds by default is left out: it would import
/// `wasi:http`, which policies may not. ComponentizeJS turns only a thrown `{ payload }`
/// into the call's error (anything else aborts the instance, its message lost), so when
/// the source declares `export const policy = …` its methods (own and inherited, called on
/// the object itself, so `this` is the policy) are wrapped to throw any exception as
/// `{ payload: "Name: message" }`.
const COMPONENTIZE_JS_SCRIPT: &str = r#"
import { componentize } from '@bytecodealliance/componentize-js';
import { readFileSync, writeFileSync } from 'node:fs';
const [source, wit, out] = process.argv.slice(1);
let code = readFileSync(source, 'utf8');
const declared = /^export const policy\s*=/m;
if (declared.test(code)) {
  code = code.replace(declared, 'const knasPolicy =') + `
const knasGuard = (name) => (...args) => {
  try {
    return knasPolicy[name](...args);
  } catch (error) {
    if (error !== null && typeof error === 'object' && 'payload' in error) throw error;
    throw { payload: error instanceof Error ? error.name + ': ' + error.message : String(error) };
  }
};
const knasMethods = new Set();
for (let o = knasPolicy; o !== null && o !== Object.prototype; o = Object.getPrototypeOf(o)) {
  for (const name of Object.getOwnPropertyNames(o)) {
    if (name !== 'constructor' && typeof knasPolicy[name] === 'function') knasMethods.add(name);
  }
}
export const policy = Object.fromEntries([...knasMethods].map((name) => [name, knasGuard(name)]));
`;
}
const { component } = await componentize(code, {
  witPath: wit, worldName: 'search-policy', sourceName: 'app.js', disableFeatures: ['http', 'fetch-event'],
});
writeFileSync(out, component);
"#;

/// A policy written in a language other than Rust, built by that language's tool-chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    /// `app.py` defining `class Policy`, built by componentize-py.
    Python,
    /// `app.js` exporting `policy`, built by ComponentizeJS (npm).
    JavaScript,
}

impl Language {
    /// The language of the policy folder `dir`, if it is not a Rust crate.
    pub fn of(dir: &Path) -> Option<Language> {
        if dir.join("Cargo.toml").exists() {
            return None;
        }
        [(Language::Python, "app.py"), (Language::JavaScript, "app.js")].into_iter().find(|(_, file)| dir.join(file).is_file()).map(|(l, _)| l)
    }

    /// How to get the tool-chain, for error messages.
    fn install(self) -> &'static str {
        match self {
            Language::Python => "install it with `pip install componentize-py==0.25.1` (or set KNAS_COMPONENTIZE_PY to its path)",
            Language::JavaScript => {
                "it needs node and `npm install @bytecodealliance/componentize-js@0.23.0` in the policy folder (or set KNAS_COMPONENTIZE_JS to a folder where it is installed)"
            }
        }
    }

    /// The command that builds `dir`'s policy against the contract in `wit` into `out`.
    fn command(self, dir: &Path, wit: &Path, out: &Path) -> Command {
        match self {
            Language::Python => {
                let mut command = Command::new(std::env::var_os("KNAS_COMPONENTIZE_PY").unwrap_or_else(|| "componentize-py".into()));
                command.arg("-d").arg(wit).args(["-w", "search-policy", "componentize", "app", "-p"]).arg(dir).arg("-o").arg(out);
                command
            }
            Language::JavaScript => {
                let mut command = Command::new("node");
                // Bare imports resolve from the working folder's node_modules.
                command.current_dir(std::env::var_os("KNAS_COMPONENTIZE_JS").map_or_else(|| dir.to_owned(), PathBuf::from));
                command.args(["--input-type=module", "-e", COMPONENTIZE_JS_SCRIPT]).arg(dir.join("app.js")).arg(wit).arg(out);
                command
            }
        }
    }
}

/// Builds the policy in folder `dir` with its language's tool-chain into
/// `<out_dir>/<folder name>.wasm`.
pub fn build_foreign(dir: &Path, language: Language, options: &BuildOptions) -> Result<Built, PackageError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| PackageError::Io { path, source }
    };
    let dir = dir.canonicalize().map_err(io(dir))?;
    let policy = dir.file_name().map_or_else(|| "policy".to_owned(), |n| n.to_string_lossy().into_owned());
    std::fs::create_dir_all(&options.out_dir).map_err(io(&options.out_dir))?;
    let out_dir = options.out_dir.canonicalize().map_err(io(&options.out_dir))?;
    // The contract as the tool-chains read it: a folder holding the WIT file.
    let wit = std::env::temp_dir().join(format!("knas-wit-{}-{policy}", std::process::id()));
    std::fs::create_dir_all(&wit).map_err(io(&wit))?;
    std::fs::write(wit.join("policy.wit"), CONTRACT_WIT).map_err(io(&wit))?;
    let partial = out_dir.join(format!(".{policy}.wasm.partial"));
    let mut command = language.command(&dir, &wit, &partial);
    let tool = command.get_program().to_string_lossy().into_owned();
    // The tool's output goes to stderr: stdout carries `--format json`'s document.
    let status = command.stdout(std::io::stderr()).stderr(Stdio::inherit()).status();
    let _ = std::fs::remove_dir_all(&wit);
    let install = language.install();
    let status = status.map_err(|source| PackageError::NoToolchain { dir: dir.clone(), tool: tool.clone(), install, source })?;
    if !status.success() {
        return Err(PackageError::Toolchain { dir, tool, install });
    }
    let component = std::fs::read(&partial).map_err(io(&partial))?;
    if options.check_contract {
        contract::inspect(&component).map_err(|source| PackageError::Contract { crate_name: policy.clone(), source })?;
    }
    let path = out_dir.join(format!("{policy}.wasm"));
    std::fs::rename(&partial, &path).map_err(io(&path))?;
    Ok(Built { crate_name: dir.display().to_string(), policy, path, size: component.len() })
}

/// How to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Folder the components are written to.
    pub out_dir: PathBuf,
    /// Cargo profile (`release`, or `policy` in the knas workspace).
    pub profile: String,
    /// Cargo target folder; cargo's default when `None`.
    pub target_dir: Option<PathBuf>,
    /// Refuse components the host would refuse (off only to build test fixtures that
    /// must break the contract).
    pub check_contract: bool,
}

/// A built component.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Built {
    pub crate_name: String,
    pub policy: String,
    pub path: PathBuf,
    pub size: usize,
}

struct PolicyCrate {
    package: String,
    /// Its manifest, canonical: what its build artifacts are matched by (the library's own
    /// name may differ from the package's).
    manifest: PathBuf,
    policy: String,
    workspace_root: PathBuf,
}

fn policy_name(package: &Package) -> String {
    package
        .metadata
        .get("knas")
        .and_then(|k| k.get("policy"))
        .and_then(|p| p.as_str())
        .map_or_else(|| package.name.to_string(), str::to_owned)
}

fn describe(dir: &Path) -> Result<PolicyCrate, PackageError> {
    let manifest = dir.join("Cargo.toml");
    let metadata = MetadataCommand::new()
        .manifest_path(&manifest)
        .no_deps()
        .exec()
        .map_err(|e| PackageError::Metadata { path: manifest.clone(), message: e.to_string() })?;
    let manifest = manifest.canonicalize().map_err(|source| PackageError::Io { path: manifest.clone(), source })?;
    // Both sides canonical: cargo reports the path as it was reached, symlinks included.
    let package = metadata
        .packages
        .iter()
        .find(|p| p.manifest_path.as_std_path().canonicalize().is_ok_and(|path| path == manifest))
        .ok_or_else(|| PackageError::NotAPackage(dir.to_owned()))?;
    Ok(PolicyCrate {
        package: package.name.to_string(),
        manifest,
        policy: policy_name(package),
        workspace_root: metadata.workspace_root.into_std_path_buf(),
    })
}

/// The policy crates of the workspace around `dir`: packages that declare
/// `[package.metadata.knas] policy`, test fixtures (under `tests/`) excepted.
pub fn workspace_policies(dir: &Path) -> Result<Vec<PathBuf>, PackageError> {
    let metadata = MetadataCommand::new()
        .current_dir(dir)
        .no_deps()
        .exec()
        .map_err(|e| PackageError::Metadata { path: dir.to_owned(), message: e.to_string() })?;
    let root = metadata.workspace_root.as_std_path();
    let mut crates: Vec<PathBuf> = metadata
        .packages
        .iter()
        .filter(|p| p.metadata.get("knas").and_then(|k| k.get("policy")).is_some())
        .filter_map(|p| p.manifest_path.parent().map(|d| d.as_std_path().to_owned()))
        .filter(|d| !d.strip_prefix(root).is_ok_and(|rel| rel.starts_with("tests")))
        .collect();
    crates.sort();
    Ok(crates)
}

/// Builds each crate in `dirs` and writes `<out_dir>/<policy>.wasm` components. Crates of
/// one workspace are built by one cargo invocation.
pub fn build(dirs: &[PathBuf], options: &BuildOptions) -> Result<Vec<Built>, PackageError> {
    let mut by_workspace: BTreeMap<PathBuf, Vec<PolicyCrate>> = BTreeMap::new();
    let mut foreign = Vec::new();
    for dir in dirs {
        if let Some(language) = Language::of(dir) {
            foreign.push((dir, language));
            continue;
        }
        let described = describe(dir)?;
        by_workspace.entry(described.workspace_root.clone()).or_default().push(described);
    }
    std::fs::create_dir_all(&options.out_dir).map_err(|source| PackageError::Io { path: options.out_dir.clone(), source })?;
    let mut built = Vec::new();
    for (root, crates) in by_workspace {
        let modules = cargo_build(&root, &crates, options)?;
        for krate in &crates {
            let module = modules.get(&krate.package).ok_or_else(|| PackageError::NoArtifact(krate.package.clone()))?;
            built.push(componentize(krate, module, options)?);
        }
    }
    for (dir, language) in foreign {
        built.push(build_foreign(dir, language, options)?);
    }
    Ok(built)
}

/// Runs cargo for `crates`; returns each package's core `.wasm`.
fn cargo_build(root: &Path, crates: &[PolicyCrate], options: &BuildOptions) -> Result<BTreeMap<String, PathBuf>, PackageError> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(root)
        .args(["build", "--target", WASM_TARGET, "--profile", &options.profile, "--message-format", "json-render-diagnostics"])
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for krate in crates {
        command.args(["-p", &krate.package]);
    }
    if let Some(dir) = &options.target_dir {
        command.arg("--target-dir").arg(dir);
    }
    // Flags meant for the host build must not leak into the wasm build.
    for var in ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_BUILD_TARGET"] {
        command.env_remove(var);
    }
    let mut child = command.spawn().map_err(PackageError::Spawn)?;
    let mut modules = BTreeMap::new();
    if let Some(stdout) = child.stdout.take() {
        for message in Message::parse_stream(std::io::BufReader::new(stdout)).flatten() {
            if let Message::CompilerArtifact(artifact) = message
                && let Some(wasm) = artifact.filenames.iter().find(|f| f.extension() == Some("wasm"))
                && let Ok(manifest) = artifact.manifest_path.as_std_path().canonicalize()
            {
                modules.insert(manifest, wasm.clone().into_std_path_buf());
            }
        }
    }
    let status = child.wait().map_err(PackageError::Spawn)?;
    if !status.success() {
        let names: Vec<&str> = crates.iter().map(|c| c.package.as_str()).collect();
        return Err(PackageError::Cargo { crates: names.join(", ") });
    }
    Ok(crates
        .iter()
        .filter_map(|c| modules.get(&c.manifest).map(|path| (c.package.clone(), path.clone())))
        .collect())
}

/// Wraps a core module built against the SDK (carrying the contract's world in a custom
/// section) into a component.
pub fn component_of(module: &[u8]) -> Result<Vec<u8>, String> {
    wit_component::ComponentEncoder::default()
        .module(module)
        .map_err(|e| format!("{e:#}"))?
        .validate(true)
        .encode()
        .map_err(|e| format!("{e:#}"))
}

fn componentize(krate: &PolicyCrate, module: &Path, options: &BuildOptions) -> Result<Built, PackageError> {
    let out_dir = &options.out_dir;
    let bytes = std::fs::read(module).map_err(|source| PackageError::Io { path: module.to_owned(), source })?;
    let fail = |message: String| PackageError::Componentize { crate_name: krate.package.clone(), module: module.to_owned(), message };
    let component = component_of(&bytes).map_err(fail)?;
    if options.check_contract {
        contract::inspect(&component).map_err(|source| PackageError::Contract { crate_name: krate.package.clone(), source })?;
    }
    let path = out_dir.join(format!("{}.wasm", krate.policy));
    // Write then rename, so a watcher never sees a half-written component.
    let partial = out_dir.join(format!(".{}.wasm.partial", krate.policy));
    std::fs::write(&partial, &component).map_err(|source| PackageError::Io { path: partial.clone(), source })?;
    std::fs::rename(&partial, &path).map_err(|source| PackageError::Io { path: path.clone(), source })?;
    Ok(Built { crate_name: krate.package.clone(), policy: krate.policy.clone(), path, size: component.len() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(unix)]
    fn a_crate_reached_through_a_symlink_is_described() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real").join("pol");
        std::fs::create_dir_all(real.join("src")).unwrap();
        let manifest = "[package]\nname = \"pol\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n\n\
                        [lib]\nname = \"other_name\"\ncrate-type = [\"cdylib\"]\n\n[package.metadata.knas]\npolicy = \"mine\"\n";
        std::fs::write(real.join("Cargo.toml"), manifest).unwrap();
        std::fs::write(real.join("src").join("lib.rs"), "").unwrap();
        std::os::unix::fs::symlink(dir.path().join("real"), dir.path().join("link")).unwrap();
        let krate = describe(&dir.path().join("link").join("pol")).unwrap();
        assert_eq!((krate.package.as_str(), krate.policy.as_str()), ("pol", "mine"));
        assert_eq!(krate.manifest, real.join("Cargo.toml").canonicalize().unwrap());
    }
}
