//! The command line: what `murmur --help` shows.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// The default data directory of `init` (and of `run`'s config path).
pub const DEFAULT_DIR: &str = "murmur-data";
/// The default HTTP API a client subcommand talks to.
pub const DEFAULT_NODE_URL: &str = "http://127.0.0.1:7401";

/// Murmur: a peer replication engine for Automerge documents.
///
/// Start with `murmur demo`. To run your own node: `murmur init`, then
/// `murmur run`; local applications use its HTTP API (or the `doc`,
/// `peers` and `status` subcommands).
#[derive(Debug, Parser)]
#[command(name = "murmur", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a data directory: the node identity and a config.toml.
    Init(InitArgs),
    /// Run a node (QUIC replication and the HTTP API) until Ctrl-C.
    Run(RunArgs),
    /// Print the node id of a data directory (made by `init`), alone on
    /// one line, for scripts.
    Id(IdArgs),
    /// Start three nodes on loopback, write on all of them, cut one off,
    /// heal, and show that they converge.
    Demo(DemoArgs),
    /// Documents on a running node.
    #[command(subcommand)]
    Doc(DocCommand),
    /// The peers a running node is connected to.
    Peers(PeersArgs),
    /// A running node's status and counters, as JSON.
    Status(ClientArgs),
    /// Copy every document of a running node into DIR (a manifest and one
    /// Automerge file per document), for `murmur restore`.
    Backup(BackupArgs),
    /// Load a backup (made by `murmur backup`) into a node that is not
    /// running, keeping document ids; it then catches up from its peers.
    Restore(RestoreArgs),
    /// Follow a running node's change feed into another store.
    #[command(subcommand)]
    Sink(SinkCommand),
    /// Tokens that let sync clients (browsers and apps on `GET /sync`) in,
    /// scoped to documents, read-only or not; revocable.
    #[command(subcommand)]
    Token(TokenCommand),
}

/// `murmur token ...`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token and print it alone on stdout (the node keeps only its
    /// hash: it is shown this once).
    Create {
        /// The node to talk to.
        #[command(flatten)]
        client: ClientArgs,
        /// The documents it may sync, comma-separated; every document
        /// (and creating new ones) if absent.
        #[arg(long, value_delimiter = ',', value_name = "ID,...")]
        docs: Option<Vec<String>>,
        /// Refuse its changes: it may only read.
        #[arg(long)]
        read_only: bool,
    },
    /// List the node's tokens (ids and scopes, never secrets).
    List(ClientArgs),
    /// Revoke a token (by the id before its dot) and close the sessions
    /// using it.
    Revoke {
        /// The node to talk to.
        #[command(flatten)]
        client: ClientArgs,
        /// The token's id.
        id: String,
    },
}

/// `murmur sink ...`.
#[derive(Debug, Subcommand)]
pub enum SinkCommand {
    /// Into a SQLite database: one row per document (id, heads, content,
    /// updated_at), the feed position in the same transaction.
    Sqlite(SqliteSinkArgs),
}

/// `murmur sink sqlite`.
#[derive(Debug, Args)]
pub struct SqliteSinkArgs {
    /// The SQLite database file (created if missing).
    #[arg(long)]
    pub db: PathBuf,
    /// Most feed entries per transaction.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Catch up with the feed, then exit (instead of following it).
    #[arg(long)]
    pub once: bool,
    /// Where the node is.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `murmur backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The directory to write (created; must be empty if it exists).
    pub dir: PathBuf,
    /// Where the node is.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `murmur restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup directory (made by `murmur backup`).
    pub dir: PathBuf,
    /// The config file of the node to restore into (which must not be
    /// running).
    #[arg(long, default_value = "murmur-data/config.toml")]
    pub config: PathBuf,
}

