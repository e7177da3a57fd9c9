//! Following a node's change feed into SQLite, on the embedding API: one
//! row per document, and the feed position stored in the same transaction,
//! so the sink resumes after a crash of either side without losing or
//! doubling anything (`murmur sink sqlite` does the same over HTTP).
//!
//! Run with `cargo run -p murmur --example sqlite_sink`: it writes a few
//! documents, sinks them, writes more, stops the sink and the node, starts
//! both again and sinks only what is new.

use automerge::transaction::Transactable;
use automerge::ROOT;
use murmur::view::ViewOptions;
use murmur::{Cursor, Error, FeedStream, Node};
use rusqlite::{params, Connection, OptionalExtension};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let db_path = dir.path().join("sink.sqlite");
    let node = Node::builder()
        .data_dir(dir.path().join("node"))
        .start()
        .await?;
    let doc = node.create_doc().await?;
    for n in 0..3_i64 {
        doc.change(move |tx| tx.put(ROOT, "n", n)).await?;
    }
    let mut db = open(&db_path)?;
    println!("first run: {} entries sunk", sink(&node, &mut db).await?);

    let other = node.create_doc().await?;
    other.change(|tx| tx.put(ROOT, "title", "second")).await?;
    node.shutdown().await?;
    drop(db);

    // Both start again: the sink resumes at its stored position.
    let node = Node::builder()
        .data_dir(dir.path().join("node"))
        .start()
        .await?;
    let mut db = open(&db_path)?;
    println!("second run: {} entries sunk", sink(&node, &mut db).await?);
    let mut rows = db.prepare("SELECT id, content FROM documents ORDER BY id")?;
    for row in rows.query_map([], |row| {
        Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
    })? {
        let (id, content) = row?;
        println!("  {id}: {content}");
    }
    drop(rows);
    node.shutdown().await?;
    Ok(())
}

fn open(path: &std::path::Path) -> rusqlite::Result<Connection> {
    let db = Connection::open(path)?;
    db.execute_batch(
        "CREATE TABLE IF NOT EXISTS documents (id TEXT PRIMARY KEY, heads TEXT, content TEXT);
         CREATE TABLE IF NOT EXISTS cursor (only INTEGER PRIMARY KEY CHECK (only = 0), seq INTEGER);",
    )?;
    Ok(db)
}

/// Applies the feed from the stored position up to now; how many entries.
async fn sink(node: &Node, db: &mut Connection) -> anyhow::Result<u64> {
    let stored: Option<i64> = db
        .query_row("SELECT seq FROM cursor", [], |row| row.get(0))
        .optional()?;
    let mut feed: FeedStream = node.feed(match stored {
        Some(seq) => Cursor::After(seq as u64),
        None => Cursor::Start,
    });
    let mut sunk = 0;
    while let Some(entry) = feed.try_next().await {
        let entry = match entry {
            Ok(entry) => entry,
            // Retention removed the position: a real sink takes a snapshot
            // of every document here (see `murmur sink sqlite`).
            Err(Error::FeedTrimmed { .. }) => anyhow::bail!("the position was trimmed"),
            Err(error) => return Err(error.into()),
        };
        let view = node
            .doc(entry.doc)
            .await?
            .view(ViewOptions::default())
            .await?;
        let heads: Vec<String> = view.heads.iter().map(ToString::to_string).collect();
        let tx = db.transaction()?;
        tx.execute(
            "INSERT INTO documents (id, heads, content) VALUES (?1, ?2, ?3)
             ON CONFLICT (id) DO UPDATE SET heads = excluded.heads, content = excluded.content",
            params![
                entry.doc.to_string(),
                serde_json::to_string(&heads)?,
                view.content.to_string()
            ],
        )?;
        tx.execute(
            "INSERT INTO cursor (only, seq) VALUES (0, ?1) ON CONFLICT (only) DO UPDATE SET seq = excluded.seq",
            [entry.seq as i64],
        )?;
        tx.commit()?;
        sunk += 1;
    }
    Ok(sunk)
}
