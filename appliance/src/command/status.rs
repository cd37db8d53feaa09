//! `relais status`: the box's facts for a technician, from the running daemon or from the stopped folder.

use crate::cli::FolderArgs;
use crate::control::Client;
use crate::status::{self, Sources};

use super::{Failure, Outcome};

pub fn run(folder: FolderArgs, json: bool) -> Outcome {
    let config = super::effective_config(folder.config.as_deref(), folder.data)?;
    let data = config.storage.data.clone();
    let status = super::runtime()?.block_on(async {
        if let Some(mut client) = Client::connect(&data).await.map_err(Failure::runtime)? {
            return client.status().await.map_err(Failure::runtime);
        }
        let (_lock, store) = super::open_stopped(&data)?;
        let region = if crate::region::ca_dir(&data).exists() {
            let gateway = crate::region::Gateway::open(&data, config.region.certificate_validity.0);
            Some(gateway.map_err(|e| Failure::runtime(format!("{}: {e}", data.display())))?)
        } else {
            None
        };
        Ok(status::gather(&Sources {
            config: &config,
            store: &store,
            region: region.as_ref(),
            enroll: None,
            sync: None,
            cache: None,
            running: false,
        }))
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status).map_err(Failure::runtime)?);
    } else {
        print!("{}", status::render(&status));
    }
    Ok(())
}
