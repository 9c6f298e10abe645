//! The gRPC front: Katib's `Suggestion` service and the standard health service, served by
//! tonic. Requests are checked here (cheap, on the async runtime); the suggestion work runs
//! on a blocking thread, one request at a time, so health checks answer while a long
//! scoring request runs.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tonic::{Request, Response, Status};

use super::mapping::{MAX_REQUEST, Plan};
use super::proto::suggestion_server::{Suggestion, SuggestionServer};
use super::proto::{GetSuggestionsReply, GetSuggestionsRequest, ValidateAlgorithmSettingsReply, ValidateAlgorithmSettingsRequest};
use super::suggest::{SuggestError, Suggester};
use crate::run::Experiment;
use crate::service::metrics::Metrics;

/// The health service names Katib's suggestion client checks (besides the empty name).
pub const HEALTH_NAMES: [&str; 2] = ["manager.v1beta1.Suggestion", "api.v1beta1.Suggestion"];

/// How long, after SIGTERM, open connections may keep the gRPC server: requests in
/// flight finish well within it (what they scored is recorded as they go either way).
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Katib's `Suggestion` service.
#[derive(Clone)]
pub struct KatibService {
    suggester: Arc<Mutex<Suggester>>,
    /// The scoring experiment settings adjust.
    base: Arc<Experiment>,
    metrics: Arc<Metrics>,
}

impl KatibService {
    pub fn new(suggester: Suggester, base: Experiment, metrics: Arc<Metrics>) -> KatibService {
        KatibService { suggester: Arc::new(Mutex::new(suggester)), base: Arc::new(base), metrics }
    }

    /// The tonic service, accepting messages up to 64 MiB (a trial list of a long experiment).
    pub fn into_server(self) -> SuggestionServer<KatibService> {
        SuggestionServer::new(self).max_decoding_message_size(64 << 20)
    }

    /// Runs `work` on the suggester on a blocking thread.
    async fn with_suggester<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Suggester) -> Result<T, SuggestError> + Send + 'static,
    ) -> Result<T, Status> {
        let suggester = self.suggester.clone();
        tokio::task::spawn_blocking(move || {
            // A panic inside a request poisons the lock; the state it guards is rebuilt
            // from the store anyway, so the next request goes on with it.
            let mut guard = suggester.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            work(&mut guard)
        })
        .await
        .map_err(|e| Status::internal(format!("the suggestion work failed: {e}")))?
        .map_err(status)
    }

    fn count(&self, method: &str, started: Instant, result: &Result<impl Sized, Status>) {
        let code = match result {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        };
        self.metrics.katib_requests.with_label_values(&[method, &format!("{code:?}")]).inc();
        self.metrics.katib_request_seconds.with_label_values(&[method]).observe(started.elapsed().as_secs_f64());
        if let Err(status) = result {
            tracing::warn!(method, code = ?status.code(), "{}", status.message());
        }
    }
}

fn status(error: SuggestError) -> Status {
    match error {
        SuggestError::Invalid(m) => Status::invalid_argument(m),
        SuggestError::Exhausted(m) => Status::out_of_range(m),
        SuggestError::Failed(m) => Status::failed_precondition(m),
        SuggestError::Internal(m) => Status::internal(m),
        SuggestError::Unavailable(m) => Status::unavailable(m),
    }
}

#[tonic::async_trait]
impl Suggestion for KatibService {
    async fn get_suggestions(&self, request: Request<GetSuggestionsRequest>) -> Result<Response<GetSuggestionsReply>, Status> {
        let started = Instant::now();
        let result = self.get_suggestions_inner(request.into_inner()).await;
        self.count("GetSuggestions", started, &result);
        result.map(Response::new)
    }

    async fn validate_algorithm_settings(
        &self,
        request: Request<ValidateAlgorithmSettingsRequest>,
    ) -> Result<Response<ValidateAlgorithmSettingsReply>, Status> {
        let started = Instant::now();
        let result = async {
            let plan = Plan::from_experiment(request.get_ref().experiment.as_ref(), &self.base).map_err(Status::invalid_argument)?;
            self.with_suggester(move |s| s.validate(&plan)).await?;
            Ok(ValidateAlgorithmSettingsReply {})
        }
        .await;
        self.count("ValidateAlgorithmSettings", started, &result);
        result.map(Response::new)
    }
}

