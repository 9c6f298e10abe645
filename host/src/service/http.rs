//! The read-only HTTP API: health, readiness, metrics and runs, as JSON.
//!
//! | route                | answer                                                        |
//! |----------------------|---------------------------------------------------------------|
//! | `GET /healthz`       | 200 while the scheduler thread is alive, else 503             |
//! | `GET /readyz`        | 200 once the store is open and runs are being scheduled       |
//! | `GET /metrics`       | Prometheus text format                                        |
//! | `GET /api/runs`      | a page of runs (`?limit=100&after=NAME`, cursor in `next`):    |
//! |                      | status, progress, best score and accuracy, errors — from the  |
//! |                      | store's per-run summaries, never from all evaluations         |
//! | `GET /api/runs/{n}`  | one run: the above plus leaderboard, events, policy file      |
//! | `GET /api/policies`  | the watched policy files: loaded, rejected or failed (with    |
//! |                      | the error)                                                    |

use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use super::metrics::Metrics;
use super::scheduler::{PolicyFile, SharedStatus};
use crate::run::{Budget, Experiment};
use crate::search::{Leaderboard, TOP_SCORES};
use crate::store::{Event, RunRecord, RunStatus, RunStore, RunSummary};

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    pub metrics: Arc<Metrics>,
    pub status: SharedStatus,
    /// A reader connection (WAL: it never blocks the scheduler's writes).
    pub store: Arc<Mutex<RunStore>>,
    /// `/api/runs` pages as last answered.
    pub pages: Arc<Mutex<PageCache>>,
}

impl AppState {
    pub fn new(metrics: Arc<Metrics>, status: SharedStatus, store: RunStore) -> AppState {
        AppState { metrics, status, store: Arc::new(Mutex::new(store)), pages: Arc::default() }
    }
}

/// `/api/runs` pages as last answered, each with what it was computed from: the store's
/// `data_version` and the runs active then. A dashboard polling the list, or many of them,
/// is answered from here until the scheduler commits something — one `PRAGMA` instead of a
/// query and a serialisation per request.
#[derive(Default)]
pub struct PageCache {
    pages: std::collections::HashMap<(Option<String>, usize), CachedPage>,
    /// Bytes held: bodies and cursors.
    bytes: usize,
}

struct CachedPage {
    data_version: i64,
    active: Vec<String>,
    body: axum::body::Bytes,
}

impl PageCache {
    /// Bytes kept; past this the cache starts again, so that clients walking many cursors
    /// (or inventing them) cannot make it grow without bound.
    const MAX_BYTES: usize = 16 << 20;

    fn get(&self, key: &(Option<String>, usize), data_version: i64, active: &[String]) -> Option<axum::body::Bytes> {
        self.pages.get(key).filter(|p| p.data_version == data_version && p.active == active).map(|p| p.body.clone())
    }

    fn put(&mut self, key: (Option<String>, usize), data_version: i64, active: Vec<String>, body: axum::body::Bytes) {
        let size = |key: &(Option<String>, usize), page: &CachedPage| {
            key.0.as_ref().map_or(0, String::len) + page.body.len() + page.active.iter().map(String::len).sum::<usize>()
        };
        let page = CachedPage { data_version, active, body };
        let added = size(&key, &page);
        if let Some(old) = self.pages.remove(&key) {
            self.bytes -= size(&key, &old);
        }
        if self.bytes + added > Self::MAX_BYTES {
            self.pages.clear();
            self.bytes = 0;
        }
        if added <= Self::MAX_BYTES {
            self.bytes += added;
            self.pages.insert(key, page);
        }
    }
}

/// Requests served at once; more wait for a turn (they are not refused).
pub const MAX_CONCURRENT_REQUESTS: usize = 32;

/// A request (its wait for a turn included) that takes longer is answered 503 and
/// abandoned.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The API's routes (see the module documentation).
pub fn router(state: AppState) -> Router {
    // The probes stay outside the API's limit: they read one flag, and a liveness probe
    // queued behind a flood of API requests would get the pod restarted for being busy.
    let probes = Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz)).with_state(state.clone());
    let api = Router::new()
        .route("/metrics", get(metrics))
        .route("/api/runs", get(runs))
        .route("/api/runs/{name}", get(run))
        .route("/api/policies", get(policies))
        .fallback(unknown)
        .with_state(state)
        // Global: one limit for all these routes (a per-route layer would give each its own).
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(MAX_CONCURRENT_REQUESTS))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, REQUEST_TIMEOUT));
    probes.merge(api)
}

