//! Embedding Murmur: open a node on a directory, make a document, change it,
//! watch it, restart, and find it all still there.
//!
//! Run with `cargo run -p murmur --example quickstart`.

use automerge::transaction::Transactable;
use automerge::{ObjType, ReadDoc, ROOT};
use murmur::{Ack, Node};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "murmur=info,murmur_net=info".into()),
        )
        .init();
    let dir = tempfile::tempdir()?;
    println!("data directory: {}", dir.path().display());

    let node = Node::builder().data_dir(dir.path()).start().await?;
    println!("node id: {}", node.id());
    let doc = node.create_doc().await?;
    println!("created document {}", doc.id());

    let mut changes = doc.changes().await?;
    let items = doc
        .change(|tx| tx.put_object(ROOT, "items", ObjType::List))
        .await?;
    for (index, item) in ["bread", "milk", "eggs"].into_iter().enumerate() {
        let items = items.clone();
        // Applied: returns before the flush; the loop's writes share one.
        doc.change_with(Ack::Applied, move |tx| tx.insert(&items, index, item))
            .await?;
    }
    doc.change(|tx| tx.put(ROOT, "title", "Shopping")).await?;
    for _ in 0..5 {
        if let Some(change) = changes.next().await {
            let change = change?;
            println!(
                "change from {:?}: {} patch(es)",
                change.origin,
                change.patches.len()
            );
        }
    }

    let id = doc.id();
    node.shutdown().await?;
    println!("node stopped; restarting from {}", dir.path().display());

    let node = Node::builder().data_dir(dir.path()).start().await?;
    let doc = node.doc(id).await?;
    let (title, count) = doc
        .read(|d| {
            let title = d
                .get(ROOT, "title")
                .ok()
                .flatten()
                .and_then(|(v, _)| v.as_str().map(str::to_owned));
            let items = d
                .get(ROOT, "items")
                .ok()
                .flatten()
                .map(|(_, id)| d.length(&id));
            (title, items)
        })
        .await?;
    println!("after restart: title {title:?}, {count:?} items");
    anyhow::ensure!(count == Some(3), "items lost across restart");
    node.shutdown().await?;
    Ok(())
}
