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
    let text = InitConfig {
        listen: args.listen,
        advertise: args.advertise.as_deref(),
        http: args.http,
        token,
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
    out!(
        "  quic      udp {}    http  http://{}",
        args.listen,
        args.http
    );
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

/// 32 random bytes, hex.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
