//! The real driver under turmoil: murmur's driver, murmur-net's QUIC
//! transport, quinn and rustls, unchanged, on turmoil's simulated hosts,
//! network and clock.
//!
//! A small socket adapter carries QUIC over turmoil's UDP and adds seeded
//! per-packet loss and duplication. Three nodes replicate a document, one
//! is partitioned from the other two while both sides write, the network
//! heals, and all three must converge. The adapter records every packet
//! (virtual time, hosts, size, fate): run twice with one seed, the records
//! must be identical, which only holds if nothing in the node (timers,
//! task order, random choices) escapes the seed.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, UNIX_EPOCH};

use murmur::automerge::{transaction::Transactable, ROOT};
use murmur::socket::{AsyncUdpSocket, RecvMeta, Transmit, UdpPoller};
use murmur::{Ack, DocHandle, Identity, Node, NodeId, Simulation, Time};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const HOSTS: [&str; 3] = ["a", "b", "c"];
const PORT: u16 = 7400;
/// Per-packet chances the adapter drops or duplicates a datagram.
const LOSS: f64 = 0.02;
const DUPLICATION: f64 = 0.01;
/// Generous virtual deadlines: each wait ends on evidence.
const MESH_DEADLINE: Duration = Duration::from_secs(30);
const CONVERGE_DEADLINE: Duration = Duration::from_secs(60);
/// How long a cut connection may take to close: QUIC's idle timeout
/// (10 s) and then some.
const PARTITION: Duration = Duration::from_secs(30);

/// Every datagram the adapters handled, in order, one line each.
type PacketLog = Arc<Mutex<Vec<String>>>;

/// A wait for turmoil's socket to hold a datagram.
type Readable = Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;

/// turmoil's UDP socket as quinn's, with seeded loss and duplication.
struct LossySocket {
    inner: Arc<turmoil::net::UdpSocket>,
    /// The pending wait for a datagram, kept across polls.
    readable: Mutex<Option<Readable>>,
    rng: Mutex<ChaCha8Rng>,
    log: PacketLog,
    /// The host's name, for the log.
    host: &'static str,
}

impl std::fmt::Debug for LossySocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LossySocket")
            .field("inner", &self.inner)
            .finish()
    }
}

impl LossySocket {
    async fn bind(
        host: &'static str,
        addr: SocketAddr,
        seed: u64,
        log: PacketLog,
    ) -> io::Result<Self> {
        Ok(LossySocket {
            host,
            inner: Arc::new(turmoil::net::UdpSocket::bind(addr).await?),
            readable: Mutex::new(None),
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
            log,
        })
    }
}

/// turmoil's UDP never pushes back: always writable.
#[derive(Debug)]
struct AlwaysWritable;

