//! `config.toml`: what `murmur init` writes and `murmur run` reads.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Context};
use murmur::NodeId;
use serde::{Deserialize, Deserializer};

/// The file name `init` writes in the data directory.
pub const CONFIG_FILE: &str = "config.toml";
/// The shortest anti-entropy interval a config may ask for.
const ANTI_ENTROPY_MS_MIN: u64 = 10;

/// A node's configuration, as written in `config.toml`. Unknown keys are
/// an error, so a misspelt setting is never silently ignored.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The data directory (identity and database), relative to the config
    /// file's directory.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// The UDP address for QUIC replication.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The address other nodes dial to reach this one (`host:port`), which
    /// membership tells them. Defaults to `listen`; required when `listen`
    /// is unspecified (`0.0.0.0` or `::`).
    #[serde(default)]
    pub advertise: Option<String>,
    /// The TCP address of the HTTP API.
    #[serde(default = "default_http")]
    pub http: SocketAddr,
    /// The bearer token HTTP clients must send; required unless `http` is a
    /// loopback address.
    #[serde(default)]
    pub http_token: Option<String>,
    /// A PEM certificate (chain) to serve the HTTP API over TLS (HTTPS,
    /// `wss://`), with `http_tls_key`.
    #[serde(default)]
    pub http_tls_cert: Option<PathBuf>,
    /// The PEM private key of `http_tls_cert`.
    #[serde(default)]
    pub http_tls_key: Option<PathBuf>,
    /// Serve the HTTP API without TLS off loopback, where its bearer
    /// tokens cross the network in clear text: only if set to `true`.
    #[serde(default)]
    pub http_plaintext_token: bool,
    /// A `tracing` filter (`info`, `murmur=debug,info`, ...); `RUST_LOG`
    /// overrides it.
    #[serde(default = "default_log")]
    pub log: String,
    /// How often, in milliseconds, the node reconciles with a peer.
    #[serde(default)]
    pub anti_entropy_ms: Option<u64>,
    /// MiB the data directory's disk must keep free: below it, new writes
    /// are refused (HTTP 507) until space is freed. Default 64; 0 turns the
    /// check off.
    #[serde(default)]
    pub min_free_mb: Option<u64>,
    /// Most entries the change feed (`GET /feed`) keeps; older ones are
    /// trimmed, and a reader behind them gets 410 Gone. Default 1,000,000.
    #[serde(default)]
    pub feed_max_entries: Option<u64>,
    /// Peers to dial (and allow).
    #[serde(default)]
    pub peers: Vec<PeerEntry>,
    /// Nodes allowed to connect without being dialed.
    #[serde(default)]
    pub allow: Vec<Id>,
}

/// One `[[peers]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerEntry {
    /// The peer's node id.
    pub id: Id,
    /// Its QUIC address, `host:port`.
    pub addr: String,
}

/// A node id read from a string, with the parse error as a TOML error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Id(pub NodeId);

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_node_id(&text)
            .map(Id)
            .map_err(serde::de::Error::custom)
    }
}

/// Parses a node id, saying what a node id looks like when it is not one.
pub fn parse_node_id(text: &str) -> Result<NodeId, String> {
    NodeId::from_str(text.trim()).map_err(|e| {
        format!("`{text}` is not a node id ({e}); `murmur init` and `murmur status` print them")
    })
}

fn default_data_dir() -> PathBuf {
    PathBuf::from(".")
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7400))
}
fn default_http() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7401))
}
fn default_log() -> String {
    "info".to_owned()
}

/// A config checked and ready to start a node with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The data directory, resolved against the config file's directory.
    pub data_dir: PathBuf,
    /// QUIC address.
    pub listen: SocketAddr,
    /// The address other nodes reach this one at, if not `listen`.
    pub advertise: Option<SocketAddr>,
    /// HTTP address.
    pub http: SocketAddr,
    /// The HTTP bearer token, if any.
    pub http_token: Option<String>,
    /// The certificate and key files to serve HTTPS with, if any.
    pub http_tls: Option<(PathBuf, PathBuf)>,
    /// The log filter.
    pub log: String,
    /// The anti-entropy interval, if set.
    pub anti_entropy: Option<Duration>,
    /// The free-space watermark in bytes, if set.
    pub min_free_bytes: Option<u64>,
    /// The feed's retention, if set.
    pub feed_max_entries: Option<u64>,
    /// Peers with resolved addresses.
    pub peers: Vec<(NodeId, SocketAddr)>,
    /// Nodes allowed to connect.
    pub allow: Vec<NodeId>,
}

/// Reads and checks the config file at `path`.
pub fn load(path: &Path) -> anyhow::Result<Settings> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read the config file {} (create one with `murmur init`)",
            path.display()
        )
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&text, base).with_context(|| format!("in {}", path.display()))
}

