//! Running the `murmur` binary in tests: `murmur init` in a temporary
//! directory, `murmur run` as a child process (in the test's network
//! namespace or in another), and plain HTTP requests to its API. The
//! checkers that the fault tests share are in [`checks`].

#![allow(dead_code)] // each test file uses part of this

pub mod checks;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// The binary under test.
pub const MURMUR: &str = env!("CARGO_BIN_EXE_murmur");
/// How long a node may take to start (a bound against hanging).
const START_PATIENCE: Duration = Duration::from_secs(20);

/// Runs `murmur ARGS` to completion.
pub fn murmur(args: &[&str]) -> Output {
    Command::new(MURMUR)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("MURMUR_NODE")
        .env_remove("MURMUR_TOKEN")
        .output()
        .expect("run murmur")
}

/// Runs `murmur init --dir DIR` with `extra` flags, on ephemeral ports
/// unless `extra` names them; returns the node id it printed.
pub fn init(dir: &Path, extra: &[&str]) -> String {
    let dir = dir.to_str().expect("utf-8 path");
    let mut args = vec!["init", "--dir", dir];
    for flag in ["--listen", "--http"] {
        if !extra.contains(&flag) {
            args.extend([flag, "127.0.0.1:0"]);
        }
    }
    args.extend_from_slice(extra);
    let output = murmur(&args);
    assert!(
        output.status.success(),
        "init failed: {}",
        text(&output.stderr)
    );
    let stdout = text(&output.stdout);
    stdout
        .lines()
        .find_map(|line| line.strip_prefix("node id: "))
        .unwrap_or_else(|| panic!("no node id in {stdout}"))
        .to_owned()
}

/// Output bytes as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A `murmur run` child process. Killed when dropped; its log is printed
/// if the test failed.
pub struct NodeProcess {
    /// The process.
    pub child: Child,
    /// `http://HOST:PORT`, as the node printed it (`127.0.0.1` unless its
    /// config says otherwise).
    pub url: String,
    /// Its QUIC address.
    pub quic: String,
    /// Its node id.
    pub node_id: String,
    /// The bearer token of its HTTP API (`http_token` in its config).
    pub token: Option<String>,
    log: PathBuf,
}

impl NodeProcess {
    /// Runs `murmur run --config CONFIG` and waits for the line saying
    /// where it listens.
    pub fn start(config: &Path) -> NodeProcess {
        NodeProcess::spawn(Command::new(MURMUR), config)
    }

    /// Runs `murmur run --config CONFIG` inside the network namespace
    /// `netns` (`ip netns exec`, which execs the binary: the child is the
    /// node itself), and waits for the line saying where it listens.
    pub fn start_in(netns: &str, config: &Path) -> NodeProcess {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", netns, MURMUR]);
        NodeProcess::spawn(command, config)
    }

    /// Runs `command run --config CONFIG` (`command` being the binary, or
    /// a prefix that runs it).
    fn spawn(mut command: Command, config: &Path) -> NodeProcess {
        let log = config.with_file_name("run.log");
        let token = http_token(config);
        let mut child = command
            .args(["run", "--config"])
            .arg(config)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn murmur run");
        let stdout = child.stdout.take().expect("stdout");
        let (lines, first) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        let line = match first.recv_timeout(START_PATIENCE) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                panic!("murmur run did not start:\n{log}");
            }
        };
        // "murmur node ID replicating on udp ADDR with HTTP API on http://ADDR"
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words.len(), 12, "unexpected start line: {line}");
        NodeProcess {
            child,
            url: words[11].to_owned(),
            quic: words[6].to_owned(),
            node_id: words[2].to_owned(),
            token,
            log,
        }
    }

    /// The full URL of `path`.
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// Its HTTP API: where it is and the token it wants.
    pub fn api(&self) -> Api {
        Api {
            url: self.url.clone(),
            token: self.token.clone(),
        }
    }

    /// Sends SIGTERM and waits (bounded) for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status();
        assert!(
            sent.is_ok_and(|status| status.success()),
            "kill -TERM failed"
        );
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("murmur run did not stop within 10 s of SIGTERM");
    }

    /// Kills the process with SIGKILL (no flush, no connection close) and
    /// reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The node's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- log of node {} ---\n{}", self.node_id, self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `http_token` of the config file at `config`, if it sets one (a
/// config that does not parse is the node's to refuse, not this one's).
fn http_token(config: &Path) -> Option<String> {
    let text = std::fs::read_to_string(config).ok()?;
    let table: toml::Table = text.parse().ok()?;
    Some(table.get("http_token")?.as_str()?.to_owned())
}

/// A node's HTTP API, as a client sees it: its base URL and the bearer
/// token it wants, if any. Cheap to clone into tasks (a `NodeProcess` is
/// not).
#[derive(Debug, Clone)]
pub struct Api {
    /// `http://HOST:PORT`.
    pub url: String,
    /// The bearer token, if the API wants one.
    pub token: Option<String>,
}

impl Api {
    /// Sends a request for `path` and reads the whole answer; `None` if
    /// the connection failed or broke.
    pub async fn try_call(&self, method: &str, path: &str, body: Option<&str>) -> Option<Answer> {
        let url = format!("{}{path}", self.url);
        send(method, &url, self.token.as_deref(), body).await.ok()
    }

