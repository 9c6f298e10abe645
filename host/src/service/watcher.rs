//! Watches the policy folder and the configuration file.
//!
//! notify's callback runs on its own thread; it forwards events into tokio, where they are
//! debounced: a path is acted on only once it has been quiet for the debounce period, so a
//! copy in progress is not picked up half-way. (A file that is still incomplete when it
//! settles is refused by the contract check, and loaded once it is complete.)

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};

use super::metrics::Metrics;
use super::scheduler::Command;
use crate::config::ServiceConfig;
use crate::policy::escape_controls;

/// What is watched.
pub struct Watched {
    /// The policy folder (canonical).
    pub policy_dir: PathBuf,
    /// The configuration file (canonical), when the service has one.
    pub config: Option<PathBuf>,
    /// The benchmark table the configuration names (as [`watched_path`] gives it): editing
    /// it reloads the configuration (and so re-reads the table). Follows the configuration.
    pub table: Option<PathBuf>,
    /// Follows the configuration too.
    pub debounce: Duration,
}

/// `path` as the watcher's events name it: its folder canonical (notify reports absolute
/// paths, through the folder it was asked to watch), its file name as given — a
/// ConfigMap's `knas.yaml` is a symlink into `..data/` whose target changes on every
/// update, so the link itself is what is watched.
pub fn watched_path(path: &Path) -> anyhow::Result<PathBuf> {
    let folder = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let canonical = folder.canonicalize().map_err(|e| anyhow::anyhow!("cannot watch {}: its folder {}: {e}", path.display(), folder.display()))?;
    Ok(canonical.join(path.file_name().unwrap_or_default()))
}

/// The folders being watched, each once.
struct Folders<W> {
    watcher: W,
    watching: Vec<PathBuf>,
}

