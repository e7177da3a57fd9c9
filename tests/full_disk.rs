//! A full disk is an error, not a hang: on a small tmpfs, a node refuses
//! new writes below its free-space watermark (a typed error; HTTP 507),
//! keeps serving reads, shows it in its status, resumes when space is
//! freed, and still shuts down cleanly. Needs root to mount the tmpfs (CI
//! runs as root).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use automerge::transaction::Transactable;
use automerge::{ReadDoc, ROOT};
use murmur::{Error, Node};
use murmur_core::ReplicaError;

const MIB: u64 = 1024 * 1024;

/// A tmpfs of `mib` MiB mounted on a fresh directory, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(mib: u64) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("runs mount");
        assert!(
            status.success(),
            "cannot mount a tmpfs (this test needs root, as CI has)"
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

fn free_bytes(path: &Path) -> u64 {
    murmur::driver::free_bytes(path).unwrap()
}

/// Retries `write` until it returns a result `done` accepts, or panics
/// after a while (the node measures the disk once a second).
async fn until<T>(
    what: &str,
    mut attempt: impl AsyncFnMut() -> Result<T, Error>,
    done: impl Fn(&Result<T, Error>) -> bool,
) -> Result<T, Error> {
    let started = Instant::now();
    loop {
        let result = attempt().await;
        if done(&result) {
            return result;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{what}: never happened"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nearly_full_disk_refuses_writes_keeps_reads_and_recovers() {
    let disk = Tmpfs::mount(48);
    let data = disk.path().join("node");
    let node = Node::builder()
        .data_dir(&data)
        .min_free_bytes(16 * MIB)
        .start()
        .await
        .unwrap();
    let doc = node.create_doc().await.unwrap();
    doc.change(|tx| tx.put(ROOT, "before", 1_i64))
        .await
        .unwrap();

    // Fill the disk to 8 MiB free: below the 16 MiB watermark.
    let filler = disk.path().join("filler");
    let fill = free_bytes(disk.path()).saturating_sub(8 * MIB);
    std::fs::write(&filler, vec![0_u8; fill as usize]).unwrap();

    let refused = until(
        "a write refused for want of space",
        async || doc.change(|tx| tx.put(ROOT, "during", 2_i64)).await,
        |result| result.is_err(),
    )
    .await;
    assert!(
        matches!(refused, Err(Error::Replica(ReplicaError::DiskFull { .. }))),
        "{refused:?}"
    );
    // (Writes made before the node measured the disk went through.)
    let refused = doc.change(|tx| tx.put(ROOT, "refused", 4_i64)).await;
    assert!(
        matches!(refused, Err(Error::Replica(ReplicaError::DiskFull { .. }))),
        "{refused:?}"
    );
    assert!(matches!(
        node.create_doc().await,
        Err(Error::Replica(ReplicaError::DiskFull { .. }))
    ));
    // Reads go on, and the status says why writes do not.
    let before = doc
        .read(|d| d.get(ROOT, "before").unwrap().is_some())
        .await
        .unwrap();
    assert!(before);
    let status = node.status().await.unwrap();
    assert_eq!(status.metrics.disk_full, 1);
    assert!(status.metrics.writes_refused_disk_full >= 1);

    // Space freed: writes are accepted again.
    std::fs::remove_file(&filler).unwrap();
    until(
        "writes accepted again",
        async || doc.change(|tx| tx.put(ROOT, "after", 3_i64)).await,
        |result| result.is_ok(),
    )
    .await
    .unwrap();
    node.shutdown().await.unwrap();

    // Everything acknowledged is there after a restart.
    let node = Node::builder().data_dir(&data).start().await.unwrap();
    let doc = node.doc(doc.id()).await.unwrap();
    let keys = doc
        .read(|d| d.keys(ROOT).collect::<Vec<_>>())
        .await
        .unwrap();
    assert!(keys.contains(&"before".to_owned()), "{keys:?}");
    assert!(keys.contains(&"after".to_owned()), "{keys:?}");
    assert!(!keys.contains(&"refused".to_owned()), "{keys:?}");
    node.shutdown().await.unwrap();
}
