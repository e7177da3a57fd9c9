//! Real processes under network partitions: 3 to 5 `murmur` nodes, each in
//! its own network namespace, whose only path to one another is a
//! fault-injecting UDP relay in this test. Round after round the relay
//! takes one of the simulator's network nemesis shapes (halves, random
//! halves, isolate one node, majorities ring, bridge, one-way, flaky links
//! with loss, duplication and delay) while a writer on every node writes
//! over HTTP; then it heals, and the nodes must reach identical heads (the
//! time from heal to identical heads is printed), with every `durable`
//! write present exactly once and the counter equal to the items: the
//! checks of the kill -9 test (`tests/process/checks.rs`).
//!
//! Each node's namespace has one veth to the root namespace (node side
//! `10.S.I.2`, root side `10.S.I.1`, `S` derived from this process's id)
//! and a route to its own /24 only, so it cannot reach another node
//! directly. Node I's config lists peer J at a relay socket on `10.S.I.1`;
//! the relay forwards to J from a socket on `10.S.J.1`.
//!
//! It needs root (to make namespaces). Where namespaces cannot be made it
//! prints `netns: skipped (REASON)` and passes, except with `CI=true`,
//! where it fails (set `MURMUR_NETNS_SKIP=1` to skip on purpose).
//!
//! CI runs 3 nodes and 6 rounds (every shape that means something on 3
//! nodes); a longer run:
//!
//! ```sh
//! MURMUR_NETNS_NODES=5 MURMUR_NETNS_ROUNDS=20 cargo test --release \
//!     -p murmur-node --test netns -- --nocapture
//! ```
//!
//! `MURMUR_NETNS_SEED` seeds the shapes, the fault windows and the
//! relay's packet fates (the writers race the network, so a run is not
//! replayed exactly); `MURMUR_NETNS_WINDOW_MS` is the longest fault
//! window (3000 by default; windows longer than the nodes' QUIC idle
//! timeout close their connections, which are then redialed through the
//! relay).

mod process;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use process::checks::{
    check_items, create_document, read, wait_converged, wait_identical_heads, wait_meshed, writer,
    Ledger,
};
use process::{init, Api, NodeProcess};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// Where every node listens, inside its own namespace.
const QUIC_PORT: u16 = 7400;
const HTTP_PORT: u16 = 7401;

/// The run's size, from the environment.
#[derive(Debug)]
struct Settings {
    nodes: usize,
    rounds: usize,
    seed: u64,
    window_ms_max: u64,
}

impl Settings {
    fn from_env() -> Settings {
        fn number<T: std::str::FromStr>(name: &str) -> Option<T> {
            let text = std::env::var(name).ok()?;
            Some(
                text.parse()
                    .unwrap_or_else(|_| panic!("{name}={text} is not a number")),
            )
        }
        let settings = Settings {
            nodes: number("MURMUR_NETNS_NODES").unwrap_or(3),
            rounds: number("MURMUR_NETNS_ROUNDS").unwrap_or(6),
            seed: number("MURMUR_NETNS_SEED").unwrap_or_else(|| rand::thread_rng().gen()),
            window_ms_max: number("MURMUR_NETNS_WINDOW_MS").unwrap_or(3000),
        };
        assert!(
            (2..=9).contains(&settings.nodes),
            "MURMUR_NETNS_NODES must be 2 to 9"
        );
        assert!(settings.rounds > 0, "MURMUR_NETNS_ROUNDS must be positive");
        assert!(
            settings.window_ms_max >= 300,
            "MURMUR_NETNS_WINDOW_MS must be at least 300"
        );
        settings
    }
}

// ---------------------------------------------------------------------------
// Namespaces