/// Any other path: 404 with the endpoints that exist.
async fn unknown(uri: axum::http::Uri) -> Response {
    let message = format!(
        "no endpoint {}; the API has /healthz, /readyz, /metrics, /api/runs, /api/runs/NAME and /api/policies",
        crate::policy::escape_controls(uri.path())
    );
    (StatusCode::NOT_FOUND, Json(serde_json::json!({ "error": message }))).into_response()
}

async fn healthz(State(state): State<AppState>) -> Response {
    let alive = state.status.read().map(|s| s.alive).unwrap_or(false);
    if alive { (StatusCode::OK, "ok\n").into_response() } else { (StatusCode::SERVICE_UNAVAILABLE, "scheduler not running\n").into_response() }
}

async fn readyz(State(state): State<AppState>) -> Response {
    let ready = state.status.read().map(|s| s.ready).unwrap_or(false);
    if ready { (StatusCode::OK, "ready\n").into_response() } else { (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response() }
}

async fn metrics(State(state): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.render()).into_response()
}

async fn policies(State(state): State<AppState>) -> Json<std::collections::BTreeMap<String, PolicyFile>> {
    Json(state.status.read().map(|s| s.policies.clone()).unwrap_or_default())
}

/// A run as listed.
#[derive(Debug, serde::Serialize)]
struct RunView {
    name: String,
    policy: String,
    status: RunStatus,
    /// Being stepped by the scheduler right now.
    active: bool,
    budget: Budget,
    recorded: Budget,
    /// Recorded evaluations over the budget, 0–1.
    progress: f64,
    best_score: Option<f64>,
    best_accuracy: Option<f64>,
    errors: u32,
    last_error: Option<String>,
    created_at: String,
    updated_at: String,
}

/// One run in detail.
#[derive(Debug, serde::Serialize)]
struct RunDetail {
    #[serde(flatten)]
    view: RunView,
    experiment: Experiment,
    leaderboard: Leaderboard,
    events: Vec<Event>,
    policy_file: Option<PolicyFile>,
}

/// A run as listed, from its stored summary (never from its evaluations).
fn view(run: RunRecord, summary: RunSummary, active: bool) -> RunView {
    let budget = run.search.budget;
    let total = (budget.total() as f64).max(1.0);
    let recorded = summary.recorded;
    RunView {
        policy: run.policy,
        status: run.status,
        active,
        budget,
        recorded,
        progress: recorded.total() as f64 / total,
        best_score: summary.best_score,
        best_accuracy: summary.best_accuracy,
        errors: summary.errors,
        last_error: summary.last_error.or(run.error),
        created_at: run.created_at,
        updated_at: run.updated_at,
        name: run.name,
    }
}

fn internal(message: String) -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, Json(serde_json::json!({ "error": message }))).into_response()
}

/// `/api/runs` query: a page of at most `limit` runs (default 100, at most 1,000) whose
/// names come after `after` (the `next` of the previous page).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Page {
    limit: Option<usize>,
    after: Option<String>,
}

/// One page of runs, by name; `next` is the cursor of the following page, if any.
#[derive(Debug, serde::Serialize)]
struct RunPage {
    runs: Vec<RunView>,
    next: Option<String>,
}

async fn runs(State(state): State<AppState>, Query(page): Query<Page>) -> Response {
    let limit = page.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return (StatusCode::BAD_REQUEST, Json(serde_json::json!({ "error": format!("limit must be between 1 and 1000, got {limit}") })))
            .into_response();
    }
    let active: Vec<String> = state.status.read().map(|s| s.active.clone()).unwrap_or_default();
    let (store, pages) = (state.store.clone(), state.pages.clone());
    let result = tokio::task::spawn_blocking(move || -> Result<axum::body::Bytes, String> {
        let store = store.lock().map_err(|_| "store lock poisoned".to_owned())?;
        let key = (page.after, limit);
        let data_version = store.data_version().map_err(|e| e.to_string())?;
        if let Some(body) = pages.lock().ok().and_then(|p| p.get(&key, data_version, &active)) {
            return Ok(body);
        }
        // One more than asked: whether there is a next page.
        let mut rows = store.summaries(key.0.as_deref(), limit + 1).map_err(|e| e.to_string())?;
        let more = rows.len() > limit;
        rows.truncate(limit);
        let runs: Vec<RunView> = rows
            .into_iter()
            .map(|(run, summary)| {
                let active = active.contains(&run.name);
                view(run, summary, active)
            })
            .collect();
        let next = if more { runs.last().map(|r| r.name.clone()) } else { None };
        let body = axum::body::Bytes::from(serde_json::to_vec(&RunPage { runs, next }).map_err(|e| e.to_string())?);
        if let Ok(mut pages) = pages.lock() {
            pages.put(key, data_version, active, body.clone());
        }
        Ok(body)
    })
    .await;
    match result {
        Ok(Ok(body)) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Ok(Err(message)) => internal(message),
        Err(join) => internal(join.to_string()),
    }
}

