//! `murmur run`: a node, its QUIC replication and its HTTP API, until
//! Ctrl-C or SIGTERM.

use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use murmur::Node;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::cli::RunArgs;
use crate::config::{self, Settings};
use crate::http;

/// How long open HTTP requests (event streams end at once) may take to
/// finish after a shutdown signal.
const HTTP_DRAIN: Duration = Duration::from_secs(5);

/// Runs the node configured in `args.config`.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let settings = config::load(&args.config)?;
    crate::init_logging(&settings.log)?;
    // A certificate that does not load stops the start, before the node.
    let tls = settings
        .http_tls
        .as_ref()
        .map(|(cert, key)| crate::tls::server_config(cert, key))
        .transpose()?;
    let node = start_node(&settings).await?;
    let listener = TcpListener::bind(settings.http)
        .await
        .with_context(|| format!("cannot bind the HTTP API to {}", settings.http))?;
    let http_addr = listener.local_addr()?;
    let quic_addr = node.local_addr().await?;
    let node_id = node.id();
    let quic_addr = quic_addr.map_or("(none)".to_owned(), |addr| addr.to_string());
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(node = %node_id, quic = %quic_addr, http = %http_addr, tls = tls.is_some(), peers = settings.peers.len(), "node running");
    // One line on stdout, for people and for scripts that started us (a
    // closed stdout must not stop the node).
    {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stdout(),
            "murmur node {node_id} replicating on udp {quic_addr} with HTTP API on {scheme}://{http_addr}"
        );
    }

    let node = Arc::new(node);
    let (stop, stopped) = watch::channel(false);
    let tokens = crate::access::Tokens::load(&settings.data_dir)?;
    let app = http::router(http::AppState::new(
        node.clone(),
        settings.http_token.clone(),
        tokens,
        stopped.clone(),
    ));
    let mut server_stop = stopped;
    let stopping = async move {
        let _ = server_stop.wait_for(|stop| *stop).await;
    };
    let mut server = match tls {
        Some(config) => {
            let listener = crate::tls::TlsListener::new(listener, config)?;
            tokio::spawn(
                axum::serve(listener, app)
                    .with_graceful_shutdown(stopping)
                    .into_future(),
            )
        }
        None => tokio::spawn(
            axum::serve(listener, app)
                .with_graceful_shutdown(stopping)
                .into_future(),
        ),
    };
    tokio::select! {
        () = shutdown_signal() => tracing::info!("shutting down"),
        ended = &mut server => {
            ended.context("the HTTP server task failed")?.context("the HTTP server failed")?;
        }
    }
    let _ = stop.send(true);
    if tokio::time::timeout(HTTP_DRAIN, &mut server).await.is_err() {
        tracing::warn!("HTTP requests still open after {HTTP_DRAIN:?}; closing them");
        server.abort();
        let _ = server.await;
    }
    stop_node(node).await
}

async fn start_node(settings: &Settings) -> anyhow::Result<Node> {
    let mut builder = Node::builder()
        .data_dir(&settings.data_dir)
        .listen(settings.listen)
        .peers(settings.peers.iter().copied());
    if let Some(addr) = settings.advertise {
        builder = builder.advertise(addr);
    }
    for id in &settings.allow {
        builder = builder.allow(*id);
    }
    if let Some(interval) = settings.anti_entropy {
        builder = builder.anti_entropy_interval(interval);
    }
    if let Some(entries) = settings.feed_max_entries {
        builder = builder.feed_max_entries(entries);
    }
    if let Some(bytes) = settings.min_free_bytes {
        builder = builder.min_free_bytes(bytes);
    }
    builder.start().await.with_context(|| {
        format!(
            "cannot start the node (data in {}, QUIC on udp {})",
            settings.data_dir.display(),
            settings.listen
        )
    })
}

/// Flushes and stops the node, whether or not something (a request the
/// HTTP server let go of late) still holds it: the process exits 0 only
/// if everything was flushed.
async fn stop_node(node: Arc<Node>) -> anyhow::Result<()> {
    match Arc::try_unwrap(node) {
        Ok(node) => node.shutdown().await,
        Err(shared) => shared.close().await,
    }
    .context("flushing on shutdown")?;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on Ctrl-C or, on Unix, SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                terminate.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}
