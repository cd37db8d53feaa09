//! The school box's declarative configuration: one TOML file, one serde struct per section, a default for
//! every key, and errors that name the file, the line and the key.
//!
//! The daemon reads it once at start and passes it explicitly; nothing reads it globally.

mod units;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use units::{BitRate, ByteSize, Limit, Span, Window};

/// Why a configuration file could not be used. Each message is for the technician who wrote it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}, line {line}: {message}")]
    Invalid { path: PathBuf, line: usize, message: String },
    #[error("{path}, line {line}: {key}: {message}")]
    Value { path: PathBuf, line: usize, key: &'static str, message: String },
}

/// The whole file. Every section may be left out.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Which établissement this box serves.
    pub identity: Identity,
    /// The portal listener on the school LAN.
    pub lan: Lan,
    /// Where the box keeps its data.
    pub storage: Storage,
    /// Per-role storage quotas.
    pub quota: Quota,
    /// Portal sessions and login throttling.
    pub login: Login,
    /// Limits that protect the box from slow or hostile clients.
    pub limits: Limits,
    /// Imports of the national directory exports.
    pub directory: Directory,
    /// The link to the regional gateway.
    pub uplink: Uplink,
    /// Settings of the regional gateway (`relais region …`); ignored by a school box.
    pub region: Region,
    /// The cache of what comes from outside: upstreams, forward proxy, prefetch.
    pub cache: Cache,
    /// What gets logged.
    pub logging: Logging,
    /// Which hardware the box runs on; sets defaults sized for it.
    pub hardware: Hardware,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Identity {
    /// The school's UAI (7 digits and a letter, e.g. "0123456A"); empty until the box is provisioned.
    pub uai: String,
    /// The school's name as users see it on the portal.
    pub name: String,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Lan {
    /// Address and port of the portal (HTTP on loopback; the embedded default keeps the box private).
    pub listen: SocketAddr,
    /// "auto": HTTPS when listening on a non-loopback address, plain HTTP on loopback; "on"; "off".
    pub tls: TlsMode,
    /// Host names and IP addresses the LAN certificate covers, besides `ent.<uai>.lan`.
    pub names: Vec<String>,
    /// A second listener (e.g. "0.0.0.0:80") that redirects to HTTPS but serves `/ca.crt`, `/healthz` and the
    /// revocation lists `/crl/…` (on a box its LAN list, which its LAN certificate names on port 80; on the
    /// gateway the region's lists); empty for none.
    pub http_redirect: String,
}

impl Default for Lan {
    fn default() -> Self {
        Lan {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls: TlsMode::Auto,
            names: Vec::new(),
            http_redirect: String::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    #[default]
    Auto,
    On,
    Off,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Uplink {
    /// The regional gateway, "https://HOST:PORT"; written by the provisioning bundle. Empty: standalone box.
    pub gateway: String,
    /// The line's rate ("2mbit"); replication and caching together stay under it. "unlimited" caps nothing.
    pub rate: BitRate,
    /// Share of `rate` by local time of day, e.g. ["07:30-18:00 30%", "18:00-07:30 100%"]; 100 % outside them.
    pub windows: Vec<Window>,
    /// Longest pause between two replication sessions when nothing changes (a change starts one sooner).
    pub sync_interval: Span,
    /// Connections used at once for replication transfers: one TCP connection on a lossy long link fills
    /// only part of it.
    pub connections: u32,
}

impl Default for Uplink {
    fn default() -> Self {
        Uplink {
            gateway: String::new(),
            rate: BitRate(0),
            windows: Vec::new(),
            sync_interval: Span(std::time::Duration::from_secs(60)),
            connections: 4,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Region {
    /// How long box and LAN certificates last; boxes renew at half-life.
    pub certificate_validity: Span,
    /// How long an enrollment token (in a provisioning bundle) stays usable.
    pub token_validity: Span,
}

impl Default for Region {
    fn default() -> Self {
        Region {
            certificate_validity: Span(std::time::Duration::from_secs(90 * 86400)),
            token_validity: Span(std::time::Duration::from_secs(30 * 86400)),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Storage {
    /// The data folder: metadata, file contents, keys. One daemon per folder.
    pub data: PathBuf,
}

impl Default for Storage {
    fn default() -> Self {
        Storage { data: PathBuf::from("relais-data") }
    }
}

/// Storage quotas per role. Defaults follow the French ENTs (entcore): 10 GiB for teachers and staff,
/// 1 GiB for pupils and parents; admins are not limited.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Quota {
    pub pupil: Limit,
    pub teacher: Limit,
    pub parent: Limit,
    pub staff: Limit,
    pub admin: Limit,
}

impl Default for Quota {
    fn default() -> Self {
        Quota {
            pupil: Limit(Some(1 << 30)),
            teacher: Limit(Some(10 << 30)),
            parent: Limit(Some(1 << 30)),
            staff: Limit(Some(10 << 30)),
            admin: Limit(None),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Login {
    /// How long a portal session lasts after login.
    pub session_lifetime: Span,
    /// Failed logins allowed for one login within `window` before it is refused with 429.
    pub max_failures_per_login: u32,
    /// Failed logins allowed from one client address within `window` (a classroom shares one NAT address
    /// only on the region side; on the LAN each PC has its own).
    pub max_failures_per_client: u32,
    /// The window over which failures are counted.
    pub window: Span,
}

impl Default for Login {
    fn default() -> Self {
        Login {
            session_lifetime: Span(std::time::Duration::from_secs(12 * 3600)),
            max_failures_per_login: 5,
            max_failures_per_client: 30,
            window: Span(std::time::Duration::from_secs(15 * 60)),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// A client must send its request headers within this time.
    pub header_timeout: Span,
    /// An upload that sends nothing for this long is abandoned (408).
    pub body_idle_timeout: Span,
    /// On shutdown, connections get this long to finish before they are cut.
    pub shutdown_grace: Span,
    /// Largest request head (request line and headers) accepted.
    pub max_header_bytes: ByteSize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Span(std::time::Duration::from_secs(30)),
            body_idle_timeout: Span(std::time::Duration::from_secs(60)),
            shutdown_grace: Span(std::time::Duration::from_secs(10)),
            max_header_bytes: ByteSize(64 << 10),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Directory {
    /// How long a person missing from a complete export keeps their (disabled) account, personal space and
    /// hand-ins before they are deleted. Teachers keep seeing the hand-ins until then.
    pub leaver_delay: Span,
    /// Largest import accepted (one file or a zip of several).
    pub max_import_size: ByteSize,
}

impl Default for Directory {
    fn default() -> Self {
        Directory {
            leaver_delay: Span(std::time::Duration::from_secs(90 * 86400)),
            max_import_size: ByteSize(512 << 20),
        }
    }
}

/// The LAN cache: what comes from outside the school crosses the uplink once, and stays readable when the
/// uplink is down.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Cache {
    /// Disk given to cached objects. The cache also gives space back before users' files run short of it.
    pub size: ByteSize,
    /// How long past its freshness an object is still served while its upstream is unreachable (a response's
    /// own `stale-if-error` may allow longer; `must-revalidate` and `no-cache` forbid it).
    pub max_stale: Span,
    /// An upstream that has not sent response headers (or a next piece of body) within this is unreachable.
    pub upstream_timeout: Span,
    /// The forward proxy for the school's PCs (plain HTTP cached, HTTPS tunnelled with CONNECT): "auto" (the
    /// portal's address, port 3128), "off", or an address such as "0.0.0.0:3128".
    pub proxy_listen: String,
    /// Ports the forward proxy's CONNECT tunnels may reach (HTTPS only, by default).
    pub connect_ports: Vec<u16>,
    /// PEM files of certificate authorities trusted for upstreams, besides the system's.
    pub ca_files: Vec<PathBuf>,
    /// URLs kept in the cache and revalidated in the uplink's off-peak hours.
    pub prefetch: Vec<String>,
    /// URLs of lists (text, one URL per line, `#` comments) of URLs to prefetch, e.g. published by the
    /// regional ENT for the coming week.
    pub prefetch_lists: Vec<String>,
    /// How often the prefetch lists are read again and their URLs revalidated.
    pub prefetch_interval: Span,
    /// Sites served under `/cache/<name>/…`.
    pub upstream: Vec<CacheUpstream>,
}

impl Default for Cache {
    fn default() -> Self {
        Cache {
            size: Profile::default().sizing().cache_size,
            max_stale: Span(std::time::Duration::from_secs(7 * 86400)),
            upstream_timeout: Span(std::time::Duration::from_secs(30)),
            proxy_listen: "auto".into(),
            connect_ports: vec![443],
            ca_files: Vec::new(),
            prefetch: Vec::new(),
            prefetch_lists: Vec::new(),
            prefetch_interval: Span(std::time::Duration::from_secs(6 * 3600)),
            upstream: Vec::new(),
        }
    }
}

/// One site served through the cache at `/cache/<name>/<path>`, fetched from `<url><path>`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CacheUpstream {
    /// The first segment of the path under `/cache/`: letters, digits, `-` and `_`.
    pub name: String,
    /// The site's base address, "https://HOST[:PORT][/PATH]" (or "http://…").
    pub url: String,
}

impl Cache {
    /// Where the forward proxy listens, given the portal's address; `None` when it is off. "auto" follows
    /// the portal: its address, port 3128 (any free port when the portal's own is, as in tests).
    pub fn proxy_address(&self, portal: SocketAddr) -> Option<SocketAddr> {
        match self.proxy_listen.trim() {
            "off" | "" => None,
            "auto" => Some(SocketAddr::new(portal.ip(), if portal.port() == 0 { 0 } else { 3128 })),
            addr => addr.parse().ok(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Logging {
    /// One of "error", "warn", "info", "debug", "trace".
    pub level: String,
}

impl Default for Logging {
    fn default() -> Self {
        Logging { level: "info".into() }
    }
}

/// Hardware profiles the image is built for. A profile sets the defaults of the keys that depend on the
/// machine (see [`Sizing`]); a key the file sets wins over its profile.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub enum Profile {
    #[default]
    #[serde(rename = "x86_64-minipc")]
    X86_64MiniPc,
    #[serde(rename = "arm64-rpi4")]
    Arm64Rpi4,
    #[serde(rename = "arm64-rpi5")]
    Arm64Rpi5,
}

/// What a hardware profile sets when the file leaves it out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizing {
    /// `cache.size`: a share of the usual disk, leaving most of it to users' files.
    pub cache_size: ByteSize,
    /// `hardware.workers`: threads serving connections.
    pub workers: u32,
    /// `hardware.blocking_threads`: threads for disk writes, fsyncs and password hashing.
    pub blocking_threads: u32,
    /// `hardware.boot_size`: the EFI system partition (mini-PC) or the Raspberry Pi firmware partition.
    pub boot_size: ByteSize,
    /// `hardware.system_size`: each of the two system slots (A/B); the data partition takes the rest.
    pub system_size: ByteSize,
}

impl Profile {
    /// The names a file may give, for messages.
    pub const NAMES: &'static [&'static str] = &["x86_64-minipc", "arm64-rpi4", "arm64-rpi5"];

    /// The defaults this hardware gets. A mini-PC has 4+ x86 cores and a 256 GB+ SSD; a Pi 4 boots from an SD
    /// card or a USB disk (slow fsyncs: fewer blocking threads, a small cache); a Pi 5 has faster cores and
    /// often an NVMe disk.
    pub fn sizing(self) -> Sizing {
        let (cache_gib, workers, blocking_threads, boot_mib) = match self {
            Profile::X86_64MiniPc => (32, 4, 64, 128),
            Profile::Arm64Rpi4 => (4, 2, 16, 256),
            Profile::Arm64Rpi5 => (16, 4, 32, 256),
        };
        Sizing {
            cache_size: ByteSize(cache_gib << 30),
            workers,
            blocking_threads,
            boot_size: ByteSize(boot_mib << 20),
            system_size: ByteSize(1 << 30),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Hardware {
    /// "x86_64-minipc", "arm64-rpi4" or "arm64-rpi5"; sets the defaults of the keys below and of `cache.size`.
    pub profile: Profile,
    /// Threads serving connections (the async runtime's workers).
    pub workers: u32,
    /// Threads for blocking work: disk writes and fsyncs, password hashing.
    pub blocking_threads: u32,
    /// Size of the boot partition `image/build` makes (EFI system partition, or the Pi's firmware partition).
    pub boot_size: ByteSize,
    /// Size of each system slot (A and B) `image/build` makes; the data partition takes the rest of the disk.
    pub system_size: ByteSize,
}

impl Hardware {
    /// The section as `profile` sets it.
    pub fn for_profile(profile: Profile) -> Hardware {
        let sizing = profile.sizing();
        Hardware {
            profile,
            workers: sizing.workers,
            blocking_threads: sizing.blocking_threads,
            boot_size: sizing.boot_size,
            system_size: sizing.system_size,
        }
    }
}

impl Default for Hardware {
    fn default() -> Self {
        Hardware::for_profile(Profile::default())
    }
}

const LOG_LEVELS: &[&str] = &["error", "warn", "info", "debug", "trace"];

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Config::parse(path, &text)
    }

    /// Parses the text of a configuration file; `path` only names it in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let invalid = |e: toml::de::Error| {
            let offset = e.span().map(|span| span.start.min(text.len())).unwrap_or(0);
            let line = text[..offset].matches('\n').count() + 1;
            let message = match key_at_line(text, line) {
                Some(key) => format!("{key}: {}", e.message()),
                None => e.message().to_string(),
            };
            ConfigError::Invalid { path: path.to_owned(), line, message }
        };
        let table: toml::Table = toml::from_str(text).map_err(invalid)?;
        let mut config: Config = toml::from_str(text).map_err(invalid)?;
        config.apply_profile(&table);
        config.validate_text(path, Some(text))?;
        Ok(config)
    }

    /// Fills the keys the file left out with what its hardware profile sets for them.
    fn apply_profile(&mut self, table: &toml::Table) {
        let given = |section: &str, key: &str| {
            table.get(section).and_then(|s| s.as_table()).is_some_and(|s| s.contains_key(key))
        };
        let profile = Hardware::for_profile(self.hardware.profile);
        if !given("cache", "size") {
            self.cache.size = self.hardware.profile.sizing().cache_size;
        }
        let hardware = &mut self.hardware;
        if !given("hardware", "workers") {
            hardware.workers = profile.workers;
        }
        if !given("hardware", "blocking_threads") {
            hardware.blocking_threads = profile.blocking_threads;
        }
        if !given("hardware", "boot_size") {
            hardware.boot_size = profile.boot_size;
        }
        if !given("hardware", "system_size") {
            hardware.system_size = profile.system_size;
        }
    }

    /// Checks what the types alone cannot.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        self.validate_text(path, None)
    }

    /// [`Config::validate`], naming the line of the bad key when the file's text is at hand.
    fn validate_text(&self, path: &Path, text: Option<&str>) -> Result<(), ConfigError> {
        self.validate_keys().map_err(|(key, message)| ConfigError::Value {
            path: path.to_owned(),
            line: text.and_then(|t| line_of_key(t, key)).unwrap_or(0),
            key,
            message,
        })
    }

    fn validate_keys(&self) -> Result<(), (&'static str, String)> {
        let err = |key, message: String| (key, message);
        let uai = &self.identity.uai;
        if !uai.is_empty() && !is_uai(uai) {
            return Err(err(
                "identity.uai",
                format!("« {uai} » is not a UAI: 7 digits then a letter, e.g. \"0123456A\""),
            ));
        }
        if !LOG_LEVELS.contains(&self.logging.level.as_str()) {
            return Err(err(
                "logging.level",
                format!("« {} » is not one of {}", self.logging.level, LOG_LEVELS.join(", ")),
            ));
        }
        if self.login.max_failures_per_login == 0 {
            return Err(err("login.max_failures_per_login", "must be at least 1".into()));
        }
        if self.login.max_failures_per_client == 0 {
            return Err(err("login.max_failures_per_client", "must be at least 1".into()));
        }
        if self.login.session_lifetime.0.as_secs() < 1 {
            return Err(err("login.session_lifetime", "must be at least 1s".into()));
        }
        if self.limits.max_header_bytes.0 < 8192 {
            return Err(err("limits.max_header_bytes", "must be at least 8KiB".into()));
        }
        let gateway = &self.uplink.gateway;
        if !gateway.is_empty() && !gateway.starts_with("https://") {
            return Err(err("uplink.gateway", format!("« {gateway} » must start with https://")));
        }
        if !(1..=32).contains(&self.uplink.connections) {
            return Err(err("uplink.connections", "must be between 1 and 32".into()));
        }
        if self.uplink.sync_interval.0.as_millis() < 100 {
            return Err(err("uplink.sync_interval", "must be at least 100ms".into()));
        }
        if !self.lan.http_redirect.is_empty() && self.lan.http_redirect.parse::<SocketAddr>().is_err() {
            return Err(err(
                "lan.http_redirect",
                format!("« {} » is not an address such as \"0.0.0.0:80\"", self.lan.http_redirect),
            ));
        }
        if let Some(name) =
            self.lan.names.iter().find(|n| !is_host_name(n.trim()) && n.trim().parse::<IpAddr>().is_err())
        {
            return Err(err(
                "lan.names",
                format!("« {name} » is neither a host name (e.g. \"relais.ecole.lan\") nor an IP address"),
            ));
        }
        if self.region.certificate_validity.0.as_secs() < 60 {
            return Err(err("region.certificate_validity", "must be at least 1m".into()));
        }
        self.validate_cache()?;
        if self.storage.data.as_os_str().is_empty() {
            return Err(err("storage.data", "must name a folder".into()));
        }
        self.validate_hardware()
    }

    fn validate_hardware(&self) -> Result<(), (&'static str, String)> {
        let hardware = &self.hardware;
        if !(1..=256).contains(&hardware.workers) {
            return Err(("hardware.workers", "must be between 1 and 256".into()));
        }
        if !(1..=4096).contains(&hardware.blocking_threads) {
            return Err(("hardware.blocking_threads", "must be between 1 and 4096".into()));
        }
        if !(32 << 20..=4 << 30).contains(&hardware.boot_size.0) {
            return Err(("hardware.boot_size", "must be between 32MiB and 4GiB".into()));
        }
        if !(256 << 20..=64 << 30).contains(&hardware.system_size.0) {
            return Err(("hardware.system_size", "must be between 256MiB and 64GiB".into()));
        }
        Ok(())
    }

    fn validate_cache(&self) -> Result<(), (&'static str, String)> {
        let err = |key, message: String| (key, message);
        let cache = &self.cache;
        let listen = cache.proxy_listen.trim();
        if !matches!(listen, "auto" | "off" | "") && listen.parse::<SocketAddr>().is_err() {
            return Err(err(
                "cache.proxy_listen",
                format!("« {listen} » is not \"auto\", \"off\" or an address such as \"0.0.0.0:3128\""),
            ));
        }
        if cache.upstream_timeout.0.as_millis() < 100 {
            return Err(err("cache.upstream_timeout", "must be at least 100ms".into()));
        }
        if cache.prefetch_interval.0.as_secs() < 1 {
            return Err(err("cache.prefetch_interval", "must be at least 1s".into()));
        }
        if cache.connect_ports.contains(&0) {
            return Err(err("cache.connect_ports", "0 is not a port".into()));
        }
        let mut names = std::collections::HashSet::new();
        for (i, upstream) in cache.upstream.iter().enumerate() {
            let name = &upstream.name;
            let ok = !name.is_empty()
                && name.len() <= 64
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok {
                return Err(err(
                    "cache.upstream.name",
                    format!(
                        "upstream {}: « {name} » must be letters, digits, - or _ (it appears in /cache/<name>/)",
                        i + 1
                    ),
                ));
            }
            if !names.insert(name.as_str()) {
                return Err(err("cache.upstream.name", format!("« {name} » names two upstreams")));
            }
            if !is_http_url(&upstream.url) {
                return Err(err(
                    "cache.upstream.url",
                    format!("upstream « {name} »: « {} » must be https://HOST[:PORT][/PATH] or http://…", upstream.url),
                ));
            }
        }
        for url in cache.prefetch.iter().chain(&cache.prefetch_lists) {
            if !is_http_url(url) {
                let key = if cache.prefetch.contains(url) { "cache.prefetch" } else { "cache.prefetch_lists" };
                return Err(err(key, format!("« {url} » is not an http:// or https:// address")));
            }
        }
        Ok(())
    }

    /// The configuration as a documented TOML file, with every default filled in.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// The table a header line opens (`[cache]`, `[[cache.upstream]]`), if `line` is one.
fn header(line: &str) -> Option<String> {
    let line = line.split('#').next().unwrap_or("").trim();
    let inner = line.strip_prefix("[[").and_then(|l| l.strip_suffix("]]"));
    let inner = inner.or_else(|| line.strip_prefix('[').and_then(|l| l.strip_suffix(']')))?;
    Some(inner.split('.').map(|part| part.trim().trim_matches('"')).collect::<Vec<_>>().join("."))
}

/// The key a `key = value` line sets, if it is one.
fn key_of(line: &str) -> Option<&str> {
    let line = line.trim_start();
    if line.starts_with('#') || line.starts_with('[') {
        return None;
    }
    let key = line.split_once('=')?.0.trim().trim_matches('"');
    (!key.is_empty()).then_some(key)
}

/// The dotted name (`section.key`) of what line `line` (from 1) of the file sets, for messages.
fn key_at_line(text: &str, line: usize) -> Option<String> {
    let mut section = String::new();
    for (n, l) in text.lines().enumerate() {
        if let Some(h) = header(l) {
            section = h;
        }
        if n + 1 == line {
            let key = key_of(l)?;
            return Some(if section.is_empty() { key.to_owned() } else { format!("{section}.{key}") });
        }
    }
    None
}

/// The line (from 1) where the file sets `key` (dotted), or where its section opens if the key is only
/// implied; the first of an array of tables.
fn line_of_key(text: &str, dotted: &str) -> Option<usize> {
    let (want_section, want_key) = dotted.rsplit_once('.').unwrap_or(("", dotted));
    let mut section = String::new();
    let mut opened = None;
    for (n, l) in text.lines().enumerate() {
        if let Some(h) = header(l) {
            if h == want_section && opened.is_none() {
                opened = Some(n + 1);
            }
            section = h;
        } else if section == want_section && key_of(l) == Some(want_key) {
            return Some(n + 1);
        }
    }
    opened
}

/// A DNS host name a certificate can carry: dot-separated labels of letters, digits and inner hyphens (RFC 1123),
/// no wildcard, no trailing dot.
pub fn is_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// An absolute http(s) address with a host: what an upstream or a prefetched URL must be.
pub fn is_http_url(url: &str) -> bool {
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"));
    let Some(rest) = rest else { return false };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    !authority.is_empty() && !authority.contains('@') && !url.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// A UAI is 7 digits then one letter (the letter is a checksum we do not verify: test UAIs are made up).
pub fn is_uai(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 8 && bytes[..7].iter().all(u8::is_ascii_digit) && bytes[7].is_ascii_alphabetic()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("relais.toml"), text)
    }

    #[test]
    fn empty_file_is_the_embedded_default() {
        let config = parse("").expect("empty config");
        assert_eq!(config, Config::default());
        assert_eq!(config.lan.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.quota.pupil, Limit(Some(1 << 30)));
        assert_eq!(config.quota.admin, Limit(None));
    }

    #[test]
    fn the_example_file_is_valid_and_documents_every_section() {
        let text = include_str!("../relais.example.toml");
        let config = parse(text).expect("example config");
        assert_eq!(config.identity.uai, "0123456A");
        for section in [
            "[identity]",
            "[lan]",
            "[storage]",
            "[quota]",
            "[login]",
            "[limits]",
            "[directory]",
            "[cache]",
            "[[cache.upstream]]",
            "[logging]",
            "[hardware]",
        ] {
            assert!(text.contains(section), "example lacks {section}");
        }
    }

    #[test]
    fn errors_name_the_line_and_the_key() {
        let e = parse("[quota]\npupil = \"1GiB\"\nteacher = \"lots\"\n").expect_err("bad size");
        let text = e.to_string();
        assert!(text.contains("line 3"), "{text}");
        assert!(text.contains("lots"), "{text}");

        let e = parse("[lan]\nlisten = \"127.0.0.1:8080\"\nport = 80\n").expect_err("unknown key");
        let text = e.to_string();
        assert!(text.contains("line 3") && text.contains("port"), "{text}");

        let e = parse("[identity]\nuai = \"123\"\n").expect_err("bad uai");
        assert!(e.to_string().contains("identity.uai"), "{e}");

        let e = parse("[logging]\nlevel = \"loud\"\n").expect_err("bad level");
        assert!(e.to_string().contains("logging.level"), "{e}");

        let e = parse("[lan]\nhttp_redirect = \"port 80\"\n").expect_err("bad redirect address");
        assert!(e.to_string().contains("lan.http_redirect") && e.to_string().contains("port 80"), "{e}");
        parse("[lan]\nhttp_redirect = \"0.0.0.0:80\"\n").expect("a redirect address");

        let e = parse("[lan]\nnames = [\"relais.ecole.lan\", \"my box\"]\n").expect_err("bad LAN name");
        assert!(e.to_string().contains("lan.names") && e.to_string().contains("my box"), "{e}");
        parse("[lan]\nnames = [\"Relais.Ecole.lan\", \"192.168.1.10\", \"fe80::1\"]\n").expect("LAN names");

        let e = parse("[[cache.upstream]]\nname = \"ent\"\nurl = \"ftp://x\"\n").expect_err("bad upstream");
        assert!(e.to_string().contains("cache.upstream.url") && e.to_string().contains("ftp://x"), "{e}");
        let e = parse("[[cache.upstream]]\nname = \"a b\"\nurl = \"https://x\"\n").expect_err("bad name");
        assert!(e.to_string().contains("cache.upstream.name"), "{e}");
        let e = parse("[cache]\nproxy_listen = \"3128\"\n").expect_err("bad proxy address");
        assert!(e.to_string().contains("cache.proxy_listen"), "{e}");
        let config = parse(
            "[cache]\nsize = \"2GiB\"\n[[cache.upstream]]\nname = \"ent\"\nurl = \"https://ent.example.fr/res\"\n",
        )
        .expect("cache config");
        assert_eq!(config.cache.upstream[0].name, "ent");
        assert_eq!(
            config.cache.proxy_address(config.lan.listen).map(|a| a.to_string()).as_deref(),
            Some("127.0.0.1:3128")
        );

        let e = parse("[hardware]\nprofile = \"pdp11\"\n").expect_err("bad profile");
        assert!(e.to_string().contains("x86_64-minipc"), "{e}");
    }

    #[test]
    fn the_example_file_sets_every_key() {
        let text = include_str!("../relais.example.toml");
        let rendered = Config::default().to_toml();
        let mut section = String::new();
        for line in rendered.lines() {
            if let Some(h) = header(line) {
                section = h;
            } else if let Some(key) = key_of(line) {
                let dotted = format!("{section}.{key}");
                if dotted == "cache.upstream" {
                    assert!(text.contains("[[cache.upstream]]"), "the example does not document cache.upstream");
                    continue;
                }
                assert!(
                    key_at_line(text, line_of_key(text, &dotted).unwrap_or(0)).as_deref() == Some(&dotted),
                    "the example does not document {dotted}"
                );
            }
        }
    }

    #[test]
    fn a_profile_sets_the_defaults_the_file_leaves_out() {
        let minipc = parse("").expect("empty");
        assert_eq!(minipc.hardware.profile, Profile::X86_64MiniPc);
        assert_eq!(minipc.cache.size, ByteSize(32 << 30));
        assert_eq!(minipc.hardware.workers, 4);

        let rpi4 = parse("[hardware]\nprofile = \"arm64-rpi4\"\n").expect("rpi4");
        assert_eq!(rpi4.cache.size, ByteSize(4 << 30));
        assert_eq!(rpi4.hardware, Hardware::for_profile(Profile::Arm64Rpi4));
        assert_eq!(rpi4.hardware.workers, 2);
        assert_eq!(rpi4.hardware.boot_size, ByteSize(256 << 20));

        let rpi5 = parse("[hardware]\nprofile = \"arm64-rpi5\"\n").expect("rpi5");
        assert_eq!(rpi5.cache.size, ByteSize(16 << 30));
        assert_eq!(rpi5.hardware.blocking_threads, 32);

        // What the file says wins over the profile, wherever the section sits.
        let own = parse("[cache]\nsize = \"1GiB\"\n[hardware]\nworkers = 3\nprofile = \"arm64-rpi4\"\n").expect("own");
        assert_eq!(own.cache.size, ByteSize(1 << 30));
        assert_eq!(own.hardware.workers, 3);
        assert_eq!(own.hardware.blocking_threads, 16);
        assert_eq!(parse(&own.to_toml()).expect("rendered"), own);
    }

    /// Every key of the file, each with a bad value: the error names the file, the line, the key, and what
    /// would be accepted. The list must cover every key `config show` prints.
    #[test]
    fn every_key_has_a_clear_error_for_a_bad_value() {
        let cases: &[(&str, &str, &str)] = &[
            ("identity.uai", "\"123\"", "7 digits"),
            ("identity.name", "3", "string"),
            ("lan.listen", "\"everywhere\"", "socket address"),
            ("lan.tls", "\"maybe\"", "`auto`, `on`, `off`"),
            ("lan.names", "[\"my box\"]", "host name"),
            ("lan.http_redirect", "\"port 80\"", "0.0.0.0:80"),
            ("storage.data", "\"\"", "must name a folder"),
            ("quota.pupil", "\"lots\"", "lots"),
            ("quota.teacher", "-1", "size"),
            ("quota.parent", "\"1 pint\"", "1 pint"),
            ("quota.staff", "true", "size"),
            ("quota.admin", "\"all\"", "all"),
            ("login.session_lifetime", "\"0s\"", "at least 1s"),
            ("login.max_failures_per_login", "0", "at least 1"),
            ("login.max_failures_per_client", "0", "at least 1"),
            ("login.window", "\"soon\"", "soon"),
            ("limits.header_timeout", "\"a while\"", "a while"),
            ("limits.body_idle_timeout", "[]", "duration"),
            ("limits.shutdown_grace", "\"10 fortnights\"", "fortnights"),
            ("limits.max_header_bytes", "\"1KiB\"", "at least 8KiB"),
            ("directory.leaver_delay", "\"later\"", "later"),
            ("directory.max_import_size", "\"big\"", "big"),
            ("uplink.gateway", "\"http://ent.example\"", "https://"),
            ("uplink.rate", "\"fast\"", "fast"),
            ("uplink.windows", "[\"08:00-25:00 30%\"]", "25:00"),
            ("uplink.sync_interval", "\"1ms\"", "at least 100ms"),
            ("uplink.connections", "64", "between 1 and 32"),
            ("region.certificate_validity", "\"1s\"", "at least 1m"),
            ("region.token_validity", "\"forever\"", "forever"),
            ("cache.size", "\"huge\"", "huge"),
            ("cache.max_stale", "true", "duration"),
            ("cache.upstream_timeout", "\"1ms\"", "at least 100ms"),
            ("cache.proxy_listen", "\"3128\"", "\"auto\", \"off\""),
            ("cache.connect_ports", "[0]", "not a port"),
            ("cache.ca_files", "\"ca.pem\"", "sequence"),
            ("cache.prefetch", "[\"ftp://x/y\"]", "http://"),
            ("cache.prefetch_lists", "[\"list.txt\"]", "http://"),
            ("cache.prefetch_interval", "\"0s\"", "at least 1s"),
            ("cache.upstream", "3", "sequence"),
            ("cache.upstream.name", "\"a b\"", "letters, digits"),
            ("cache.upstream.url", "\"ftp://x\"", "https://HOST"),
            ("logging.level", "\"loud\"", "error, warn, info, debug, trace"),
            ("hardware.profile", "\"pdp11\"", "`x86_64-minipc`, `arm64-rpi4`, `arm64-rpi5`"),
            ("hardware.workers", "0", "between 1 and 256"),
            ("hardware.blocking_threads", "0", "between 1 and 4096"),
            ("hardware.boot_size", "\"1MiB\"", "between 32MiB and 4GiB"),
            ("hardware.system_size", "\"64MiB\"", "between 256MiB and 64GiB"),
        ];
        let mut wrong = Vec::new();
        for (dotted, value, accepted) in cases {
            let (section, key) = dotted.rsplit_once('.').expect("dotted");
            let text = match *dotted {
                "cache.upstream.name" => {
                    format!("# a comment\n[[cache.upstream]]\nurl = \"https://x\"\nname = {value}\n")
                }
                "cache.upstream.url" => format!("# a comment\n[[cache.upstream]]\nname = \"ent\"\nurl = {value}\n"),
                _ => format!("# a comment\n[{section}]\n\n{key} = {value}\n"),
            };
            match parse(&text) {
                Ok(_) => wrong.push(format!("{dotted} = {value} accepted")),
                Err(e) => {
                    let e = e.to_string();
                    if !e.starts_with("relais.toml, line 4: ")
                        || !e.contains(&format!("{dotted}: "))
                        || !e.contains(accepted)
                    {
                        wrong.push(format!("{dotted}: « {e} » should name line 4, the key and say {accepted}"));
                    }
                }
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));

        let covered: std::collections::HashSet<&str> = cases.iter().map(|c| c.0).collect();
        let mut with_upstream = Config::default();
        with_upstream.cache.upstream.push(CacheUpstream { name: "ent".into(), url: "https://x".into() });
        let mut section = String::new();
        for line in with_upstream.to_toml().lines() {
            if let Some(h) = header(line) {
                section = h;
            } else if let Some(key) = key_of(line) {
                let dotted = format!("{section}.{key}");
                assert!(covered.contains(dotted.as_str()), "no bad-value case for {dotted}");
            }
        }
    }

    #[test]
    fn rendered_config_reads_back_identically() {
        let config = parse("[quota]\npupil = \"2GiB\"\n[login]\nwindow = \"1h\"\n").expect("config");
        let again = parse(&config.to_toml()).expect("rendered config");
        assert_eq!(config, again);
    }
}