/// Runs `ip ARGS`; the error says what failed and what `ip` said.
fn ip(args: &[&str]) -> Result<String, String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip` ({e})"))?;
    if output.status.success() {
        Ok(process::text(&output.stdout))
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            process::text(&output.stderr).trim()
        ))
    }
}

/// One network namespace per node, each with a veth pair to the root
/// namespace. Deleted when dropped (the veths go with them), also when
/// the test panics.
struct Namespaces {
    pid: u32,
    /// The `S` of `10.S.I.0/24`.
    subnet: u8,
    /// The namespaces made so far.
    made: Vec<String>,
}

impl Namespaces {
    /// Makes `nodes` namespaces, or says why they cannot be made.
    fn create(nodes: usize) -> Result<Namespaces, String> {
        if effective_uid() != Some(0) {
            return Err("not root: making network namespaces needs root".into());
        }
        let mut namespaces = Namespaces {
            pid: std::process::id(),
            subnet: free_subnet()?,
            made: Vec::new(),
        };
        for node in 0..nodes {
            namespaces.add(node)?;
        }
        Ok(namespaces)
    }

    fn name(&self, node: usize) -> String {
        format!("mm{}n{node}", self.pid)
    }

    fn veth(&self, node: usize) -> String {
        format!("mm{}v{node}", self.pid)
    }

    /// The root side of `node`'s veth: where the relay listens for it.
    fn relay_ip(&self, node: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, self.subnet, node as u8 + 1, 1)
    }

    /// The node side of `node`'s veth: where the node listens.
    fn node_ip(&self, node: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, self.subnet, node as u8 + 1, 2)
    }

    fn add(&mut self, node: usize) -> Result<(), String> {
        let (name, veth) = (self.name(node), self.veth(node));
        let relay = format!("{}/24", self.relay_ip(node));
        let own = format!("{}/24", self.node_ip(node));
        ip(&["netns", "add", &name])?;
        self.made.push(name.clone());
        let peer = ["peer", "name", "eth0", "netns", &name];
        ip(&[&["link", "add", &veth, "type", "veth"][..], &peer[..]].concat())?;
        ip(&["addr", "add", &relay, "dev", &veth])?;
        ip(&["link", "set", &veth, "up"])?;
        // Only the connected route to its own /24: no route to any other
        // node, whatever the root namespace forwards.
        ip(&["-n", &name, "addr", "add", &own, "dev", "eth0"])?;
        ip(&["-n", &name, "link", "set", "eth0", "up"])?;
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// Asserts that no node has a route to another node's address: the
    /// relay is the only path.
    fn assert_isolated(&self, nodes: usize) {
        for from in 0..nodes {
            for to in (0..nodes).filter(|&to| to != from) {
                let target = self.node_ip(to).to_string();
                let route = ip(&["-n", &self.name(from), "route", "get", &target]);
                assert!(
                    route.is_err(),
                    "node {from} has a route to node {to}: {route:?}"
                );
            }
        }
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for (node, name) in self.made.iter().enumerate() {
            // Deleting the root side deletes the pair; deleting the
            // namespace then leaves nothing behind.
            let _ = ip(&["link", "del", &self.veth(node)]);
            if let Err(error) = ip(&["netns", "del", name]) {
                eprintln!("netns: could not delete namespace {name}: {error}");
            }
        }
    }
}

/// This process's effective user id, from `/proc/self/status`.
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// An `S` such that nothing on this machine uses `10.S.0.0/16` yet,
/// starting from one derived from the process id (so that parallel runs
/// start apart).
fn free_subnet() -> Result<u8, String> {
    let used = ip(&["-4", "-o", "addr"])? + &ip(&["-4", "route", "show", "table", "all"])?;
    let words: Vec<&str> = used.split_whitespace().collect();
    let start = std::process::id() % 200;
    (0..200)
        .map(|offset| (20 + (start + offset) % 200) as u8)
        .find(|subnet| {
            let prefix = format!("10.{subnet}.");
            !words.iter().any(|word| word.starts_with(&prefix))
        })
        .ok_or_else(|| "no free 10.S.0.0/16 subnet".into())
}

// ---------------------------------------------------------------------------
// Faults

/// The simulator's network nemesis shapes (`murmur-sim`'s `FaultKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Shape {
    Halves,
    RandomHalves,
    Isolate,
    MajoritiesRing,
    Bridge,
    OneWay,
    Flaky,
}

impl Shape {
    const ALL: [Shape; 7] = [
        Shape::Halves,
        Shape::RandomHalves,
        Shape::Isolate,
        Shape::MajoritiesRing,
        Shape::Bridge,
        Shape::OneWay,
        Shape::Flaky,
    ];

