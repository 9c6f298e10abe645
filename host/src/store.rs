//! The run store: every search run and every evaluation, in one SQLite file (WAL mode).
//!
//! Each evaluation is committed as soon as it is measured, so a killed process loses at
//! most the evaluations in flight (one, or with several scoring workers one proposal's new
//! scores); `(run, candidate, fidelity)` is unique, so nothing is ever recorded twice. A run
//! is driven by one process at a time ([`RunStore::lease`]), so, through the search loop's
//! lookups, nothing is computed twice either.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

use crate::measures::Values;
use crate::run::{Budget, Experiment, Fidelity, SearchSpec};
use crate::space::Candidate;

/// Current schema version (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 3;

/// Schema 1, as the first release created it. A new store is created at version 1 and
/// brought up to date by the same migrations an old one goes through, so there is one
/// definition of every table.
const SCHEMA_1: &str = "
CREATE TABLE runs (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    policy      TEXT NOT NULL,
    status      TEXT NOT NULL,
    error       TEXT,
    experiment  TEXT NOT NULL,
    search      TEXT NOT NULL,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE TABLE evaluations (
    run_id      INTEGER NOT NULL REFERENCES runs(id),
    seq         INTEGER NOT NULL,
    candidate   TEXT NOT NULL,
    fidelity    TEXT NOT NULL,
    score       REAL,
    accuracy    REAL,
    loss        REAL,
    train_loss  REAL,
    params      INTEGER,
    flops       INTEGER,
    seconds     REAL NOT NULL,
    error       TEXT,
    policy      TEXT NOT NULL,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (run_id, seq),
    UNIQUE (run_id, candidate, fidelity)
);
CREATE TABLE events (
    run_id      INTEGER NOT NULL REFERENCES runs(id),
    at          TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    kind        TEXT NOT NULL,
    message     TEXT NOT NULL
);
";

/// Version 1 → 2: every measure of a score evaluation (`measures`, JSON), the epochs of a
/// training, a cache for reference samples, policy checkpoints, published accuracies
/// beside candidates, and experiments whose score is named (`score: mgm`) instead of an
/// MGM mode (`score-mode: per-sample`, see [`migrate_experiment`]).
const MIGRATE_1_TO_2: &str = "
ALTER TABLE evaluations ADD COLUMN measures TEXT;
ALTER TABLE evaluations ADD COLUMN epochs INTEGER;
CREATE TABLE cache (
    key         TEXT PRIMARY KEY,
    value       TEXT NOT NULL,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE TABLE checkpoints (
    run_id      INTEGER PRIMARY KEY REFERENCES runs(id),
    seq         INTEGER NOT NULL,
    policy      TEXT NOT NULL,
    state       BLOB NOT NULL,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE TABLE published (
    run_id      INTEGER NOT NULL REFERENCES runs(id),
    candidate   TEXT NOT NULL,
    source      TEXT NOT NULL,
    accuracy    REAL NOT NULL,
    PRIMARY KEY (run_id, candidate)
);
";

/// Version 2 → 3: a summary row per run (counts, bests, errors) kept current by triggers in
/// the same transaction as each write, so listing runs reads one small row per run instead
/// of every evaluation.
const MIGRATE_2_TO_3: &str = "
CREATE TABLE run_summaries (
    run_id        INTEGER PRIMARY KEY REFERENCES runs(id),
    scores        INTEGER NOT NULL DEFAULT 0,
    trainings     INTEGER NOT NULL DEFAULT 0,
    best_score    REAL,
    best_accuracy REAL,
    errors        INTEGER NOT NULL DEFAULT 0,
    last_error    TEXT
);
INSERT INTO run_summaries (run_id, scores, trainings, best_score, best_accuracy, errors, last_error)
SELECT r.id,
       (SELECT COUNT(*) FROM evaluations e WHERE e.run_id = r.id AND e.fidelity = 'score'),
       (SELECT COUNT(*) FROM evaluations e WHERE e.run_id = r.id AND e.fidelity <> 'score'),
       (SELECT MAX(score) FROM evaluations e WHERE e.run_id = r.id),
       (SELECT MAX(accuracy) FROM evaluations e WHERE e.run_id = r.id),
       (SELECT COUNT(*) FROM events v WHERE v.run_id = r.id AND v.kind = 'error'),
       (SELECT message FROM events v WHERE v.run_id = r.id AND v.kind = 'error' ORDER BY v.rowid DESC LIMIT 1)
FROM runs r;
CREATE TRIGGER run_summary_of_new_run AFTER INSERT ON runs BEGIN
    INSERT INTO run_summaries (run_id) VALUES (NEW.id);
END;
CREATE TRIGGER run_summary_of_evaluation AFTER INSERT ON evaluations BEGIN
    UPDATE run_summaries SET
        scores = scores + (NEW.fidelity = 'score'),
        trainings = trainings + (NEW.fidelity <> 'score'),
        best_score = CASE WHEN best_score IS NULL OR NEW.score > best_score THEN COALESCE(NEW.score, best_score) ELSE best_score END,
        best_accuracy = CASE WHEN best_accuracy IS NULL OR NEW.accuracy > best_accuracy THEN COALESCE(NEW.accuracy, best_accuracy) ELSE best_accuracy END
    WHERE run_id = NEW.run_id;
END;
CREATE TRIGGER run_summary_of_error AFTER INSERT ON events WHEN NEW.kind = 'error' BEGIN
    UPDATE run_summaries SET errors = errors + 1, last_error = NEW.message WHERE run_id = NEW.run_id;
END;
";

/// An experiment written by schema 1 in today's terms: its MGM mode becomes its score.
fn migrate_experiment(json: &str) -> Result<String, serde_json::Error> {
    let mut value: serde_json::Value = serde_json::from_str(json)?;
    if let Some(object) = value.as_object_mut()
        && let Some(mode) = object.remove("score-mode")
    {
        let score = if mode == "batch" { "mgm-batch" } else { "mgm" };
        object.insert("score".into(), score.into());
    }
    serde_json::to_string(&value)
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("run store {path}: {message}")]
    Open { path: PathBuf, message: String },
    #[error("run store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("run store: stored JSON is unreadable: {0}")]
    Json(#[from] serde_json::Error),
    #[error(
        "a run named {name:?} already exists with different settings ({what}); pick another --name, or rerun with the same settings to resume it"
    )]
    Mismatch { name: String, what: &'static str },
    #[error("no run named {0:?} in the store")]
    NoSuchRun(String),
    #[error("run store: run {run:?} has the status {status:?}, which is none of running, done, failed, stopped")]
    UnknownStatus { run: String, status: String },
    #[error("run store: the stored {what} of run {run:?} is unreadable ({message}); was the store written by a newer knas?")]
    Unreadable { run: String, what: &'static str, message: String },
    #[error(
        "run {name:?} is being driven by another knas process{}; wait for it to end, or pick another --name or --store",
        holder.as_deref().map(|pid| format!(" (pid {pid})")).unwrap_or_default()
    )]
    Busy { name: String, holder: Option<String> },
}

/// The right to drive one run, from [`RunStore::lease`]. Two processes driving the same run
/// would compute the same candidates and race to record them; the lease is an OS file lock,
/// so it ends with the process that holds it, however that process ends.
#[derive(Debug)]
pub struct RunLease {
    _file: std::fs::File,
}

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunStatus {
    /// Started and not finished (also: killed while running; it resumes when restarted).
    Running,
    /// The policy said done, or the budget ran out.
    Done,
    /// Ended by an error (a misbehaving policy, a failed evaluation).
    Failed,
    /// Stopped on request (its policy was removed); resumes when restarted.
    Stopped,
}

impl RunStatus {
    /// Every status, in the order a run may pass through them.
    pub const ALL: [RunStatus; 4] = [RunStatus::Running, RunStatus::Done, RunStatus::Failed, RunStatus::Stopped];

    /// The status as stored and shown.
    pub fn name(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Done => "done",
            RunStatus::Failed => "failed",
            RunStatus::Stopped => "stopped",
        }
    }

    /// The status stored as `text` (the inverse of [`Self::name`]).
    fn parse(text: &str) -> Option<RunStatus> {
        RunStatus::ALL.into_iter().find(|status| status.name() == text)
    }
}

