//! The client subcommands (`doc`, `peers`, `status`): small HTTP calls to
//! a running node's API.
//!
//! The client is hyper-util's: axum already brings hyper, hyper-util and
//! http-body-util into the build, so it costs two features and no new
//! crates, and plain HTTP is all a loopback API needs.

use std::io::Write;

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Response, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value as Json};

use crate::cli::{ClientArgs, DocCommand, PeersArgs, PeersCommand};

/// A connection to one node's HTTP API.
pub struct Client {
    base: String,
    token: Option<String>,
    transport: Transport,
}

/// How requests reach the node.
enum Transport {
    /// Plain HTTP, with pooled connections.
    Plain(HyperClient<HttpConnector, Full<Bytes>>),
    /// HTTPS: a TLS connection per request (a CLI sends a few), trusting
    /// the node's certificate.
    Tls {
        config: std::sync::Arc<rustls::ClientConfig>,
        host: String,
        authority: String,
    },
}

impl Client {
    /// A client for the node at `args.node`.
    pub fn new(args: &ClientArgs) -> anyhow::Result<Self> {
        let base = args.node.trim_end_matches('/').to_owned();
        let uri: Uri = base
            .parse()
            .with_context(|| format!("--node {base} is not a URL"))?;
        let Some(authority) = uri.authority() else {
            bail!("--node {base}: expected http://HOST:PORT or https://HOST:PORT");
        };
        let transport = match uri.scheme_str() {
            Some("http") => {
                Transport::Plain(HyperClient::builder(TokioExecutor::new()).build_http())
            }
            Some("https") => {
                let Some(ca) = &args.ca_cert else {
                    bail!(
                        "--node {base}: give the node's certificate with --ca-cert FILE \
                         (or MURMUR_CA_CERT; `murmur init` wrote it as DIR/http-cert.pem)"
                    );
                };
                Transport::Tls {
                    config: trusting(ca)?,
                    host: uri
                        .host()
                        .unwrap_or("localhost")
                        .trim_matches(['[', ']'])
                        .to_owned(),
                    authority: authority.to_string(),
                }
            }
            _ => bail!("--node {base}: expected http://HOST:PORT or https://HOST:PORT"),
        };
        Ok(Client {
            base,
            token: args.token.clone(),
            transport,
        })
    }

    async fn request(&self, request: Request<Full<Bytes>>) -> anyhow::Result<Response<Incoming>> {
        match &self.transport {
            Transport::Plain(http) => Ok(http.request(request).await?),
            Transport::Tls {
                config,
                host,
                authority,
            } => {
                let tcp = tokio::net::TcpStream::connect(authority.as_str()).await?;
                let name = rustls::pki_types::ServerName::try_from(host.clone())
                    .with_context(|| format!("{host} is not a server name"))?;
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await
                    .context("TLS with the node failed (is --ca-cert its certificate?)")?;
                let (mut sender, connection) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                        .await?;
                tokio::spawn(connection);
                Ok(sender.send_request(request).await?)
            }
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        accept: &str,
        body: Option<&Json>,
    ) -> anyhow::Result<Response<Incoming>> {
        let uri: Uri = format!("{}{path}", self.base)
            .parse()
            .with_context(|| format!("bad request path {path}"))?;
        let host = uri.authority().map(ToString::to_string).unwrap_or_default();
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .header(hyper::header::HOST, host)
            .header(ACCEPT, accept);
        if let Some(token) = &self.token {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match body {
            Some(json) => {
                request = request.header(CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(json.to_string()))
            }
            None => Full::new(Bytes::new()),
        };
        self.request(request.body(body)?).await.map_err(|error| {
            error.context(format!(
                "cannot reach the node at {} (is `murmur run` running? set --node or MURMUR_NODE)",
                self.base
            ))
        })
    }

    /// Sends a request and returns the JSON answer (`null` for an empty
    /// one), or the API's error message as an error.
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<&Json>,
    ) -> anyhow::Result<Json> {
        let response = self.send(method, path, "application/json", body).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!("the node answered {status}: {}", error_message(&bytes));
        }
        if bytes.is_empty() {
            return Ok(Json::Null);
        }
        serde_json::from_slice(&bytes).context("the node answered with invalid JSON")
    }
}