    /// The simulator's name for it.
    fn name(self) -> &'static str {
        match self {
            Shape::Halves => "partition-halves",
            Shape::RandomHalves => "partition-random-halves",
            Shape::Isolate => "partition-isolate",
            Shape::MajoritiesRing => "partition-majorities-ring",
            Shape::Bridge => "partition-bridge",
            Shape::OneWay => "partition-one-way",
            Shape::Flaky => "flaky",
        }
    }
}

/// A bad link, one way.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Flaky {
    loss: f64,
    duplicate: f64,
    delay: f64,
    delay_max_ms: u64,
}

/// One fault, every random choice made.
#[derive(Debug, Clone)]
struct Fault {
    shape: Shape,
    /// Who sees whom, for people.
    groups: String,
    /// Directions (from, to) whose packets are dropped.
    blocked: BTreeSet<(usize, usize)>,
    /// Every link's flakiness, if the network turned bad.
    flaky: Option<Flaky>,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.shape.name(), self.groups)?;
        if let Some(flaky) = self.flaky {
            write!(
                f,
                "loss={:.2} dup={:.2} delay={:.2}<={}ms",
                flaky.loss, flaky.duplicate, flaky.delay, flaky.delay_max_ms
            )?;
        }
        Ok(())
    }
}

fn group(nodes: &[usize]) -> String {
    let mut nodes = nodes.to_vec();
    nodes.sort_unstable();
    let names: Vec<String> = nodes.iter().map(usize::to_string).collect();
    format!("[{}]", names.join(" "))
}

/// Both directions between every node of `a` and every node of `b`.
fn cut(a: &[usize], b: &[usize]) -> BTreeSet<(usize, usize)> {
    let mut blocked = BTreeSet::new();
    for &x in a {
        for &y in b {
            blocked.insert((x, y));
            blocked.insert((y, x));
        }
    }
    blocked
}

/// A fault of `shape` on `nodes` nodes, drawn as the simulator draws it
/// (`murmur_sim::nemesis::partition` and the `flaky` ranges of its
/// defaults, except that duplication and delay start at 5%, so that every
/// flaky round shows all three).
fn draw_fault(shape: Shape, nodes: usize, rng: &mut StdRng) -> Fault {
    let mut order: Vec<usize> = (0..nodes).collect();
    if shape != Shape::Halves {
        order.shuffle(rng);
    }
    let half = nodes / 2;
    let (groups, blocked) = match shape {
        Shape::Halves | Shape::RandomHalves => {
            let (a, b) = order.split_at(half);
            (format!("{} {}", group(a), group(b)), cut(a, b))
        }
        Shape::Isolate => {
            let (alone, rest) = order.split_at(1);
            (
                format!("{} {}", group(alone), group(rest)),
                cut(alone, rest),
            )
        }
        Shape::MajoritiesRing => majorities_ring(&order),
        Shape::Bridge => {
            let (bridge, rest) = order.split_at(1);
            let (a, b) = rest.split_at(rest.len() / 2);
            let groups = format!("{} <{}> {}", group(a), bridge[0], group(b));
            (groups, cut(a, b))
        }
        Shape::OneWay => {
            let (from, to) = order.split_at(half.max(1));
            let blocked = from
                .iter()
                .flat_map(|&a| to.iter().map(move |&b| (a, b)))
                .collect();
            (format!("{} -x-> {}", group(from), group(to)), blocked)
        }
        Shape::Flaky => (String::new(), BTreeSet::new()),
    };
    let flaky = (shape == Shape::Flaky).then(|| Flaky {
        loss: rng.gen_range(0.1..0.6),
        duplicate: rng.gen_range(0.05..0.4),
        delay: rng.gen_range(0.05..0.3),
        delay_max_ms: rng.gen_range(100..5_000),
    });
    Fault {
        shape,
        groups,
        blocked,
        flaky,
    }
}

/// Nodes stand in the ring `ring`; each sees those within the least reach
/// that makes what it sees (itself included) a majority.
fn majorities_ring(ring: &[usize]) -> (String, BTreeSet<(usize, usize)>) {
    let n = ring.len();
    let reach = (n / 2).div_ceil(2);
    let mut blocked = BTreeSet::new();
    for i in 0..n {
        for j in 0..n {
            let distance = i.abs_diff(j).min(n - i.abs_diff(j));
            if distance > reach {
                blocked.insert((ring[i], ring[j]));
            }
        }
    }
    (format!("ring {}", group_in_order(ring)), blocked)
}

