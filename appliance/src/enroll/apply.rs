//! `relais provision apply`: sets a box up from a provisioning bundle, all or nothing.
//!
//! Order, so that a refused bundle writes nothing: (1) the bundle is checked whole (signature, pinned root,
//! members, expiry, UAI, token, configuration) and compared with the identity already on the box; (2) its
//! directory exports are parsed and planned against the box's accounts, in a scratch folder outside the data
//! folder; only then (3) the data folder is locked (the daemon must be stopped), the exports imported through
//! the same all-or-nothing import as `relais import`, the identity written (keys generated here, on the box,
//! never copied) with the UAI last, and the configuration last of all.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use firmware_config::Config;
use provisioning::{Bundle, BundleError, Manifest, VerifyOptions};
use rand::RngCore;

use super::identity::{self, Identity, IdentityError, Install, KeysMade};
use crate::account::{Role, User};
use crate::app::App;
use crate::directory::import::{self, Report};
use crate::directory::upload;
use crate::store::{self, DataLock, LockError, StoreError};

/// Why a bundle was not applied. [`ApplyError::exit_code`] says whose fault it is.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("bundle refusé ({file}) : {source}")]
    Bundle { file: PathBuf, source: BundleError },
    #[error(
        "cette box est déjà provisionnée pour l'UAI {installed} ; ce bundle est pour l'UAI {bundle} ({name}).\n\
         Pour réaffecter la box à cet établissement, relancez avec --force-reset \
         (cela efface son identité : clés et certificats)"
    )]
    OtherSchool { installed: String, bundle: String, name: String },
    #[error(
        "cette box (UAI {installed}) appartient à une autre autorité régionale : empreinte installée {expected}, \
         celle du bundle {found}.\nPour la réaffecter, relancez avec --force-reset \
         (cela efface son identité : clés et certificats)"
    )]
    OtherRegion { installed: String, expected: String, found: String },
    #[error("{0}\narrêtez d'abord le démon (systemctl stop relais), puis recommencez")]
    Busy(LockError),
    #[error("annuaire du bundle refusé : {} erreur(s), aucun compte modifié", .0.errors.len())]
    Directory(Report),
    #[error("l'identité de la box a changé pendant la vérification du bundle : recommencez")]
    Changed,
    #[error("identité de la box : {0}")]
    Identity(#[from] IdentityError),
    #[error("{path} : {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} : {source}")]
    Lock { path: PathBuf, source: LockError },
    #[error("dossier de données : {0}")]
    Store(#[from] StoreError),
}

impl ApplyError {
    /// 2 when the bundle, the box's state or the command line is at fault (the technician must act), 1 when
    /// the box failed while doing it.
    pub fn exit_code(&self) -> u8 {
        match self {
            ApplyError::Bundle { .. }
            | ApplyError::OtherSchool { .. }
            | ApplyError::OtherRegion { .. }
            | ApplyError::Busy(_)
            | ApplyError::Directory(_) => 2,
            ApplyError::Changed
            | ApplyError::Identity(_)
            | ApplyError::Io { .. }
            | ApplyError::Lock { .. }
            | ApplyError::Store(_) => 1,
        }
    }
}

/// What to apply where.
#[derive(Clone, Debug)]
pub struct ApplyOptions {
    pub bundle: PathBuf,
    pub data: PathBuf,
    /// Accept a bundle of another school or region: wipes the identity first.
    pub force_reset: bool,
    /// The clock the bundle's expiry is checked against.
    pub now: SystemTime,
}

/// What the box was, before the bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Before {
    /// Never provisioned.
    Fresh,
    /// Provisioned for the same school and region; `enrolled` (with a certificate still in force) keeps its
    /// certificates, else the bundle's token is written for a new enrollment. The keys are kept either way.
    Same { enrolled: bool },
    /// Provisioned already, wiped on the technician's demand (`--force-reset`): new keys, new enrollment.
    Reset { uai: String, root_fingerprint: String },
}

/// What `apply` did, for the technician's summary.
#[derive(Debug)]
pub struct Applied {
    pub manifest: Manifest,
    pub root_fingerprint: String,
    pub before: Before,
    pub keys: KeysMade,
    /// The directory import's report, when the bundle carried exports.
    pub report: Option<Report>,
    /// The admin password made up when the import created the store (shown once).
    pub admin_password: Option<String>,
    pub config_path: PathBuf,
    /// `[uplink] gateway` of the written configuration.
    pub gateway: String,
    /// Expiry of the box certificate kept (re-applying to an enrolled box).
    pub certificate_not_after: Option<u64>,
    /// The configuration names another data folder than the one applied to.
    pub data_mismatch: Option<PathBuf>,
}

