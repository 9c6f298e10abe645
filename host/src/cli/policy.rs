//! `knas policy`: build and inspect policy components.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use knas::policy::contract;
use knas::policy::package::{self, BuildOptions};

use super::output::{self, Report};

#[derive(Debug, Args)]
pub struct PolicyArgs {
    #[command(subcommand)]
    command: PolicyCommand,
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Compile policies to WebAssembly components: Rust crates, Python and JavaScript
    /// folders.
    ///
    /// A Rust crate is built for wasm32-unknown-unknown and wrapped into a component named
    /// after its `[package.metadata.knas] policy` key: `<out-dir>/<policy>.wasm`. A folder
    /// with an `app.py` (whose `Policy` class implements the contract) is built with
    /// componentize-py (pip install componentize-py==0.25.1; `KNAS_COMPONENTIZE_PY` names
    /// another binary), one with an `app.js` (exporting `policy`) with ComponentizeJS (node,
    /// and npm install @bytecodealliance/componentize-js@0.23.0 in the folder, or in the
    /// folder `KNAS_COMPONENTIZE_JS` names), into `<out-dir>/<folder>.wasm`.
    ///
    /// Example: knas policy build --all          (every Rust policy crate of the workspace)
    ///
    /// Example: knas policy build my-policy/ --out-dir policies
    ///
    /// Example: knas policy build examples/python-evolution examples/js-annealing --out-dir policies
    Build(BuildArgs),
    /// Check policy files against the contract and show what each declares: the contract
    /// version it targets, the SDK it was built with, its imports, size and digest.
    ///
    /// Example: knas policy inspect policies/*.wasm
    ///
    /// Example: knas policy inspect my-policy.wasm --format json
    Inspect(InspectArgs),
}

#[derive(Debug, Args)]
struct BuildArgs {
    /// Policy folders to build: Rust crates, or folders with an `app.py` or an `app.js`.
    #[arg(value_name = "DIR")]
    crates: Vec<PathBuf>,
    /// Build every policy crate of the current workspace (test fixtures excepted).
    #[arg(long)]
    all: bool,
    /// Where the components go.
    #[arg(long, default_value = "policies")]
    out_dir: PathBuf,
    /// Cargo profile.
    #[arg(long, default_value = "release")]
    profile: String,
    /// Cargo target folder.
    #[arg(long)]
    target_dir: Option<PathBuf>,
    /// Write components even when they break the contract (for test fixtures).
    #[arg(long, hide = true)]
    allow_contract_mismatch: bool,
    /// Output: a table, or one JSON document.
    #[arg(long, value_enum, default_value_t = Report::Table)]
    format: Report,
}

#[derive(Debug, Args)]
struct InspectArgs {
    /// Policy files.
    #[arg(required = true, value_name = "FILE.wasm")]
    files: Vec<PathBuf>,
    /// Output: a table, or one JSON document.
    #[arg(long, value_enum, default_value_t = Report::Table)]
    format: Report,
}

pub fn run(args: &PolicyArgs) -> Result<()> {
    match &args.command {
        PolicyCommand::Build(args) => build(args),
        PolicyCommand::Inspect(args) => inspect(args),
    }
}

fn build(args: &BuildArgs) -> Result<()> {
    let mut crates = args.crates.clone();
    if args.all {
        crates.extend(package::workspace_policies(&std::env::current_dir()?)?);
    }
    anyhow::ensure!(!crates.is_empty(), "nothing to build: name crate folders or pass --all");
    let options = BuildOptions {
        out_dir: args.out_dir.clone(),
        profile: args.profile.clone(),
        target_dir: args.target_dir.clone(),
        check_contract: !args.allow_contract_mismatch,
    };
    let built = package::build(&crates, &options)?;
    match args.format {
        Report::Json => output::json(&built)?,
        Report::Table => {
            let mut table = output::table(&["policy", "crate", "component", "size"]);
            for b in &built {
                table.add_row(vec![b.policy.clone(), b.crate_name.clone(), b.path.display().to_string(), format!("{} KiB", b.size / 1024)]);
            }
            println!("{table}");
        }
    }
    Ok(())
}

#[derive(Debug, serde::Serialize)]
struct Inspected {
    file: PathBuf,
    #[serde(flatten)]
    info: contract::ContractInfo,
}

fn inspect(args: &InspectArgs) -> Result<()> {
    let mut found = Vec::new();
    for file in &args.files {
        let bytes = knas::policy::runtime::read_policy_file(file).map_err(|problem| anyhow::anyhow!("cannot read {}: {problem}", file.display()))?;
        let info = contract::inspect(&bytes).with_context(|| format!("{} is not a usable policy", file.display()))?;
        found.push(Inspected { file: file.clone(), info });
    }
    match args.format {
        Report::Json => output::json(&found)?,
        Report::Table => {
            let mut table = output::table(&["file", "contract", "built with", "imports", "size", "sha256"]);
            for f in &found {
                table.add_row(vec![
                    f.file.display().to_string(),
                    format!("{}@{}", contract::CONTRACT_PACKAGE, f.info.contract_version),
                    f.info.sdk.clone().unwrap_or_else(|| "unknown".into()),
                    f.info.imports.join(", "),
                    format!("{} KiB", f.info.size / 1024),
                    f.info.short_hash().to_owned(),
                ]);
            }
            println!("{table}");
        }
    }
    Ok(())
}