fn group_in_order(nodes: &[usize]) -> String {
    let names: Vec<String> = nodes.iter().map(usize::to_string).collect();
    format!("({})", names.join(" "))
}

/// The shapes that do something on `nodes` nodes (a majorities ring of
/// three cuts nothing, for one).
fn shapes_for(nodes: usize) -> Vec<Shape> {
    let mut scratch = StdRng::seed_from_u64(0);
    Shape::ALL
        .into_iter()
        .filter(|&shape| {
            shape == Shape::Flaky || !draw_fault(shape, nodes, &mut scratch).blocked.is_empty()
        })
        .collect()
}

/// `reach[a][b]`: whether data written on `a` can get to `b` through
/// directions not `blocked` (through other nodes too: they pass it on).
fn reachability(nodes: usize, blocked: &BTreeSet<(usize, usize)>) -> Vec<Vec<bool>> {
    let mut reach: Vec<Vec<bool>> = (0..nodes)
        .map(|a| {
            (0..nodes)
                .map(|b| a == b || !blocked.contains(&(a, b)))
                .collect()
        })
        .collect();
    for via in 0..nodes {
        for a in 0..nodes {
            for b in 0..nodes {
                if reach[a][via] && reach[via][b] {
                    reach[a][b] = true;
                }
            }
        }
    }
    reach
}

// ---------------------------------------------------------------------------
// The relay

/// What the relay did to packets, counted.
#[derive(Debug, Default)]
struct Counters {
    forwarded: AtomicU64,
    blocked: AtomicU64,
    dropped: AtomicU64,
    duplicated: AtomicU64,
    delayed: AtomicU64,
}

/// A reading of the [`Counters`].
#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    forwarded: u64,
    blocked: u64,
    dropped: u64,
    duplicated: u64,
    delayed: u64,
}

impl Tally {
    fn since(self, before: Tally) -> Tally {
        Tally {
            forwarded: self.forwarded - before.forwarded,
            blocked: self.blocked - before.blocked,
            dropped: self.dropped - before.dropped,
            duplicated: self.duplicated - before.duplicated,
            delayed: self.delayed - before.delayed,
        }
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} forwarded, {} blocked, {} dropped, {} duplicated, {} delayed",
            self.forwarded, self.blocked, self.dropped, self.duplicated, self.delayed
        )
    }
}

/// What happens to packets from one node to another.
#[derive(Debug, Clone, Copy, Default)]
struct Direction {
    blocked: bool,
    flaky: Flaky,
}

/// The relay's fault state and its own seeded randomness.
struct Network {
    /// `directions[from][to]`.
    directions: Vec<Vec<Direction>>,
    rng: StdRng,
}

/// What becomes of one packet: nothing (blocked or lost), or one or two
/// copies, each sent now or after a delay.
enum Fate {
    Blocked,
    Lost,
    Sent(Vec<Option<Duration>>),
}

impl Network {
    fn fate(&mut self, from: usize, to: usize) -> Fate {
        let Direction { blocked, flaky } = self.directions[from][to];
        if blocked {
            return Fate::Blocked;
        }
        if self.rng.gen_bool(flaky.loss) {
            return Fate::Lost;
        }
        let copies = if self.rng.gen_bool(flaky.duplicate) {
            2
        } else {
            1
        };
        let delays = (0..copies)
            .map(|_| {
                self.rng
                    .gen_bool(flaky.delay)
                    .then(|| Duration::from_millis(self.rng.gen_range(0..=flaky.delay_max_ms)))
            })
            .collect();
        Fate::Sent(delays)
    }
}

/// The only path between the nodes: for each ordered pair (a dials b), a
/// front socket on a's root-side address that a dials as b, and a back
/// socket on b's root-side address that sends on to b's QUIC address.
/// Replies from b go back to whoever last sent to the front socket.
struct Relay {
    network: Arc<Mutex<Network>>,
    counters: Arc<Counters>,
    /// `fronts[(a, b)]`: where node a dials node b.
    fronts: BTreeMap<(usize, usize), SocketAddr>,
    pumps: Vec<JoinHandle<()>>,
}