/// `murmur init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// The data directory to create (identity, database, config.toml).
    #[arg(long, default_value = DEFAULT_DIR)]
    pub dir: PathBuf,
    /// The UDP address for QUIC replication.
    #[arg(long, default_value = "127.0.0.1:7400")]
    pub listen: SocketAddr,
    /// The address other nodes dial to reach this one, HOST:PORT (default:
    /// --listen; required when --listen is 0.0.0.0 or ::).
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise: Option<String>,
    /// The TCP address of the HTTP API. Anything but a loopback address
    /// needs a token (one is generated unless --token is given) and TLS (a
    /// self-signed certificate is made unless --http-plaintext is given).
    #[arg(long, default_value = "127.0.0.1:7401")]
    pub http: SocketAddr,
    /// Serve the HTTP API over TLS with a self-signed certificate made
    /// now (kept if the data directory has one), even on loopback.
    #[arg(long)]
    pub http_tls: bool,
    /// Off loopback, serve plain HTTP anyway: bearer tokens then cross the
    /// network in clear text (the config says so: `http_plaintext_token`).
    #[arg(long, conflicts_with = "http_tls")]
    pub http_plaintext: bool,
    /// The bearer token HTTP clients must send.
    #[arg(long)]
    pub token: Option<String>,
    /// A peer to connect to, as NODE_ID@HOST:PORT (repeatable).
    #[arg(long = "peer", value_name = "ID@ADDR")]
    pub peers: Vec<String>,
    /// A node allowed to connect without being dialed (repeatable).
    #[arg(long = "allow", value_name = "ID")]
    pub allow: Vec<String>,
    /// Overwrite an existing config.toml (the identity is always kept).
    #[arg(long)]
    pub force: bool,
}

/// `murmur id`.
#[derive(Debug, Args)]
pub struct IdArgs {
    /// The data directory.
    #[arg(long, default_value = DEFAULT_DIR)]
    pub dir: PathBuf,
}

/// `murmur run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The config file written by `murmur init`.
    #[arg(long, default_value = "murmur-data/config.toml")]
    pub config: PathBuf,
}

/// `murmur demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Seconds of writing before node C is cut off (and again before the
    /// heal).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=60))]
    pub phase_secs: u64,
    /// Keep the temporary data directories (their path is printed).
    #[arg(long)]
    pub keep: bool,
}

/// Where a client subcommand finds the node.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The node's HTTP API.
    #[arg(long, global = true, env = "MURMUR_NODE", default_value = DEFAULT_NODE_URL)]
    pub node: String,
    /// The node's bearer token, if it has one.
    #[arg(long, global = true, env = "MURMUR_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// For an https:// node: the certificate to trust (PEM; `murmur init`
    /// wrote the node's as DIR/http-cert.pem).
    #[arg(long, global = true, env = "MURMUR_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<std::path::PathBuf>,
}

/// `murmur peers [add|remove]`.
#[derive(Debug, Args)]
pub struct PeersArgs {
    /// The node to talk to.
    #[command(flatten)]
    pub client: ClientArgs,
    /// What to do; without one, lists the connected peers.
    #[command(subcommand)]
    pub action: Option<PeersCommand>,
}

/// Changes to a running node's peers (not written to its config file).
#[derive(Debug, Subcommand)]
pub enum PeersCommand {
    /// Allow a node and keep a connection to it.
    Add {
        /// The peer, as NODE_ID@HOST:PORT.
        #[arg(value_name = "ID@ADDR")]
        peer: String,
    },
    /// Stop allowing a node and close any connection to it.
    Remove {
        /// The peer's node id.
        id: String,
    },
}

/// `murmur doc ...`.
#[derive(Debug, Subcommand)]
pub enum DocCommand {
    /// Create an empty document and print its id.
    Create(ClientArgs),
    /// List the documents the node holds.
    List(ClientArgs),
    /// Print a document's content as JSON.
    Get {
        /// The document id.
        doc: String,
        /// Print the id and heads as well: {"id", "heads", "content"}.
        #[arg(long)]
        full: bool,
        /// Where the node is.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Change a document, in one transaction.
    ///
    /// Shorthand: `path=text` puts a string, `path:=json` puts any JSON
    /// value (number, true, null, [..], {..}). A path is keys and list
    /// indexes joined by dots: `title`, `items.0.done`. Anything else
    /// (insert, delete, counters, text) goes in --json as a list of ops;
    /// see the README.
    Put {
        /// The document id.
        doc: String,
        /// `path=string` or `path:=json`.
        #[arg(value_name = "PATH=VALUE")]
        assignments: Vec<String>,
        /// Ops as a JSON array, applied after the shorthand ones.
        #[arg(long, value_name = "OPS")]
        json: Option<String>,
        /// When to return: applied, durable or replicated:K.
        #[arg(long, default_value = "durable")]
        ack: String,
        /// Where the node is.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print the document's changes as they happen, one JSON line each.
    Watch {
        /// The document id.
        doc: String,
        /// Where the node is.
        #[command(flatten)]
        client: ClientArgs,
    },
}
