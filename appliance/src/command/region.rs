//! `relais region init|serve|bundle|revoke`.

use crate::cli::RegionAction;

use super::{Failure, Outcome};

pub fn run(action: RegionAction) -> Outcome {
    let _ = action;
    Err(Failure::runtime("relais region: not built yet"))
}