async fn run(State(state): State<AppState>, Path(name): Path<String>) -> Response {
    let (active, policy_file) = state
        .status
        .read()
        .map(|s| (s.active.contains(&name), s.policies.get(&name).cloned()))
        .unwrap_or((false, None));
    let store = state.store.clone();
    let lookup = name.clone();
    let result = tokio::task::spawn_blocking(move || -> Result<Option<RunDetail>, String> {
        let store = store.lock().map_err(|_| "store lock poisoned".to_owned())?;
        let Some(run) = store.run(&lookup).map_err(|e| e.to_string())? else { return Ok(None) };
        let experiment = run.experiment.clone();
        let summary = store.summary(run.id).map_err(|e| e.to_string())?;
        // Only what the leaderboard shows: a long run has hundreds of thousands of scores.
        let evaluations = store.leaderboard_evaluations(run.id, TOP_SCORES).map_err(|e| e.to_string())?;
        let published = store.published(run.id).map_err(|e| e.to_string())?;
        let events = store.events(run.id).map_err(|e| e.to_string())?;
        let leaderboard = Leaderboard::of(&evaluations, &published);
        Ok(Some(RunDetail { view: view(run, summary, active), experiment, leaderboard, events, policy_file: policy_file.clone() }))
    })
    .await;
    match result {
        Ok(Ok(Some(detail))) => Json(detail).into_response(),
        Ok(Ok(None)) => {
            // A policy file that never became a run (rejected at load) still has a story.
            let body = match state.status.read().ok().and_then(|s| s.policies.get(&name).cloned()) {
                Some(file) => serde_json::json!({ "error": format!("no run named {name:?}"), "policy_file": file }),
                None => serde_json::json!({ "error": format!("no run named {name:?}") }),
            };
            (StatusCode::NOT_FOUND, Json(body)).into_response()
        }
        Ok(Err(message)) => internal(message),
        Err(join) => internal(join.to_string()),
    }
}