impl UdpPoller for AlwaysWritable {
    fn poll_writable(self: Pin<&mut Self>, _: &mut Context) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncUdpSocket for LossySocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(AlwaysWritable)
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let (lost, doubled) = {
            let mut rng = self.rng.lock().expect("rng");
            (rng.gen_bool(LOSS), rng.gen_bool(DUPLICATION))
        };
        let fate = match (lost, doubled) {
            (true, _) => "lost",
            (false, true) => "doubled",
            (false, false) => "sent",
        };
        self.log.lock().expect("log").push(format!(
            "{:?} {} -> {} {}B {fate}",
            turmoil::sim_elapsed().unwrap_or_default(),
            self.host,
            transmit.destination,
            transmit.contents.len(),
        ));
        if lost {
            return Ok(());
        }
        let copies = if doubled { 2 } else { 1 };
        for _ in 0..copies {
            self.inner
                .try_send_to(transmit.contents, transmit.destination)?;
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [io::IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            match self.inner.try_recv_from(&mut bufs[0]) {
                Ok((len, from)) => {
                    meta[0] = RecvMeta {
                        addr: from,
                        len,
                        stride: len,
                        ecn: None,
                        dst_ip: None,
                    };
                    return Poll::Ready(Ok(1));
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Poll::Ready(Err(error)),
            }
            let mut readable = self.readable.lock().expect("readable");
            let wait = readable.get_or_insert_with(|| {
                let socket = self.inner.clone();
                Box::pin(async move { socket.readable().await })
            });
            match wait.as_mut().poll(cx) {
                Poll::Ready(result) => {
                    *readable = None;
                    result?;
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// The simulation's clock as engine time.
fn sim_clock() -> Time {
    let since = turmoil::since_epoch().unwrap_or_default();
    Time::from_millis(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

fn address(host: &str) -> SocketAddr {
    SocketAddr::new(turmoil::lookup(host), PORT)
}

/// What one run saw.
#[derive(Debug, PartialEq)]
struct Outcome {
    packets: Vec<String>,
    heads: Vec<String>,
    /// Virtual time from the heal to identical heads everywhere.
    converged_after: Duration,
}

type Slot = Arc<Mutex<Option<Arc<Node>>>>;

fn run(seed: u64, identities: &[Identity; 3]) -> Outcome {
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_secs(600))
        .epoch(UNIX_EPOCH + Duration::from_secs(1_800_000_000))
        .rng_seed(seed)
        .build();
    let log = PacketLog::default();
    let ids: Vec<NodeId> = identities.iter().map(Identity::node_id).collect();
    let slots: Vec<Slot> = HOSTS.iter().map(|_| Slot::default()).collect();
    for (index, host) in HOSTS.iter().enumerate() {
        let (identity, slot, log) = (identities[index].clone(), slots[index].clone(), log.clone());
        let ids = ids.clone();
        sim.host(*host, move || {
            let (identity, slot, log, ids) =
                (identity.clone(), slot.clone(), log.clone(), ids.clone());
            async move {
                let node_seed = seed.wrapping_mul(31).wrapping_add(index as u64);
                // turmoil binds the unspecified address only: advertise
                // the host's, as an operator would.
                let any = SocketAddr::from(([0, 0, 0, 0], PORT));
                let socket = LossySocket::bind(HOSTS[index], any, node_seed, log).await?;
                let peers = (0..HOSTS.len())
                    .filter(|&other| other != index)
                    .map(|other| (ids[other], address(HOSTS[other])));
                let node = Node::builder()
                    .in_memory()
                    .identity(identity)
                    .advertise(address(HOSTS[index]))
                    .peers(peers)
                    .simulated(Simulation::new(node_seed, sim_clock, Arc::new(socket)))
                    .start()
                    .await?;
                *slot.lock().expect("slot") = Some(Arc::new(node));
                std::future::pending::<()>().await;
                Ok(())
            }
        });
    }
    let result = Arc::new(Mutex::new(None));
    let reported = result.clone();
    sim.client("test", async move {
        let nodes = started(&slots).await;
        let outcome = scenario(&nodes).await?;
        *reported.lock().expect("result") = Some(outcome);
        Ok(())
    });
    sim.run().expect("the simulation ran to its end");
    let (heads, converged_after) = result.lock().expect("result").take().expect("an outcome");
    let packets = std::mem::take(&mut *log.lock().expect("log"));
    Outcome {
        packets,
        heads,
        converged_after,
    }
}

async fn started(slots: &[Slot]) -> Vec<Arc<Node>> {
    loop {
        let nodes: Vec<Arc<Node>> = slots
            .iter()
            .filter_map(|slot| slot.lock().expect("slot").clone())
            .collect();
        if nodes.len() == slots.len() {
            return nodes;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls `check` every 50 ms of virtual time until it holds, or fails
/// after `deadline` saying `what`.
async fn eventually<F, Fut>(what: &str, deadline: Duration, mut check: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    while !check().await {
        if start.elapsed() > deadline {
            return Err(format!("{what}: not within {deadline:?} of virtual time"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn heads(doc: &DocHandle) -> Vec<String> {
    let mut heads: Vec<String> = doc
        .heads()
        .await
        .expect("heads")
        .iter()
        .map(ToString::to_string)
        .collect();
    heads.sort();
    heads
}

/// Replicate, partition a from b and c, write on both sides, heal,
/// converge. Returns the final heads and the time from heal to them.
async fn scenario(
    nodes: &[Arc<Node>],
) -> Result<(Vec<String>, Duration), Box<dyn std::error::Error>> {
    eventually("a full mesh", MESH_DEADLINE, || async {
        let mut meshed = true;
        for node in nodes {
            meshed &= node.peers().await.expect("peers").len() == nodes.len() - 1;
        }
        meshed
    })
    .await?;
    let doc = nodes[0].create_doc().await?;
    doc.change_with(Ack::Replicated(2), |tx| tx.put(ROOT, "created", true))
        .await?;
    let docs: Vec<DocHandle> = {
        let mut docs = Vec::new();
        for node in nodes {
            docs.push(node.doc(doc.id()).await?);
        }
        docs
    };

    for other in &HOSTS[1..] {
        turmoil::partition(HOSTS[0], *other);
    }
    for round in 0..5 {
        docs[0]
            .change(move |tx| tx.put(ROOT, format!("a{round}"), round))
            .await?;
        docs[1]
            .change(move |tx| tx.put(ROOT, format!("b{round}"), round))
            .await?;
        docs[2]
            .change(move |tx| tx.put(ROOT, format!("c{round}"), round))
            .await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The cut connections time out, so the heal needs fresh handshakes,
    // through the dialers' backoff.
    eventually(
        "a's connections across the partition close",
        PARTITION,
        || async { nodes[0].peers().await.expect("peers").is_empty() },
    )
    .await?;
    // b and c still replicate to each other; a, cut off, cannot.
    eventually(
        "b and c agree during the partition",
        CONVERGE_DEADLINE,
        || async { heads(&docs[1]).await == heads(&docs[2]).await },
    )
    .await?;
    assert_ne!(
        heads(&docs[0]).await,
        heads(&docs[1]).await,
        "the partition kept a apart"
    );

    for other in &HOSTS[1..] {
        turmoil::repair(HOSTS[0], *other);
    }
    let healed = tokio::time::Instant::now();
    eventually(
        "all three agree after the heal",
        CONVERGE_DEADLINE,
        || async {
            let first = heads(&docs[0]).await;
            first == heads(&docs[1]).await && first == heads(&docs[2]).await
        },
    )
    .await?;
    let converged_after = healed.elapsed();
    let keys = docs[2]
        .read(|d| murmur::automerge::ReadDoc::keys(d, ROOT).count())
        .await?;
    assert_eq!(keys, 1 + 3 * 5, "every write of both sides is everywhere");
    Ok((heads(&docs[0]).await, converged_after))
}

/// Node keys from the seed, so that a seed replays in any process.
fn identities(seed: u64) -> [Identity; 3] {
    std::array::from_fn(|index| {
        let mut secret = [0; 32];
        ChaCha8Rng::seed_from_u64(seed.wrapping_add(index as u64)).fill(&mut secret);
        Identity::from_seed(secret).expect("an identity")
    })
}

/// Log lines carry the simulation's time.
struct SimTime;

impl tracing_subscriber::fmt::time::FormatTime for SimTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        write!(w, "{:?}", turmoil::sim_elapsed().unwrap_or_default())
    }
}

/// Seeds the sweep runs: `MURMUR_TURMOIL_SEEDS` (default 10), from
/// `MURMUR_TURMOIL_FIRST_SEED` (default 100).
fn sweep_seeds() -> std::ops::Range<u64> {
    let read = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|value| value.parse().ok())
            .unwrap_or(default)
    };
    let first = read("MURMUR_TURMOIL_FIRST_SEED", 100);
    first..first + read("MURMUR_TURMOIL_SEEDS", 10)
}

#[test]
fn partitions_heal_across_seeds() {
    if std::env::var_os("MURMUR_TURMOIL_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env(
                "MURMUR_TURMOIL_LOG",
            ))
            .with_writer(std::io::stderr)
            .with_timer(SimTime)
            .with_ansi(false)
            .try_init();
    }
    let mut slowest = (Duration::ZERO, 0);
    for seed in sweep_seeds() {
        eprintln!("seed {seed}");
        let outcome = run(seed, &identities(seed));
        slowest = slowest.max((outcome.converged_after, seed));
    }
    eprintln!(
        "{} seeds converged; the slowest, seed {}, {:?} after the heal",
        sweep_seeds().count(),
        slowest.1,
        slowest.0
    );
}

#[test]
fn a_partition_heals_and_a_seed_replays_identically() {
    let identities = identities(7);
    let first = run(7, &identities);
    assert!(
        first.packets.iter().any(|line| line.ends_with("lost"))
            && first.packets.iter().any(|line| line.ends_with("doubled")),
        "the adapter lost and doubled packets"
    );
    eprintln!(
        "seed 7: {} packets, converged {:?} after the heal",
        first.packets.len(),
        first.converged_after
    );
    let second = run(7, &identities);
    if let Some((index, (one, two))) = first
        .packets
        .iter()
        .zip(&second.packets)
        .enumerate()
        .find(|(_, (one, two))| one != two)
    {
        panic!("the replay diverged at packet {index}: {one} against {two}");
    }
    assert_eq!(first, second, "the same seed replays the same run");
}
