//! The `murmur` binary: run a node with its loopback HTTP API, talk to a
//! running node, or watch a three-node demo converge.

/// Prints a line on stdout. A reader that went away (`murmur init | head
/// -1`) ends the process quietly, with success: what it wanted was read.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(error) = writeln!(std::io::stdout(), $($arg)*) {
            $crate::output_failed(error);
        }
    }};
}

mod access;
mod backup;
mod cli;
mod client;
mod config;
mod demo;
mod feed;
mod http;
mod init;
mod metrics;
mod run;
mod sink;
mod sync;
mod tls;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

/// jemalloc keeps freed pages for reuse a while before giving them back.
/// With glibc's allocator the node's sync messages to clients (up to a MiB,
/// one per client per turn) were mapped, faulted in page by page and given
/// back on every message: 40% of the node's CPU with 256 clients typing.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("murmur: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(dispatch(cli.command));
    // A flush stuck on the disk runs on a blocking thread that dropping
    // the runtime would wait for forever: give it a moment, then leave.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("murmur: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Ends the process after stdout failed: quietly if its reader is gone,
/// saying why otherwise.
fn output_failed(error: std::io::Error) -> ! {
    if error.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("murmur: cannot write to stdout: {error}");
    std::process::exit(1);
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Init(args) => {
            init_logging("warn")?;
            init::init(args)
        }
        Command::Id(args) => init::print_id(&args.dir),
        Command::Run(args) => run::run(args).await,
        Command::Demo(args) => {
            // Cutting a node off makes the nodes log refused connections;
            // the demo's own output tells that story (RUST_LOG=info shows
            // the logs).
            init_logging("error")?;
            demo::demo(args).await
        }
        Command::Doc(command) => {
            init_logging("warn")?;
            client::doc(command).await
        }
        Command::Peers(args) => {
            init_logging("warn")?;
            client::peers(args).await
        }
        Command::Token(command) => {
            init_logging("warn")?;
            client::token(command).await
        }
        Command::Status(args) => {
            init_logging("warn")?;
            client::status(args).await
        }
        Command::Backup(args) => {
            init_logging("warn")?;
            backup::backup(args).await
        }
        Command::Restore(args) => {
            init_logging("warn")?;
            backup::restore(args).await
        }
        Command::Sink(cli::SinkCommand::Sqlite(args)) => {
            init_logging("warn")?;
            sink::sqlite(args).await
        }
    }
}

/// Logs to stderr with `filter` (an EnvFilter string), unless `RUST_LOG`
/// is set, which wins.
pub fn init_logging(filter: &str) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let (filter, text) = match std::env::var("RUST_LOG") {
        Ok(from_env) if !from_env.trim().is_empty() => (
            EnvFilter::try_new(&from_env)
                .map_err(|e| anyhow::anyhow!("RUST_LOG={from_env:?} is not a valid filter: {e}"))?,
            from_env,
        ),
        _ => (
            EnvFilter::try_new(filter)
                .map_err(|e| anyhow::anyhow!("log filter {filter:?} is not valid: {e}"))?,
            filter.to_owned(),
        ),
    };
    // Automerge instruments its loading at `info`, with the document's
    // whole change graph as a field: formatting it costs O(history) on
    // every sync message that carries a document chunk (measured: most of
    // a node's CPU under many syncing clients). Its spans stay off unless
    // the filter names automerge.
    let filter = if text.contains("automerge") {
        filter
    } else {
        filter.add_directive("automerge=warn".parse().expect("a valid directive"))
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))
}
