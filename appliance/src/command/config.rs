//! `relais config check|show`.

use std::path::Path;

use super::{Failure, Outcome};

pub fn check(file: &Path) -> Outcome {
    crate::load_config(Some(file)).map_err(Failure::input)?;
    println!("{}: configuration valide", file.display());
    Ok(())
}

pub fn show(file: Option<&Path>) -> Outcome {
    let config = crate::load_config(file).map_err(Failure::input)?;
    print!("{}", config.to_toml());
    Ok(())
}
