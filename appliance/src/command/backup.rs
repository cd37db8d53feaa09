//! `relais backup` and `relais restore`.
//!
//! A backup of a running box is asked of the daemon through its control socket (it alone may read the
//! store) and streamed into the file; of a stopped box, it is written directly. Either way the file appears
//! only once complete, and is checked by reading it back before the command says it is done.

use std::path::Path;

use http_body_util::BodyExt;
use indicatif::{ProgressBar, ProgressStyle};

use crate::backup::{self, BackupError};
use crate::cli::FolderArgs;
use crate::control::{Client, BACKUP_BYTES};
use crate::status::bytes;

use super::{Failure, Outcome};

/// A byte progress bar on the terminal (indicatif draws nothing when stderr is not one).
fn progress_bar(message: &'static str) -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(message);
    bar
}

fn failure(e: BackupError) -> Failure {
    match e {
        BackupError::NotABackup { .. }
        | BackupError::Damaged { .. }
        | BackupError::Newer { .. }
        | BackupError::NotEmpty { .. }
        | BackupError::NoSpace { .. } => Failure::input(e),
        _ => Failure::runtime(e),
    }
}

pub fn backup(folder: FolderArgs, out: &Path) -> Outcome {
    let config = super::effective_config(folder.config.as_deref(), folder.data)?;
    let data = config.storage.data.clone();
    let bar = progress_bar("sauvegarde");
    super::runtime()?.block_on(async {
        match Client::connect(&data).await.map_err(Failure::runtime)? {
            Some(client) => from_daemon(client, out, &bar).await,
            None => {
                let (_lock, store) = super::open_stopped(&data)?;
                let progress = |done: u64, total: u64| {
                    bar.set_length(total);
                    bar.set_position(done);
                };
                backup::write_file(&store, &data, out, &progress).await.map_err(failure)?;
                Ok(())
            }
        }
    })?;
    bar.finish_and_clear();
    // Read it back: a backup nobody can restore is worse than none, because it is trusted.
    let manifest = backup::inspect(out).map_err(failure)?;
    println!(
        "backup written to {}: {} accounts, {} files and folders, {} contents ({})",
        out.display(),
        manifest.users,
        manifest.entries,
        manifest.blobs,
        bytes(manifest.blob_bytes)
    );
    Ok(())
}

/// Streams the daemon's backup into the file, through the same all-or-nothing writer.
async fn from_daemon(mut client: Client, out: &Path, bar: &ProgressBar) -> Result<(), Failure> {
    let response = client.get("/backup").await.map_err(Failure::runtime)?;
    let total = response.headers().get(BACKUP_BYTES).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    bar.set_length(total.unwrap_or(0));
    let mut body = response.into_body();
    let handle = tokio::runtime::Handle::current();
    tokio::task::block_in_place(|| {
        backup::write_atomically(out, |file| {
            use std::io::Write;
            while let Some(frame) = handle.block_on(body.frame()) {
                let frame = frame.map_err(|e| BackupError::Zip(format!("the daemon stopped sending: {e}")))?;
                if let Ok(chunk) = frame.into_data() {
                    file.write_all(&chunk).map_err(|e| BackupError::Io { path: out.to_owned(), source: e })?;
                    bar.inc(chunk.len() as u64);
                }
            }
            Ok(())
        })
    })
    .map_err(failure)
}

pub fn restore(file: &Path, folder: FolderArgs) -> Outcome {
    let config = super::effective_config(folder.config.as_deref(), folder.data)?;
    let data = config.storage.data.clone();
    let bar = progress_bar("restauration");
    let progress = |done: u64, total: u64| {
        bar.set_length(total);
        bar.set_position(done);
    };
    let restored = super::runtime()?.block_on(backup::restore(file, &data, &progress)).map_err(failure)?;
    bar.finish_and_clear();
    let m = &restored.manifest;
    println!(
        "restored {} into {}: {} accounts, {} files and folders, {} contents ({})",
        file.display(),
        data.display(),
        m.users,
        m.entries,
        m.blobs,
        bytes(m.blob_bytes)
    );
    println!("new replica id {} (the backup came from {})", restored.replica_id, m.replica_id);
    if let Some(uai) = &m.uai {
        println!(
            "this box is {uai}; its keys are not in backups: apply a new provisioning bundle for {uai} \
             (relais provision apply FILE.zip --data {}) so that it enrolls again",
            data.display()
        );
    }
    Ok(())
}
