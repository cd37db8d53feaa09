//! `relais region init|serve|bundle|revoke`: the regional gateway's technician commands.

use std::path::Path;
use std::sync::Arc;

use provisioning::{BundleSpec, RegionalCa};

use crate::app::App;
use crate::cli::{BundleArgs, RegionAction, ServeArgs};
use crate::redirect;
use crate::region::{self, Gateway};
use crate::server::{self, TlsSource, Transport};

use super::{effective_config, Failure, Outcome};

pub fn run(action: RegionAction) -> Outcome {
    match action {
        RegionAction::Init { data, hosts, crl_url } => init(&data, hosts, crl_url.as_deref()),
        RegionAction::Serve(args) => serve(args),
        RegionAction::Bundle(args) => bundle(args),
        RegionAction::Revoke { data, uai, serial } => revoke(&data, uai, serial),
    }
}

fn open_ca(data: &Path) -> Result<RegionalCa, Failure> {
    RegionalCa::open(&region::ca_dir(data)).map_err(|e| {
        Failure::input(format!("{e}\n(la région est-elle initialisée ? relais region init --data {})", data.display()))
    })
}

fn init(data: &Path, hosts: Vec<String>, crl_url: Option<&str>) -> Outcome {
    let hosts = if hosts.is_empty() { vec!["localhost".into(), "127.0.0.1".into(), "::1".into()] } else { hosts };
    std::fs::create_dir_all(data).map_err(|e| Failure::runtime(format!("{}: {e}", data.display())))?;
    let ca = RegionalCa::init_with_crl_base(&region::ca_dir(data), &hosts, crl_url).map_err(Failure::input)?;
    println!("autorité régionale créée dans {}", region::ca_dir(data).display());
    println!("empreinte (SHA-256) de la racine : {}", ca.root_fingerprint());
    println!("certificat de la passerelle pour : {}", hosts.join(", "));
    println!("listes de révocation publiées sous {}/crl/ (HTTP, port de [lan] http_redirect)", ca.crl_base());
    println!("à déployer sur les postes des écoles : {}", region::ca_dir(data).join("root.crt").display());
    Ok(())
}

/// Hands the gateway's TLS configuration to the server at each connection.
struct GatewaySource(Arc<Gateway>);

impl TlsSource for GatewaySource {
    fn config(&self) -> Arc<rustls::ServerConfig> {
        self.0.tls.config()
    }
}

fn serve(args: ServeArgs) -> Outcome {
    let (config, data, _lock) = super::daemon(args)?;
    let gateway = Arc::new(
        Gateway::open(&data, config.region.certificate_validity.0)
            .map_err(|e| Failure::input(format!("{e}\n(relais region init --data {} d'abord)", data.display())))?,
    );
    super::runtime()?.block_on(async {
        let (app, admin_password) = App::open_with(config, &data, Some(gateway.clone()))
            .await
            .map_err(|e| Failure::runtime(format!("{}: {e}", data.display())))?;
        // Plain HTTP beside HTTPS, as on a box: the revocation lists the region's certificates name
        // (`http://<gateway>/crl/…`), `/ca.crt`, and a redirect to HTTPS for anything else.
        let redirect = redirect::bind(&app.config.lan, true).await.map_err(Failure::runtime)?;
        let (stop_control, control_stopped) = tokio::sync::watch::channel(false);
        let control = super::spawn_control(&app, control_stopped);
        let (listener, shutdown) = super::listen(&app, "https", admin_password).await?;
        let shutdown = server::Shutdown::spawn(shutdown);
        let redirecting = match redirect {
            Some(redirect) => {
                let https_port = listener.local_addr().map_err(Failure::runtime)?.port();
                let (addr, task) =
                    redirect::spawn(app.clone(), redirect, https_port, shutdown.clone()).map_err(Failure::runtime)?;
                println!("redirecting http://{addr}");
                Some(task)
            }
            None => None,
        };
        let transport = Transport::Tls(Arc::new(GatewaySource(gateway)));
        let served = server::run(app, listener, transport, shutdown.wait()).await;
        let _ = stop_control.send(true);
        let _ = control.await;
        if let Some(redirecting) = redirecting {
            let _ = redirecting.await;
        }
        served.map_err(Failure::runtime)
    })
}

fn bundle(args: BundleArgs) -> Outcome {
    let region_config = effective_config(args.config.as_deref(), Some(args.data.clone()))?;
    let ca = open_ca(&args.data)?;
    let mut directory = Vec::new();
    for file in &args.directory {
        let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("export").to_string();
        let bytes = std::fs::read(file).map_err(|e| Failure::input(format!("{}: {e}", file.display())))?;
        directory.push((name, bytes));
    }
    // The box's configuration: who it is and where its gateway is; every other key keeps its default.
    let mut box_config = firmware_config::Config::default();
    box_config.identity.uai = args.uai.clone();
    box_config.identity.name = args.name.clone();
    box_config.uplink.gateway = args.url.clone();
    box_config.validate(Path::new("relais.toml")).map_err(Failure::input)?;
    let validity = region_config.region.token_validity.0;
    let tokens = ca.tokens().map_err(Failure::runtime)?;
    let token = tokens.issue(&args.uai, validity).map_err(Failure::input)?;
    let spec = BundleSpec {
        uai: args.uai.clone(),
        name: args.name.clone(),
        gateway_url: args.url.clone(),
        expiry: validity,
        config_toml: box_config.to_toml(),
        directory,
    };
    ca.write_bundle(&spec, &token, &args.out).map_err(Failure::input)?;
    println!("bundle écrit : {}", args.out.display());
    println!("école : {} ({}), passerelle : {}", args.name, args.uai, args.url);
    println!("valable {} jours ; empreinte de l'autorité : {}", validity.as_secs() / 86400, ca.root_fingerprint());
    Ok(())
}

fn revoke(data: &Path, uai: Option<String>, serial: Option<String>) -> Outcome {
    let ca = open_ca(data)?;
    match (uai, serial) {
        (Some(uai), _) => {
            let serials = ca.revoke_uai(&uai).map_err(Failure::input)?;
            if serials.is_empty() {
                println!("aucun certificat actif pour {uai}");
            } else {
                println!("{uai} : certificats révoqués : {}", serials.join(", "));
            }
        }
        (None, Some(serial)) => {
            ca.revoke_serial(&serial).map_err(Failure::input)?;
            println!("certificat {serial} révoqué");
        }
        (None, None) => return Err(Failure::input("nommez --uai ou --serial")),
    }
    println!("la passerelle refusera ce certificat à la prochaine connexion");
    println!(
        "listes de révocation à jour dès maintenant sous {}/crl/ ; les box serviront la leur (lan.crl) à leurs écoles \
         dans la journée",
        ca.crl_base()
    );
    Ok(())
}