/// A run as stored.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunRecord {
    #[serde(skip)]
    pub id: i64,
    pub name: String,
    /// Label (`name@hash`) of the policy module currently driving the run.
    pub policy: String,
    pub status: RunStatus,
    pub error: Option<String>,
    pub experiment: Experiment,
    pub search: SearchSpec,
    pub created_at: String,
    pub updated_at: String,
}

/// What a run has recorded, kept current as it records (schema 3).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RunSummary {
    pub recorded: Budget,
    pub best_score: Option<f64>,
    pub best_accuracy: Option<f64>,
    /// Error events (a failure, a rejected policy file, …) and the latest one's message.
    pub errors: u32,
    pub last_error: Option<String>,
}

/// A [`RunSummary`] from the six summary columns starting at `first`.
fn summary_from_row(row: &rusqlite::Row, first: usize) -> rusqlite::Result<RunSummary> {
    Ok(RunSummary {
        recorded: Budget { scores: row.get(first)?, trainings: row.get(first + 1)? },
        best_score: row.get(first + 2)?,
        best_accuracy: row.get(first + 3)?,
        errors: row.get(first + 4)?,
        last_error: row.get(first + 5)?,
    })
}

/// One evaluation, as stored.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EvaluationRecord {
    /// Order of recording within the run, from 1.
    pub seq: i64,
    pub candidate: Candidate,
    pub fidelity: Fidelity,
    pub score: Option<f64>,
    pub accuracy: Option<f64>,
    pub loss: Option<f64>,
    pub train_loss: Option<f64>,
    pub params: Option<i64>,
    pub flops: Option<i64>,
    /// Every measure computed for a score evaluation (missing ones as null).
    pub measures: Option<Values>,
    /// Epochs trained (training).
    pub epochs: Option<u32>,
    pub seconds: f64,
    pub error: Option<String>,
    /// The policy module that asked for it.
    pub policy: String,
    pub created_at: String,
}

/// A measurement about to be recorded.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NewEvaluation {
    pub score: Option<f64>,
    pub accuracy: Option<f64>,
    pub loss: Option<f64>,
    pub train_loss: Option<f64>,
    pub params: Option<i64>,
    pub flops: Option<i64>,
    pub measures: Option<Values>,
    pub epochs: Option<u32>,
    pub seconds: f64,
    pub error: Option<String>,
}

/// Accuracies from a published benchmark table recorded beside a run's candidates: what
/// the table says, never what the run measured (and never shown to the policy).
#[derive(Debug, Clone, Default)]
pub struct Published {
    /// The table they came from.
    pub source: Option<String>,
    pub accuracy: std::collections::HashMap<Candidate, f64>,
}

/// Something that happened to a run (errors, reloads, resumptions).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Event {
    pub at: String,
    pub kind: String,
    pub message: String,
}

/// A connection to a run store file.
pub struct RunStore {
    conn: Connection,
    path: PathBuf,
    /// The file's own path, links resolved: run leases are keyed on it, so that two
    /// processes reaching one store by different paths still exclude each other.
    real_path: PathBuf,
    /// Runs left out of a listing as unreadable, each warned about once: listings are
    /// read after every evaluation.
    unreadable: std::sync::Mutex<std::collections::HashSet<String>>,
}

