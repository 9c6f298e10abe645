//! The compute thread: owns the device, the policy runtime and the store's writer, and
//! steps the active runs one proposal at a time, always the run that has used the least
//! time so far (`Turns`) — so runs share the thread by time, and a policy that is slow
//! to propose, or asks for trainings, does not take more than its share from its
//! neighbours. It takes commands (policy file changed or removed, new configuration,
//! shutdown) between steps, and looks for them during a step too: a command that concerns
//! the run being stepped (shutdown, its file removed or replaced by different bytes) cuts
//! the step short — a training stops at its next optimiser step, nothing of it recorded —
//! so that shutdown, hot swap and removal never wait for a whole batch of trainings.
//!
//! Faults stay inside the run that caused them: a panic while stepping a run (a libtorch
//! error, a bug) fails that run with the message recorded in the store, and the thread
//! goes on serving the others.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};
use std::path::PathBuf;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, RwLock};

use tch::Device;

use super::metrics::Metrics;
use crate::config::ServiceConfig;
use crate::engine::Engine;
use crate::panic_message;
use crate::policy::{PolicyError, PolicyRuntime};
use crate::run::Experiment;
use crate::search::{Search, SearchError, SearchObserver, Step};
use crate::store::{RunStatus, RunStore, StoreError};
use crate::table::BenchmarkTable;

/// What the scheduler is asked to do.
#[derive(Debug)]
pub enum Command {
    /// `NAME.wasm` appeared or changed (and has settled): load it; start, resume or
    /// hot-swap run NAME.
    PolicyChanged { name: String, path: PathBuf },
    /// `NAME.wasm` is gone: stop run NAME, keeping its results.
    PolicyRemoved { name: String },
    /// A new configuration, with its benchmark table read afresh; it applies to runs
    /// started from now on.
    Reconfigure(Box<ServiceConfig>, Option<Arc<BenchmarkTable>>),
    /// Cut the step in progress short (a training stops at its next optimiser step and is
    /// redone on the next start; a score finishes), stop every run cleanly, exit.
    Shutdown,
}

/// What the API shows about a policy file.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PolicyFile {
    pub path: PathBuf,
    /// `loaded` (driving its run), `rejected` (see `error`) or `failed` (its run failed
    /// with this very file and waits for a different one; see `error`).
    pub state: &'static str,
    /// `name@hash` of the module driving the run.
    pub module: Option<String>,
    /// Why the last version of the file was refused.
    pub error: Option<String>,
}

/// Live state shared with the HTTP API.
#[derive(Debug, Default)]
pub struct Status {
    /// The scheduler has opened the store and is taking commands.
    pub ready: bool,
    /// The scheduler thread is running (false once it exits).
    pub alive: bool,
    pub policies: BTreeMap<String, PolicyFile>,
    /// Runs currently being stepped.
    pub active: Vec<String>,
}

/// Shared handle to [`Status`].
pub type SharedStatus = Arc<RwLock<Status>>;

/// The compute thread's state: see the module documentation.
pub struct Scheduler {
    config: ServiceConfig,
    device: Device,
    runtime: PolicyRuntime,
    store: RunStore,
    /// One engine per distinct experiment (data loaded once).
    engines: HashMap<String, Engine>,
    /// Active runs and the engine key they use.
    runs: BTreeMap<String, (Search, String)>,
    /// Which active run goes next.
    turn: Turns,
    metrics: Arc<Metrics>,
    status: SharedStatus,
    /// The published table runs are annotated with (from the configuration), if any.
    table: Option<Arc<BenchmarkTable>>,
    /// Commands that arrived during a step, handled before any newer one.
    arrived: VecDeque<Command>,
    /// Runs whose policy file is here but which another process drives (a `knas search` of
    /// the same name): each with its file and the refusal last reported. They are asked for
    /// again every [`BUSY_RETRY`], so the service takes a run over once that process ends,
    /// with no need to touch the file.
    busy: BTreeMap<String, (PathBuf, String)>,
    /// When the busy runs are asked for next.
    next_retry: Instant,
}

/// Where the store remembers the module whose own fault failed run `name`.
fn failed_by_key(name: &str) -> String {
    format!("failed-by:{name}")
}

