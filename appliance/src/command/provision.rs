//! `relais provision apply FILE.zip [--data DIR] [--force-reset]`: the technician's side of
//! [`crate::enroll::apply`], with progress on a terminal and a summary in French.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use indicatif::{ProgressBar, ProgressStyle};

use crate::enroll::apply::{self, colon_hex, Applied, ApplyError, ApplyOptions, Before};
use crate::enroll::identity::format_utc;

use super::{Failure, Outcome};

pub fn apply(file: &Path, data: Option<PathBuf>, force_reset: bool) -> Outcome {
    crate::logging::init("warn");
    let data = data.unwrap_or_else(|| firmware_config::Storage::default().data);
    let options = ApplyOptions { bundle: file.to_owned(), data: data.clone(), force_reset, now: SystemTime::now() };
    // On a terminal only: indicatif draws nothing when stderr is not one.
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    let result = apply::apply(&options, &|step| bar.set_message(step.to_owned()));
    bar.finish_and_clear();
    match result {
        Ok(applied) => {
            print_summary(&applied, &data);
            Ok(())
        }
        Err(ApplyError::Directory(report)) => {
            for e in &report.errors {
                if e.line > 0 {
                    eprintln!("{} ligne {} : {} ({})", e.file, e.line, e.message, e.field);
                } else {
                    eprintln!("{} : {}", e.file, e.message);
                }
            }
            Err(Failure::input(format!(
                "{}\nbundle {} refusé : rien n'a été écrit dans {}",
                ApplyError::Directory(report),
                file.display(),
                data.display()
            )))
        }
        Err(e) => {
            let nothing = if e.exit_code() == 2 {
                format!("\nrien n'a été écrit dans {}", data.display())
            } else {
                String::new()
            };
            Err(Failure { code: e.exit_code(), message: format!("{e}{nothing}") })
        }
    }
}

fn print_summary(a: &Applied, data: &Path) {
    let m = &a.manifest;
    match &a.before {
        Before::Reset { uai, root_fingerprint } => {
            println!(
                "--force-reset : identité précédente effacée (UAI {uai}, autorité {})",
                colon_hex(root_fingerprint)
            );
            if *uai != m.uai {
                println!("  autre école : fichiers et comptes de {uai} effacés");
            }
        }
        Before::Same { .. } => println!("bundle déjà appliqué à cette box : configuration réécrite"),
        Before::Fresh => {}
    }
    println!("Box provisionnée");
    println!("  école : {}", m.name);
    println!("  UAI : {}", m.uai);
    println!("  passerelle : {}", if a.gateway.is_empty() { m.gateway_url.as_str() } else { a.gateway.as_str() });
    println!("  empreinte de l'autorité régionale (SHA-256) : {}", colon_hex(&a.root_fingerprint));
    println!("    (comparez-la avec celle que la région a publiée)");
    match &a.report {
        Some(r) => println!(
            "  comptes importés : {} créés, {} mis à jour, {} changements de classe, {} départs",
            r.created, r.updated, r.moved, r.leaving
        ),
        None => println!("  comptes importés : aucun (pas d'annuaire dans le bundle)"),
    }
    let made = |yes: bool| if yes { "générée sur la box" } else { "conservée" };
    println!("  clé de la box : {} ; clé du réseau local : {}", made(a.keys.box_key), made(a.keys.lan_key));
    println!("  configuration : {}", a.config_path.display());
    println!("  données : {}", data.display());
    if let Some(password) = &a.admin_password {
        println!("  mot de passe du compte admin (affiché une seule fois, notez-le) : {password}");
    }
    if let Some(other) = &a.data_mismatch {
        println!(
            "  attention : la configuration nomme le dossier de données {} ; lancez `relais serve --data {}`",
            other.display(),
            data.display()
        );
    }
    if a.gateway.is_empty() {
        println!("attention : la configuration du bundle ne nomme pas de passerelle ([uplink] gateway) : la box restera autonome");
    } else if let Some(not_after) = a.certificate_not_after {
        println!(
            "La box est déjà enregistrée auprès de la passerelle (certificat valable jusqu'au {}).",
            format_utc(not_after)
        );
        println!("Si la région a révoqué cette box, relancez avec --force-reset pour l'enregistrer à nouveau.");
    } else {
        println!("La box s'enregistrera auprès de la passerelle à son premier démarrage (relais serve).");
    }
}
