//! `relais reset --factory`: erases the box after the technician confirms (or `--yes` in a script).

use std::io::{BufRead, IsTerminal, Write};

use crate::cli::FolderArgs;
use crate::enroll::Identity;
use crate::store::{DataLock, LockError};

use super::{Failure, Outcome};

pub fn factory(folder: FolderArgs, yes: bool) -> Outcome {
    let config = super::effective_config(folder.config.as_deref(), folder.data)?;
    let data = config.storage.data.clone();
    if !data.is_dir() {
        return Err(Failure::input(format!("{}: no such data folder, nothing to erase", data.display())));
    }
    let lock = DataLock::acquire(&data).map_err(|e| match e {
        LockError::Busy { .. } => Failure::input(format!("{e}; stop the service first (systemctl stop relais)")),
        LockError::Io { .. } => Failure::runtime(e),
    })?;
    let uai = Identity::load(&data).ok().flatten().map(|id| id.uai);
    if !yes {
        // The answer to type is the school's UAI when there is one: it proves the technician is at the box
        // they mean to erase, not just pressing Enter.
        let expected = uai.clone().unwrap_or_else(|| "EFFACER".into());
        if !std::io::stdin().is_terminal() {
            return Err(Failure::input("refusing to erase without confirmation: run it on a terminal, or add --yes"));
        }
        eprint!(
            "This erases every file, every account, the configuration and the identity{} in {}.\n\
             Nothing can be recovered afterwards except from a backup.\n\
             Type {expected} to confirm: ",
            uai.as_deref().map(|u| format!(" of box {u}")).unwrap_or_default(),
            data.display()
        );
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer).map_err(Failure::runtime)?;
        if !answer.trim().eq_ignore_ascii_case(&expected) {
            return Err(Failure::input("not confirmed: nothing was erased"));
        }
    }
    let count = crate::reset::wipe(&data).map_err(|e| Failure::runtime(format!("{}: {e}", data.display())))?;
    drop(lock);
    log::info!("factory reset of {} ({count} items erased)", data.display());
    println!("{} erased; the box starts as new (relais serve, or relais provision apply FILE.zip)", data.display());
    Ok(())
}