/// What the store remembers there: the module and the limits it failed under. Raising the
/// limits (a policy that ran out of memory or fuel) is a reason to try the run again.
fn failed_by_value(label: &str, limits: &crate::run::PolicyLimits) -> String {
    format!("{label} {}", serde_json::to_string(limits).unwrap_or_default())
}

/// How often a run another process drives is asked for again (see `Scheduler::busy`).
const BUSY_RETRY: Duration = Duration::from_secs(2);

fn experiment_key(experiment: &Experiment) -> String {
    serde_json::to_string(experiment).unwrap_or_default()
}

impl Scheduler {
    /// Opens the store and the policy runtime; runs start when [`Scheduler::run`] takes
    /// commands.
    pub fn new(
        config: ServiceConfig,
        device: Device,
        metrics: Arc<Metrics>,
        status: SharedStatus,
    ) -> anyhow::Result<Scheduler> {
        let store = RunStore::open(&config.store)?;
        let runtime = PolicyRuntime::new()?;
        let table = config.load_table()?;
        let scheduler = Scheduler {
            config,
            device,
            runtime,
            store,
            engines: HashMap::new(),
            runs: BTreeMap::new(),
            turn: Turns::default(),
            metrics,
            status,
            table,
            arrived: VecDeque::new(),
            busy: BTreeMap::new(),
            next_retry: Instant::now(),
        };
        scheduler.refresh_run_counts();
        Ok(scheduler)
    }

    /// Runs until `Shutdown` (or until every command sender is gone).
    pub fn run(mut self, commands: Receiver<Command>) {
        self.with_status(|s| {
            s.ready = true;
            s.alive = true;
        });
        loop {
            // Block for a command when idle (until the busy runs are due, if any); between
            // steps, only look.
            let command = if let Some(command) = self.arrived.pop_front() {
                Some(command)
            } else if self.turn.is_empty() && self.busy.is_empty() {
                match commands.recv() {
                    Ok(command) => Some(command),
                    Err(_) => break,
                }
            } else if self.turn.is_empty() {
                match commands.recv_timeout(self.next_retry.saturating_duration_since(Instant::now())) {
                    Ok(command) => Some(command),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match commands.try_recv() {
                    Ok(command) => Some(command),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => break,
                }
            };
            fail::fail_point!("scheduler::loop");
            match command {
                Some(Command::Shutdown) => break,
                Some(command) => self.handle_guarded(command),
                None if !self.busy.is_empty() && Instant::now() >= self.next_retry => self.retry_busy(),
                None => self.step_next(&commands),
            }
        }
        self.shutdown();
    }

    /// Handles `command`; a panic fails the run it concerns, not the service.
    fn handle_guarded(&mut self, command: Command) {
        let what = format!("{command:?}");
        let run = match &command {
            Command::PolicyChanged { name, .. } | Command::PolicyRemoved { name } => Some(name.clone()),
            _ => None,
        };
        if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(|| self.handle(command))) {
            let message = panic_message(&*panic);
            tracing::error!("the service failed while handling {what}: {message}");
            // The run may be marked running by now: it must not stay so.
            if let Some(run) = run {
                self.run_failed(&run, &SearchError::Crashed(message));
            }
        }
    }

    /// Asks again for every run another process was driving.
    fn retry_busy(&mut self) {
        let busy: Vec<(String, PathBuf)> = self.busy.iter().map(|(name, (path, _))| (name.clone(), path.clone())).collect();
        for (name, path) in busy {
            // Compiling the policy takes seconds of this thread: only once the run is free.
            // (The lease is let go at once and taken again when the run starts.)
            if let Err(StoreError::Busy { .. }) = self.store.lease(&name) {
                self.metrics.policy_loads.with_label_values(&[&name, "waiting"]).inc();
                continue;
            }
            self.handle_guarded(Command::PolicyChanged { name, path });
        }
        self.next_retry = Instant::now() + BUSY_RETRY;
    }