/// One pair's sockets and where its traffic goes.
struct Pump {
    /// (dialer, dialed).
    pair: (usize, usize),
    front: Arc<UdpSocket>,
    back: Arc<UdpSocket>,
    /// The dialed node's QUIC address.
    target: SocketAddr,
    network: Arc<Mutex<Network>>,
    counters: Arc<Counters>,
}

impl Relay {
    async fn start(namespaces: &Namespaces, nodes: usize, seed: u64) -> Relay {
        let network = Arc::new(Mutex::new(Network {
            directions: vec![vec![Direction::default(); nodes]; nodes],
            rng: StdRng::seed_from_u64(seed),
        }));
        let counters = Arc::new(Counters::default());
        let mut fronts = BTreeMap::new();
        let mut pumps = Vec::new();
        for a in 0..nodes {
            for b in (0..nodes).filter(|&b| b != a) {
                let bind = |node| UdpSocket::bind((namespaces.relay_ip(node), 0));
                let front = bind(a).await.expect("bind a relay front socket");
                let back = bind(b).await.expect("bind a relay back socket");
                fronts.insert((a, b), front.local_addr().expect("front address"));
                let pump = Pump {
                    pair: (a, b),
                    front: Arc::new(front),
                    back: Arc::new(back),
                    target: SocketAddr::from((namespaces.node_ip(b), QUIC_PORT)),
                    network: network.clone(),
                    counters: counters.clone(),
                };
                pumps.push(tokio::spawn(pump.run()));
            }
        }
        Relay {
            network,
            counters,
            fronts,
            pumps,
        }
    }

    /// Where node `a` dials node `b`.
    fn front(&self, a: usize, b: usize) -> SocketAddr {
        self.fronts[&(a, b)]
    }

    /// Makes the network match `fault` (and only it).
    fn set(&self, fault: &Fault) {
        let mut network = self.network.lock().expect("relay state");
        for (from, row) in network.directions.iter_mut().enumerate() {
            for (to, direction) in row.iter_mut().enumerate() {
                *direction = Direction {
                    blocked: fault.blocked.contains(&(from, to)),
                    flaky: fault.flaky.unwrap_or_default(),
                };
            }
        }
    }

    /// No faults.
    fn heal(&self) {
        let mut network = self.network.lock().expect("relay state");
        for row in &mut network.directions {
            row.fill(Direction::default());
        }
    }

    fn tally(&self) -> Tally {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Tally {
            forwarded: read(&self.counters.forwarded),
            blocked: read(&self.counters.blocked),
            dropped: read(&self.counters.dropped),
            duplicated: read(&self.counters.duplicated),
            delayed: read(&self.counters.delayed),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        for pump in &self.pumps {
            pump.abort();
        }
    }
}

impl Pump {
    async fn run(self) {
        let (dialer, dialed) = self.pair;
        let mut client: Option<SocketAddr> = None;
        let mut outbound = vec![0u8; 65_536];
        let mut inbound = vec![0u8; 65_536];
        loop {
            tokio::select! {
                received = self.front.recv_from(&mut outbound) => {
                    let Ok((len, source)) = received else { pause().await; continue };
                    client = Some(source);
                    let packet = &outbound[..len];
                    self.forward(dialer, dialed, &self.back, self.target, packet).await;
                }
                received = self.back.recv_from(&mut inbound) => {
                    let Ok((len, source)) = received else { pause().await; continue };
                    if let (true, Some(client)) = (source == self.target, client) {
                        let packet = &inbound[..len];
                        self.forward(dialed, dialer, &self.front, client, packet).await;
                    }
                }
            }
        }
    }

    /// Sends `packet` (going from node `from` to node `to`) out of
    /// `socket` to `destination`, or not, as the network decides.
    async fn forward(
        &self,
        from: usize,
        to: usize,
        socket: &Arc<UdpSocket>,
        destination: SocketAddr,
        packet: &[u8],
    ) {
        let fate = self.network.lock().expect("relay state").fate(from, to);
        let count = |counter: &AtomicU64| counter.fetch_add(1, Ordering::Relaxed);
        let delays = match fate {
            Fate::Blocked | Fate::Lost => {
                let blocked = matches!(fate, Fate::Blocked);
                count(if blocked {
                    &self.counters.blocked
                } else {
                    &self.counters.dropped
                });
                return;
            }
            Fate::Sent(delays) => delays,
        };
        if delays.len() > 1 {
            count(&self.counters.duplicated);
        }
        for delay in delays {
            count(&self.counters.forwarded);
            let Some(delay) = delay else {
                let _ = socket.send_to(packet, destination).await;
                continue;
            };
            count(&self.counters.delayed);
            let (socket, packet) = (socket.clone(), packet.to_vec());
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = socket.send_to(&packet, destination).await;
            });
        }
    }
}

