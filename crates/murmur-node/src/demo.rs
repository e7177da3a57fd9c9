//! `murmur demo`: three real nodes on loopback (QUIC, sled in a temporary
//! directory) write to one document at once; node C is cut off and healed;
//! all three must end with the same heads, the same content and every
//! acknowledged write.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use murmur::automerge::transaction::Transactable;
use murmur::automerge::{Automerge, AutomergeError, ChangeHash, ObjType, ReadDoc, Value, ROOT};
use murmur::{DocHandle, Identity, Node};
use serde_json::Value as Json;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::cli::DemoArgs;

const NAMES: [&str; 3] = ["A", "B", "C"];
/// The node that is cut off and healed.
const CUT: usize = 2;
/// Each node writes at its own pace, so that writes interleave.
const WRITE_INTERVALS_MS: [u64; 3] = [170, 200, 230];
const ANTI_ENTROPY: Duration = Duration::from_millis(200);
/// How long setting up (connecting, replicating the new document) may take.
const SETUP_BOUND: Duration = Duration::from_secs(20);
/// How long the nodes may take to converge once the writers stop.
const CONVERGENCE_BOUND: Duration = Duration::from_secs(30);
const CHORES: [&str; 10] = [
    "buy milk",
    "water the plants",
    "call mum",
    "fix the bike",
    "book tickets",
    "take out the bins",
    "write the docs",
    "pay the rent",
    "walk the dog",
    "bake bread",
];

/// One node of the demo.
struct DemoNode {
    name: &'static str,
    node: Node,
    addr: SocketAddr,
}

/// What one node sees of the shared document.
#[derive(PartialEq)]
struct View {
    items: usize,
    counter: i64,
    heads: Vec<ChangeHash>,
    content: Json,
}

/// Runs the demo; fails if the nodes do not converge.
pub async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let root = tempfile::Builder::new()
        .prefix("murmur-demo-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    out!(
        "murmur demo: three nodes on this machine, real QUIC on 127.0.0.1, real sled in {}\n",
        root.path().display()
    );
    let nodes = start_nodes(root.path()).await?;
    let outcome = run(&nodes, Duration::from_secs(args.phase_secs)).await;
    for demo_node in nodes {
        demo_node.node.shutdown().await?;
    }
    if args.keep {
        out!("Data kept in {}", root.keep().display());
    }
    outcome
}

async fn run(nodes: &[DemoNode], phase: Duration) -> anyhow::Result<()> {
    let setup = Instant::now();
    connect_all(nodes).await?;
    let handles = shared_document(nodes).await?;
    out!(
        "Connected and sharing document {} after {} ms. It holds a todo list",
        handles[0].id(),
        setup.elapsed().as_millis()
    );
    out!("(\"todos\") and a counter (\"writes\"). Every node now appends a todo and");
    out!("bumps the counter ~5 times a second; a write counts once it is durable");
    out!("on that node's disk.\n");

    let (stop, stopped) = watch::channel(false);
    let writers: Vec<JoinHandle<Vec<String>>> = handles
        .iter()
        .enumerate()
        .map(|(i, handle)| tokio::spawn(writer(i, handle.clone(), stopped.clone())))
        .collect();
    let phases = run_phases(nodes, &handles, phase).await;
    let _ = stop.send(true);
    let mut acked = Vec::new();
    for writer in writers {
        acked.push(writer.await.context("a writer task failed")?);
    }
    phases?;
    converge(&handles, &acked).await
}

/// Starts the nodes, each on its own directory and an ephemeral UDP port,
/// each allowing the others from the start.
async fn start_nodes(root: &Path) -> anyhow::Result<Vec<DemoNode>> {
    let mut ids = Vec::new();
    for name in NAMES {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir)?;
        // Created before the nodes start, so that every id is known.
        let (identity, _) = Identity::load_or_create(&dir)?;
        ids.push(identity.node_id());
    }
    let mut nodes = Vec::new();
    for (name, id) in NAMES.into_iter().zip(&ids) {
        let mut builder = Node::builder()
            .data_dir(root.join(name))
            .listen(SocketAddr::from(([127, 0, 0, 1], 0)))
            .anti_entropy_interval(ANTI_ENTROPY);
        for other in ids.iter().filter(|other| *other != id) {
            builder = builder.allow(*other);
        }
        let node = builder
            .start()
            .await
            .with_context(|| format!("cannot start node {name}"))?;
        let addr = node
            .local_addr()
            .await?
            .context("the node is not listening")?;
        out!("  node {name}  {}  udp {addr}", node.id());
        nodes.push(DemoNode { name, node, addr });
    }
    out!();
    Ok(nodes)
}