    fn with_status(&self, f: impl FnOnce(&mut Status)) {
        // A poisoned lock only means a reader panicked; the data is still consistent.
        let mut status = self.status.write().unwrap_or_else(|e| e.into_inner());
        f(&mut status);
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::PolicyChanged { name, path } => self.policy_changed(&name, path),
            Command::PolicyRemoved { name } => self.policy_removed(&name),
            Command::Reconfigure(config, table) => {
                if config.listen != self.config.listen
                    || config.store != self.config.store
                    || config.policy_dir != self.config.policy_dir
                    || config.device != self.config.device
                    || config.threads != self.config.threads
                {
                    tracing::warn!("listen, store, policy-dir, device and threads changes take effect after a restart");
                }
                // Runs started from now on are annotated from it; the file was re-read, so an
                // edited table counts too.
                self.table = table;
                tracing::info!("configuration applied; it governs runs started from now on");
                self.config = *config;
            }
            Command::Shutdown => {}
        }
    }

    /// The run's policy failed as the run started (instantiating, `init`, restoring or
    /// replaying its history); `Search::start` has recorded the run as failed. As for a run
    /// its policy failed while stepping, a module that would only fail again waits for a
    /// different file instead of failing again on every restart.
    fn failed_to_start(&mut self, name: &str, path: PathBuf, label: String, limits: &crate::run::PolicyLimits, error: &PolicyError) {
        tracing::error!(run = name, policy = %label, "the policy failed as its run started: {error}");
        self.metrics.policy_loads.with_label_values(&[name, "loaded"]).inc();
        self.metrics.policy_errors.with_label_values(&[name, error.cause()]).inc();
        self.remember_failed_by(name, error.repeats().then(|| failed_by_value(&label, limits)));
        self.with_status(|s| {
            s.policies.insert(name.to_owned(), PolicyFile { path, state: "failed", module: Some(label), error: Some(error.to_string()) });
        });
        self.free_engines();
        self.refresh_run_counts();
    }

    /// Records which module failed run `name`, under which limits, in a way it would repeat
    /// (`failed_by`: see [`failed_by_value`]): the run then waits for a different file or
    /// limits instead of failing again on every restart. `None` (the failure was not the
    /// module's) forgets any earlier such record.
    fn remember_failed_by(&self, name: &str, failed_by: Option<String>) {
        if let Err(store_error) = self.store.cache(&failed_by_key(name), failed_by.as_deref().unwrap_or_default()) {
            tracing::error!(run = name, "cannot record which module failed the run: {store_error}");
        }
    }

    fn reject(&mut self, name: &str, path: PathBuf, error: &PolicyError) {
        // The file is refused whoever drives the run: it waits for a change of the file.
        self.busy.remove(name);
        tracing::error!(policy = name, "{error}");
        self.metrics.policy_loads.with_label_values(&[name, "rejected"]).inc();
        self.metrics.policy_errors.with_label_values(&[name, error.cause()]).inc();
        if let Ok(Some(run)) = self.store.run(name) {
            let _ = self.store.add_event(run.id, "error", &format!("new policy file rejected: {error}"));
        }
        let module = self.runs.get(name).map(|(search, _)| search.policy_label().to_owned());
        self.with_status(|s| {
            s.policies.insert(name.to_owned(), PolicyFile { path, state: "rejected", module, error: Some(error.to_string()) });
        });
        // A run that never started may have loaded its experiment's engine already.
        self.free_engines();
    }

    fn policy_changed(&mut self, name: &str, path: PathBuf) {
        // The file is the running module again (touched, copied over with the same bytes,
        // seen again in a rescan): nothing to compile.
        if let Some((search, _)) = self.runs.get(name)
            && PolicyRuntime::label_of_file(&path).is_some_and(|label| label == search.policy_label())
        {
            let module = Some(search.policy_label().to_owned());
            return self.with_status(|s| {
                s.policies.insert(name.to_owned(), PolicyFile { path, state: "loaded", module, error: None });
            });
        }
        let module = match self.runtime.load_file(&path) {
            Ok(module) => module,
            Err(error) => return self.reject(name, path, &error),
        };
        let label = module.label();
        if let Some((search, _)) = self.runs.get_mut(name) {
            // Hot swap: the new module takes over, fed the history; nothing is re-scored.
            if search.policy_label() == label {
                // The file is the running module again (say, after a rejected edit).
                return self.with_status(|s| {
                    s.policies.insert(name.to_owned(), PolicyFile { path, state: "loaded", module: Some(label), error: None });
                });
            }
            let mut observer = self.metrics.for_run(name);
            match search.swap(&self.store, &self.runtime, &module, &mut observer) {
                Ok(()) => {
                    tracing::info!(run = name, policy = %label, "policy hot-swapped");
                    self.metrics.policy_loads.with_label_values(&[name, "reloaded"]).inc();
                }
                Err(SearchError::Policy(error)) => return self.reject(name, path, &error),
                Err(error) => return self.run_failed(name, &error),
            }
        } else {
            // Checked when the configuration was read; the service's limits otherwise.
            let limits = self.config.limits_for(name).unwrap_or(self.config.limits);
            let (experiment, spec, done) = match self.store.run(name) {
                // A run its very module failed would only fail again: it waits for a
                // different policy file instead of re-running on every restart. (Failures
                // of the host or the data are retried.)
                Ok(Some(run)) if run.status == RunStatus::Failed && self.store.cached(&failed_by_key(name)).ok().flatten() == Some(failed_by_value(&label, &limits)) => {
                    // Not asked for again every few seconds either (the process that held
                    // it may have failed it since).
                    self.busy.remove(name);
                    let error = run.error.unwrap_or_default();
                    tracing::warn!(run = name, policy = %label, "not restarted: it failed with this policy file and these limits ({error}); replace the file or change its limits to retry");
                    self.with_status(|s| {
                        s.policies.insert(name.to_owned(), PolicyFile { path, state: "failed", module: Some(label), error: Some(error) });
                    });
                    return self.refresh_run_counts();
                }
                // A known run resumes with the settings it was started with.
                Ok(Some(run)) => (run.experiment, crate::run::SearchSpec { limits, ..run.search }, run.status == RunStatus::Done),
                Ok(None) => (
                    self.config.experiment.clone(),
                    self.config.search.spec(self.config.params_for(name), limits),
                    false,
                ),
                Err(error) => {
                    self.busy.remove(name);
                    return self.run_failed(name, &error.into());
                }
            };
            // Refused before anything is loaded, and without touching the run's record: the
            // process driving it (say, a `knas search` of the same name) owns that.
            let lease = match self.store.lease(name) {
                Ok(lease) => lease,
                Err(error) => {
                    let error = format!("{error}; the service asks for it again every {} s", BUSY_RETRY.as_secs());
                    // Reported once, not at every retry: only a different refusal is news.
                    if self.busy.is_empty() {
                        self.next_retry = Instant::now() + BUSY_RETRY;
                    }
                    let reported = self.busy.insert(name.to_owned(), (path.clone(), error.clone()));
                    if reported.is_none_or(|(_, before)| before != error) {
                        tracing::error!(run = name, policy = %label, "{error}");
                        self.metrics.policy_loads.with_label_values(&[name, "rejected"]).inc();
                    } else {
                        self.metrics.policy_loads.with_label_values(&[name, "waiting"]).inc();
                    }
                    return self.with_status(|s| {
                        s.policies.insert(name.to_owned(), PolicyFile { path, state: "rejected", module: None, error: Some(error) });
                    });
                }
            };
            if self.busy.remove(name).is_some() {
                tracing::info!(run = name, policy = %label, "the process that drove the run has let it go; the service takes it over");
            }
            let key = experiment_key(&experiment);
            // A finished run is only listed: loading its data would hold memory no run uses,
            // and a data folder missing by now would turn its record into a failure.
            if !done && !self.engines.contains_key(&key) {
                let engine = Engine::new(&experiment, self.device).map_err(SearchError::from).and_then(|mut engine| {
                    crate::search::anchor(&mut engine, &self.store, &mut |_, _| {})?;
                    Ok(engine)
                });
                match engine {
                    Ok(engine) => {
                        self.engines.insert(key.clone(), engine);
                    }
                    Err(error) => {
                        // Listed as failed with its reason, not missing from the API.
                        if let Err(store_error) = self.store.begin_run(name, &label, &experiment, &spec) {
                            tracing::error!(run = name, "cannot record the run: {store_error}");
                        }
                        return self.run_failed(name, &error);
                    }
                }
            }
            let mut observer = self.metrics.for_run(name);
            let started = Search::start(&self.store, lease, &self.runtime, &module, name, &experiment, &spec, &mut observer).and_then(|mut search| {
                if let Some(table) = &self.table {
                    search.annotate_with(&self.store, table.clone())?;
                }
                Ok(search)
            });
            match started {
                Ok(search) => {
                    self.metrics.policy_loads.with_label_values(&[name, "loaded"]).inc();
                    self.restore_best(name, search.run().id);
                    if search.finished().is_none() {
                        tracing::info!(run = name, policy = %label, "run started");
                        self.runs.insert(name.to_owned(), (search, key));
                        self.turn.join(name);
                    }
                    self.update_budget(name);
                }
                Err(SearchError::Policy(error)) => return self.failed_to_start(name, path, label, &limits, &error),
                Err(error) => return self.run_failed(name, &error),
            }
        }
        self.with_status(|s| {
            s.policies.insert(name.to_owned(), PolicyFile { path, state: "loaded", module: Some(label), error: None });
        });
        self.publish_active();
        self.refresh_run_counts();
    }

    fn policy_removed(&mut self, name: &str) {
        self.busy.remove(name);
        if let Some((mut search, _)) = self.runs.remove(name) {
            self.turn.leave(name);
            self.free_engines();
            match search.stop(&self.store, "policy file removed") {
                Ok(()) => tracing::info!(run = name, "run stopped: its policy file was removed"),
                Err(error) => tracing::error!(run = name, "cannot record the stop: {error}"),
            }
        }
        self.with_status(|s| {
            s.policies.remove(name);
        });
        self.metrics.forget(name);
        self.publish_active();
        self.refresh_run_counts();
    }

    /// One step of the next run in turn.
    fn step_next(&mut self, inbox: &Receiver<Command>) {
        let Some(name) = self.turn.next() else { return };
        let Some((search, key)) = self.runs.get_mut(&name) else { return self.turn.leave(&name) };
        let Some(engine) = self.engines.get(key.as_str()) else { return self.turn.leave(&name) };
        let label = search.policy_label().to_owned();
        let mut observer = Stepping {
            metrics: self.metrics.for_run(&name),
            run: &name,
            label: &label,
            inbox,
            arrived: RefCell::new(std::mem::take(&mut self.arrived)),
            judged: Cell::new(0),
            cut: Cell::new(false),
        };
        let start = Instant::now();
        let stepped = std::panic::catch_unwind(AssertUnwindSafe(|| search.step(engine, &self.store, &mut observer)))
            .unwrap_or_else(|panic| Err(SearchError::Crashed(panic_message(&*panic))));
        self.turn.charge(&name, start.elapsed());
        self.arrived = observer.arrived.into_inner();
        match stepped {
            Err(SearchError::Interrupted) => {
                // It keeps its place; the command that interrupted it is handled first.
                tracing::info!(run = %name, "step interrupted; nothing of the evaluation in progress was recorded");
            }
            Ok(Step::Continue) => self.update_budget(&name),
            Ok(Step::Finished(finish)) => {
                tracing::info!(run = %name, "run complete: {finish:?}");
                self.runs.remove(&name);
                self.turn.leave(&name);
                self.free_engines();
                self.update_budget(&name);
                self.publish_active();
                self.refresh_run_counts();
            }
            // Only a run that trains elsewhere waits (`knas katib`); the service never sets that.
            Ok(Step::Waiting(_)) => self.run_failed(&name, &SearchError::Crashed("the run waits for trainings done elsewhere".into())),
            Err(error) => self.run_failed(&name, &error),
        }
    }

    fn run_failed(&mut self, name: &str, error: &SearchError) {
        tracing::error!(run = name, "{error}");
        let mut failed_by = None;
        if let SearchError::Policy(policy_error) = error {
            self.metrics.policy_errors.with_label_values(&[name, policy_error.cause()]).inc();
            let stepped = self.runs.get(name).map(|(search, _)| (search.policy_label().to_owned(), search.limits()));
            let stored = || self.store.run(name).ok().flatten().map(|r| (r.policy, self.config.limits_for(name).unwrap_or(self.config.limits)));
            if policy_error.repeats() {
                failed_by = stepped.or_else(stored).map(|(label, limits)| failed_by_value(&label, &limits));
            }
        }
        self.remember_failed_by(name, failed_by);
        if let Some((mut search, _)) = self.runs.remove(name) {
            if let Err(store_error) = search.fail(&self.store, error) {
                tracing::error!(run = name, "cannot record the failure: {store_error}");
            }
        } else if let Ok(Some(run)) = self.store.run(name) {
            // Not (or no longer) stepped, e.g. it failed while being loaded.
            let message = error.to_string();
            let recorded = self.store.set_status(run.id, RunStatus::Failed, Some(&message));
            if let Err(store_error) = recorded.and_then(|()| self.store.add_event(run.id, "error", &message)) {
                tracing::error!(run = name, "cannot record the failure: {store_error}");
            }
        }
        self.turn.leave(name);
        self.free_engines();
        self.publish_active();
        self.refresh_run_counts();
    }

    /// Drops the engines no active run uses (their data and reference sample; a run that
    /// needs one again reloads it, the reference from the store's cache).
    fn free_engines(&mut self) {
        let runs = &self.runs;
        self.engines.retain(|key, _| runs.values().any(|(_, used)| used == key));
    }

    fn update_budget(&self, name: &str) {
        let Ok(Some(run)) = self.store.run(name) else { return };
        let Ok(spent) = self.store.spent(run.id) else { return };
        self.metrics.set_budget(name, run.search.budget, spent);
    }

    /// Seeds the best-score gauges of a (resumed) run from the store.
    fn restore_best(&self, name: &str, run: i64) {
        self.metrics.for_run(name).restore_best(&self.store.evaluations(run).unwrap_or_default());
    }

    fn publish_active(&self) {
        let active: Vec<String> = self.runs.keys().cloned().collect();
        self.with_status(|s| s.active = active);
    }

    fn refresh_run_counts(&self) {
        let runs = match self.store.runs() {
            Ok(runs) => runs,
            Err(error) => return tracing::warn!("cannot count the runs for knas_runs: {error}"),
        };
        for status in RunStatus::ALL {
            let count = runs.iter().filter(|r| r.status == status).count();
            self.metrics.runs.with_label_values(&[status.name()]).set(count as i64);
        }
    }

    fn shutdown(&mut self) {
        for (name, (mut search, _)) in std::mem::take(&mut self.runs) {
            if let Err(error) = search.stop(&self.store, "service shut down") {
                tracing::error!(run = %name, "cannot record the stop: {error}");
            }
        }
        self.turn = Turns::default();
        self.refresh_run_counts();
        self.with_status(|s| {
            s.alive = false;
            s.ready = false;
            s.active.clear();
        });
        tracing::info!("scheduler stopped; every result is in {}", self.store.path().display());
    }
}