/// After a failed receive (an ICMP error reported late, say): a short
/// wait, so that an error that persists cannot spin the pump.
async fn pause() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

// ---------------------------------------------------------------------------
// The cluster

/// The nodes, the relay and the namespaces, torn down in that order.
struct Cluster {
    nodes: Vec<NodeProcess>,
    apis: Vec<Api>,
    relay: Relay,
    _dirs: Vec<tempfile::TempDir>,
    namespaces: Namespaces,
}

impl Cluster {
    async fn start(namespaces: Namespaces, nodes: usize, seed: u64) -> Cluster {
        let relay = Relay::start(&namespaces, nodes, seed).await;
        let dirs: Vec<tempfile::TempDir> =
            (0..nodes).map(|_| tempfile::tempdir().unwrap()).collect();
        let ids: Vec<String> = dirs.iter().map(|dir| init(dir.path(), &[])).collect();
        for (i, dir) in dirs.iter().enumerate() {
            let listen = format!("{}:{QUIC_PORT}", namespaces.node_ip(i));
            let http = format!("{}:{HTTP_PORT}", namespaces.node_ip(i));
            let peers: Vec<String> = (0..nodes)
                .filter(|&j| j != i)
                .map(|j| format!("{}@{}", ids[j], relay.front(i, j)))
                .collect();
            // Plain HTTP on the namespaces' private network, said so.
            let mut args = vec![
                "--force",
                "--listen",
                &listen,
                "--http",
                &http,
                "--http-plaintext",
            ];
            for peer in &peers {
                args.extend(["--peer", peer.as_str()]);
            }
            init(dir.path(), &args);
        }
        let nodes: Vec<NodeProcess> = dirs
            .iter()
            .enumerate()
            .map(|(i, dir)| {
                NodeProcess::start_in(&namespaces.name(i), &dir.path().join("config.toml"))
            })
            .collect();
        for node in &nodes {
            assert!(node.token.is_some(), "an API off loopback without a token");
        }
        let apis = nodes.iter().map(NodeProcess::api).collect();
        Cluster {
            nodes,
            apis,
            relay,
            _dirs: dirs,
            namespaces,
        }
    }