impl Client {
    /// GETs a feed path as NDJSON and reads the whole answer: its entries
    /// (heartbeats left out), or why the cursor is gone (410).
    pub async fn lines(&self, path: &str) -> anyhow::Result<crate::sink::Feed> {
        let response = self
            .send(Method::GET, path, "application/x-ndjson", None)
            .await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        if status == hyper::StatusCode::GONE {
            return Ok(crate::sink::Feed::Trimmed(error_message(&bytes)));
        }
        if !status.is_success() {
            bail!("the node answered {status}: {}", error_message(&bytes));
        }
        let mut entries = Vec::new();
        for line in bytes
            .split(|byte| *byte == b'\n')
            .filter(|line| !line.is_empty())
        {
            let entry: Json =
                serde_json::from_slice(line).context("the feed sent a line that is not JSON")?;
            if let Some(error) = entry.get("error") {
                bail!("the feed stopped: {error}");
            }
            if entry.get("heartbeat").is_none() {
                entries.push(entry);
            }
        }
        Ok(crate::sink::Feed::Entries(entries))
    }

    /// GETs `path` as JSON; `None` if the node has nothing there (404, or
    /// 410 for something deleted).
    pub async fn json_or_missing(&self, path: &str) -> anyhow::Result<Option<Json>> {
        let response = self
            .send(Method::GET, path, "application/json", None)
            .await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        if status == hyper::StatusCode::NOT_FOUND || status == hyper::StatusCode::GONE {
            return Ok(None);
        }
        if !status.is_success() {
            bail!("the node answered {status}: {}", error_message(&bytes));
        }
        Ok(Some(
            serde_json::from_slice(&bytes).context("the node answered with invalid JSON")?,
        ))
    }

    /// GETs `path` as Automerge bytes (`Accept: application/octet-stream`).
    pub async fn bytes(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        let response = self
            .send(Method::GET, path, "application/octet-stream", None)
            .await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!("the node answered {status}: {}", error_message(&bytes));
        }
        Ok(bytes.to_vec())
    }
}

/// A TLS client trusting only the certificates in the PEM file `ca`.
fn trusting(ca: &std::path::Path) -> anyhow::Result<std::sync::Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.with_context(|| format!("{} is not PEM certificates", ca.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("{} holds an unusable certificate", ca.display()))?;
    }
    if roots.is_empty() {
        bail!("{} holds no certificate", ca.display());
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(std::sync::Arc::new(config))
}

/// The `error` field of an error body, or the body itself.
fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<Json>(body)
        .ok()
        .and_then(|json| json.get("error").and_then(Json::as_str).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_owned())
}

