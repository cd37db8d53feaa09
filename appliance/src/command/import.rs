//! `relais import FILE… [--data DIR | --url URL] [--undo]`: the technician's directory import, with a
//! progress bar and a summary. With the daemon stopped it opens the data folder itself; with the daemon
//! running it goes through the portal's admin API (`--url`, admin password from `RELAIS_ADMIN_PASSWORD`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::app::App;
use crate::cli::ImportArgs;
use crate::directory::import::Report;
use crate::store::{DataLock, LockError};

use super::{effective_config, Failure, Outcome};

pub fn run(args: ImportArgs) -> Outcome {
    if args.files.is_empty() && !args.undo {
        return Err(Failure::input("nommez au moins un fichier d'export à importer (ou --undo)"));
    }
    for file in &args.files {
        if !file.is_file() {
            return Err(Failure::input(format!("{} : fichier introuvable", file.display())));
        }
    }
    let report = match &args.url {
        Some(url) => remote(url, &args)?,
        None => local(&args)?,
    };
    let Some(report) = report else { return Ok(()) };
    print_report(&report);
    if report.errors.is_empty() {
        Ok(())
    } else {
        Err(Failure::input(format!("import refusé : {} erreur(s), aucun compte modifié", report.errors.len())))
    }
}

fn spinner(message: String) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message(message);
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

fn local(args: &ImportArgs) -> Result<Option<Report>, Failure> {
    let config = effective_config(args.config.as_deref(), args.data.clone())?;
    let data = config.storage.data.clone();
    let _lock = DataLock::acquire(&data).map_err(|e| match e {
        LockError::Busy { .. } => Failure::input(format!(
            "{e}\n(le démon tourne : utilisez --url http://{} avec RELAIS_ADMIN_PASSWORD)",
            config.lan.listen
        )),
        LockError::Io { .. } => Failure::runtime(e),
    })?;
    super::runtime()?.block_on(async {
        let (app, _) = App::open(config, &data).await.map_err(Failure::runtime)?;
        if args.undo {
            let n = app.store.undo_directory().await.map_err(|e| match e {
                crate::store::StoreError::NotFound => Failure::input("aucun import à annuler"),
                e => Failure::runtime(e),
            })?;
            println!("dernier import annulé : {n} comptes restaurés");
            return Ok(None);
        }
        let total: u64 = args.files.iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum();
        let bar = spinner(format!("lecture de {} fichier(s), {} octets", args.files.len(), total));
        let uploads = args.files.iter().map(|f| (file_name(f), f.clone())).collect();
        let report = app.import(uploads).await.map_err(Failure::runtime);
        bar.finish_and_clear();
        report.map(Some)
    })
}

fn file_name(path: &Path) -> Option<String> {
    path.file_name().and_then(|n| n.to_str()).map(str::to_string)
}

/// Through a running daemon: log in as admin, then post each file (several files go as one zip so the import
/// stays all-or-nothing).
fn remote(url: &str, args: &ImportArgs) -> Result<Option<Report>, Failure> {
    let base = url.trim_end_matches('/');
    let password = std::env::var("RELAIS_ADMIN_PASSWORD")
        .map_err(|_| Failure::input("--url demande le mot de passe admin dans RELAIS_ADMIN_PASSWORD"))?;
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(600)).build();
    let login = agent
        .post(&format!("{base}/api/login"))
        .send_json(serde_json::json!({ "login": "admin", "password": password }))
        .map_err(|e| Failure::runtime(format!("connexion à {base} impossible : {e}")))?;
    let cookie = login
        .header("set-cookie")
        .and_then(|c| c.split(';').next())
        .ok_or_else(|| Failure::runtime("le serveur n'a pas ouvert de session"))?
        .to_string();
    let call = |path: &str| agent.post(&format!("{base}{path}")).set("Cookie", &cookie);
    if args.undo {
        call("/api/admin/import/undo").call().map_err(|e| Failure::runtime(format!("annulation refusée : {e}")))?;
        println!("dernier import annulé");
        return Ok(None);
    }
    let (name, body) = match args.files.as_slice() {
        [one] => (file_name(one).unwrap_or_default(), std::fs::read(one).map_err(Failure::runtime)?),
        many => ("import.zip".to_string(), zip_files(many)?),
    };
    let bar = spinner(format!("envoi de {} octets à {base}", body.len()));
    let encoded: String = form_urlencoded::byte_serialize(name.as_bytes()).collect();
    let result = call(&format!("/api/admin/import?file={encoded}")).send_bytes(&body);
    bar.finish_and_clear();
    let response = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(422, r)) => r,
        Err(e) => return Err(Failure::runtime(format!("import impossible : {e}"))),
    };
    response.into_json::<Report>().map(Some).map_err(|e| Failure::runtime(format!("réponse illisible : {e}")))
}

fn zip_files(files: &[PathBuf]) -> Result<Vec<u8>, Failure> {
    use std::io::Write;
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for f in files {
        let name = file_name(f).unwrap_or_else(|| "export".into());
        zip.start_file(
            name,
            zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored),
        )
        .map_err(Failure::runtime)?;
        zip.write_all(&std::fs::read(f).map_err(Failure::runtime)?).map_err(Failure::runtime)?;
    }
    Ok(zip.finish().map_err(Failure::runtime)?.into_inner())
}

fn print_report(r: &Report) {
    println!(
        "créés : {}  mis à jour : {}  changements de classe : {}  départs : {}  erreurs : {}",
        r.created,
        r.updated,
        r.moved,
        r.leaving,
        r.errors.len()
    );
    for e in &r.errors {
        if e.line > 0 {
            eprintln!("{} ligne {} : {} ({})", e.file, e.line, e.message, e.field);
        } else {
            eprintln!("{} : {}", e.file, e.message);
        }
    }
}