#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::{Fidelity, PolicyLimits};
    use crate::space::{Arch, Candidate};
    use crate::store::NewEvaluation;

    async fn list(state: &AppState) -> serde_json::Value {
        let response = runs(State(state.clone()), Query(Page { limit: None, after: None })).await;
        assert_eq!(response.status(), StatusCode::OK);
        let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        serde_json::from_slice(&body).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    // The store's lock is held across awaits on purpose: it is what saturates the API.
    #[allow(clippy::await_holding_lock)]
    async fn the_probes_answer_while_the_api_is_saturated() {
        use tower::ServiceExt;
        let request = |path: &str| axum::http::Request::get(path).body(axum::body::Body::empty()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let state = AppState::new(Arc::new(Metrics::new()), SharedStatus::default(), RunStore::open(&dir.path().join("runs.db")).unwrap());
        state.status.write().unwrap().alive = true;
        let app = router(state.clone());
        // Every run-list request now waits for the store, holding one of the API's turns.
        let store = state.store.lock().unwrap();
        let waiting: Vec<_> = (0..MAX_CONCURRENT_REQUESTS + 4).map(|_| tokio::spawn(app.clone().oneshot(request("/api/runs")))).collect();
        // Saturated once a request that needs no store waits as well: every turn is taken.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while tokio::time::timeout(std::time::Duration::from_millis(200), app.clone().oneshot(request("/api/no-such-route"))).await.is_ok() {
            assert!(std::time::Instant::now() < deadline, "the API never saturated");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        for probe in ["/healthz", "/readyz"] {
            let answer = tokio::time::timeout(std::time::Duration::from_secs(2), app.clone().oneshot(request(probe))).await;
            let status = answer.unwrap_or_else(|_| panic!("{probe} waited behind the API")).unwrap().status();
            assert_eq!(status, if probe == "/healthz" { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE });
        }
        // The probes were answered while every API request was still held up.
        assert!(waiting.iter().all(|request| !request.is_finished()), "an API request got through");
        drop(store);
        for request in waiting {
            assert_eq!(request.await.unwrap().unwrap().status(), StatusCode::OK);
        }
    }

    /// The compute thread marks itself dead when it ends, returned or panicked
    /// (`service::serve`); from then on the liveness probe fails, so Kubernetes restarts
    /// the pod even if the process were slow to exit.
    #[tokio::test]
    async fn the_liveness_probe_fails_once_the_compute_thread_is_dead() {
        use tower::ServiceExt;
        let dir = tempfile::tempdir().unwrap();
        let state = AppState::new(Arc::new(Metrics::new()), SharedStatus::default(), RunStore::open(&dir.path().join("runs.db")).unwrap());
        let app = router(state.clone());
        let probe = || async {
            let response = app.clone().oneshot(axum::http::Request::get("/healthz").body(axum::body::Body::empty()).unwrap()).await.unwrap();
            let status = response.status();
            (status, axum::body::to_bytes(response.into_body(), 1024).await.unwrap())
        };
        state.status.write().unwrap().alive = true;
        assert_eq!(probe().await.0, StatusCode::OK);
        state.status.write().unwrap().alive = false;
        let (status, body) = probe().await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(&body[..], b"scheduler not running\n");
    }

    #[tokio::test]
    async fn the_run_list_is_answered_from_the_cache_until_the_store_or_the_active_runs_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runs.db");
        let writer = RunStore::open(&path).unwrap();
        let spec = crate::config::SearchSettings { score_budget: 10, top_k: 0, max_batch: 4 }.spec(serde_json::json!({}), PolicyLimits::default());
        let (run, _) = writer.begin_run("r", "p@1", &Experiment::default(), &spec).unwrap();
        let state = AppState::new(Arc::new(Metrics::new()), SharedStatus::default(), RunStore::open(&path).unwrap());

        let first = list(&state).await;
        assert_eq!(first["runs"][0]["recorded"]["scores"], 0);
        // While nothing changes, the cached body is the answer (a marker put in its place
        // comes back).
        let version = state.store.lock().unwrap().data_version().unwrap();
        let marker = axum::body::Bytes::from_static(br#"{"runs":[],"next":"cached"}"#);
        state.pages.lock().unwrap().put((None, 100), version, Vec::new(), marker);
        assert_eq!(list(&state).await["next"], "cached");

        // The scheduler's connection commits a score: the next answer has it.
        let a: Candidate = Arch::from_index(7).unwrap().into();
        writer.record(run.id, &a, Fidelity::Score, "p@1", &NewEvaluation { score: Some(-1.0), seconds: 0.1, ..NewEvaluation::default() }).unwrap();
        let second = list(&state).await;
        assert_eq!(second["runs"][0]["recorded"]["scores"], 1);
        assert_eq!(second["runs"][0]["best_score"], -1.0);

        // The run becomes active without any write: the answer says so.
        state.status.write().unwrap().active.push("r".into());
        assert_eq!(list(&state).await["runs"][0]["active"], true);
    }

    #[test]
    fn the_page_cache_stays_bounded() {
        let mut cache = PageCache::default();
        let body = axum::body::Bytes::from(vec![b' '; 1 << 20]);
        for i in 0..40 {
            cache.put((Some(format!("run-{i}")), 1000), 1, Vec::new(), body.clone());
            assert!(cache.bytes <= PageCache::MAX_BYTES, "{} bytes", cache.bytes);
            let held: usize = cache.pages.iter().map(|(k, p)| k.0.as_ref().map_or(0, String::len) + p.body.len()).sum();
            assert_eq!(cache.bytes, held, "the count matches what is held");
        }
        let last = (Some("run-39".to_owned()), 1000);
        assert!(cache.get(&last, 1, &[]).is_some());
        assert!(cache.get(&last, 2, &[]).is_none(), "another data version");
        // Replacing a page does not count it twice.
        let before = cache.bytes;
        cache.put(last.clone(), 2, Vec::new(), body.clone());
        assert_eq!(cache.bytes, before);
    }
}
