//! `knas katib`: the Kubeflow Katib suggestion service.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use knas::katib::server::{KatibService, serve};
use knas::katib::suggest::Suggester;
use knas::run::PolicyLimits;
use knas::service::metrics::Metrics;

use super::{ComputeArgs, ScoringExperimentArgs, StoreArgs};

#[derive(Debug, Args)]
pub struct KatibArgs {
    /// gRPC address of the suggestion service (Katib calls port 6789).
    #[arg(long, default_value = "0.0.0.0:6789")]
    listen: SocketAddr,
    /// HTTP address of /metrics (Prometheus) and /healthz.
    #[arg(long, default_value = "0.0.0.0:9400")]
    metrics_listen: SocketAddr,
    /// Folder of policies: the algorithm setting `policy: NAME` loads NAME.wasm from it.
    #[arg(long, default_value = "policies", value_name = "DIR")]
    policy_dir: PathBuf,
    #[command(flatten)]
    store: StoreArgs,
    /// The scoring experiment. An Experiment's algorithm settings (dataset, channels,
    /// cells, batch-size, score, seed) override these flags for its own run.
    #[command(flatten)]
    experiment: ScoringExperimentArgs,
    #[command(flatten)]
    compute: ComputeArgs,
    /// Limits of the policies' sandbox (every experiment's policy).
    #[command(flatten)]
    limits: super::search::LimitArgs,
}

pub fn run(args: &KatibArgs) -> Result<()> {
    if args.compute.threads > 0 {
        tch::set_num_threads(args.compute.threads);
    }
    let device = args.compute.device.resolve()?;
    let limits = args.limits.apply(PolicyLimits::default());
    limits.validate().map_err(|problem| super::search::LimitArgs::invalid(&problem, None))?;
    let store = args.store.open()?;
    let metrics = Arc::new(Metrics::new());
    let mut suggester = Suggester::new(store, args.policy_dir.clone(), device, limits, metrics.clone())
        .map_err(|e| anyhow::anyhow!("cannot start the policy runtime: {e}"))?;
    if args.compute.workers > 0 {
        suggester = suggester.with_workers(usize::from(args.compute.workers));
    }
    // The flags are the base every Experiment's settings adjust: a bad one is refused now,
    // not at the first request, where it would read as the Experiment's fault.
    let experiment = args.experiment.experiment();
    experiment.validate().map_err(|problem| anyhow::anyhow!("invalid scoring experiment: {problem}"))?;
    let service = KatibService::new(suggester, experiment, metrics);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")?;
    runtime.block_on(serve(service, args.listen, Some(args.metrics_listen), |grpc, http| {
        let metrics = http.map_or("-".into(), |h| h.to_string());
        // One line on stdout for tools, as `knas serve` writes: the ports, whatever the
        // logging. Written, not printed: a closed stdout must not panic the service.
        if let Err(err) = writeln!(std::io::stdout(), "{}", serde_json::json!({ "grpc": grpc.to_string(), "metrics": metrics })) {
            tracing::warn!(%err, "could not write the ports to stdout");
        }
        // And first on stderr for a person, unless every line there must be a JSON record.
        if !super::LOG_JSON.load(std::sync::atomic::Ordering::Relaxed) {
            eprintln!("knas katib: suggestion service on {grpc} (gRPC), metrics on http://{metrics}/metrics");
        }
        tracing::info!(%grpc, %metrics, "knas katib started");
    }))
}