/// Parses and checks config text; relative paths are taken from `base`.
pub fn parse(text: &str, base: &Path) -> anyhow::Result<Settings> {
    let config: Config = toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e))?;
    check(config, base)
}

fn check(config: Config, base: &Path) -> anyhow::Result<Settings> {
    check_token(config.http, config.http_token.as_deref())?;
    check_log_filter(&config.log)?;
    let http_tls = match (&config.http_tls_cert, &config.http_tls_key) {
        (Some(cert), Some(key)) => Some((base.join(cert), base.join(key))),
        (None, None) => None,
        _ => bail!("http_tls_cert and http_tls_key go together: set both, or neither"),
    };
    if http_tls.is_none() && !config.http.ip().is_loopback() && !config.http_plaintext_token {
        bail!(
            "http = \"{}\" is not a loopback address and the API has no TLS, so its bearer \
             tokens would cross the network in clear text: set http_tls_cert and http_tls_key \
             (`murmur init --http ...` makes a self-signed pair), or set \
             `http_plaintext_token = true` to allow it knowingly",
            config.http
        );
    }
    let anti_entropy = match config.anti_entropy_ms {
        Some(ms) if ms < ANTI_ENTROPY_MS_MIN => {
            bail!("anti_entropy_ms = {ms} is too small (at least {ANTI_ENTROPY_MS_MIN})")
        }
        Some(ms) => Some(Duration::from_millis(ms)),
        None => None,
    };
    let peers = config
        .peers
        .iter()
        .enumerate()
        .map(|(i, peer)| {
            let addr = resolve(&peer.addr).with_context(|| format!("peers[{i}].addr"))?;
            Ok((peer.id.0, addr))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let advertise = match &config.advertise {
        Some(addr) => Some(resolve(addr).context("advertise")?),
        None if config.listen.ip().is_unspecified() => bail!(
            "listen = \"{}\" is not an address other nodes can dial: \
             set `advertise = \"HOST:PORT\"` to the address they reach this node at",
            config.listen
        ),
        None => None,
    };
    Ok(Settings {
        data_dir: base.join(&config.data_dir),
        listen: config.listen,
        advertise,
        http: config.http,
        http_token: config.http_token,
        http_tls,
        log: config.log,
        anti_entropy,
        min_free_bytes: config.min_free_mb.map(|mb| mb.saturating_mul(1024 * 1024)),
        feed_max_entries: match config.feed_max_entries {
            Some(0) => bail!("feed_max_entries = 0 would keep no feed (at least 1)"),
            other => other,
        },
        peers,
        allow: config.allow.iter().map(|id| id.0).collect(),
    })
}

/// Refuses a `log` filter that would not log what it seems to ask for. A
/// bare word is a level in `tracing`'s syntax only if it names one; any
/// other (`inf`) names a *target*, and would silently turn off every
/// line that is not from it.
pub fn check_log_filter(filter: &str) -> anyhow::Result<()> {
    tracing_subscriber::EnvFilter::try_new(filter)
        .map_err(|e| anyhow::anyhow!("log = {filter:?} is not a valid filter: {e}"))?;
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    for directive in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let bare = directive
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if bare
            && !LEVELS
                .iter()
                .any(|level| level.eq_ignore_ascii_case(directive))
        {
            bail!(
                "log = {filter:?}: `{directive}` is not a level ({}); to name a target, \
                 give its level too (`{directive}=debug`)",
                LEVELS.join(", ")
            );
        }
    }
    Ok(())
}

/// Refuses an HTTP API reachable from other machines without a token.
pub fn check_token(http: SocketAddr, token: Option<&str>) -> anyhow::Result<()> {
    match token {
        Some(token) if token.trim().is_empty() => bail!("http_token is empty"),
        Some(_) => Ok(()),
        None if http.ip().is_loopback() => Ok(()),
        None => bail!(
            "http = \"{http}\" is not a loopback address, so http_token is required \
             (clients then send `Authorization: Bearer <token>`); \
             or bind the API to 127.0.0.1"
        ),
    }
}

/// Resolves `host:port` to one socket address.
pub fn resolve(addr: &str) -> anyhow::Result<SocketAddr> {
    let mut found = addr
        .to_socket_addrs()
        .with_context(|| format!("`{addr}` is not a reachable host:port"))?;
    found
        .next()
        .with_context(|| format!("`{addr}` resolves to no address"))
}

/// Parses `ID@HOST:PORT`, as `init --peer` takes it.
pub fn parse_peer(text: &str) -> anyhow::Result<(NodeId, String)> {
    let Some((id, addr)) = text.split_once('@') else {
        bail!("--peer {text}: expected NODE_ID@HOST:PORT");
    };
    let id = parse_node_id(id).map_err(|e| anyhow::anyhow!("--peer {text}: {e}"))?;
    resolve(addr).with_context(|| format!("--peer {text}"))?;
    Ok((id, addr.to_owned()))
}

/// What `murmur init` writes.
pub struct InitConfig<'a> {
    /// QUIC address.
    pub listen: SocketAddr,
    /// The address other nodes reach this one at, if not `listen`.
    pub advertise: Option<&'a str>,
    /// HTTP address.
    pub http: SocketAddr,
    /// HTTP token.
    pub token: Option<&'a str>,
    /// The certificate and key files of HTTPS, relative to the config.
    pub tls: Option<(&'a str, &'a str)>,
    /// Whether plain HTTP off loopback is allowed knowingly.
    pub plaintext_token: bool,
    /// Peers, with addresses as given.
    pub peers: &'a [(NodeId, String)],
    /// Allowed nodes.
    pub allow: &'a [NodeId],
}

