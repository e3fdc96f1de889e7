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

/// Watches the config file and plugin files; a change reloads (after a short quiet period, so an
/// editor's several writes make one reload). The watch set is refreshed after each reload.
pub fn watch_files(gateway: Arc<Gateway>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let files = gateway.watched_files();
    if files.is_empty() {
        return None;
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let watched: Vec<PathBuf> = files.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let relevant = event.is_ok_and(|event| {
            (event.kind.is_modify() || event.kind.is_create())
                && event.paths.iter().any(|p| watched.iter().any(|w| p.ends_with(w.file_name().unwrap_or_default())))
        });
        if relevant {
            let _ = tx.send(());
        }
    })
    .ok()?;
    // Watch the folders, not the files: editors and deploy tools replace files by renaming.
    let mut dirs: Vec<PathBuf> = files.iter().filter_map(|f| f.parent().map(Path::to_owned)).collect();
    dirs.sort();
    dirs.dedup();
    for dir in &dirs {
        let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
        if let Err(e) = watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch for changes; reload with SIGHUP instead");
        }
    }
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            while rx.try_recv().is_ok() {}
            report_reload("file change", gateway.reload().await);
        }
    });
    Some(watcher)
}

fn report_reload(trigger: &str, result: Result<(), crate::LoadError>) {
    match result {
        Ok(()) => tracing::info!(trigger, "configuration reloaded"),
        Err(reason) => tracing::error!(trigger, %reason, "reload rejected; the previous configuration keeps serving"),
    }
}
