//! `murmur backup` and `murmur restore`.
//!
//! A backup is a directory: `manifest.json` (the node, the feed position it
//! covers, and each document's id, heads and file) and one file per
//! document, `docs/ID.automerge`, its bytes as Automerge saves them. Each
//! document's file is one consistent read of it, and every change the
//! node's feed numbered below `feed_end` is in the backup. A CRDT document
//! needs no cross-document snapshot: a restored node catches up on what
//! happened since from its peers.
//!
//! A restore loads those files into a node that is not running, under
//! their ids, merging into any document it holds already, and checks that
//! each document then holds the heads the manifest names.

use std::path::Path;

use anyhow::{bail, Context};
use hyper::Method;
use murmur::automerge::{ChangeHash, ReadDoc};
use murmur::{DocumentId, Node};
use serde::{Deserialize, Serialize};

use crate::cli::{BackupArgs, RestoreArgs};
use crate::client::Client;
use crate::config;

/// The manifest's file name.
const MANIFEST: &str = "manifest.json";
/// The manifest format this build writes and reads.
const FORMAT: u32 = 1;

/// What a backup holds.
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    format: u32,
    /// The node it was taken from.
    node: String,
    /// Every change the node's feed numbered below this is in the backup.
    feed_end: u64,
    documents: Vec<Entry>,
}

/// One document of a backup.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    id: String,
    heads: Vec<String>,
    /// Its file, relative to the backup directory.
    file: String,
}

/// `murmur backup DIR`.
pub async fn backup(args: BackupArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.client)?;
    let dir = &args.dir;
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        bail!(
            "{} is not empty: a backup goes into a new or empty directory",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir.join("docs"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    // Read before the documents: each holds every change numbered below.
    let status = client.json(Method::GET, "/status", None).await?;
    let feed_end = status["feed_end"]
        .as_u64()
        .context("the node's status has no feed_end")?;
    let node = status["node_id"].as_str().unwrap_or_default().to_owned();
    let listed = client.json(Method::GET, "/docs", None).await?;
    let ids: Vec<String> = serde_json::from_value(listed["documents"].clone())
        .context("the node's document list is malformed")?;
    let mut documents = Vec::with_capacity(ids.len());
    for id in ids {
        let bytes = client.bytes(&format!("/docs/{id}")).await?;
        let loaded = murmur::automerge::Automerge::load(&bytes)
            .with_context(|| format!("document {id} came back in bytes that do not load"))?;
        let file = format!("docs/{id}.automerge");
        write_atomically(&dir.join(&file), &bytes)?;
        documents.push(Entry {
            id,
            heads: loaded.get_heads().iter().map(ToString::to_string).collect(),
            file,
        });
    }
    let manifest = Manifest {
        format: FORMAT,
        node,
        feed_end,
        documents,
    };
    write_atomically(&dir.join(MANIFEST), &serde_json::to_vec_pretty(&manifest)?)?;
    println!(
        "backed up {} documents to {} (feed position {})",
        manifest.documents.len(),
        dir.display(),
        feed_end.saturating_sub(1)
    );
    Ok(())
}

/// `murmur restore DIR --config PATH`.
pub async fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let text = std::fs::read(args.dir.join(MANIFEST))
        .with_context(|| format!("{} has no {MANIFEST}: not a backup", args.dir.display()))?;
    let manifest: Manifest = serde_json::from_slice(&text).context("the manifest is malformed")?;
    if manifest.format != FORMAT {
        bail!(
            "backup format {} is not one this build reads ({FORMAT})",
            manifest.format
        );
    }
    let settings = config::load(&args.config)?;
    // The node's own directory, without its network: nothing replicates
    // until it runs.
    let node = Node::builder()
        .data_dir(&settings.data_dir)
        .start()
        .await
        .with_context(|| {
            format!(
                "cannot open the node's data in {} (is it running? stop it first)",
                settings.data_dir.display()
            )
        })?;
    let restored = restore_all(&node, &args.dir, &manifest).await;
    let closed = node.shutdown().await;
    let count = restored?;
    closed.context("the node did not close cleanly")?;
    println!("restored {count} documents from {}", args.dir.display());
    Ok(())
}

/// Restores every document of `manifest` into `node`.
async fn restore_all(node: &Node, dir: &Path, manifest: &Manifest) -> anyhow::Result<usize> {
    for entry in &manifest.documents {
        let id: DocumentId = entry.id.parse().map_err(|e| {
            anyhow::anyhow!("the manifest names a bad document id {:?}: {e}", entry.id)
        })?;
        if entry.file.contains("..") || Path::new(&entry.file).is_absolute() {
            bail!(
                "the manifest names a file outside the backup: {}",
                entry.file
            );
        }
        let bytes = std::fs::read(dir.join(&entry.file))
            .with_context(|| format!("cannot read {}", entry.file))?;
        let doc = node
            .restore(id, bytes)
            .await
            .with_context(|| format!("cannot restore document {id}"))?;
        let heads = doc.heads().await?;
        let wanted: Vec<ChangeHash> = entry
            .heads
            .iter()
            .map(|hash| hash.parse())
            .collect::<Result<_, _>>()
            .map_err(|_| anyhow::anyhow!("the manifest's heads of {id} are malformed"))?;
        let held = doc
            .read(move |d| {
                wanted
                    .iter()
                    .all(|hash| d.get_change_by_hash(hash).is_some())
            })
            .await?;
        if !held {
            bail!("document {id} does not hold the heads the backup names after the restore (now {heads:?})");
        }
    }
    Ok(manifest.documents.len())
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a
/// crash leaves the old file or the new one, never half of it.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let temporary = path.with_extension("partial");
    std::fs::write(&temporary, bytes)
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    std::fs::File::open(&temporary)?.sync_all()?;
    std::fs::rename(&temporary, path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