const RUN_COLUMNS: &str = "id, name, policy, status, error, experiment, search, created_at, updated_at";

/// A `runs` row before its status and JSON columns are decoded into a [`RunRecord`].
struct RunRow {
    id: i64,
    name: String,
    policy: String,
    status: String,
    error: Option<String>,
    experiment: String,
    search: String,
    created_at: String,
    updated_at: String,
}

const EVALUATION_COLUMNS: &str =
    "seq, candidate, fidelity, score, accuracy, loss, train_loss, params, flops, seconds, error, policy, created_at, measures, epochs";

fn evaluation_from_row(row: &rusqlite::Row) -> rusqlite::Result<EvaluationRecord> {
    let text = |i: usize| row.get::<_, String>(i);
    let seq: i64 = row.get(0)?;
    let bad = |i: usize, e: String| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, format!("evaluation {seq}: {e}").into())
    };
    Ok(EvaluationRecord {
        seq,
        candidate: text(1)?.parse().map_err(|e: crate::space::ArchError| bad(1, e.to_string()))?,
        fidelity: Fidelity::from_name(&text(2)?).ok_or_else(|| bad(2, "unknown fidelity".into()))?,
        score: row.get(3)?,
        accuracy: row.get(4)?,
        loss: row.get(5)?,
        train_loss: row.get(6)?,
        params: row.get(7)?,
        flops: row.get(8)?,
        seconds: row.get(9)?,
        error: row.get(10)?,
        policy: row.get(11)?,
        created_at: row.get(12)?,
        measures: row
            .get::<_, Option<String>>(13)?
            .map(|json| serde_json::from_str(&json).map_err(|e| bad(13, format!("unreadable measures: {e}"))))
            .transpose()?,
        epochs: row.get(14)?,
    })
}