    /// Waits for a full mesh and checks that every connection runs
    /// through the relay: node i sees each peer at an address of
    /// `10.S.i.1`, never at the peer's own.
    async fn wait_meshed_through_relay(&self) {
        let peers = wait_meshed(&self.apis).await;
        for (node, listed) in peers.iter().enumerate() {
            let relay = self.namespaces.relay_ip(node).to_string();
            for peer in listed {
                let addr = peer["addr"].as_str().unwrap_or_default();
                assert!(
                    addr.starts_with(&format!("{relay}:")),
                    "node {node} is connected to {peer} not through the relay ({relay})"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Rounds

/// What one round measured.
struct RoundReport {
    fault: Fault,
    ledger: Ledger,
    /// Whether the fault leaves a node no path to another.
    separates: bool,
    /// Writes of this round that the fault kept from some node until the
    /// heal.
    held_back: usize,
    relay: Tally,
    heal_to_identical_heads: Duration,
}

/// One writer per node, writing to that node until told to stop; items
/// `r{round}n{node}-{k}`.
async fn write_for(cluster: &Cluster, doc: &str, round: usize, window: Duration) -> Ledger {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let writers: Vec<_> = cluster
        .apis
        .iter()
        .enumerate()
        .map(|(node, api)| {
            tokio::spawn(writer(
                format!("r{round}n{node}"),
                vec![api.clone()],
                doc.to_owned(),
                0,
                stopped.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(window).await;
    stop.send_replace(true);
    let mut ledger = Ledger::default();
    for writer in writers {
        ledger.absorb(writer.await.expect("writer"));
    }
    ledger
}

/// Before the heal: no node holds an item of this round written on a node
/// the fault keeps from it (the relay really is the only path, and the
/// shape does what it says). Returns how many items the fault held back
/// from at least one node.
async fn check_isolation(cluster: &Cluster, doc: &str, round: usize, fault: &Fault) -> usize {
    let nodes = cluster.apis.len();
    let reach = reachability(nodes, &fault.blocked);
    let prefix = format!("r{round}n");
    let origin = |item: &str| -> Option<usize> {
        let rest = item.strip_prefix(&prefix)?;
        rest.split('-').next()?.parse().ok()
    };
    let mut items = Vec::new();
    for (node, api) in cluster.apis.iter().enumerate() {
        let replica = read(api, doc)
            .await
            .unwrap_or_else(|| panic!("read node {node}"));
        let leaked: Vec<&String> = replica
            .items
            .iter()
            .filter(|item| origin(item).is_some_and(|from| !reach[from][node]))
            .collect();
        assert!(
            leaked.is_empty(),
            "{fault}: node {node} holds items from nodes it cannot reach: {leaked:?}"
        );
        items.extend(
            replica
                .items
                .into_iter()
                .filter(|item| item.starts_with(&prefix)),
        );
    }
    let written: BTreeSet<String> = items.into_iter().collect();
    written
        .iter()
        .filter(|item| origin(item).is_some_and(|from| (0..nodes).any(|to| !reach[from][to])))
        .count()
}

async fn run_round(
    cluster: &Cluster,
    doc: &str,
    round: usize,
    fault: Fault,
    window: Duration,
    all: &mut Ledger,
) -> RoundReport {
    let before = cluster.relay.tally();
    cluster.relay.set(&fault);
    let ledger = write_for(cluster, doc, round, window).await;
    let held_back = check_isolation(cluster, doc, round, &fault).await;
    let reach = reachability(cluster.apis.len(), &fault.blocked);
    let separates = reach.iter().flatten().any(|reaches| !reaches);
    let healed = Instant::now();
    cluster.relay.heal();
    wait_identical_heads(&cluster.apis, doc).await;
    let heal_to_identical_heads = healed.elapsed();
    let replica = wait_converged(&cluster.apis, doc).await;
    let relay = cluster.relay.tally().since(before);
    all.absorb(ledger.clone());
    check_items(&replica, all);
    RoundReport {
        fault,
        ledger,
        separates,
        held_back,
        relay,
        heal_to_identical_heads,
    }
}

/// The fault did something that could be seen: packets blocked, or lost,
/// duplicated and delayed; and there were writes for it to act on.
fn assert_fault_acted(report: &RoundReport) {
    let (fault, relay) = (&report.fault, &report.relay);
    assert!(
        !report.ledger.acked.is_empty(),
        "{fault}: no write was acknowledged"
    );
    if fault.flaky.is_some() {
        assert!(
            relay.dropped > 0 && relay.duplicated > 0 && relay.delayed > 0,
            "{fault}: the relay did not drop, duplicate and delay ({relay})"
        );
    } else {
        assert!(relay.blocked > 0, "{fault}: the relay blocked nothing");
    }
    // A bridge or a majorities ring only makes paths longer; the other
    // partitions keep some node's writes from another.
    if report.separates {
        assert!(report.held_back > 0, "{fault}: no write was held back");
    }
}

fn print_round(report: &RoundReport) {
    let ledger = &report.ledger;
    println!(
        "  {} writes ({} acked, {} unknown, {} refused), {} held back from some node; \
         relay: {}; heal -> identical heads {:.2} s",
        ledger.written(),
        ledger.acked.len(),
        ledger.unknown.len(),
        ledger.refused,
        report.held_back,
        report.relay,
        report.heal_to_identical_heads.as_secs_f64(),
    );
}

fn print_summary(reports: &[RoundReport]) {
    let mut by_shape: BTreeMap<Shape, Vec<&RoundReport>> = BTreeMap::new();
    for report in reports {
        by_shape.entry(report.fault.shape).or_default().push(report);
    }
    println!("netns: heal -> identical heads, per shape (s): rounds, min, median, max; writes acked; relay");
    for (shape, reports) in by_shape {
        let mut seconds: Vec<f64> = reports
            .iter()
            .map(|r| r.heal_to_identical_heads.as_secs_f64())
            .collect();
        seconds.sort_by(f64::total_cmp);
        let acked: usize = reports.iter().map(|r| r.ledger.acked.len()).sum();
        let relay = reports.iter().fold(Tally::default(), |sum, r| Tally {
            forwarded: sum.forwarded + r.relay.forwarded,
            blocked: sum.blocked + r.relay.blocked,
            dropped: sum.dropped + r.relay.dropped,
            duplicated: sum.duplicated + r.relay.duplicated,
            delayed: sum.delayed + r.relay.delayed,
        });
        println!(
            "  {:<26} {:>2}  {:.2} {:.2} {:.2}  {acked:>6}  {relay}",
            shape.name(),
            seconds.len(),
            seconds[0],
            seconds[seconds.len() / 2],
            seconds[seconds.len() - 1],
        );
    }
}

/// The namespaces, or `None` (having said why) where they cannot be made
/// and that is allowed.
fn namespaces_or_skip(nodes: usize) -> Option<Namespaces> {
    match Namespaces::create(nodes) {
        Ok(namespaces) => Some(namespaces),
        Err(reason) if std::env::var_os("MURMUR_NETNS_SKIP").is_some() => {
            eprintln!("netns: skipped ({reason}; MURMUR_NETNS_SKIP is set)");
            None
        }
        Err(reason) if std::env::var("CI").is_ok_and(|ci| ci == "true") => panic!(
            "netns: network namespaces are needed in CI and cannot be made: {reason} \
             (set MURMUR_NETNS_SKIP=1 to skip this test on purpose)"
        ),
        Err(reason) => {
            eprintln!("netns: skipped ({reason})");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_and_bad_links_lose_no_durable_write_and_heal_to_identical_heads() {
    let settings = Settings::from_env();
    let Some(namespaces) = namespaces_or_skip(settings.nodes) else {
        return;
    };
    let Settings {
        nodes,
        rounds,
        seed,
        window_ms_max,
    } = settings;
    let forwarding = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_default();
    println!(
        "netns: {nodes} nodes, {rounds} rounds, seed {seed} (MURMUR_NETNS_SEED={seed} draws the same faults), \
         subnet 10.{}.0.0/16, ip_forward={}",
        namespaces.subnet,
        forwarding.trim()
    );
    namespaces.assert_isolated(nodes);
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut cluster = Cluster::start(namespaces, nodes, seed ^ 0x5eed).await;
    cluster.wait_meshed_through_relay().await;
    let doc = create_document(&cluster.apis).await;
    println!(
        "netns: meshed through the relay, document {doc} everywhere after {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let shapes = shapes_for(nodes);
    let mut schedule: Vec<Shape> = Vec::new();
    let mut reports = Vec::new();
    let mut all = Ledger::default();
    for round in 0..rounds {
        if schedule.is_empty() {
            schedule = shapes.clone();
            schedule.shuffle(&mut rng);
        }
        // A fault acts on the connections it cuts: every round starts from
        // a full mesh (a heal that left two nodes talking only through a
        // third would let the next bridge block nothing).
        let meshing = Instant::now();
        cluster.wait_meshed_through_relay().await;
        if meshing.elapsed() > Duration::from_millis(500) {
            println!(
                "netns: the mesh was whole again {:.1} s after the last heal settled",
                meshing.elapsed().as_secs_f64()
            );
        }
        let shape = schedule.pop().expect("a shape");
        let fault = draw_fault(shape, nodes, &mut rng);
        let window = Duration::from_millis(rng.gen_range(window_ms_max / 3..=window_ms_max));
        println!(
            "netns round {}/{rounds}: {fault} for {:.1} s",
            round + 1,
            window.as_secs_f64()
        );
        let report = run_round(&cluster, &doc, round, fault, window, &mut all).await;
        print_round(&report);
        assert_fault_acted(&report);
        reports.push(report);
    }
    print_summary(&reports);
    println!(
        "netns: {} writes: {} acked durable (all present once on every node), {} unknown, {} refused; \
         relay: {}; {:.1} s in all",
        all.written(),
        all.acked.len(),
        all.unknown.len(),
        all.refused,
        cluster.relay.tally(),
        started.elapsed().as_secs_f64()
    );

    // The stores close cleanly.
    for node in cluster.nodes.drain(..) {
        assert!(node.terminate().success());
    }
}