fn print_json(value: &Json) -> anyhow::Result<()> {
    out!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// `murmur doc ...`.
pub async fn doc(command: DocCommand) -> anyhow::Result<()> {
    match command {
        DocCommand::Create(args) => {
            let created = Client::new(&args)?
                .json(Method::POST, "/docs", None)
                .await?;
            out!("{}", created["id"].as_str().unwrap_or_default());
        }
        DocCommand::List(args) => {
            let listed = Client::new(&args)?.json(Method::GET, "/docs", None).await?;
            for id in listed["documents"].as_array().into_iter().flatten() {
                out!("{}", id.as_str().unwrap_or_default());
            }
        }
        DocCommand::Get { doc, full, client } => {
            let got = Client::new(&client)?
                .json(Method::GET, &format!("/docs/{doc}"), None)
                .await?;
            print_json(if full { &got } else { &got["content"] })?;
        }
        DocCommand::Put {
            doc,
            assignments,
            json,
            ack,
            client,
        } => {
            let ops = put_ops(&assignments, json.as_deref())?;
            let body = json!({ "ops": ops, "ack": ack });
            let done = Client::new(&client)?
                .json(Method::POST, &format!("/docs/{doc}/changes"), Some(&body))
                .await?;
            out!("{done}");
        }
        DocCommand::Watch { doc, client } => watch(&Client::new(&client)?, &doc).await?,
    }
    Ok(())
}

/// The ops of `murmur doc put`: the shorthand assignments, then `--json`.
fn put_ops(assignments: &[String], json: Option<&str>) -> anyhow::Result<Vec<Json>> {
    let mut ops = assignments
        .iter()
        .map(|assignment| shorthand_op(assignment))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(json) = json {
        let extra: Json = serde_json::from_str(json).context("--json is not valid JSON")?;
        match extra {
            Json::Array(extra) => ops.extend(extra),
            Json::Object(_) => ops.push(extra),
            _ => bail!("--json must be an op object or an array of ops"),
        }
    }
    if ops.is_empty() {
        bail!("nothing to change: give PATH=VALUE, PATH:=JSON or --json OPS");
    }
    Ok(ops)
}

/// `path=text` puts a string; `path:=json` puts a JSON value.
fn shorthand_op(assignment: &str) -> anyhow::Result<Json> {
    let Some((path, value)) = assignment.split_once('=') else {
        bail!("`{assignment}`: expected PATH=TEXT or PATH:=JSON");
    };
    let (path, value) = match path.strip_suffix(':') {
        Some(path) => {
            let value: Json = serde_json::from_str(value).with_context(|| {
                format!("`{assignment}`: the value after := must be JSON (quote strings, or use =)")
            })?;
            (path, value)
        }
        None => (path, Json::String(value.to_owned())),
    };
    Ok(json!({"op": "put", "path": shorthand_path(path)?, "value": value}))
}

/// `items.0.done` → `["items", 0, "done"]`.
fn shorthand_path(path: &str) -> anyhow::Result<Vec<Json>> {
    path.split('.')
        .map(|segment| {
            if segment.is_empty() {
                bail!("`{path}`: empty path segment (segments are joined by single dots)");
            }
            Ok(match segment.parse::<u64>() {
                Ok(index) if segment.bytes().all(|b| b.is_ascii_digit()) => json!(index),
                _ => json!(segment),
            })
        })
        .collect()
}

/// Prints the `data` of every event of `GET /docs/{doc}/events`, one line
/// each, until the node ends the stream.
async fn watch(client: &Client, doc: &str) -> anyhow::Result<()> {
    let path = format!("/docs/{doc}/events");
    let response = client
        .send(Method::GET, &path, "text/event-stream", None)
        .await?;
    let status = response.status();
    let mut body = response.into_body();
    if !status.is_success() {
        let bytes = body.collect().await?.to_bytes();
        bail!("the node answered {status}: {}", error_message(&bytes));
    }
    let mut buffer = String::new();
    let mut stdout = std::io::stdout();
    while let Some(frame) = body.frame().await {
        let frame = frame.context("the event stream broke")?;
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            let data: Vec<&str> = event
                .lines()
                .filter_map(|line| line.strip_prefix("data:"))
                .map(str::trim_start)
                .collect();
            if !data.is_empty() {
                writeln!(stdout, "{}", data.join("\n"))?;
                stdout.flush()?;
            }
        }
    }
    eprintln!("murmur: the node closed the event stream");
    Ok(())
}

/// `murmur peers`: lists the connected peers, or adds or removes one.
pub async fn peers(args: PeersArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.client)?;
    match args.action {
        None => list_peers(&client).await,
        Some(PeersCommand::Add { peer }) => {
            let (id, addr) = crate::config::parse_peer(&peer)?;
            let body = json!({"id": id.to_string(), "addr": addr});
            let added = client.json(Method::POST, "/peers", Some(&body)).await?;
            out!(
                "added {} at {}",
                added["id"].as_str().unwrap_or("?"),
                added["addr"].as_str().unwrap_or("?")
            );
            Ok(())
        }
        Some(PeersCommand::Remove { id }) => {
            let id = crate::config::parse_node_id(&id).map_err(anyhow::Error::msg)?;
            client
                .json(Method::DELETE, &format!("/peers/{id}"), None)
                .await?;
            out!("removed {id}");
            Ok(())
        }
    }
}

