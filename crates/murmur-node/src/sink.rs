//! `murmur sink sqlite --db FILE`: follows a running node's change feed
//! into a SQLite table, one row per document, and survives its own crashes
//! and the node's without losing or doubling anything.
//!
//! The table is `documents (id, heads, content, updated_at)`: the
//! document's id, its heads (a JSON array) and its content (JSON) as the
//! node last served them, and when the sink wrote the row. The position in
//! the feed is kept in `murmur_sink (node, seq)`, written in the same
//! transaction as the rows: after a crash at any moment the sink resumes
//! where its last transaction left off. An entry applied twice (the crash
//! fell between the node answering and the commit) only writes the same
//! row again.
//!
//! Each round reads what the feed holds past the cursor (up to a batch),
//! reads each document it names once, and commits the rows and the new
//! cursor together. When the feed has nothing new, the sink waits on it
//! (`follow`) without polling. When the cursor has been trimmed from the
//! feed, or the feed is another node's, it takes a snapshot instead: every
//! document the node holds, the rows of any other removed, and the cursor
//! set to the feed's end, in one transaction (it says so on stderr).

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use hyper::Method;
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde_json::Value as Json;

use crate::cli::SqliteSinkArgs;
use crate::client::Client;

/// How long a wait for new entries lasts before it asks again (the node
/// sends heartbeats meanwhile).
const WAIT: Duration = Duration::from_secs(30);

/// `murmur sink sqlite`.
pub async fn sqlite(args: SqliteSinkArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.client)?;
    let mut db = Connection::open(&args.db)
        .with_context(|| format!("cannot open the SQLite database {}", args.db.display()))?;
    prepare(&db)?;
    let status = client.json(Method::GET, "/status", None).await?;
    let node = status["node_id"]
        .as_str()
        .context("the node's status has no node id")?
        .to_owned();
    let batch = args.batch.clamp(1, 10_000);
    loop {
        let cursor = match cursor(&db, &node)? {
            Some(seq) => seq,
            None => {
                snapshot(
                    &client,
                    &mut db,
                    &node,
                    "this database follows no feed of this node yet",
                )
                .await?;
                continue;
            }
        };
        let path = format!("/feed?since={cursor}&follow=false&limit={batch}");
        let entries = match client.lines(&path).await? {
            Feed::Entries(entries) => entries,
            Feed::Trimmed(why) => {
                snapshot(&client, &mut db, &node, &why).await?;
                continue;
            }
        };
        if entries.is_empty() {
            if args.once {
                println!("caught up at feed position {cursor}");
                return Ok(());
            }
            // Wait for the next entry (the answer ends with it).
            let wait = format!("/feed?since={cursor}&limit=1&heartbeat_ms=1000");
            let _ = tokio::time::timeout(WAIT, client.lines(&wait)).await;
            continue;
        }
        apply(&client, &mut db, &node, &entries).await?;
    }
}

/// Creates the sink's tables if they are missing.
fn prepare(db: &Connection) -> anyhow::Result<()> {
    db.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         CREATE TABLE IF NOT EXISTS documents (
             id TEXT PRIMARY KEY,
             heads TEXT NOT NULL,
             content TEXT NOT NULL,
             updated_at INTEGER NOT NULL
         );
         CREATE TABLE IF NOT EXISTS murmur_sink (
             node TEXT PRIMARY KEY,
             seq INTEGER NOT NULL
         );",
    )
    .context("cannot create the sink's tables")
}

/// The feed position this database holds for `node`, if it follows it.
fn cursor(db: &Connection, node: &str) -> anyhow::Result<Option<u64>> {
    let seq: Option<i64> = db
        .query_row(
            "SELECT seq FROM murmur_sink WHERE node = ?1",
            [node],
            |row| row.get(0),
        )
        .optional()?;
    Ok(seq.map(|seq| seq.max(0) as u64))
}