    /// Sends a request for `path` and reads the whole answer.
    pub async fn call(&self, method: &str, path: &str, body: Option<&str>) -> Answer {
        call(
            method,
            &format!("{}{path}", self.url),
            self.token.as_deref(),
            body,
        )
        .await
    }
}

/// A response: status code and body.
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The body as text.
    pub body: String,
}

impl Answer {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// Starts a request and returns the response with its body unread.
pub async fn open(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> hyper::Response<Incoming> {
    request(method, url, token, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

/// A GET of `url` with `headers`, its body unread.
pub async fn get_with(url: &str, headers: &[(&str, &str)]) -> hyper::Response<Incoming> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = Request::builder().method(Method::GET).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    client
        .request(request.body(Full::new(Bytes::new())).expect("request"))
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// POSTs `bytes` as `application/octet-stream` and reads the answer.
pub async fn post_bytes(url: &str, bytes: Vec<u8>) -> Answer {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let request = Request::builder()
        .method(Method::POST)
        .uri(url)
        .header("content-type", "application/octet-stream")
        .body(Full::new(Bytes::from(bytes)))
        .expect("request");
    let response = client
        .request(request)
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    Answer {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// Reads `body` until it holds `wanted` (or it ends): the text so far.
/// Panics past `patience`.
pub async fn read_until(
    body: &mut Incoming,
    patience: Duration,
    wanted: impl Fn(&str) -> bool,
) -> String {
    let deadline = tokio::time::Instant::now() + patience;
    let mut text = String::new();
    while !wanted(&text) {
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .unwrap_or_else(|_| panic!("timed out; read so far: {text:?}"));
        match frame {
            None => break,
            Some(frame) => {
                if let Ok(data) = frame.expect("the body broke").into_data() {
                    text.push_str(&String::from_utf8_lossy(&data));
                }
            }
        }
    }
    text
}

async fn request(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Result<hyper::Response<Incoming>, hyper_util::client::legacy::Error> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).expect("method"))
        .uri(url);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let body = Full::new(Bytes::from(body.unwrap_or_default().to_owned()));
    client.request(request.body(body).expect("request")).await
}

/// A free `127.0.0.1:PORT` for UDP (free when asked; taken soon after).
pub fn free_udp_addr() -> String {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    socket.local_addr().expect("local addr").to_string()
}

/// A free `127.0.0.1:PORT` for TCP (free when asked; taken soon after).
pub fn free_tcp_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind tcp");
    listener.local_addr().expect("local addr").to_string()
}

/// Sends a request and reads the whole answer; `None` if the connection
/// failed or broke (the node died under it, say).
pub async fn try_call(method: &str, url: &str, body: Option<&str>) -> Option<Answer> {
    send(method, url, None, body).await.ok()
}

/// Sends a request and reads the whole answer.
pub async fn call(method: &str, url: &str, token: Option<&str>, body: Option<&str>) -> Answer {
    send(method, url, token, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

async fn send(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Result<Answer, Box<dyn std::error::Error + Send + Sync>> {
    let response = request(method, url, token, body).await?;
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await?.to_bytes();
    Ok(Answer {
        status,
        body: text(&bytes),
    })
}

/// Reads Server-Sent Events from `body` until one has `data` for which
/// `wanted` holds; returns that data. Bounded by `patience`.
pub async fn next_event(
    body: &mut Incoming,
    buffer: &mut String,
    patience: Duration,
    wanted: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            let data: String = event
                .lines()
                .filter_map(|line| line.strip_prefix("data:"))
                .map(str::trim_start)
                .collect();
            if let Ok(json) = serde_json::from_str::<serde_json::Value>(&data) {
                if wanted(&json) {
                    return json;
                }
            }
        }
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .expect("timed out waiting for an event")
            .expect("the event stream ended")
            .expect("the event stream broke");
        if let Ok(data) = frame.into_data() {
            buffer.push_str(&String::from_utf8_lossy(&data));
        }
    }
}

/// The JavaScript test clients' directory (`tests/js`), with its pinned npm
/// packages installed (`npm ci`, from the lockfile, the first time). `None`
/// when Node.js is missing: the caller skips, except under `CI=true`, where
/// that is a failure (`.ci/run` checks for Node.js first).
pub fn js_clients() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/js");
    let has_node = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_node {
        assert!(
            std::env::var("CI").is_err(),
            "Node.js (`node`, `npm`) is needed for the JavaScript interop tests"
        );
        eprintln!("skipped: Node.js is not installed (the JavaScript interop tests need it)");
        return None;
    }
    // One installer at a time: tests run in parallel.
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _once = INSTALL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    // Installed, and from this lockfile (not an older one).
    let installed = std::fs::metadata(dir.join("node_modules/.package-lock.json"))
        .and_then(|meta| meta.modified())
        .ok();
    let locked = std::fs::metadata(dir.join("package-lock.json"))
        .and_then(|meta| meta.modified())
        .ok();
    if installed.is_none() || installed < locked {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .status()
            .expect("run npm ci");
        assert!(status.success(), "npm ci in {} failed", dir.display());
    }
    Some(dir)
}

/// Runs `node SCRIPT ARGS` in the JavaScript clients' directory; panics
/// with its output unless it succeeds; returns its standard output.
pub fn run_js(dir: &Path, script: &str, args: &[&str]) -> String {
    let output = Command::new("node")
        .arg(script)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run node");
    assert!(
        output.status.success(),
        "node {script} failed:\n{}\n{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}