impl KatibService {
    async fn get_suggestions_inner(&self, request: GetSuggestionsRequest) -> Result<GetSuggestionsReply, Status> {
        let wanted = usize::try_from(request.current_request_number)
            .ok()
            .filter(|n| (1..=MAX_REQUEST).contains(n))
            .ok_or_else(|| Status::invalid_argument(format!("currentRequestNumber must be between 1 and {MAX_REQUEST}, got {}", request.current_request_number)))?;
        let plan = Plan::from_experiment(request.experiment.as_ref(), &self.base).map_err(Status::invalid_argument)?;
        let trials = request.trials.iter().map(|t| plan.trial(t)).collect::<Result<Vec<_>, _>>().map_err(Status::invalid_argument)?;
        let for_reply = plan.clone();
        let archs = self.with_suggester(move |s| s.suggest(&plan, &trials, wanted)).await?;
        tracing::info!(experiment = %for_reply.name, trials = request.trials.len(), suggested = archs.len(), "suggestions");
        Ok(GetSuggestionsReply { parameter_assignments: archs.iter().map(|a| for_reply.assignment(a)).collect(), ..Default::default() })
    }
}

/// Serves Katib's `Suggestion` and `grpc.health.v1.Health` on `grpc`, and `/metrics` and
/// `/healthz` over HTTP on `http` (when given), until SIGTERM or Ctrl-C. `on_bound` is told
/// the bound addresses (port 0 picks a free port).
pub async fn serve(
    service: KatibService,
    grpc: std::net::SocketAddr,
    http: Option<std::net::SocketAddr>,
    on_bound: impl FnOnce(std::net::SocketAddr, Option<std::net::SocketAddr>),
) -> anyhow::Result<()> {
    use anyhow::Context;
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;
    for name in HEALTH_NAMES {
        reporter.set_service_status(name, tonic_health::ServingStatus::Serving).await;
    }
    reporter.set_serving::<SuggestionServer<KatibService>>().await;

    let listener = tokio::net::TcpListener::bind(grpc).await.with_context(|| format!("cannot listen on {grpc}"))?;
    let grpc_bound = listener.local_addr()?;
    let metrics = service.metrics.clone();
    let http_server = match http {
        Some(address) => {
            let http_listener = tokio::net::TcpListener::bind(address).await.with_context(|| format!("cannot listen on {address}"))?;
            let bound = http_listener.local_addr()?;
            let app = axum::Router::new()
                .route(
                    "/metrics",
                    axum::routing::get(move || {
                        let metrics = metrics.clone();
                        async move { ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], metrics.render()) }
                    }),
                )
                .route("/healthz", axum::routing::get(|| async { "ok\n" }));
            Some((bound, tokio::spawn(async move { axum::serve(http_listener, app).with_graceful_shutdown(crate::service::shutdown_signal()).await })))
        }
        None => None,
    };
    on_bound(grpc_bound, http_server.as_ref().map(|(bound, _)| *bound));
    let suggester = service.suggester.clone();
    // Read without the suggester's lock, which a request in progress holds.
    let stopping = suggester.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).stopping();
    let (signalled_tx, signalled) = tokio::sync::oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(service.into_server())
        .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async {
            crate::service::shutdown_signal().await;
            // The request in progress stops at its next candidate; none starts after it.
            stopping.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = signalled_tx.send(());
        });
    // A graceful shutdown waits for the clients to close their connections; one that
    // never does (a hung client) must not keep the process past its grace period.
    tokio::select! {
        served = server => served.context("the gRPC server failed")?,
        () = async {
            if signalled.await.is_ok() {
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => tracing::warn!("connections still open {} s after the signal; closing them", SHUTDOWN_GRACE.as_secs()),
    }
    if let Some((_, task)) = http_server {
        task.abort();
    }
    // After the last request: the lock is free, or held by a request still finishing.
    tokio::task::spawn_blocking(move || suggester.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).stop_all("service shut down"))
        .await
        .context("recording the runs as stopped")?;
    Ok(())
}