fn set_cursor(tx: &Transaction<'_>, node: &str, seq: u64) -> anyhow::Result<()> {
    // One node's feed at a time: a cursor into another's means nothing.
    tx.execute("DELETE FROM murmur_sink WHERE node != ?1", [node])?;
    tx.execute(
        "INSERT INTO murmur_sink (node, seq) VALUES (?1, ?2)
         ON CONFLICT (node) DO UPDATE SET seq = excluded.seq",
        params![node, i64::try_from(seq)?],
    )?;
    Ok(())
}

/// Writes the rows of the documents `entries` name, and the cursor after
/// the last entry, in one transaction.
async fn apply(
    client: &Client,
    db: &mut Connection,
    node: &str,
    entries: &[Json],
) -> anyhow::Result<()> {
    let mut docs = BTreeSet::new();
    let mut last = 0;
    for entry in entries {
        let seq = entry["seq"].as_u64().context("a feed entry has no seq")?;
        let doc = entry["doc"].as_str().context("a feed entry has no doc")?;
        docs.insert(doc.to_owned());
        last = last.max(seq);
    }
    let rows = read_documents(client, docs.iter()).await?;
    let tx = db.transaction()?;
    for (doc, row) in &rows {
        write_row(&tx, doc, row.as_ref())?;
    }
    set_cursor(&tx, node, last)?;
    tx.commit()?;
    Ok(())
}

/// Documents as the node serves them now (`None`: it has none by that
/// id), a few requests at a time.
async fn read_documents(
    client: &Client,
    docs: impl Iterator<Item = &String>,
) -> anyhow::Result<Vec<(String, Option<Json>)>> {
    use futures_util::{StreamExt, TryStreamExt};
    futures_util::stream::iter(docs)
        .map(|doc| async move {
            let read = client.json_or_missing(&format!("/docs/{doc}")).await?;
            anyhow::Ok((doc.clone(), read))
        })
        .buffered(READS_IN_FLIGHT)
        .try_collect()
        .await
}

/// Document reads a sink keeps in flight.
const READS_IN_FLIGHT: usize = 8;

/// Upserts (or, for a document the node no longer has, deletes) one row.
fn write_row(tx: &Transaction<'_>, doc: &str, read: Option<&Json>) -> anyhow::Result<()> {
    match read {
        Some(read) => {
            tx.execute(
                "INSERT INTO documents (id, heads, content, updated_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (id) DO UPDATE SET heads = excluded.heads,
                     content = excluded.content, updated_at = excluded.updated_at",
                params![
                    doc,
                    read["heads"].to_string(),
                    read["content"].to_string(),
                    now_ms()
                ],
            )?;
        }
        None => {
            tx.execute("DELETE FROM documents WHERE id = ?1", [doc])?;
        }
    }
    Ok(())
}

/// Replaces the table with every document the node holds, and sets the
/// cursor to the feed's end as read before them.
async fn snapshot(
    client: &Client,
    db: &mut Connection,
    node: &str,
    why: &str,
) -> anyhow::Result<()> {
    eprintln!("murmur sink: {why}; taking a snapshot of every document");
    let status = client.json(Method::GET, "/status", None).await?;
    if status["node_id"].as_str() != Some(node) {
        bail!("the node at this address changed identity; start the sink again");
    }
    let end = status["feed_end"]
        .as_u64()
        .context("the node's status has no feed_end")?;
    let listed = client.json(Method::GET, "/docs", None).await?;
    let ids: Vec<String> = serde_json::from_value(listed["documents"].clone())
        .context("the node's document list is malformed")?;
    let rows = read_documents(client, ids.iter()).await?;
    let tx = db.transaction()?;
    tx.execute("DELETE FROM documents", [])?;
    for (doc, row) in &rows {
        write_row(&tx, doc, row.as_ref())?;
    }
    set_cursor(&tx, node, end.saturating_sub(1))?;
    tx.commit()?;
    eprintln!(
        "murmur sink: snapshot of {} documents written; following the feed from {}",
        rows.len(),
        end.saturating_sub(1)
    );
    Ok(())
}

/// A feed read: its entries, or why the cursor is gone.
pub enum Feed {
    /// The entries (heartbeats left out).
    Entries(Vec<Json>),
    /// 410 Gone, with the node's message.
    Trimmed(String),
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        })
}
