//! `knas serve`: the long-running service.
//!
//! Three parts, joined by channels:
//! - the [`watcher`] (tokio task) turns settled changes of the policy folder and of the
//!   configuration file into commands;
//! - the [`scheduler`] (a dedicated thread: libtorch tensors are `Send`, not `Sync`) owns
//!   the device, the policy runtime and the store's writer, and steps the runs round robin;
//! - the [`http`] API (axum) serves health, readiness, `/metrics` and the runs, reading the
//!   store through its own connection.
//!
//! SIGTERM or SIGINT: the evaluation in progress is cut short (a training stops at its next
//! optimiser step; nothing of it is recorded), the active runs are marked stopped (they
//! resume at the next start, where the policy is asked again), and the process exits.
//!
//! If the compute thread dies (a fault outside any run's step), `/healthz` turns 503 and
//! the process exits with an error: never a healthy answer from a service that does no
//! work.
//!
//! Fault injection for the tests: `FAILPOINTS` (the `fail` crate's syntax) configures the
//! fail points `scheduler::loop`, `search::evaluate` and `train::step`.

pub mod http;
pub mod metrics;
pub mod scheduler;
pub mod watcher;

use std::io::Write as _;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use crate::config::ServiceConfig;
use crate::store::RunStore;
use metrics::Metrics;
use scheduler::{Command, Scheduler, Status};

/// Runs the service until SIGTERM/SIGINT. `config_path` (if any) is watched for changes.
pub fn serve(config: ServiceConfig, config_path: Option<&Path>) -> anyhow::Result<()> {
    if config.threads > 0 {
        tch::set_num_threads(config.threads);
    }
    let device = config.device.resolve()?;
    std::fs::create_dir_all(&config.policy_dir)
        .with_context(|| format!("cannot create the policy folder {}", config.policy_dir.display()))?;
    let policy_dir = config.policy_dir.canonicalize()?;
    let config_path = config_path.map(watcher::watched_path).transpose()?;
    let table_path = config.table.as_deref().map(watcher::watched_path).transpose()?;

    let metrics = Arc::new(Metrics::new());
    let status = Arc::new(RwLock::new(Status::default()));
    let scheduler = Scheduler::new(config.clone(), device, metrics.clone(), status.clone())?;
    let reader = RunStore::open(&config.store)?;
    let (commands, inbox) = std::sync::mpsc::channel();
    // Told when the compute thread ends, whether it returned or died.
    let (ended_tx, mut ended) = tokio::sync::oneshot::channel::<Result<(), String>>();
    let thread_status = status.clone();
    let scheduler_thread = std::thread::Builder::new().name("knas-scheduler".into()).spawn(move || {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| scheduler.run(inbox)))
            .map_err(|panic| crate::panic_message(&*panic));
        let mut status = thread_status.write().unwrap_or_else(|e| e.into_inner());
        status.alive = false;
        status.ready = false;
        drop(status);
        let _ = ended_tx.send(outcome);
    })?;

    // The API's threads yield the CPU to the compute thread: a flood of requests slows the
    // answers, not the search.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(4)
        .on_thread_start(lower_this_threads_priority)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let address = listener.local_addr()?;
        // One line on stdout that tools (and tests) can read: where the service listens.
        // Written, not printed: a closed stdout (a supervisor that stopped reading) must
        // not panic the service; it is only logged.
        if let Err(err) = writeln!(std::io::stdout(), "{}", serde_json::json!({ "listening": address.to_string() })) {
            tracing::warn!(%err, "could not write the listening address to stdout");
        }
        tracing::info!(%address, device = ?device, policies = %policy_dir.display(), "knas serve started");

        let (stop_tx, stop_rx) = watch::channel(false);
        let watched = watcher::Watched {
            policy_dir,
            config: config_path,
            table: table_path,
            debounce: Duration::from_millis(config.debounce_ms),
        };
        let mut watcher_task = tokio::spawn(watcher::run(watched, commands.clone(), metrics.clone(), stop_rx.clone()));

        let state = http::AppState::new(metrics, status, reader);
        let mut server_stop = stop_rx.clone();
        let server = tokio::spawn(
            axum::serve(listener, http::router(state))
                .with_graceful_shutdown(async move {
                    let _ = server_stop.changed().await;
                })
                .into_future(),
        );

        // Without its watcher the service would serve on but never load a policy again.
        // (why, and whether the compute thread still runs)
        let died = tokio::select! {
            _ = shutdown_signal() => None,
            outcome = &mut ended => Some((match outcome {
                Ok(Err(panic)) => format!("the compute thread died: {panic}"),
                _ => "the compute thread stopped unexpectedly".to_owned(),
            }, false)),
            outcome = &mut watcher_task => Some((match outcome {
                Ok(Err(error)) => format!("the file watcher failed: {error:#}"),
                Ok(Ok(())) => "the file watcher stopped unexpectedly".to_owned(),
                Err(join) if join.is_panic() => format!("the file watcher died: {}", crate::panic_message(&*join.into_panic())),
                Err(_) => "the file watcher was cancelled".to_owned(),
            }, true)),
        };
        if let Some((reason, computing)) = died {
            // Nothing will compute any more: stop serving, and say so with the exit status.
            tracing::error!("{reason}; shutting down");
            if computing {
                // As at SIGTERM, the runs it drives are recorded as stopped, not left
                // marked running with nothing driving them.
                let _ = commands.send(Command::Shutdown);
                let _ = ended.await;
                let _ = tokio::task::spawn_blocking(move || scheduler_thread.join()).await;
            }
            let _ = stop_tx.send(true);
            let _ = server.await;
            anyhow::bail!("{reason}");
        }
        // The compute thread sees it between training steps too: a training in progress
        // is cut short.
        tracing::info!("shutting down: cutting the evaluation in progress short");
        let _ = commands.send(Command::Shutdown);
        if let Ok(Err(panic)) = ended.await {
            tracing::error!("the compute thread died while shutting down: {panic}");
        }
        let _ = tokio::task::spawn_blocking(move || scheduler_thread.join()).await;
        let _ = stop_tx.send(true);
        if let Ok(Err(error)) = watcher_task.await {
            tracing::warn!("file watcher: {error}");
        }
        server.await??;
        tracing::info!("knas serve stopped cleanly");
        anyhow::Ok(())
    })
}

/// Resolves on SIGTERM (what Kubernetes sends) or SIGINT (Ctrl-C).
pub(crate) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Lowers the calling thread's scheduling priority (nice 10). On Linux the nice value is per
/// thread, so the rest of the process (the compute thread) keeps its priority; elsewhere
/// this does nothing.
fn lower_this_threads_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority only reads its integer arguments; `0` names the calling thread.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
    }
}