/// Applies the bundle: see the module's documentation for the order. `progress` is told each step.
pub fn apply(options: &ApplyOptions, progress: &dyn Fn(&str)) -> Result<Applied, ApplyError> {
    let data = &options.data;
    let bundle_err = |source| ApplyError::Bundle { file: options.bundle.clone(), source };

    progress("vérification du bundle");
    let installed = Identity::load(data)?;
    // A provisioned box accepts bundles of its own region only, unless the technician resets it.
    let pin = installed.as_ref().filter(|_| !options.force_reset).map(|id| id.root_fingerprint.clone());
    let verify = VerifyOptions { expected_root_fingerprint: pin, now: options.now };
    let bundle = Bundle::open(&options.bundle, &verify).map_err(|e| match (e, &installed) {
        (BundleError::OtherRegion { found, expected }, Some(id)) => {
            ApplyError::OtherRegion { installed: id.uai.clone(), expected, found }
        }
        (e, _) => bundle_err(e),
    })?;
    let root_fingerprint = bundle.root_fingerprint();
    let uai = bundle.manifest.uai.clone();
    let now = identity::unix_now();
    let before = match &installed {
        None => Before::Fresh,
        Some(id) if options.force_reset => {
            Before::Reset { uai: id.uai.clone(), root_fingerprint: id.root_fingerprint.clone() }
        }
        Some(id) if id.uai == uai && id.root_fingerprint == root_fingerprint => {
            // An expired certificate is no enrollment to keep: the bundle's token enrolls the box again.
            Before::Same { enrolled: id.box_cert.as_ref().is_some_and(|c| c.not_after > now) }
        }
        Some(id) if id.uai != uai => {
            return Err(ApplyError::OtherSchool {
                installed: id.uai.clone(),
                bundle: uai,
                name: bundle.manifest.name.clone(),
            })
        }
        // Same UAI, other root: only reachable without the pin, that is with --force-reset, handled above.
        Some(id) => {
            return Err(ApplyError::OtherRegion {
                installed: id.uai.clone(),
                expected: id.root_fingerprint.clone(),
                found: root_fingerprint,
            })
        }
    };
    let mut config = Config::parse(Path::new(crate::PROVISIONED_CONFIG), &bundle.config_toml)
        .map_err(|e| bundle_err(BundleError::BadConfig(e.to_string())))?;
    let data_mismatch = (config.storage.data != firmware_config::Storage::default().data
        && config.storage.data != *data)
        .then(|| config.storage.data.clone());
    config.storage.data = data.clone();

    // The exports, checked before anything is written. A box that has accounts already is checked against
    // them by the import itself, under the lock (its store cannot be opened before).
    let scratch = Scratch::new(&bundle.directory)?;
    // A box moved to another school must not keep the first school's pupils, files and accounts (RGPD), nor
    // replicate them into the new school's region: `--force-reset` to another UAI erases the store too.
    let wipes_store = matches!(&before, Before::Reset { uai: old, .. } if *old != uai);
    let has_store = data.join("meta").exists() && !wipes_store;
    if !scratch.files.is_empty() && !has_store {
        progress("vérification de l'annuaire");
        let max_expanded = config.directory.max_import_size.0.saturating_mul(8);
        let parsed = scratch.files.iter().flat_map(|(name, path)| upload::read(Some(name), path, max_expanded));
        // The store `App::open` makes holds only the first admin: plan against exactly that.
        let admin = User { login: "admin".into(), role: Role::Admin, ..User::default() };
        let plan = import::plan(&vec![admin], parsed.collect(), store::now_ms());
        if !plan.report.errors.is_empty() {
            return Err(ApplyError::Directory(plan.report));
        }
    }

    // From here on the box changes: the daemon must not be running.
    let _lock = DataLock::acquire(data).map_err(|e| match e {
        LockError::Busy { .. } => ApplyError::Busy(e),
        LockError::Io { .. } => ApplyError::Lock { path: data.clone(), source: e },
    })?;
    let now_installed = Identity::load(data)?;
    let same = |a: &Option<Identity>, b: &Option<Identity>| match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            a.uai == b.uai && a.root_fingerprint == b.root_fingerprint && a.is_enrolled() == b.is_enrolled()
        }
        _ => false,
    };
    if !same(&installed, &now_installed) {
        return Err(ApplyError::Changed);
    }
    if wipes_store {
        progress("effacement des données de l'école précédente");
        crate::reset::wipe(data).map_err(|source| ApplyError::Io { path: data.clone(), source })?;
    }

    let (report, admin_password) = if scratch.files.is_empty() {
        (None, None)
    } else {
        progress("import de l'annuaire");
        let (report, password) = import_directory(config.clone(), data, &scratch)?;
        if !report.errors.is_empty() {
            return Err(ApplyError::Directory(report));
        }
        (Some(report), password)
    };

    progress("écriture de l'identité de la box");
    let keep_enrollment = matches!(before, Before::Same { enrolled: true });
    match &before {
        Before::Reset { .. } => identity::wipe(data)?,
        // Certificates left by an interrupted provisioning are another identity's; expired ones are useless.
        Before::Fresh | Before::Same { enrolled: false } => identity::drop_certificates(data)?,
        Before::Same { enrolled: true } => {}
    }
    let token = (!keep_enrollment).then_some(bundle.token.as_str());
    let keys = identity::install(data, &Install { uai: &uai, region_ca_pem: &bundle.ca_cert_pem, token })?;
    let certificate_not_after =
        if keep_enrollment { Identity::load(data)?.and_then(|id| id.not_after()) } else { None };

    progress("écriture de la configuration");
    let config_path = data.join(crate::PROVISIONED_CONFIG);
    identity::write_atomic(&config_path, bundle.config_toml.as_bytes(), identity::PUBLIC_MODE)?;
    log::info!("{uai} provisioned from {} (region root {root_fingerprint})", options.bundle.display());

    Ok(Applied {
        gateway: config.uplink.gateway.clone(),
        manifest: bundle.manifest,
        root_fingerprint,
        before,
        keys,
        report,
        admin_password,
        config_path,
        certificate_not_after,
        data_mismatch,
    })
}