/// How long a connection waits for another one's lock.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs `f` again while SQLite answers busy or locked, up to [`BUSY_TIMEOUT`]. Some steps
/// of opening a new file (switching it to WAL while another connection does the same)
/// fail at once rather than wait in SQLite's busy handler.
fn retry_busy<T>(mut f: impl FnMut() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        match f() {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if matches!(e.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

impl RunStore {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<RunStore, StoreError> {
        let open_err = |e: rusqlite::Error| StoreError::Open { path: path.to_owned(), message: e.to_string() };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| StoreError::Open { path: path.to_owned(), message: e.to_string() })?;
        }
        let conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        // WAL: readers (the HTTP API) never block the writer; NORMAL sync is durable
        // against process crashes, which is what resuming needs.
        retry_busy(|| conn.pragma_update(None, "journal_mode", "WAL")).map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(open_err)?;
        let user_version = |conn: &Connection| retry_busy(|| conn.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))).map_err(open_err);
        match user_version(&conn)? {
            // Nothing knas writes: a version below 0 is a file damaged or someone else's.
            unknown if unknown < 0 => {
                return Err(StoreError::Open {
                    path: path.to_owned(),
                    message: format!("schema version {unknown} is not one knas writes: the file is damaged or not a knas run store"),
                });
            }
            0..SCHEMA_VERSION => {
                // Every step in one transaction: a store is upgraded wholly or not at all.
                // It takes the write lock first, and the version is read again under it:
                // of two processes opening a new or old store at once, the second waits
                // and finds the first one's upgrade done.
                let tx = retry_busy(|| rusqlite::Transaction::new_unchecked(&conn, rusqlite::TransactionBehavior::Immediate)).map_err(open_err)?;
                let version = user_version(&tx)?;
                let upgrade = |e: StoreError| StoreError::Open { path: path.to_owned(), message: format!("upgrading schema {version} to {SCHEMA_VERSION}: {e}") };
                if version == 0 {
                    tx.execute_batch(SCHEMA_1).map_err(open_err)?;
                }
                if version <= 1 {
                    Self::migrate_from_1(&tx).map_err(upgrade)?;
                }
                if version < SCHEMA_VERSION {
                    tx.execute_batch(MIGRATE_2_TO_3).map_err(|e| upgrade(e.into()))?;
                    tx.pragma_update(None, "user_version", SCHEMA_VERSION).map_err(open_err)?;
                }
                tx.commit().map_err(open_err)?;
            }
            SCHEMA_VERSION => {}
            newer => {
                return Err(StoreError::Open {
                    path: path.to_owned(),
                    message: format!("schema version {newer} was written by a newer knas (this one reads {SCHEMA_VERSION})"),
                });
            }
        }
        let real_path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
        Ok(RunStore { conn, path: path.to_owned(), real_path, unreadable: Default::default() })
    }

    /// Upgrades a schema-1 store (inside the caller's transaction): nothing recorded is
    /// lost.
    fn migrate_from_1(tx: &rusqlite::Transaction) -> Result<(), StoreError> {
        tx.execute_batch(MIGRATE_1_TO_2)?;
        let experiments: Vec<(i64, String)> =
            tx.prepare("SELECT id, experiment FROM runs")?.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?;
        for (id, json) in experiments {
            tx.execute("UPDATE runs SET experiment = ?2 WHERE id = ?1", params![id, migrate_experiment(&json)?])?;
        }
        Ok(())
    }

    /// A cached value (e.g. a reference sample), if `key` was stored.
    pub fn cached(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self.conn.query_row("SELECT value FROM cache WHERE key = ?1", [key], |r| r.get(0)).optional()?)
    }

    /// Caches `value` under `key` (replacing any earlier one).
    pub fn cache(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.conn.execute("INSERT OR REPLACE INTO cache (key, value) VALUES (?1, ?2)", params![key, value])?;
        Ok(())
    }

    /// Saves a policy's checkpoint for `run`: its state after the evaluation numbered
    /// `seq` (replacing the run's earlier one).
    pub fn save_checkpoint(&self, run: i64, seq: i64, policy: &str, state: &[u8]) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT OR REPLACE INTO checkpoints (run_id, seq, policy, state) VALUES (?1, ?2, ?3, ?4)",
            params![run, seq, policy, state],
        )?;
        Ok(())
    }

    /// The run's latest checkpoint: (seq, policy label, state).
    pub fn checkpoint(&self, run: i64) -> Result<Option<(i64, String, Vec<u8>)>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT seq, policy, state FROM checkpoints WHERE run_id = ?1", [run], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?)
    }

    /// Takes the right to drive run `name` (which need not exist yet), or says which process
    /// holds it. The lock files live in `STORE-locks/`, beside SQLite's own `-wal` and `-shm`.
    pub fn lease(&self, name: &str) -> Result<RunLease, StoreError> {
        use sha2::Digest;
        use std::io::Write;
        let mut folder = self.real_path.clone().into_os_string();
        folder.push("-locks");
        let folder = PathBuf::from(folder);
        let hash: String = sha2::Sha256::digest(name.as_bytes()).iter().take(8).map(|b| format!("{b:02x}")).collect();
        let path = folder.join(format!("{hash}.lock"));
        let failed = |e: std::io::Error| StoreError::Open { path: path.clone(), message: format!("cannot take the lock of run {name:?}: {e}") };
        std::fs::create_dir_all(&folder).map_err(failed)?;
        let mut file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(failed)?;
        match file.try_lock() {
            Ok(()) => {
                // Who holds it, for the message another process gets; the lock is what counts.
                let _ = file.set_len(0).and_then(|()| writeln!(file, "{} {name}", std::process::id()));
                Ok(RunLease { _file: file })
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).ok().and_then(|text| text.split_whitespace().next().map(str::to_owned));
                Err(StoreError::Busy { name: name.to_owned(), holder })
            }
            Err(std::fs::TryLockError::Error(e)) => Err(failed(e)),
        }
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored run `name`, if there is one, once it is checked to resume with these
    /// settings: a command can refuse a changed rerun before loading anything.
    pub fn resumable(&self, name: &str, experiment: &Experiment, search: &SearchSpec) -> Result<Option<RunRecord>, StoreError> {
        let Some(existing) = self.run(name)? else { return Ok(None) };
        if &existing.experiment != experiment {
            return Err(StoreError::Mismatch { name: name.into(), what: "experiment" });
        }
        if existing.search.budget != search.budget || existing.search.params != search.params || existing.search.max_batch != search.max_batch {
            return Err(StoreError::Mismatch { name: name.into(), what: "budget, batch size or policy parameters" });
        }
        Ok(Some(existing))
    }

    /// Creates run `name`, or returns the existing one (`true`: resumed) after checking it
    /// was started with the same experiment and search settings.
    pub fn begin_run(
        &self,
        name: &str,
        policy: &str,
        experiment: &Experiment,
        search: &SearchSpec,
    ) -> Result<(RunRecord, bool), StoreError> {
        if let Some(existing) = self.resumable(name, experiment, search)? {
            return Ok((existing, true));
        }
        self.conn.execute(
            "INSERT INTO runs (name, policy, status, experiment, search) VALUES (?1, ?2, 'running', ?3, ?4)",
            params![name, policy, serde_json::to_string(experiment)?, serde_json::to_string(search)?],
        )?;
        let run = self.run(name)?.ok_or_else(|| StoreError::NoSuchRun(name.into()))?;
        Ok((run, false))
    }

    /// A `runs` row as stored, read in `RUN_COLUMNS` order. Decoding its JSON columns is
    /// a separate step because its errors are the store's, not SQLite's.
    fn run_from_row(row: &rusqlite::Row) -> rusqlite::Result<RunRow> {
        Ok(RunRow {
            id: row.get(0)?,
            name: row.get(1)?,
            policy: row.get(2)?,
            status: row.get(3)?,
            error: row.get(4)?,
            experiment: row.get(5)?,
            search: row.get(6)?,
            created_at: row.get(7)?,
            updated_at: row.get(8)?,
        })
    }

    /// A run row decoded for a listing: one this release cannot read is left out, with a
    /// warning naming it the first time.
    fn readable(&self, raw: RunRow) -> Option<RunRecord> {
        let name = raw.name.clone();
        match Self::decode_run(raw) {
            Ok(run) => Some(run),
            Err(error) => {
                if self.unreadable.lock().unwrap_or_else(|e| e.into_inner()).insert(name) {
                    tracing::warn!("{error}; the run is left out of the lists");
                }
                None
            }
        }
    }

    fn decode_run(raw: RunRow) -> Result<RunRecord, StoreError> {
        let status = RunStatus::parse(&raw.status).ok_or_else(|| StoreError::UnknownStatus { run: raw.name.clone(), status: raw.status.clone() })?;
        let unreadable = |what, e: serde_json::Error| StoreError::Unreadable { run: raw.name.clone(), what, message: e.to_string() };
        let experiment = serde_json::from_str(&raw.experiment).map_err(|e| unreadable("experiment", e))?;
        let search = serde_json::from_str(&raw.search).map_err(|e| unreadable("search settings", e))?;
        Ok(RunRecord {
            id: raw.id,
            name: raw.name,
            policy: raw.policy,
            status,
            error: raw.error,
            experiment,
            search,
            created_at: raw.created_at,
            updated_at: raw.updated_at,
        })
    }

    /// The run called `name`.
    pub fn run(&self, name: &str) -> Result<Option<RunRecord>, StoreError> {
        let raw = self
            .conn
            .query_row(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE name = ?1"), [name], Self::run_from_row)
            .optional()?;
        raw.map(Self::decode_run).transpose()
    }

    /// Every run this release can read, oldest first; one it cannot (say, written by a
    /// newer knas) is left out with a warning that names it, so that it does not hide the
    /// others.
    pub fn runs(&self) -> Result<Vec<RunRecord>, StoreError> {
        let mut stmt = self.conn.prepare(&format!("SELECT {RUN_COLUMNS} FROM runs ORDER BY id"))?;
        let raws = stmt.query_map([], Self::run_from_row)?.collect::<Result<Vec<_>, _>>()?;
        Ok(raws.into_iter().filter_map(|raw| self.readable(raw)).collect())
    }

    /// A number that changes whenever *another* connection commits to the store (SQLite's
    /// `data_version`): a reader's answers computed at one value are still current while it
    /// holds.
    pub fn data_version(&self) -> Result<i64, StoreError> {
        Ok(self.conn.query_row("PRAGMA data_version", [], |row| row.get(0))?)
    }

    /// Up to `limit` runs with their summaries, by name, starting after `after`; as in
    /// [`RunStore::runs`], one this release cannot read is left out with a warning, and
    /// the page reads on past it.
    pub fn summaries(&self, after: Option<&str>, limit: usize) -> Result<Vec<(RunRecord, RunSummary)>, StoreError> {
        let columns = RUN_COLUMNS.split(", ").map(|c| format!("r.{c}")).collect::<Vec<_>>().join(", ");
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {columns}, s.scores, s.trainings, s.best_score, s.best_accuracy, s.errors, s.last_error \
             FROM runs r JOIN run_summaries s ON s.run_id = r.id WHERE r.name > ?1 ORDER BY r.name LIMIT ?2"
        ))?;
        let mut listed = Vec::with_capacity(limit);
        let mut after = after.unwrap_or("").to_owned();
        loop {
            let wanted = limit - listed.len();
            let rows = stmt
                .query_map(params![after, wanted as i64], |row| Ok((Self::run_from_row(row)?, summary_from_row(row, 9)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            let read = rows.len();
            for (raw, summary) in rows {
                after.clone_from(&raw.name);
                if let Some(run) = self.readable(raw) {
                    listed.push((run, summary));
                }
            }
            if read < wanted || listed.len() == limit {
                return Ok(listed);
            }
        }
    }

    /// The summary of run `run`.
    pub fn summary(&self, run: i64) -> Result<RunSummary, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT scores, trainings, best_score, best_accuracy, errors, last_error FROM run_summaries WHERE run_id = ?1",
        )?;
        Ok(stmt.query_row([run], |row| summary_from_row(row, 0))?)
    }

    /// The run's evaluations in recording order.
    pub fn evaluations(&self, run: i64) -> Result<Vec<EvaluationRecord>, StoreError> {
        let mut stmt =
            self.conn.prepare(&format!("SELECT {EVALUATION_COLUMNS} FROM evaluations WHERE run_id = ?1 ORDER BY seq"))?;
        let rows = stmt.query_map([run], evaluation_from_row)?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// The evaluations a run's leaderboard reads, in recording order: every training, the
    /// score evaluations of trained candidates, and the `top` best-scored ones (ties to
    /// the earlier). A leaderboard built from these equals one built from every
    /// evaluation, without reading a long run's thousands of scores out of the store.
    pub fn leaderboard_evaluations(&self, run: i64, top: usize) -> Result<Vec<EvaluationRecord>, StoreError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {EVALUATION_COLUMNS} FROM evaluations WHERE run_id = ?1 AND (
                 fidelity = 'train'
                 OR candidate IN (SELECT candidate FROM evaluations WHERE run_id = ?1 AND fidelity = 'train')
                 OR seq IN (SELECT seq FROM evaluations WHERE run_id = ?1 AND fidelity = 'score' AND score IS NOT NULL
                            ORDER BY score DESC, seq LIMIT ?2))
             ORDER BY seq"
        ))?;
        let rows = stmt.query_map(params![run, top as i64], evaluation_from_row)?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// The recorded evaluation of `candidate` at `fidelity`, if any.
    pub fn find(&self, run: i64, candidate: &Candidate, fidelity: Fidelity) -> Result<Option<EvaluationRecord>, StoreError> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {EVALUATION_COLUMNS} FROM evaluations WHERE run_id = ?1 AND candidate = ?2 AND fidelity = ?3"),
                params![run, candidate.to_string(), fidelity.name()],
                evaluation_from_row,
            )
            .optional()?)
    }

    /// Records a measurement (committed on return).
    pub fn record(
        &self,
        run: i64,
        candidate: &Candidate,
        fidelity: Fidelity,
        policy: &str,
        m: &NewEvaluation,
    ) -> Result<EvaluationRecord, StoreError> {
        self.conn.execute(
            "INSERT INTO evaluations (run_id, seq, candidate, fidelity, score, accuracy, loss, train_loss, params, flops, seconds, error, policy, measures, epochs)
             VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM evaluations WHERE run_id = ?1), ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            params![
                run,
                candidate.to_string(),
                fidelity.name(),
                m.score,
                m.accuracy,
                m.loss,
                m.train_loss,
                m.params,
                m.flops,
                m.seconds,
                m.error,
                policy,
                m.measures.as_ref().map(serde_json::to_string).transpose()?,
                m.epochs
            ],
        )?;
        self.touch(run)?;
        self.find(run, candidate, fidelity)?.ok_or_else(|| StoreError::Sql(rusqlite::Error::QueryReturnedNoRows))
    }

    /// The run's latest evaluation number (0 when none).
    pub fn last_seq(&self, run: i64) -> Result<i64, StoreError> {
        Ok(self.conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM evaluations WHERE run_id = ?1", [run], |r| r.get(0))?)
    }

    /// Records a candidate's accuracy in a published table (`source`), beside the run.
    pub fn record_published(&self, run: i64, source: &str, accuracies: &[(&Candidate, f64)]) -> Result<(), StoreError> {
        // One transaction: a long history is annotated in one write, not one per row.
        let tx = self.conn.unchecked_transaction()?;
        {
            let mut insert =
                tx.prepare_cached("INSERT OR REPLACE INTO published (run_id, candidate, source, accuracy) VALUES (?1, ?2, ?3, ?4)")?;
            for (candidate, accuracy) in accuracies {
                insert.execute(params![run, candidate.to_string(), source, accuracy])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The published accuracies recorded beside the run, by candidate, and their source.
    pub fn published(&self, run: i64) -> Result<Published, StoreError> {
        let mut stmt = self.conn.prepare("SELECT candidate, source, accuracy FROM published WHERE run_id = ?1")?;
        let rows = stmt.query_map([run], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, f64>(2)?)))?;
        let mut published = Published::default();
        for row in rows {
            let (candidate, source, accuracy) = row?;
            if let Ok(candidate) = candidate.parse() {
                published.accuracy.insert(candidate, accuracy);
                published.source = Some(source);
            }
        }
        Ok(published)
    }

    /// Evaluations recorded per fidelity (what the run's budget has spent).
    pub fn spent(&self, run: i64) -> Result<Budget, StoreError> {
        let count = |fidelity: Fidelity| -> Result<u32, StoreError> {
            Ok(self.conn.query_row(
                "SELECT COUNT(*) FROM evaluations WHERE run_id = ?1 AND fidelity = ?2",
                params![run, fidelity.name()],
                |r| r.get(0),
            )?)
        };
        Ok(Budget { scores: count(Fidelity::Score)?, trainings: count(Fidelity::Train)? })
    }

    fn touch(&self, run: i64) -> Result<(), StoreError> {
        self.conn.execute("UPDATE runs SET updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = ?1", [run])?;
        Ok(())
    }

    /// Sets a run's status (and error, when it failed).
    pub fn set_status(&self, run: i64, status: RunStatus, error: Option<&str>) -> Result<(), StoreError> {
        self.conn.execute("UPDATE runs SET status = ?2, error = ?3 WHERE id = ?1", params![run, status.name(), error])?;
        self.touch(run)
    }

    /// Records which policy module now drives the run.
    pub fn set_policy(&self, run: i64, policy: &str) -> Result<(), StoreError> {
        self.conn.execute("UPDATE runs SET policy = ?2 WHERE id = ?1", params![run, policy])?;
        self.touch(run)
    }

    /// Replaces the run's budget (a Katib experiment whose `maxTrialCount` was raised to
    /// resume it); everything else about the run stays.
    pub fn set_budget(&self, run: i64, budget: Budget) -> Result<(), StoreError> {
        let json: String = self.conn.query_row("SELECT search FROM runs WHERE id = ?1", params![run], |row| row.get(0))?;
        let mut search: SearchSpec = serde_json::from_str(&json)?;
        search.budget = budget;
        self.conn.execute("UPDATE runs SET search = ?2 WHERE id = ?1", params![run, serde_json::to_string(&search)?])?;
        self.touch(run)
    }

    /// Appends an event to the run's log.
    pub fn add_event(&self, run: i64, kind: &str, message: &str) -> Result<(), StoreError> {
        self.conn.execute("INSERT INTO events (run_id, kind, message) VALUES (?1, ?2, ?3)", params![run, kind, message])?;
        Ok(())
    }

    /// The run's events, oldest first.
    pub fn events(&self, run: i64) -> Result<Vec<Event>, StoreError> {
        let mut stmt = self.conn.prepare("SELECT at, kind, message FROM events WHERE run_id = ?1 ORDER BY rowid")?;
        let rows = stmt
            .query_map([run], |r| Ok(Event { at: r.get(0)?, kind: r.get(1)?, message: r.get(2)? }))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::PolicyLimits;
    use crate::space::Arch;

    fn spec() -> SearchSpec {
        SearchSpec {
            budget: Budget { scores: 10, trainings: 2 },
            max_batch: 4,
            max_epochs: 10,
            params: serde_json::json!({}),
            limits: PolicyLimits::default(),
        }
    }

    #[test]
    fn runs_resume_and_refuse_different_settings() {
        let dir = tempfile::tempdir().unwrap();
        let store = RunStore::open(&dir.path().join("runs.db")).unwrap();
        let experiment = Experiment::default();
        let (run, resumed) = store.begin_run("evo", "evolution@abcd1234", &experiment, &spec()).unwrap();
        assert!(!resumed);
        assert_eq!(run.status, RunStatus::Running);
        let (again, resumed) = store.begin_run("evo", "evolution@ffff0000", &experiment, &spec()).unwrap();
        assert!(resumed);
        assert_eq!(again.id, run.id);
        let other = Experiment { channels: 8, ..Experiment::default() };
        let err = store.begin_run("evo", "evolution@abcd1234", &other, &spec()).unwrap_err();
        assert!(err.to_string().contains("already exists with different settings (experiment)"), "{err}");
        let mut bigger = spec();
        bigger.budget.scores = 11;
        let err = store.begin_run("evo", "evolution@abcd1234", &experiment, &bigger).unwrap_err();
        assert!(err.to_string().contains("different settings (budget, batch size or policy parameters)"), "{err}");
    }

    #[test]
    fn one_process_at_a_time_drives_a_run() {
        let dir = tempfile::tempdir().unwrap();
        let store = RunStore::open(&dir.path().join("runs.db")).unwrap();
        let other = RunStore::open(&dir.path().join("runs.db")).unwrap();
        let held = store.lease("evo").unwrap();
        // A second lock on the file conflicts even within one process, as another process's
        // would.
        let err = other.lease("evo").unwrap_err();
        assert_eq!(err.to_string(), format!("run \"evo\" is being driven by another knas process (pid {}); wait for it to end, or pick another --name or --store", std::process::id()));
        let _different_run = other.lease("evolution").unwrap();
        drop(held);
        other.lease("evo").expect("free once its holder let go");
        // The same store reached through a link is the same store.
        let link = dir.path().join("link.db");
        std::os::unix::fs::symlink(dir.path().join("runs.db"), &link).unwrap();
        let _held = store.lease("evo").unwrap();
        assert!(matches!(RunStore::open(&link).unwrap().lease("evo"), Err(StoreError::Busy { .. })));
    }

    #[test]
    fn settings_that_need_every_digit_read_back_exactly_and_resume() {
        let dir = tempfile::tempdir().unwrap();
        let store = RunStore::open(&dir.path().join("runs.db")).unwrap();
        // Values whose shortest decimal form has 16–17 digits or an extreme exponent: a
        // parser that rounds twice reads some of them back one bit off.
        let values = [1.0 / 11.0, 0.1 + 0.2, 1e-30, 2.0 / 3.0, 0.09090909090909091, 123456789.12345679, 5e-324, 1.7976931348623157e308];
        for (i, value) in values.into_iter().enumerate() {
            let mut experiment = Experiment::default();
            experiment.train.learning_rate = value;
            experiment.train.weight_decay = value;
            let search = SearchSpec { params: serde_json::json!({ "p": value, "list": [value, value * 3.0] }), ..spec() };
            let name = format!("run{i}");
            store.begin_run(&name, "random@00000000", &experiment, &search).unwrap();
            let (_, resumed) = store.begin_run(&name, "random@00000000", &experiment, &search).unwrap_or_else(|e| panic!("{value:e}: {e}"));
            assert!(resumed, "{value:e}");
            assert_eq!(store.run(&name).unwrap().unwrap().experiment.train.learning_rate.to_bits(), value.to_bits(), "{value:e}");
        }
    }

    #[test]
    fn a_run_whose_stored_status_is_unknown_is_named_not_taken_for_running() {
        let dir = tempfile::tempdir().unwrap();
        let store = RunStore::open(&dir.path().join("runs.db")).unwrap();
        for status in RunStatus::ALL {
            assert_eq!(RunStatus::parse(status.name()), Some(status));
        }
        store.begin_run("evo", "evolution@abcd1234", &Experiment::default(), &spec()).unwrap();
        store.conn.execute("UPDATE runs SET status = 'paused'", []).unwrap();
        let err = store.run("evo").unwrap_err();
        assert!(err.to_string().contains(r#"run "evo" has the status "paused", which is none of running"#), "{err}");

        // Rows this release cannot read name the run, or the evaluation.
        store.conn.execute("UPDATE runs SET status = 'running', experiment = '{\"channels\": 16, \"wings\": 2}'", []).unwrap();
        let err = store.run("evo").unwrap_err().to_string();
        assert!(err.starts_with(r#"run store: the stored experiment of run "evo" is unreadable (unknown field `wings`"#), "{err}");
        let (run, _) = store.begin_run("ok", "evolution@abcd1234", &Experiment::default(), &spec()).unwrap();
        store.record(run.id, &Candidate::from(Arch::from_index(7).unwrap()), Fidelity::Score, "p@1", &NewEvaluation::default()).unwrap();
        store.conn.execute("UPDATE evaluations SET measures = 'not json'", []).unwrap();
        let err = store.evaluations(run.id).unwrap_err().to_string();
        assert!(err.contains("evaluation 1: unreadable measures"), "{err}");
    }

    #[test]
    fn evaluations_are_unique_ordered_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runs.db");
        let a: Candidate = Arch::from_index(1).unwrap().into();
        let b: Candidate = Candidate::full();
        {
            let store = RunStore::open(&path).unwrap();
            let (run, _) = store.begin_run("r", "p@1", &Experiment::default(), &spec()).unwrap();
            let m = NewEvaluation { score: Some(1.5), seconds: 0.1, ..NewEvaluation::default() };
            assert_eq!(store.record(run.id, &a, Fidelity::Score, "p@1", &m).unwrap().seq, 1);
            assert_eq!(store.record(run.id, &b, Fidelity::Score, "p@1", &m).unwrap().seq, 2);
            let trained = NewEvaluation { accuracy: Some(0.9), loss: Some(0.3), ..m.clone() };
            assert_eq!(store.record(run.id, &a, Fidelity::Train, "p@1", &trained).unwrap().seq, 3);
            assert!(store.record(run.id, &a, Fidelity::Score, "p@1", &m).is_err(), "a second score of the same candidate");
            store.set_status(run.id, RunStatus::Failed, Some("boom")).unwrap();
            store.add_event(run.id, "error", "boom").unwrap();
        }
        let store = RunStore::open(&path).unwrap();
        let run = store.run("r").unwrap().unwrap();
        assert_eq!((run.status, run.error.as_deref()), (RunStatus::Failed, Some("boom")));
        let evaluations = store.evaluations(run.id).unwrap();
        assert_eq!(evaluations.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(evaluations[1].candidate, b);
        assert_eq!(store.find(run.id, &a, Fidelity::Train).unwrap().unwrap().accuracy, Some(0.9));
        assert_eq!(store.spent(run.id).unwrap(), Budget { scores: 2, trainings: 1 });
        assert_eq!(store.events(run.id).unwrap()[0].message, "boom");
        // The summary kept pace with every write.
        let summary = RunSummary {
            recorded: Budget { scores: 2, trainings: 1 },
            best_score: Some(1.5),
            best_accuracy: Some(0.9),
            errors: 1,
            last_error: Some("boom".into()),
        };
        assert_eq!(store.summary(run.id).unwrap(), summary);
        let listed = store.summaries(None, 10).unwrap();
        assert_eq!((listed.len(), &listed[0].0.name, &listed[0].1), (1, &run.name, &summary));
    }

    #[test]
    fn summaries_list_runs_by_name_a_page_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = RunStore::open(&dir.path().join("runs.db")).unwrap();
        for name in ["c", "a", "b"] {
            let (run, _) = store.begin_run(name, "p@1", &Experiment::default(), &spec()).unwrap();
            let m = NewEvaluation { score: Some(f64::from(name.as_bytes()[0])), ..NewEvaluation::default() };
            store.record(run.id, &Candidate::from(Arch::from_index(3).unwrap()), Fidelity::Score, "p@1", &m).unwrap();
            store.record(run.id, &Candidate::from(Arch::from_index(4).unwrap()), Fidelity::Score, "p@1", &NewEvaluation::default()).unwrap();
        }
        let names = |after, limit| store.summaries(after, limit).unwrap().into_iter().map(|(r, _)| r.name).collect::<Vec<_>>();
        assert_eq!(names(None, 2), ["a", "b"]);
        assert_eq!(names(Some("b"), 2), ["c"]);
        assert!(names(Some("c"), 2).is_empty());
        let (_, b) = &store.summaries(Some("a"), 1).unwrap()[0];
        assert_eq!((b.recorded.scores, b.best_score), (2, Some(98.0)), "a missing score does not displace the best");
        // A run this release cannot read is left out of the lists, and a page reads on
        // past it.
        store.conn.execute("UPDATE runs SET experiment = '{\"wings\": 2}' WHERE name = 'b'", []).unwrap();
        assert_eq!(names(None, 2), ["a", "c"]);
        assert_eq!(names(Some("a"), 1), ["c"]);
        assert_eq!(store.runs().unwrap().iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["c", "a"]);
    }

    #[test]
    fn a_schema_1_store_is_upgraded_without_losing_anything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            // The tables as schema 1 wrote them, and a run of that time.
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA_1).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            let mut experiment = serde_json::to_value(Experiment::default()).unwrap();
            let object = experiment.as_object_mut().unwrap();
            for key in ["score", "aggregate", "reference"] {
                object.remove(key);
            }
            object.insert("score-mode".into(), "batch".into());
            conn.execute(
                "INSERT INTO runs (name, policy, status, experiment, search) VALUES ('old', 'p@1', 'done', ?1, ?2)",
                params![experiment.to_string(), serde_json::to_string(&spec()).unwrap()],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO evaluations (run_id, seq, candidate, fidelity, score, seconds, policy) VALUES (1, 1, ?1, 'score', 2.5, 0.1, 'p@1')",
                [Arch::from_index(7).unwrap().to_string()],
            )
            .unwrap();
        }
        let store = RunStore::open(&path).unwrap();
        let run = store.run("old").unwrap().unwrap();
        assert_eq!(run.experiment.score, crate::measures::ScoreChoice::Measure(crate::measures::Measure::MgmBatch));
        let evaluations = store.evaluations(run.id).unwrap();
        assert_eq!((evaluations.len(), evaluations[0].score, evaluations[0].measures.is_none()), (1, Some(2.5), true));
        store.cache("k", "v").unwrap();
        assert_eq!(store.cached("k").unwrap().as_deref(), Some("v"));
        // Its summary was computed from what it had recorded.
        assert_eq!(store.summary(run.id).unwrap().recorded, Budget { scores: 1, trainings: 0 });
        assert_eq!(store.summary(run.id).unwrap().best_score, Some(2.5));
        drop(store);
        // Opening again finds the current schema and changes nothing.
        assert_eq!(RunStore::open(&path).unwrap().evaluations(run.id).unwrap(), evaluations);
    }

    #[test]
    fn connections_opening_a_new_store_at_once_all_get_it() {
        let dir = tempfile::tempdir().unwrap();
        // Threads with a connection each, as two processes (say `knas katib` and `knas
        // search` started together on one file) would have.
        for attempt in 0..10 {
            let path = dir.path().join(format!("new-{attempt}.db"));
            let openers: Vec<_> = (0..3)
                .map(|_| {
                    let path = path.clone();
                    std::thread::spawn(move || RunStore::open(&path).map(|_| ()).map_err(|e| e.to_string()))
                })
                .collect();
            for opener in openers {
                assert_eq!(opener.join().unwrap(), Ok(()), "attempt {attempt}");
            }
        }
    }

    #[test]
    fn a_file_that_is_not_a_store_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk.db");
        std::fs::write(&path, vec![7u8; 4096]).unwrap();
        let err = RunStore::open(&path).err().unwrap().to_string();
        assert!(err.contains("junk.db") && err.contains("not a database"), "{err}");
        // A version knas never writes is not blamed on a newer knas.
        let path = dir.path().join("odd.db");
        Connection::open(&path).unwrap().pragma_update(None, "user_version", -1).unwrap();
        let err = RunStore::open(&path).err().unwrap().to_string();
        assert!(err.contains("odd.db") && err.contains("schema version -1 is not one knas writes"), "{err}");
    }
}
