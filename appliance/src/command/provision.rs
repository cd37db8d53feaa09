//! `relais provision apply FILE.zip [--data DIR] [--force-reset]`.

use std::path::{Path, PathBuf};

use super::{Failure, Outcome};

pub fn apply(file: &Path, data: Option<PathBuf>, force_reset: bool) -> Outcome {
    let _ = (file, data, force_reset);
    Err(Failure::runtime("relais provision apply: not built yet"))
}