/// Time-fair turns: the active run that has used the least compute time goes next. A run
/// that joins starts level with the least-served one (it gets its share from now on, not
/// a catch-up of everything it missed).
#[derive(Debug, Default)]
struct Turns {
    used: BTreeMap<String, Duration>,
}

impl Turns {
    fn join(&mut self, name: &str) {
        let level = self.used.values().min().copied().unwrap_or_default();
        self.used.entry(name.to_owned()).or_insert(level);
    }

    fn leave(&mut self, name: &str) {
        self.used.remove(name);
    }

    fn charge(&mut self, name: &str, time: Duration) {
        if let Some(used) = self.used.get_mut(name) {
            *used += time;
        }
    }

    /// The run to step next (it stays in the turns).
    fn next(&self) -> Option<String> {
        self.used.iter().min_by_key(|(_, used)| **used).map(|(name, _)| name.clone())
    }

    fn is_empty(&self) -> bool {
        self.used.is_empty()
    }
}

/// The scheduler's view of a run's step: the run's metrics, and the commands that arrive
/// meanwhile (kept, in order, for the scheduler to handle after the step).
struct Stepping<'a> {
    metrics: super::metrics::RunMetrics<'a>,
    run: &'a str,
    /// `name@hash` of the module driving the run.
    label: &'a str,
    inbox: &'a Receiver<Command>,
    arrived: RefCell<VecDeque<Command>>,
    /// How many of `arrived` have been judged by [`Stepping::cuts_short`]: each once, since
    /// judging a changed policy file reads and hashes it, too dear for every optimiser step.
    judged: Cell<usize>,
    /// Whether one of them cuts the step short.
    cut: Cell<bool>,
}