/// The same import as `relais import` on a stopped box: open the store, import all or nothing.
fn import_directory(config: Config, data: &Path, scratch: &Scratch) -> Result<(Report, Option<String>), ApplyError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| ApplyError::Io { path: data.to_owned(), source: e })?;
    runtime.block_on(async {
        let (app, password) = App::open(config, data).await?;
        let uploads = scratch.files.iter().map(|(name, path)| (Some(name.clone()), path.clone())).collect();
        let report = app.import(uploads).await?;
        app.store.flush().await?;
        Ok((report, password))
    })
}

/// The bundle's directory exports as files in a private scratch folder outside the data folder (the import
/// reads files, and a refused bundle must leave the data folder as it was), removed when dropped: they hold
/// personal data.
struct Scratch {
    dir: Option<PathBuf>,
    files: Vec<(String, PathBuf)>,
}

impl Scratch {
    fn new(directory: &[(String, Vec<u8>)]) -> Result<Scratch, ApplyError> {
        if directory.is_empty() {
            return Ok(Scratch { dir: None, files: Vec::new() });
        }
        let dir = std::env::temp_dir().join(format!("relais-provision-{:016x}", rand::rngs::OsRng.next_u64()));
        fs::DirBuilder::new().mode(0o700).create(&dir).map_err(|e| ApplyError::Io { path: dir.clone(), source: e })?;
        let mut scratch = Scratch { dir: Some(dir.clone()), files: Vec::new() };
        for (name, bytes) in directory {
            // Bundle::open allowed only plain names (no `/`, no leading dot).
            let path = dir.join(name);
            fs::write(&path, bytes).map_err(|e| ApplyError::Io { path: path.clone(), source: e })?;
            scratch.files.push((name.clone(), path));
        }
        Ok(scratch)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            // Best effort: the system's temporary folder is cleaned at boot anyway.
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// `ab12…` → `AB:12:…`, as `openssl x509 -fingerprint -sha256` prints it, for comparison by eye.
pub fn colon_hex(hex: &str) -> String {
    let upper = hex.to_ascii_uppercase();
    let pairs: Vec<&str> = (0..upper.len()).step_by(2).filter_map(|i| upper.get(i..(i + 2).min(upper.len()))).collect();
    pairs.join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_for_eyes() {
        assert_eq!(colon_hex("ab12cd"), "AB:12:CD");
        assert_eq!(colon_hex(""), "");
    }
}