/// Has every node add every other, and waits until all are connected.
async fn connect_all(nodes: &[DemoNode]) -> anyhow::Result<()> {
    for a in nodes {
        for b in nodes {
            if a.name != b.name {
                a.node.add_peer(b.node.id(), b.addr).await?;
            }
        }
    }
    let deadline = Instant::now() + SETUP_BOUND;
    loop {
        let mut connected = true;
        for n in nodes {
            connected &= n.node.peers().await?.len() == nodes.len() - 1;
        }
        if connected {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the nodes did not connect within {SETUP_BOUND:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Creates the document on A and waits until B and C hold it.
async fn shared_document(nodes: &[DemoNode]) -> anyhow::Result<Vec<DocHandle>> {
    let doc = nodes[0].node.create_doc().await?;
    doc.change(|tx| {
        tx.put_object(ROOT, "todos", ObjType::List)?;
        tx.put(ROOT, "writes", murmur::automerge::ScalarValue::counter(0))
    })
    .await?;
    let mut handles = vec![doc.clone()];
    let deadline = Instant::now() + SETUP_BOUND;
    for n in &nodes[1..] {
        loop {
            if let Ok(handle) = n.node.doc(doc.id()).await {
                if handle.read(|d| todos(d).is_some()).await? {
                    handles.push(handle);
                    break;
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "node {} did not receive the document within {SETUP_BOUND:?}",
                    n.name
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(handles)
}

fn todos<R: ReadDoc>(doc: &R) -> Option<murmur::automerge::ObjId> {
    match doc.get(ROOT, "todos").ok().flatten() {
        Some((Value::Object(ObjType::List), id)) => Some(id),
        _ => None,
    }
}

/// Writes until told to stop; returns the items acknowledged durable.
async fn writer(index: usize, doc: DocHandle, mut stop: watch::Receiver<bool>) -> Vec<String> {
    let name = NAMES[index];
    let mut ticks = tokio::time::interval(Duration::from_millis(WRITE_INTERVALS_MS[index]));
    let mut acked = Vec::new();
    for n in 1.. {
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => break,
            _ = ticks.tick() => {}
        }
        let item = format!("{name}{n} {}", CHORES[(n + index * 3) % CHORES.len()]);
        let written = item.clone();
        let result = doc
            .change(move |tx| {
                let list = todos(tx).ok_or(AutomergeError::Fail)?;
                let end = tx.length(&list);
                tx.insert(&list, end, written.as_str())?;
                tx.increment(ROOT, "writes", 1)
            })
            .await;
        match result {
            Ok(()) => acked.push(item),
            Err(error) => tracing::warn!(node = name, %error, "write failed"),
        }
    }
    acked
}

async fn run_phases(
    nodes: &[DemoNode],
    handles: &[DocHandle],
    phase: Duration,
) -> anyhow::Result<()> {
    let tick = (phase / 4).clamp(Duration::from_millis(250), Duration::from_secs(1));
    let started = Instant::now();
    print_header();
    show_until(nodes, handles, started, phase, tick, "connected").await?;
    banner(
        started,
        "cutting C off: A and B drop C, C drops A and B; all keep writing",
    );
    set_cut(nodes, true).await?;
    show_until(nodes, handles, started, phase * 2, tick, "C cut off").await?;
    banner(started, "healing: C and the others add each other back");
    set_cut(nodes, false).await?;
    let timer = tokio::spawn(report_sync(handles.to_vec(), started, phase));
    show_until(nodes, handles, started, phase * 3, tick, "healed").await?;
    timer.abort();
    banner(started, "stopping the writers");
    Ok(())
}

fn print_header() {
    let block = |name: &str| format!("  {:-^25}", format!(" node {name} "));
    out!("{:18}{}{}{}", "", block("A"), block("B"), block("C"));
    let columns = format!("  {:>5}  {:<9}  {:>5}", "todos", "heads", "peers");
    out!("{:>6}  {:<10}{columns}{columns}{columns}", "time", "");
}

/// Prints when the three nodes first have the same heads after the heal
/// (within `bound`; writes keep coming, so this is the first moment C has
/// caught up, not the end).
async fn report_sync(handles: Vec<DocHandle>, started: Instant, bound: Duration) {
    let healed = Instant::now();
    while healed.elapsed() < bound {
        match views(&handles).await {
            Ok(views) if views.iter().all(|v| v.heads == views[0].heads) => {
                let ms = healed.elapsed().as_millis();
                banner(
                    started,
                    &format!("all three have the same heads {ms} ms after the heal"),
                );
                return;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(_) => return,
        }
    }
}

/// Cuts C off from A and B (both ways), or heals that.
async fn set_cut(nodes: &[DemoNode], cut: bool) -> anyhow::Result<()> {
    let c = &nodes[CUT];
    for (i, other) in nodes.iter().enumerate() {
        if i == CUT {
            continue;
        }
        if cut {
            other.node.remove_peer(c.node.id()).await?;
            c.node.remove_peer(other.node.id()).await?;
        } else {
            other.node.add_peer(c.node.id(), c.addr).await?;
            c.node.add_peer(other.node.id(), other.addr).await?;
        }
    }
    Ok(())
}

fn banner(started: Instant, text: &str) {
    out!("{:>5.1}s  -- {text}", started.elapsed().as_secs_f64());
}

/// Prints a line of views every `tick` until `until` after `started`.
async fn show_until(
    nodes: &[DemoNode],
    handles: &[DocHandle],
    started: Instant,
    until: Duration,
    tick: Duration,
    label: &str,
) -> anyhow::Result<()> {
    loop {
        let next = (started.elapsed() + tick).min(until);
        tokio::time::sleep_until(started + next).await;
        let views = views(handles).await?;
        let mut line = format!("{:>5.1}s  {label:<10}", started.elapsed().as_secs_f64());
        for (n, view) in nodes.iter().zip(&views) {
            let peers = n.node.peers().await?.len();
            line.push_str(&format!(
                "  {:>5}  {:<9}  {:>5}",
                view.items,
                short_heads(&view.heads),
                peers
            ));
        }
        line.push_str(&agreement(&views));
        out!("{line}");
        if next >= until {
            return Ok(());
        }
    }
}

fn short_heads(heads: &[ChangeHash]) -> String {
    match heads {
        [] => "------".to_owned(),
        [one] => one.to_string()[..6].to_owned(),
        [first, rest @ ..] => format!("{}+{}", &first.to_string()[..6], rest.len()),
    }
}

fn agreement(views: &[View]) -> String {
    let same = |a: usize, b: usize| views[a].heads == views[b].heads;
    match (same(0, 1), same(1, 2), same(0, 2)) {
        (true, true, _) => "  in sync".to_owned(),
        (true, false, _) => "  C differs".to_owned(),
        (false, true, _) => "  A differs".to_owned(),
        (false, false, true) => "  B differs".to_owned(),
        (false, false, false) => "  all differ".to_owned(),
    }
}

async fn views(handles: &[DocHandle]) -> anyhow::Result<Vec<View>> {
    let mut views = Vec::new();
    for handle in handles {
        views.push(handle.read(view).await?);
    }
    Ok(views)
}

fn view(doc: &Automerge) -> View {
    let items = todos(doc).map_or(0, |list| doc.length(&list));
    let counter = match doc.get(ROOT, "writes").ok().flatten() {
        Some((Value::Scalar(value), _)) => value.as_i64().unwrap_or(0),
        _ => 0,
    };
    View {
        items,
        counter,
        heads: doc.get_heads(),
        content: murmur::json::document_to_json(doc),
    }
}

/// Waits for identical heads and content, then checks that every
/// acknowledged write is there exactly once and nothing else is.
async fn converge(handles: &[DocHandle], acked: &[Vec<String>]) -> anyhow::Result<()> {
    let stopped = Instant::now();
    let views = loop {
        let views = views(handles).await?;
        if views
            .iter()
            .all(|v| v.heads == views[0].heads && v.content == views[0].content)
        {
            break views;
        }
        if stopped.elapsed() > CONVERGENCE_BOUND {
            for (name, view) in NAMES.iter().zip(&views) {
                eprintln!(
                    "  {name}: {} items, heads {}",
                    view.items,
                    short_heads(&view.heads)
                );
            }
            bail!(
                "the nodes did not converge within {CONVERGENCE_BOUND:?} of the writers stopping"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    out!(
        "\nConverged {} ms after the writers stopped:",
        stopped.elapsed().as_millis()
    );
    for (name, view) in NAMES.iter().zip(&views) {
        out!(
            "  {name}  {} items  counter {}  heads {}",
            view.items,
            view.counter,
            short_heads(&view.heads)
        );
    }
    check_writes(&views[0], acked)
}

fn check_writes(view: &View, acked: &[Vec<String>]) -> anyhow::Result<()> {
    let items: Vec<&str> = view.content["todos"]
        .as_array()
        .map(|list| list.iter().filter_map(Json::as_str).collect())
        .unwrap_or_default();
    let total: usize = acked.iter().map(Vec::len).sum();
    let mut missing = Vec::new();
    for item in acked.iter().flatten() {
        if !items.contains(&item.as_str()) {
            missing.push(item.as_str());
        }
    }
    let per_node: Vec<String> = NAMES
        .iter()
        .zip(acked)
        .map(|(name, items)| format!("{name} {}", items.len()))
        .collect();
    if !missing.is_empty() || items.len() != total || view.counter != total as i64 {
        bail!(
            "acknowledged writes: {total} ({}), but the list has {} items and the counter is {}; missing: {missing:?}",
            per_node.join(", "),
            items.len(),
            view.counter
        );
    }
    out!(
        "  Same heads and same content on all three. {total} acknowledged writes ({}):",
        per_node.join(", ")
    );
    out!("  all {total} are in the list, exactly once, and the counter says {total}.");
    out!("  The last few todos, in the order every node now agrees on:");
    for item in items.iter().rev().take(5).rev() {
        out!("    - {item}");
    }
    Ok(())
}
