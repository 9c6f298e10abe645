//! Watches the policy folder and the configuration file.
//!
//! notify's callback runs on its own thread; it forwards events into tokio, where they are
//! debounced: a path is acted on only once it has been quiet for the debounce period, so a
//! copy in progress is not picked up half-way. (A file that is still incomplete when it
//! settles is refused by the contract check, and loaded once it is complete.)

use std::collections::HashMap;
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
    /// The benchmark table the configuration names at start: editing it reloads the
    /// configuration (and so re-reads the table).
    pub table: Option<PathBuf>,
    pub debounce: Duration,
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
    watched: Watched,
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
    let mut folders: Vec<&Path> = vec![watched.policy_dir.as_path()];
    for file in [&watched.config, &watched.table].into_iter().flatten() {
        match file.parent() {
            Some(folder) if !folders.contains(&folder) => {
                watcher.watch(folder, RecursiveMode::NonRecursive)?;
                folders.push(folder);
            }
            _ => {}
        }
    }

    let mut initial: Vec<PathBuf> = std::fs::read_dir(&watched.policy_dir)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| policy_name(&watched.policy_dir, path).is_some())
        .collect();
    initial.sort();
    for path in initial {
        settle(&watched, &path, &commands, &metrics);
    }

    let mut pending: HashMap<PathBuf, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(50).min(watched.debounce).max(Duration::from_millis(1)));
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
                let Some(kind) = relevant(&event.kind) else { continue };
                for path in event.paths {
                    let path = match &watched.config {
                        Some(config) if touches_config(config, &path) || watched.table.as_ref() == Some(&path) => config.clone(),
                        _ if policy_name(&watched.policy_dir, &path).is_some() => path,
                        _ => continue,
                    };
                    metrics.watcher_events.with_label_values(&[kind]).inc();
                    pending.insert(path, Instant::now());
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                let ready: Vec<PathBuf> = pending
                    .iter()
                    .filter(|(_, last)| now.duration_since(**last) >= watched.debounce)
                    .map(|(path, _)| path.clone())
                    .collect();
                for path in ready {
                    pending.remove(&path);
                    settle(&watched, &path, &commands, &metrics);
                }
            }
            _ = stop.changed() => break,
        }
    }
    Ok(())
}

/// Acts on a path that has settled.
fn settle(watched: &Watched, path: &Path, commands: &Sender<Command>, metrics: &Metrics) {
    if watched.config.as_deref() == Some(path) {
        // The table is part of the configuration: a bad one rejects the whole reload.
        let loaded = ServiceConfig::load(path)
            .map_err(anyhow::Error::from)
            .and_then(|config| Ok((config.load_table()?, config)));
        match loaded {
            Ok((table, config)) => {
                metrics.config_reloads.with_label_values(&["applied"]).inc();
                let _ = commands.send(Command::Reconfigure(Box::new(config), table));
            }
            Err(error) => {
                metrics.config_reloads.with_label_values(&["rejected"]).inc();
                tracing::error!("configuration rejected, keeping the previous one: {error:#}");
            }
        }
        return;
    }
    let Some(name) = policy_name(&watched.policy_dir, path) else { return };
    // The name becomes a run name, a URL path segment and a metric label.
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        let file = path.display().to_string();
        tracing::warn!("ignoring {}: policy file names may only use letters, digits, '-', '_' and '.'", escape_controls(&file));
        return;
    }
    let command = if path.exists() {
        Command::PolicyChanged { name, path: path.to_owned() }
    } else {
        Command::PolicyRemoved { name }
    };
    // A send fails only when the scheduler has exited (shutdown).
    let _ = commands.send(command);
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
    fn configmap_symlink_swaps_count_as_config_changes() {
        let config = Path::new("/etc/knas/config/knas.yaml");
        assert!(touches_config(config, config));
        assert!(touches_config(config, Path::new("/etc/knas/config/..data")));
        assert!(!touches_config(config, Path::new("/etc/knas/config/other.yaml")));
        assert!(!touches_config(config, Path::new("/elsewhere/..data")));
    }
}
