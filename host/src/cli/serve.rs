//! `knas serve`: the long-running service.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use knas::config::ServiceConfig;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The service configuration (YAML; see examples/knas.yaml). Watched: edits apply to
    /// runs started afterwards, without a restart (listen, policy-dir, store, device and
    /// threads need one; a log line says so). Without it, the defaults: policies/ watched, knas-runs.db,
    /// listening on 127.0.0.1:9400.
    #[arg(long, value_name = "FILE.yaml")]
    config: Option<PathBuf>,
}

pub fn run(args: &ServeArgs) -> Result<()> {
    let config = match &args.config {
        Some(path) => ServiceConfig::load(path)?,
        None => ServiceConfig::default(),
    };
    knas::service::serve(config, args.config.as_deref())
}
