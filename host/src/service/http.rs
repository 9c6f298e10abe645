//! The read-only HTTP API: health, readiness, metrics and runs, as JSON.
//!
//! | route                | answer                                                        |
//! |----------------------|---------------------------------------------------------------|
//! | `GET /healthz`       | 200 while the scheduler thread is alive, else 503             |
//! | `GET /readyz`        | 200 once the store is open and runs are being scheduled       |
//! | `GET /metrics`       | Prometheus text format                                        |
//! | `GET /api/runs`      | every run: status, progress, best score and accuracy, errors  |
//! | `GET /api/runs/{n}`  | one run: the above plus leaderboard, events, policy file      |
//! | `GET /api/policies`  | the watched policy files: loaded or rejected (with the error) |

use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use super::metrics::Metrics;
use super::scheduler::{PolicyFile, SharedStatus};
use crate::engine::Experiment;
use crate::policy::{Budget, Fidelity};
use crate::search::Leaderboard;
use crate::store::{Event, RunRecord, RunStatus, RunStore};

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    pub metrics: Arc<Metrics>,
    pub status: SharedStatus,
    /// A reader connection (WAL: it never blocks the scheduler's writes).
    pub store: Arc<Mutex<RunStore>>,
}

/// The API's routes (see the module documentation).
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/runs", get(runs))
        .route("/api/runs/{name}", get(run))
        .route("/api/policies", get(policies))
        .fallback(unknown)
        .with_state(state)
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
    errors: usize,
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

fn view(store: &RunStore, run: RunRecord, active: bool) -> Result<(RunView, Vec<Event>, Leaderboard), String> {
    let evaluations = store.evaluations(run.id).map_err(|e| e.to_string())?;
    let events = store.events(run.id).map_err(|e| e.to_string())?;
    let published = store.published(run.id).map_err(|e| e.to_string())?;
    let count = |f: Fidelity| evaluations.iter().filter(|e| e.fidelity == f).count() as u32;
    let recorded = Budget { scores: count(Fidelity::Score), trainings: count(Fidelity::Train) };
    let budget = run.search.budget;
    let total = f64::from(budget.scores + budget.trainings).max(1.0);
    let errors: Vec<&Event> = events.iter().filter(|e| e.kind == "error").collect();
    let view = RunView {
        policy: run.policy.clone(),
        status: run.status,
        active,
        budget,
        recorded,
        progress: f64::from(recorded.scores + recorded.trainings) / total,
        best_score: evaluations.iter().filter_map(|e| e.score).max_by(f64::total_cmp),
        best_accuracy: evaluations.iter().filter_map(|e| e.accuracy).max_by(f64::total_cmp),
        errors: errors.len(),
        last_error: errors.last().map(|e| e.message.clone()).or(run.error.clone()),
        created_at: run.created_at.clone(),
        updated_at: run.updated_at.clone(),
        name: run.name,
    };
    Ok((view, events, Leaderboard::of(&evaluations, &published)))
}

fn internal(message: String) -> Response {
    (StatusCode::INTERNAL_SERVER_ERROR, Json(serde_json::json!({ "error": message }))).into_response()
}

async fn runs(State(state): State<AppState>) -> Response {
    let active: Vec<String> = state.status.read().map(|s| s.active.clone()).unwrap_or_default();
    let store = state.store.clone();
    let result = tokio::task::spawn_blocking(move || -> Result<Vec<RunView>, String> {
        let store = store.lock().map_err(|_| "store lock poisoned".to_owned())?;
        let runs = store.runs().map_err(|e| e.to_string())?;
        runs.into_iter()
            .map(|run| {
                let active = active.contains(&run.name);
                view(&store, run, active).map(|(v, _, _)| v)
            })
            .collect()
    })
    .await;
    match result {
        Ok(Ok(views)) => Json(views).into_response(),
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
        let (view, events, leaderboard) = view(&store, run, active)?;
        Ok(Some(RunDetail { view, experiment, leaderboard, events, policy_file: policy_file.clone() }))
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