impl Stepping<'_> {
    /// Whether `command` makes the step in progress pointless.
    fn cuts_short(&self, command: &Command) -> bool {
        match command {
            Command::Shutdown => true,
            Command::PolicyRemoved { name } => name == self.run,
            // A touch or an identical copy is not a new policy: let the step finish.
            Command::PolicyChanged { name, path } => {
                name == self.run && PolicyRuntime::label_of_file(path).is_none_or(|label| label != self.label)
            }
            Command::Reconfigure(..) => false,
        }
    }
}

impl SearchObserver for Stepping<'_> {
    fn evaluated(&mut self, record: &crate::store::EvaluationRecord, fresh: bool) {
        self.metrics.evaluated(record, fresh);
    }

    fn training_step(&mut self, done: usize, total: usize) {
        self.metrics.training_step(done, total);
    }

    fn policy_called(&mut self, call: &'static str, seconds: f64) {
        self.metrics.policy_called(call, seconds);
    }

    fn interrupted(&self) -> bool {
        let mut arrived = self.arrived.borrow_mut();
        loop {
            match self.inbox.try_recv() {
                Ok(command) => arrived.push_back(command),
                Err(TryRecvError::Empty) => break,
                // Nobody is left to send commands: the service is going away.
                Err(TryRecvError::Disconnected) => return true,
            }
        }
        if arrived.range(self.judged.get()..).any(|command| self.cuts_short(command)) {
            self.cut.set(true);
        }
        self.judged.set(arrived.len());
        self.cut.get()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Turns;
    use crate::panic_message;

    #[test]
    fn turns_go_to_the_run_that_used_the_least_time() {
        let ms = Duration::from_millis;
        let mut turns = Turns::default();
        turns.join("slow");
        turns.join("quick");
        // A slow proposer (100 ms a step) against a quick one (10 ms): over one simulated
        // second each gets about half the time, not half the steps.
        let mut steps = std::collections::BTreeMap::<String, u32>::new();
        let mut clock = ms(0);
        while clock < ms(1000) {
            let name = turns.next().unwrap();
            let cost = if name == "slow" { ms(100) } else { ms(10) };
            turns.charge(&name, cost);
            clock += cost;
            *steps.entry(name).or_default() += 1;
        }
        assert!((4..=6).contains(&steps["slow"]), "{steps:?}");
        assert!((45..=55).contains(&steps["quick"]), "{steps:?}");

        // A newcomer starts level with the least served: no catch-up burst.
        turns.join("new");
        let mut next = Vec::new();
        for _ in 0..4 {
            let name = turns.next().unwrap();
            turns.charge(&name, ms(10));
            next.push(name);
        }
        assert!(next.iter().filter(|n| *n == "new").count() <= 2, "{next:?}");
        turns.leave("new");
        turns.leave("slow");
        turns.leave("quick");
        assert!(turns.is_empty() && turns.next().is_none());
    }

    #[test]
    fn panic_messages_are_found_for_literal_and_formatted_panics() {
        let literal = std::panic::catch_unwind(|| panic!("literal")).unwrap_err();
        assert_eq!(panic_message(&*literal), "literal");
        let what = "formatted";
        let formatted = std::panic::catch_unwind(|| panic!("{what} {}", 1)).unwrap_err();
        assert_eq!(panic_message(&*formatted), "formatted 1");
        let other = std::panic::catch_unwind(|| std::panic::panic_any(7_u8)).unwrap_err();
        assert_eq!(panic_message(&*other), "a panic without a message");
    }
}