impl<W: Watcher> Folders<W> {
    fn watch_folder_of(&mut self, file: &Path) -> notify::Result<()> {
        match file.parent() {
            Some(folder) if !self.watching.iter().any(|w| w == folder) => {
                self.watcher.watch(folder, RecursiveMode::NonRecursive)?;
                self.watching.push(folder.to_owned());
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// The policy files in the folder `dir`, sorted.
fn policy_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(dir)?.filter_map(|entry| entry.ok().map(|e| e.path())).filter(|path| policy_name(dir, path).is_some()).collect();
    files.sort();
    Ok(files)
}

/// The policy name for `path`, if it is a policy file of the folder.
fn policy_name(dir: &Path, path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    (path.parent() == Some(dir) && !name.starts_with('.'))
        .then(|| name.strip_suffix(".wasm"))
        .flatten()
        .filter(|stem| !stem.is_empty())
        .map(str::to_owned)
}

/// Whether an event on `path` may have changed the configuration file: the file itself,
/// or — for a Kubernetes ConfigMap volume, which updates by swapping a `..data` symlink —
/// that symlink in the same folder.
fn touches_config(config: &Path, path: &Path) -> bool {
    path == config || (path.parent() == config.parent() && path.file_name().is_some_and(|n| n == "..data"))
}

/// Events that say nothing about content (someone read the file) are ignored: the
/// scheduler's own reads would otherwise trigger reloads.
fn relevant(kind: &EventKind) -> Option<&'static str> {
    match kind {
        EventKind::Create(_) => Some("create"),
        EventKind::Modify(_) => Some("modify"),
        EventKind::Remove(_) => Some("remove"),
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Some("other"),
        EventKind::Access(_) => None,
        _ => Some("other"),
    }
}

/// Sends a command for every settled change until `stop` fires. Starts with one
/// `PolicyChanged` per policy file already in the folder.
pub async fn run(
    mut watched: Watched,
    commands: Sender<Command>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::channel::<notify::Result<Event>>(1024);
    let mut watcher = notify::recommended_watcher(move |event| {
        // The receiver only goes away at shutdown; later events do not matter then.
        let _ = tx.blocking_send(event);
    })?;
    watcher.watch(&watched.policy_dir, RecursiveMode::NonRecursive)?;
    let mut folders = Folders { watcher, watching: vec![watched.policy_dir.clone()] };
    for file in [&watched.config, &watched.table].into_iter().flatten() {
        folders.watch_folder_of(file)?;
    }

    let initial = policy_files(&watched.policy_dir)?;
    for path in &initial {
        settle(&watched, path, &commands, &metrics);
    }
    let mut changes = Changes { pending: HashMap::new(), seen: initial.into_iter().collect() };
    let ticks = |debounce: Duration| tokio::time::interval(Duration::from_millis(50).min(debounce).max(Duration::from_millis(1)));
    let mut tick = ticks(watched.debounce);
    loop {
        tokio::select! {
            event = rx.recv() => {
                let Some(event) = event else { break };
                let event = match event {
                    Ok(event) => event,
                    Err(error) => {
                        tracing::warn!("file watcher: {error}");
                        continue;
                    }
                };
                changes.note(event, &watched, &metrics);
            }
            _ = tick.tick() => {
                fail::fail_point!("watcher::tick", |_| Err(anyhow::anyhow!("injected watcher failure")));
                let now = Instant::now();
                let ready: Vec<PathBuf> = changes
                    .pending
                    .iter()
                    .filter(|(_, last)| now.duration_since(**last) >= watched.debounce)
                    .map(|(path, _)| path.clone())
                    .collect();
                for path in ready {
                    changes.settled(&path);
                    let Some(applied) = settle(&watched, &path, &commands, &metrics) else { continue };
                    // What the new configuration names is watched from now on.
                    if applied.table != watched.table {
                        if let Some(table) = &applied.table
                            && let Err(error) = folders.watch_folder_of(table)
                        {
                            tracing::warn!("cannot watch the folder of the table {}: {error}", table.display());
                        }
                        watched.table = applied.table;
                    }
                    if applied.debounce != watched.debounce {
                        watched.debounce = applied.debounce;
                        tick = ticks(watched.debounce);
                    }
                    // Counted once the new table's folder is watched: whoever sees the count
                    // may edit that table at once, and the edit must not be missed.
                    metrics.config_reloads.with_label_values(&["applied"]).inc();
                }
            }
            _ = stop.changed() => break,
        }
    }
    Ok(())
}

/// The paths waiting to settle.
struct Changes {
    /// Each path with the time of its latest event.
    pending: HashMap<PathBuf, Instant>,
    /// Every policy path seen and not known to be gone: after lost events, the gone ones
    /// among them are removals.
    seen: HashSet<PathBuf>,
}

impl Changes {
    /// `path` has settled and is acted on now. A policy file gone by then is forgotten:
    /// its removal is being acted on, and a service that sees many files come and go
    /// should not keep every name it ever saw.
    fn settled(&mut self, path: &Path) {
        self.pending.remove(path);
        if !path.exists() {
            self.seen.remove(path);
        }
    }

    /// Takes note of what `event` may have changed.
    fn note(&mut self, event: Event, watched: &Watched, metrics: &Metrics) {
        let now = Instant::now();
        if event.need_rescan() {
            // The kernel's event queue overflowed: some changes were lost. Everything they
            // could have touched is looked at again once it settles.
            tracing::warn!("file watcher: events were lost; looking at every policy file and the configuration again");
            metrics.watcher_events.with_label_values(&["other"]).inc();
            match policy_files(&watched.policy_dir) {
                Ok(files) => self.seen.extend(files),
                Err(error) => tracing::warn!("cannot list {}: {error}", watched.policy_dir.display()),
            }
            for path in self.seen.iter().chain(&watched.config) {
                self.pending.insert(path.clone(), now);
            }
            return;
        }
        let Some(kind) = relevant(&event.kind) else { return };
        for path in event.paths {
            let path = match &watched.config {
                Some(config) if touches_config(config, &path) || watched.table.as_ref() == Some(&path) => config.clone(),
                _ if policy_name(&watched.policy_dir, &path).is_some() => {
                    self.seen.insert(path.clone());
                    path
                }
                _ => continue,
            };
            metrics.watcher_events.with_label_values(&[kind]).inc();
            self.pending.insert(path, now);
        }
    }
}

/// What an applied configuration changes in the watching.
struct Applied {
    table: Option<PathBuf>,
    debounce: Duration,
}

/// Acts on a path that has settled; for the configuration file, says what a configuration
/// that was applied asks the watcher to watch (the caller counts the reload once it does).
fn settle(watched: &Watched, path: &Path, commands: &Sender<Command>, metrics: &Metrics) -> Option<Applied> {
    if watched.config.as_deref() == Some(path) {
        // The table is part of the configuration: a bad one rejects the whole reload.
        let loaded = ServiceConfig::load(path).map_err(anyhow::Error::from).and_then(|config| {
            let table_path = config.table.as_deref().map(watched_path).transpose()?;
            Ok((config.load_table()?, table_path, config))
        });
        return match loaded {
            Ok((table, table_path, config)) => {
                let applied = Applied { table: table_path, debounce: Duration::from_millis(config.debounce_ms) };
                let _ = commands.send(Command::Reconfigure(Box::new(config), table));
                Some(applied)
            }
            Err(error) => {
                metrics.config_reloads.with_label_values(&["rejected"]).inc();
                tracing::error!("configuration rejected, keeping the previous one: {error:#}");
                None
            }
        };
    }
    let name = policy_name(&watched.policy_dir, path)?;
    // The name becomes a run name, a URL path segment and a metric label.
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        let file = path.display().to_string();
        tracing::warn!("ignoring {}: policy file names may only use letters, digits, '-', '_' and '.'", escape_controls(&file));
        return None;
    }
    let command = if path.exists() {
        Command::PolicyChanged { name, path: path.to_owned() }
    } else {
        Command::PolicyRemoved { name }
    };
    // A send fails only when the scheduler has exited (shutdown).
    let _ = commands.send(command);
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_visible_wasm_files_in_the_folder_are_policies() {
        let dir = Path::new("/srv/policies");
        assert_eq!(policy_name(dir, &dir.join("evolution.wasm")), Some("evolution".into()));
        assert_eq!(policy_name(dir, &dir.join(".evolution.wasm.partial")), None);
        assert_eq!(policy_name(dir, &dir.join(".hidden.wasm")), None);
        assert_eq!(policy_name(dir, &dir.join("notes.txt")), None);
        assert_eq!(policy_name(dir, &dir.join("sub").join("x.wasm")), None);
        assert_eq!(policy_name(dir, &dir.join(".wasm")), None);
    }

    #[test]
    fn lost_events_make_every_policy_file_and_the_configuration_pending() {
        let dir = tempfile::tempdir().unwrap();
        let policies = dir.path().canonicalize().unwrap();
        for file in ["a.wasm", "b.wasm", "notes.txt"] {
            std::fs::write(policies.join(file), b"").unwrap();
        }
        let config = policies.join("knas.yaml");
        let watched = Watched { policy_dir: policies.clone(), config: Some(config.clone()), table: None, debounce: Duration::from_millis(10) };
        let metrics = Metrics::new();
        // `gone.wasm` was seen before it was removed, in the events that were lost.
        let mut changes = Changes { pending: HashMap::new(), seen: [policies.join("gone.wasm")].into() };
        changes.note(Event::new(EventKind::Access(AccessKind::Read)).add_path(policies.join("a.wasm")), &watched, &metrics);
        assert!(changes.pending.is_empty(), "a read changes nothing");
        let lost = || Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan);
        let pending = |changes: &Changes| {
            let mut pending: Vec<PathBuf> = changes.pending.keys().cloned().collect();
            pending.sort();
            pending
        };
        changes.note(lost(), &watched, &metrics);
        let expected = ["a.wasm", "b.wasm", "gone.wasm", "knas.yaml"].map(|f| policies.join(f));
        assert_eq!(pending(&changes), expected);

        // Once settled (its removal acted on), a gone file is forgotten: the next lost
        // events do not make it pending again. The files still there stay known.
        for path in &expected {
            changes.settled(path);
        }
        assert!(changes.pending.is_empty());
        std::fs::remove_file(policies.join("b.wasm")).unwrap();
        changes.note(lost(), &watched, &metrics);
        assert_eq!(pending(&changes), ["a.wasm", "b.wasm", "knas.yaml"].map(|f| policies.join(f)));
    }

    #[test]
    fn configmap_symlink_swaps_count_as_config_changes() {
        let config = Path::new("/etc/knas/config/knas.yaml");
        assert!(touches_config(config, config));
        assert!(touches_config(config, Path::new("/etc/knas/config/..data")));
        assert!(!touches_config(config, Path::new("/etc/knas/config/other.yaml")));
        assert!(!touches_config(config, Path::new("/elsewhere/..data")));
    }
}