impl fmt::Display for InitConfig<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let quote = |s: &str| toml::Value::String(s.to_owned()).to_string();
        writeln!(f, "# Murmur node configuration (written by `murmur init`).")?;
        writeln!(
            f,
            "# Unknown keys are an error. Paths are relative to this file."
        )?;
        writeln!(f)?;
        writeln!(f, "# Identity (node.key) and database (db/).")?;
        writeln!(f, "data_dir = \".\"")?;
        writeln!(f, "# UDP address for QUIC replication between nodes.")?;
        writeln!(f, "listen = {}", quote(&self.listen.to_string()))?;
        writeln!(
            f,
            "# The address other nodes dial to reach this one (membership"
        )?;
        writeln!(
            f,
            "# tells them); defaults to `listen`, required if that is 0.0.0.0."
        )?;
        match self.advertise {
            Some(addr) => writeln!(f, "advertise = {}", quote(addr))?,
            None => writeln!(f, "# advertise = \"203.0.113.7:7400\"")?,
        }
        writeln!(f, "# TCP address of the HTTP API for local applications.")?;
        writeln!(f, "http = {}", quote(&self.http.to_string()))?;
        writeln!(
            f,
            "# Bearer token for the HTTP API; required when `http` is"
        )?;
        writeln!(f, "# not a loopback address.")?;
        match self.token {
            Some(token) => writeln!(f, "http_token = {}", quote(token))?,
            None => writeln!(f, "# http_token = \"...\"")?,
        }
        writeln!(
            f,
            "# TLS for the HTTP API and its WebSocket (PEM files); required"
        )?;
        writeln!(
            f,
            "# off loopback unless http_plaintext_token = true says otherwise."
        )?;
        match self.tls {
            Some((cert, key)) => {
                writeln!(f, "http_tls_cert = {}", quote(cert))?;
                writeln!(f, "http_tls_key = {}", quote(key))?;
            }
            None => {
                writeln!(f, "# http_tls_cert = \"http-cert.pem\"")?;
                writeln!(f, "# http_tls_key = \"http-key.pem\"")?;
            }
        }
        if self.plaintext_token {
            writeln!(
                f,
                "# Plain HTTP off loopback: bearer tokens cross the network in clear text."
            )?;
            writeln!(f, "http_plaintext_token = true")?;
        }
        writeln!(
            f,
            "# Log filter (tracing EnvFilter syntax); RUST_LOG overrides it."
        )?;
        writeln!(f, "log = \"info\"")?;
        writeln!(f, "# How often to reconcile with a peer, in milliseconds.")?;
        writeln!(f, "anti_entropy_ms = 1000")?;
        writeln!(f, "# Nodes allowed to connect without being dialed.")?;
        let allow: Vec<String> = self.allow.iter().map(|id| quote(&id.to_string())).collect();
        writeln!(f, "allow = [{}]", allow.join(", "))?;
        writeln!(f)?;
        writeln!(f, "# Peers to dial (and allow), one table each:")?;
        writeln!(f, "# [[peers]]")?;
        writeln!(f, "# id = \"NODE_ID\"")?;
        writeln!(f, "# addr = \"127.0.0.1:7410\"")?;
        for (id, addr) in self.peers {
            writeln!(f)?;
            writeln!(f, "[[peers]]")?;
            writeln!(f, "id = {}", quote(&id.to_string()))?;
            writeln!(f, "addr = {}", quote(addr))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> NodeId {
        murmur::Identity::generate().unwrap().node_id()
    }

    #[test]
    fn an_empty_config_takes_the_defaults() {
        let settings = parse("", Path::new("/data")).unwrap();
        assert_eq!(settings.data_dir, Path::new("/data/."));
        assert_eq!(settings.listen, default_listen());
        assert_eq!(settings.http, default_http());
        assert_eq!(settings.log, "info");
    }

    #[test]
    fn what_init_writes_parses_back() {
        let peer = id();
        let allowed = id();
        let text = InitConfig {
            listen: "0.0.0.0:7410".parse().unwrap(),
            advertise: Some("192.0.2.1:7410"),
            http: "0.0.0.0:7411".parse().unwrap(),
            token: Some("s3cret \"quoted\""),
            tls: None,
            plaintext_token: true,
            peers: &[(peer, "127.0.0.1:7400".to_owned())],
            allow: &[allowed],
        }
        .to_string();
        let settings = parse(&text, Path::new(".")).unwrap();
        assert_eq!(
            settings.peers,
            vec![(peer, "127.0.0.1:7400".parse().unwrap())]
        );
        assert_eq!(settings.allow, vec![allowed]);
        assert_eq!(settings.advertise, Some("192.0.2.1:7410".parse().unwrap()));
        assert_eq!(settings.http_token.as_deref(), Some("s3cret \"quoted\""));
        assert_eq!(settings.anti_entropy, Some(Duration::from_secs(1)));
    }

    #[test]
    fn an_unspecified_listen_address_needs_an_advertised_one() {
        for listen in ["0.0.0.0:7400", "[::]:7400"] {
            let error = parse(&format!("listen = \"{listen}\""), Path::new(".")).unwrap_err();
            let message = format!("{error:#}");
            assert!(message.contains("advertise"), "{message}");
        }
        let settings = parse(
            "listen = \"0.0.0.0:7400\"\nadvertise = \"192.0.2.1:7400\"",
            Path::new("."),
        )
        .unwrap();
        assert_eq!(settings.advertise, Some("192.0.2.1:7400".parse().unwrap()));
        // A specified listen address is advertised as it is.
        let settings = parse("listen = \"127.0.0.1:7400\"", Path::new(".")).unwrap();
        assert_eq!(settings.advertise, None);
    }

    #[test]
    fn a_log_filter_with_a_typo_is_refused_by_name() {
        let error = parse("log = \"inf\"", Path::new(".")).unwrap_err();
        let message = format!("{error:#}");
        assert!(message.contains("`inf` is not a level"), "{message}");
        for good in [
            "info",
            "WARN",
            "murmur=debug,info",
            "murmur::driver=trace",
            "off",
        ] {
            parse(&format!("log = {good:?}"), Path::new(".")).unwrap();
        }
    }

    #[test]
    fn an_unknown_key_is_named() {
        let error = parse(
            "listen = \"127.0.0.1:1\"\nlisten_port = 3\n",
            Path::new("."),
        );
        let message = format!("{:#}", error.unwrap_err());
        assert!(message.contains("unknown field `listen_port`"), "{message}");
        assert!(message.contains("line 2"), "{message}");
    }

    #[test]
    fn a_public_http_address_needs_a_token() {
        let error = parse("http = \"0.0.0.0:7401\"\n", Path::new("."));
        let message = format!("{:#}", error.unwrap_err());
        assert!(message.contains("http_token is required"), "{message}");
        // ... and TLS, unless plain text is allowed in so many words.
        let error = parse(
            "http = \"0.0.0.0:7401\"\nhttp_token = \"t\"\n",
            Path::new("."),
        );
        let message = format!("{:#}", error.unwrap_err());
        assert!(message.contains("clear text"), "{message}");
        parse(
            "http = \"0.0.0.0:7401\"\nhttp_token = \"t\"\nhttp_plaintext_token = true\n",
            Path::new("."),
        )
        .unwrap();
        let settings = parse(
            "http = \"0.0.0.0:7401\"\nhttp_token = \"t\"\n\
             http_tls_cert = \"c.pem\"\nhttp_tls_key = \"k.pem\"\n",
            Path::new("/data"),
        )
        .unwrap();
        assert_eq!(
            settings.http_tls,
            Some(("/data/c.pem".into(), "/data/k.pem".into()))
        );
        let error = parse("http_tls_cert = \"c.pem\"\n", Path::new("."));
        assert!(format!("{:#}", error.unwrap_err()).contains("go together"));
    }

    #[test]
    fn bad_values_say_what_is_wrong() {
        let cases = [
            (
                "[[peers]]\nid = \"nope\"\naddr = \"127.0.0.1:1\"\n",
                "`nope` is not a node id",
            ),
            ("listen = \"localhost\"\n", "invalid socket address"),
            ("anti_entropy_ms = 1\n", "anti_entropy_ms = 1 is too small"),
            ("log = \"[[\"\n", "not a valid filter"),
            ("http_token = \"\"\n", "http_token is empty"),
        ];
        for (text, expected) in cases {
            let message = format!("{:#}", parse(text, Path::new(".")).unwrap_err());
            assert!(
                message.contains(expected),
                "{message} should say {expected}"
            );
        }
    }
}
