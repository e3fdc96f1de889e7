//! What triggers a reload besides `POST /admin/reload`: SIGHUP, and a change to the config file or
//! to a plugin file it loads. Each calls [`Gateway::reload`], which keeps the old configuration
//! serving when the new one is invalid.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::Gateway;

/// Reloads the configuration file (and its plugins) on SIGHUP.
pub fn on_sighup(gateway: Arc<Gateway>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else { return };
        while hup.recv().await.is_some() {
            report_reload("SIGHUP", gateway.reload().await);
        }
    });
}

/// Watches the config file and plugin files while it is kept; dropping it stops the watch.
#[derive(Debug)]
pub struct Watcher {
    #[cfg(target_os = "linux")]
    task: tokio::task::JoinHandle<()>,
    #[cfg(not(target_os = "linux"))]
    _watcher: notify::RecommendedWatcher,
}

#[cfg(target_os = "linux")]
impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A short quiet period after a change, so that an editor's several writes make one reload.
const QUIET: std::time::Duration = std::time::Duration::from_millis(200);

/// The folders to watch (editors and deploy tools replace files by renaming, so the folders are
/// watched, not the files) and the file names in them that matter.
fn watch_set(files: &[PathBuf]) -> (Vec<PathBuf>, Vec<std::ffi::OsString>) {
    let mut dirs: Vec<PathBuf> = files
        .iter()
        .filter_map(|f| f.parent())
        .map(|dir| if dir.as_os_str().is_empty() { Path::new(".").to_owned() } else { dir.to_owned() })
        .collect();
    dirs.sort();
    dirs.dedup();
    let names = files.iter().filter_map(|f| f.file_name().map(ToOwned::to_owned)).collect();
    (dirs, names)
}

/// Watches the config file and plugin files; a change reloads (after [`QUIET`]). On Linux the set
/// of watched files is taken again after each reload, so a plugin file the new config names is
/// watched from then on. `None` when there is nothing to watch or no watch could be set up.
#[cfg(target_os = "linux")]
pub fn watch_files(gateway: Arc<Gateway>) -> Option<Watcher> {
    use futures_util::StreamExt;
    use inotify::{EventMask, Inotify, WatchMask};

    // What can finish an edit of a file: a write closed, a file renamed into place or created.
    // Not IN_MODIFY: that fires at every write to any file of the folder, such as each append to
    // a usage ledger kept beside the config, which would wake this task for nothing.
    let mask = WatchMask::CLOSE_WRITE | WatchMask::MOVED_TO | WatchMask::CREATE;
    let (dirs, mut names) = watch_set(&gateway.watched_files());
    if names.is_empty() {
        return None;
    }
    let inotify = Inotify::init()
        .inspect_err(|e| tracing::warn!(error = %e, "cannot watch for changes; reload with SIGHUP instead"))
        .ok()?;
    let mut events = inotify.into_event_stream([0u8; 4096]).ok()?;
    let mut watches = events.watches();
    let mut watched: Vec<PathBuf> = Vec::new();
    let mut watch = move |dirs: Vec<PathBuf>| {
        for dir in dirs {
            if watched.contains(&dir) {
                continue;
            }
            match watches.add(&dir, mask) {
                Ok(_) => watched.push(dir),
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot watch for changes; reload with SIGHUP instead");
                }
            }
        }
    };
    watch(dirs);
    let task = tokio::spawn(async move {
        loop {
            match events.next().await {
                Some(Ok(event)) if event.name.as_ref().is_some_and(|n| names.contains(n)) => {}
                // Events were lost, a change to one of ours perhaps among them: reload to be sure.
                Some(Ok(event)) if event.mask.contains(EventMask::Q_OVERFLOW) => {}
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "the config watch failed; reload with SIGHUP instead");
                    return;
                }
                None => return,
            }
            tokio::time::sleep(QUIET).await;
            // Whatever else arrived in the quiet period is part of the same change.
            while let Ok(Some(Ok(_))) = tokio::time::timeout(std::time::Duration::ZERO, events.next()).await {}
            report_reload("file change", gateway.reload().await);
            let (dirs, now) = watch_set(&gateway.watched_files());
            names = now;
            watch(dirs);
        }
    });
    Some(Watcher { task })
}

/// Watches the config file and plugin files; a change reloads (after [`QUIET`]).
#[cfg(not(target_os = "linux"))]
pub fn watch_files(gateway: Arc<Gateway>) -> Option<Watcher> {
    use notify::Watcher as _;
    let (dirs, names) = watch_set(&gateway.watched_files());
    if names.is_empty() {
        return None;
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let relevant = event.is_ok_and(|event| {
            (event.kind.is_modify() || event.kind.is_create())
                && event.paths.iter().any(|p| p.file_name().is_some_and(|n| names.iter().any(|w| w == n)))
        });
        if relevant {
            let _ = tx.send(());
        }
    })
    .ok()?;
    for dir in &dirs {
        if let Err(e) = watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch for changes; reload with SIGHUP instead");
        }
    }
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            tokio::time::sleep(QUIET).await;
            while rx.try_recv().is_ok() {}
            report_reload("file change", gateway.reload().await);
        }
    });
    Some(Watcher { _watcher: watcher })
}

fn report_reload(trigger: &str, result: Result<(), crate::LoadError>) {
    match result {
        Ok(()) => tracing::info!(trigger, "configuration reloaded"),
        Err(reason) => tracing::error!(trigger, %reason, "reload rejected; the previous configuration keeps serving"),
    }
}