async fn list_peers(client: &Client) -> anyhow::Result<()> {
    let answer = client.json(Method::GET, "/peers", None).await?;
    let peers = answer["peers"].as_array().cloned().unwrap_or_default();
    if peers.is_empty() {
        out!("no peers connected");
        return Ok(());
    }
    out!("{:<50}  {:<22}  {:>9}", "PEER", "ADDRESS", "RTT");
    for peer in peers {
        out!(
            "{:<50}  {:<22}  {:>6.1} ms",
            peer["id"].as_str().unwrap_or("?"),
            peer["addr"].as_str().unwrap_or("?"),
            peer["rtt_ms"].as_f64().unwrap_or(f64::NAN)
        );
    }
    Ok(())
}

/// `murmur token create|list|revoke`.
pub async fn token(command: crate::cli::TokenCommand) -> anyhow::Result<()> {
    use crate::cli::TokenCommand;
    match command {
        TokenCommand::Create {
            client,
            docs,
            read_only,
        } => {
            let client = Client::new(&client)?;
            let body = json!({"docs": docs, "read_only": read_only});
            let made = client.json(Method::POST, "/tokens", Some(&body)).await?;
            let token = made["token"].as_str().context("the node sent no token")?;
            out!("{token}");
            eprintln!(
                "token {} ({}, {}); the node keeps only its hash: store it now. Revoke it with `murmur token revoke {}`.",
                made["id"].as_str().unwrap_or("?"),
                scope(&made),
                if read_only { "read-only" } else { "read-write" },
                made["id"].as_str().unwrap_or("?"),
            );
            Ok(())
        }
        TokenCommand::List(client) => {
            let client = Client::new(&client)?;
            let answer = client.json(Method::GET, "/tokens", None).await?;
            let tokens = answer["tokens"].as_array().cloned().unwrap_or_default();
            if tokens.is_empty() {
                out!("no tokens");
                return Ok(());
            }
            out!("{:<10}  {:<10}  SCOPE", "ID", "ACCESS");
            for token in tokens {
                let access = if token["read_only"].as_bool() == Some(true) {
                    "read-only"
                } else {
                    "read-write"
                };
                out!(
                    "{:<10}  {:<10}  {}",
                    token["id"].as_str().unwrap_or("?"),
                    access,
                    scope(&token)
                );
            }
            Ok(())
        }
        TokenCommand::Revoke { client, id } => {
            let client = Client::new(&client)?;
            client
                .json(Method::DELETE, &format!("/tokens/{id}"), None)
                .await?;
            out!("revoked {id}");
            Ok(())
        }
    }
}

/// A token's scope, for people.
fn scope(token: &Json) -> String {
    match token["docs"].as_array() {
        None => "every document".to_owned(),
        Some(docs) => docs
            .iter()
            .filter_map(Json::as_str)
            .collect::<Vec<_>>()
            .join(","),
    }
}

/// `murmur status`.
pub async fn status(args: ClientArgs) -> anyhow::Result<()> {
    let client = Client::new(&args)?;
    let status = client.json(Method::GET, "/status", None).await?;
    print_json(&status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorthand_puts_strings_and_json() {
        assert_eq!(
            shorthand_op("title=Hello = world").unwrap(),
            json!({"op": "put", "path": ["title"], "value": "Hello = world"})
        );
        assert_eq!(
            shorthand_op("items.0.done:=true").unwrap(),
            json!({"op": "put", "path": ["items", 0, "done"], "value": true})
        );
        assert!(shorthand_op("n:=hello").is_err());
        assert!(shorthand_op("a..b=1").is_err());
        assert!(shorthand_op("novalue").is_err());
    }

    #[test]
    fn json_ops_follow_the_shorthand_ones() {
        let ops = put_ops(&["a=1".to_owned()], Some(r#"{"op":"delete","path":["b"]}"#)).unwrap();
        assert_eq!(ops.len(), 2);
        assert!(put_ops(&[], None).is_err());
    }
}
