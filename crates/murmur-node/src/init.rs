//! `murmur init`: a data directory with an identity and a config.toml.

use anyhow::{bail, Context};
use rand::RngCore;

use crate::cli::InitArgs;
use crate::config::{self, InitConfig, CONFIG_FILE};

/// Creates the data directory, its identity and its config, and prints
/// the node id and how a peer would name this node.
pub fn init(args: InitArgs) -> anyhow::Result<()> {
    let config_path = args.dir.join(CONFIG_FILE);
    if config_path.exists() && !args.force {
        bail!(
            "{} exists already; pass --force to overwrite it (the identity is kept)",
            config_path.display()
        );
    }
    let peers = args
        .peers
        .iter()
        .map(|peer| config::parse_peer(peer))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let allow = args
        .allow
        .iter()
        .map(|id| config::parse_node_id(id).map_err(|e| anyhow::anyhow!("--allow: {e}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let generated_token = match (&args.token, args.http.ip().is_loopback()) {
        (None, false) => Some(random_token()),
        _ => None,
    };
    let token = args.token.as_deref().or(generated_token.as_deref());
    config::check_token(args.http, token)?;
    if args.listen.ip().is_unspecified() && args.advertise.is_none() {
        anyhow::bail!(
            "--listen {} is not an address other nodes can dial: add --advertise HOST:PORT, \
             the address they reach this node at",
            args.listen
        );
    }

    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let (identity, created) = murmur::Identity::load_or_create(&args.dir)
        .with_context(|| format!("cannot create the identity in {}", args.dir.display()))?;
    let tls = (args.http_tls || (!args.http.ip().is_loopback() && !args.http_plaintext))
        .then(|| make_certificate(&args))
        .transpose()?;
    let text = InitConfig {
        listen: args.listen,
        advertise: args.advertise.as_deref(),
        http: args.http,
        token,
        tls: tls.as_ref().map(|_| (CERT_FILE, KEY_FILE)),
        plaintext_token: args.http_plaintext && !args.http.ip().is_loopback(),
        peers: &peers,
        allow: &allow,
    }
    .to_string();
    config::parse(&text, &args.dir).context("the config written would not load (a bug)")?;
    std::fs::write(&config_path, text)
        .with_context(|| format!("cannot write {}", config_path.display()))?;

    let node_id = identity.node_id();
    let dir = args.dir.display();
    out!("node id: {node_id}");
    out!(
        "  identity  {dir}/node.key ({})",
        if created { "created" } else { "kept" }
    );
    out!("  config    {}", config_path.display());
    let scheme = if tls.is_some() { "https" } else { "http" };
    out!(
        "  quic      udp {}    http  {scheme}://{}",
        args.listen,
        args.http
    );
    if let Some((fingerprint, made)) = &tls {
        out!(
            "  tls       {dir}/{CERT_FILE} ({}), SHA-256 fingerprint {fingerprint}",
            if *made {
                "self-signed, created"
            } else {
                "kept"
            }
        );
    }
    if let Some(token) = &generated_token {
        out!("  token     {token}  (generated: the HTTP API is not on loopback)");
    }
    out!();
    out!(
        "Start it:      murmur run --config {}",
        config_path.display()
    );
    let reach = args
        .advertise
        .clone()
        .unwrap_or_else(|| args.listen.to_string());
    out!("Peers must know this node too (as a peer, or in `allow`):");
    out!("  murmur init --dir OTHER --peer {node_id}@{reach} ...");
    out!("  or in the other node's config.toml:");
    out!("    [[peers]]");
    out!("    id = \"{node_id}\"");
    out!("    addr = \"{reach}\"");
    Ok(())
}

/// `murmur id`: prints the node id kept in `dir`, creating nothing.
pub fn print_id(dir: &std::path::Path) -> anyhow::Result<()> {
    let key = dir.join("node.key");
    if !key.exists() {
        anyhow::bail!(
            "{} holds no node identity (no node.key): create one with `murmur init --dir {}`",
            dir.display(),
            dir.display()
        );
    }
    let (identity, _) = murmur::Identity::load_or_create(dir)
        .with_context(|| format!("cannot read the identity in {}", dir.display()))?;
    out!("{}", identity.node_id());
    Ok(())
}

/// The HTTPS certificate and key `init` makes, in the data directory.
const CERT_FILE: &str = "http-cert.pem";
const KEY_FILE: &str = "http-key.pem";

/// Makes a self-signed certificate for the HTTP API in the data
/// directory, unless one is there (it is kept, as the identity is, so
/// clients that pinned it go on trusting it). Returns its fingerprint and
/// whether it was made now.
fn make_certificate(args: &InitArgs) -> anyhow::Result<(String, bool)> {
    let (cert, key) = (args.dir.join(CERT_FILE), args.dir.join(KEY_FILE));
    if cert.exists() && key.exists() {
        return Ok((crate::tls::fingerprint_of(&cert)?, false));
    }
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    if !args.http.ip().is_unspecified() && !args.http.ip().is_loopback() {
        names.push(args.http.ip().to_string());
    }
    if let Some(advertise) = &args.advertise {
        if let Some((host, _)) = advertise.rsplit_once(':') {
            names.push(host.trim_matches(['[', ']']).to_owned());
        }
    }
    if let Ok(host) = std::fs::read_to_string("/etc/hostname") {
        let host = host.trim();
        if !host.is_empty() {
            names.push(host.to_owned());
        }
    }
    names.dedup();
    let (cert_pem, key_pem, fingerprint) = crate::tls::self_signed(names)?;
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    std::fs::write(&cert, cert_pem).with_context(|| format!("cannot write {}", cert.display()))?;
    write_private(&key, key_pem.as_bytes())?;
    Ok((fingerprint, true))
}

/// Writes a file only its owner may read.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}

/// 32 random bytes, hex.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
