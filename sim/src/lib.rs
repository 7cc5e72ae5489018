//! A deterministic virtual-time harness: many [`Node`]s over a seeded in-memory network.
//!
//! The harness plays the shell's part for every node: it dials, carries requests and
//! responses with per-link latency, jitter and loss, fires timers and keeps each node's
//! persisted graph so nodes can be killed and restarted. Time jumps from event to event, so a
//! minute of a 200-node network runs in well under a second of CPU.
//!
//! Without NATs, a handshake costs one round trip and never fails except through loss or
//! an unreachable peer. Once a world has NATs ([`World::add_nat`], [`nat`]), every dial is
//! played at packet level (the private `net` module): retransmitted QUIC Initials through
//! NAT mappings and filters, and the hole-punching probes of [`Output::Punch`] and
//! `Path::Punch` (birthday probing included); streams on established connections are then
//! reliable. In every world a relay circuit is admitted by the relay's own core, which sees
//! the real `RelayOpen` and is told when the circuit closes. It is a test tool, not a
//! simulator of QUIC or of any particular NAT box.

pub mod nat;
mod net;

use std::cmp::Reverse;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, RngExt, SeedableRng};

use chaosnet_proto::{
    Activity, Command, CommandId, CommandResult, ConnMode, Connected, Contact, Event, Failure,
    GraphChange, InboundId, Node, NodeConfig, NodeId, Output, Path, Request, RequestId, Response,
    SecretKey, Time,
};

pub use nat::{Filtering, Mapping, NatBehaviour};
pub use net::BirthdayRecord;
use net::{Host, NetEv, NetState, Packet, Reply};

/// Sends of a stream frame before a packet-level connection gives up on it.
const STREAM_TRIES: u32 = 6;
/// First retransmission timeout of a stream frame; it doubles on each loss.
const STREAM_RTO_MS: u64 = 300;

/// Behaviour of a link between two nodes, applied to each message independently.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkModel {
    /// One-way latency. Default 20 ms.
    pub latency_ms: u64,
    /// Uniform extra delay in `0..=jitter_ms`. Default 5 ms.
    pub jitter_ms: u64,
    /// Chance that a message is lost, in percent. Default 0.
    pub loss_pct: f64,
}

impl Default for LinkModel {
    fn default() -> Self {
        LinkModel {
            latency_ms: 20,
            jitter_ms: 5,
            loss_pct: 0.0,
        }
    }
}

/// Harness configuration.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Seed of the network's randomness and of the node ids. Default 0.
    pub seed: u64,
    /// Link used between any two nodes without an override.
    pub link: LinkModel,
    /// How long a dial to a dead or absent address takes to fail; with NATs, how long the
    /// dial a request needs keeps retransmitting before it fails. Default 3,000 ms.
    pub unreachable_after_ms: u64,
    /// Keep every node's events (memory grows with the run). Default true.
    pub record_events: bool,
    /// Also queue the events this filter keeps for [`World::take_events`], which the caller
    /// drains (so memory stays bounded by how often it does). Default none.
    pub tap: Option<fn(&Event) -> bool>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 0,
            link: LinkModel::default(),
            unreachable_after_ms: 3_000,
            record_events: true,
            tap: None,
        }
    }
}

/// One node of the world.
#[derive(Debug)]
pub struct SimNode {
    /// The core.
    pub node: Node,
    /// Its address: public, or private behind its NAT.
    pub addr: SocketAddr,
    /// The NAT it sits behind, if any.
    pub nat: Option<usize>,
    /// Whether it is running.
    pub up: bool,
    /// What it reported, if the world records events.
    pub events: Vec<(Time, Event)>,
    /// The requests (by kind), connects (`connect`) and punches (`punch`) it started, with
    /// the activity each serves, if the world records events.
    pub sent: Vec<(Time, &'static str, Option<Activity>)>,
    /// Its persisted node graph, as the shell would keep it on disk.
    pub store: Store,
    /// Ordered: a kill or a disconnect tells the peers in this order, the same in every run.
    conns: BTreeSet<usize>,
    wake: Option<Time>,
}

/// A node's persisted graph: one contact per id, in id order.
///
/// A sorted vector rather than a map: every node of a large world keeps one, and a B-tree
/// costs about twice the contacts' own size. Most writes replace a contact in place; only a
/// new or forgotten peer shifts the ones after it.
#[derive(Debug, Default)]
pub struct Store {
    contacts: Vec<Contact>,
}

impl Store {
    /// The contacts, in id order.
    pub fn values(&self) -> impl Iterator<Item = &Contact> {
        self.contacts.iter()
    }

    /// The contact of `id`.
    pub fn get(&self, id: &NodeId) -> Option<&Contact> {
        let i = self.contacts.binary_search_by(|c| c.id.cmp(id)).ok()?;
        self.contacts.get(i)
    }

    /// Number of contacts.
    pub fn len(&self) -> usize {
        self.contacts.len()
    }

    /// True when nothing is persisted.
    pub fn is_empty(&self) -> bool {
        self.contacts.is_empty()
    }

    fn upsert(&mut self, c: Contact) {
        match self.contacts.binary_search_by(|x| x.id.cmp(&c.id)) {
            Ok(i) => self.contacts[i] = c,
            Err(i) => {
                if self.contacts.len() == self.contacts.capacity() {
                    // Grow by a quarter: doubling would leave up to half of it unused.
                    self.contacts.reserve_exact(self.contacts.len() / 4 + 4);
                }
                self.contacts.insert(i, c);
            }
        }
    }

    fn remove(&mut self, id: &NodeId) {
        if let Ok(i) = self.contacts.binary_search_by(|c| c.id.cmp(id)) {
            self.contacts.remove(i);
        }
    }
}

#[derive(Debug)]
enum Msg {
    Start,
    Wake,
    Request {
        from: usize,
        reply: Reply,
        request: Request,
    },
    Response {
        id: RequestId,
        result: Result<Response, Failure>,
    },
    ConnectResult {
        id: RequestId,
        result: Result<Connected, Failure>,
    },
    ConnUp {
        peer: usize,
        mode: ConnMode,
        remote: SocketAddr,
    },
    Packet(Packet),
    Net(NetEv),
}

/// A queue entry: when, in what order, and where its message waits in the slab. The heap
/// moves entries on every push and pop, so they are kept small; messages stay put.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Scheduled {
    at: Time,
    seq: u64,
    slot: u32,
}

/// The queue's messages by slot, with freed slots reused: memory follows the messages in
/// flight, as the heap's did.
#[derive(Debug, Default)]
struct Slab {
    msgs: Vec<Option<(usize, Msg)>>,
    free: Vec<u32>,
}

impl Slab {
    fn put(&mut self, to: usize, msg: Msg) -> u32 {
        match self.free.pop() {
            Some(slot) => {
                self.msgs[slot as usize] = Some((to, msg));
                slot
            }
            None => {
                self.msgs.push(Some((to, msg)));
                // More than 4 billion messages in flight would not fit in memory anyway.
                u32::try_from(self.msgs.len() - 1).expect("fewer than 2^32 messages in flight")
            }
        }
    }

    fn take(&mut self, slot: u32) -> Option<(usize, Msg)> {
        let m = self.msgs.get_mut(slot as usize)?.take();
        self.free.push(slot);
        m
    }
}

/// Counters of the network itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Messages put on a link.
    pub sent: u64,
    /// Messages the link lost.
    pub lost: u64,
    /// Dials that reached their peer.
    pub dials: u64,
    /// [`Output::Punch`]es carried out (only packet-level worlds send probes for them).
    pub punches: u64,
}

/// The simulated network.
#[derive(Debug)]
pub struct World {
    cfg: SimConfig,
    now: Time,
    rng: StdRng,
    nodes: Vec<SimNode>,
    by_addr: HashMap<SocketAddr, usize>,
    /// Node index by id: requests and connects name peers by id, and a linear search made
    /// 10,000-node worlds quadratic.
    by_id: HashMap<NodeId, usize>,
    links: HashMap<(usize, usize), LinkModel>,
    queue: BinaryHeap<Reverse<Scheduled>>,
    slab: Slab,
    seq: u64,
    inbound: HashMap<(usize, InboundId), (usize, Reply)>,
    next_inbound: u64,
    results: HashMap<(usize, CommandId), CommandResult>,
    digest: DefaultHasher,
    nats: Vec<nat::Nat>,
    hosts: HashMap<(Option<usize>, IpAddr), Host>,
    lan_hosts: HashMap<usize, u32>,
    net: NetState,
    /// Partitions in force, by id.
    cuts: BTreeMap<u64, Cut>,
    next_cut: u64,
    /// Extra impairment of every message to or from a node, by node index.
    impaired: HashMap<usize, Impairment>,
    tapped: Vec<(Time, usize, Event)>,
    /// Network counters.
    pub stats: SimStats,
}

/// Which pairs of groups a [`Cut`] separates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CutRule {
    /// Every two different groups.
    Distinct,
    /// Groups 1 and 2 only (a third group, a bridge, reaches both).
    FirstTwo,
    /// Groups are ring positions 1..=n; only ring neighbours reach each other.
    Ring(u32),
}

/// A partition: nodes in groups (0: not involved), and which groups it cuts apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cut {
    /// Group of each node by index (missing or 0: not involved).
    pub group: Vec<u32>,
    /// Which groups are cut apart.
    pub rule: CutRule,
    /// Only the lower group's sends are dropped.
    pub oneway: bool,
}

impl Cut {
    fn blocks(&self, from: usize, to: usize) -> bool {
        let g = |i: usize| self.group.get(i).copied().unwrap_or(0);
        let (a, b) = (g(from), g(to));
        if a == 0 || b == 0 || a == b || (self.oneway && a > b) {
            return false;
        }
        match self.rule {
            CutRule::Distinct => true,
            CutRule::FirstTwo => a.min(b) == 1 && a.max(b) == 2,
            CutRule::Ring(n) => {
                let next = |x: u32| x % n + 1;
                next(a) != b && next(b) != a
            }
        }
    }
}

/// Extra loss and delay on every message a node sends or receives (the simulator's
/// counterpart of the lab's loss and delay faults).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Impairment {
    /// Chance of losing a message, in percent.
    pub loss_pct: f64,
    /// Added one-way delay.
    pub delay_ms: u64,
    /// Uniform extra delay in `0..=jitter_ms`.
    pub jitter_ms: u64,
}

impl World {
    /// An empty world at time zero.
    pub fn new(cfg: SimConfig) -> World {
        let rng = StdRng::seed_from_u64(cfg.seed);
        World {
            cfg,
            now: Time::ZERO,
            rng,
            nodes: Vec::new(),
            by_addr: HashMap::new(),
            by_id: HashMap::new(),
            links: HashMap::new(),
            queue: BinaryHeap::new(),
            slab: Slab::default(),
            seq: 0,
            inbound: HashMap::new(),
            next_inbound: 0,
            results: HashMap::new(),
            digest: DefaultHasher::new(),
            nats: Vec::new(),
            hosts: HashMap::new(),
            lan_hosts: HashMap::new(),
            net: NetState::default(),
            cuts: BTreeMap::new(),
            next_cut: 0,
            impaired: HashMap::new(),
            tapped: Vec::new(),
            stats: SimStats::default(),
        }
    }

    /// Puts a partition in force; returns its id for [`World::heal_cut`].
    pub fn cut(&mut self, cut: Cut) -> u64 {
        self.next_cut += 1;
        self.cuts.insert(self.next_cut, cut);
        self.next_cut
    }

    /// Lifts a partition (unknown ids are ignored).
    pub fn heal_cut(&mut self, id: u64) {
        self.cuts.remove(&id);
    }

    /// Sets (or with `None` lifts) the extra impairment of node `idx`.
    pub fn impair(&mut self, idx: usize, imp: Option<Impairment>) {
        match imp {
            Some(i) => self.impaired.insert(idx, i),
            None => self.impaired.remove(&idx),
        };
    }

    /// Switches NAT `nat` to `behaviour` and forgets its mappings, as the lab's nat-swap
    /// reloads the router's rules and flushes conntrack.
    pub fn swap_nat(&mut self, nat: usize, behaviour: NatBehaviour) {
        self.nats[nat].reset(behaviour);
    }

    /// Makes NAT `nat` forget its idle flows to `remote` ([`nat::Nat::forget`]): a cold
    /// start for the next connection between the two, as the lab's `matrix --cold` makes
    /// by deleting conntrack entries.
    pub fn forget_flows(&mut self, nat: usize, remote: IpAddr) {
        self.nats[nat].forget(remote);
    }

    /// Index of the node with id `id`.
    pub fn index_of(&self, id: NodeId) -> Option<usize> {
        self.peer_index(id)
    }

    /// Every event queued since the last call (see [`SimConfig::tap`]), with its time and
    /// node.
    pub fn take_events(&mut self) -> Vec<(Time, usize, Event)> {
        std::mem::take(&mut self.tapped)
    }

    /// Current virtual time.
    pub fn now(&self) -> Time {
        self.now
    }

    /// Adds a node (not started) with a fresh id and address; `seeds` are indices of nodes
    /// it bootstraps from. `tweak` adjusts its config (task rate, timeouts...).
    pub fn add_node(&mut self, seeds: &[usize], tweak: impl FnOnce(&mut NodeConfig)) -> usize {
        let idx = self.nodes.len();
        let addr = SocketAddr::from(([10, (idx >> 16) as u8, (idx >> 8) as u8, idx as u8], 4433));
        self.add_node_at(None, addr, seeds, tweak)
    }

    /// Adds a NAT on the internet with public IP 198.18.x.y. Nodes go behind it with
    /// [`World::add_node_behind`], other NATs with [`World::add_nat_behind`].
    pub fn add_nat(&mut self, behaviour: NatBehaviour) -> usize {
        let k = self.nats.len() + 1;
        let ip = Ipv4Addr::new(198, 18 + ((k >> 16) % 2) as u8, (k >> 8) as u8, k as u8);
        self.add_nat_at(behaviour, IpAddr::V4(ip), None)
    }

    /// Adds a NAT behind `outer` (carrier-grade NAT: the two stack). Its outside address is
    /// in the shared space 100.64.0.0/10.
    pub fn add_nat_behind(&mut self, outer: usize, behaviour: NatBehaviour) -> usize {
        let k = self.nats.len() + 1;
        let ip = Ipv4Addr::new(100, 64 + ((k >> 16) % 64) as u8, (k >> 8) as u8, k as u8);
        self.add_nat_at(behaviour, IpAddr::V4(ip), Some(outer))
    }

    fn add_nat_at(&mut self, behaviour: NatBehaviour, ip: IpAddr, parent: Option<usize>) -> usize {
        let n = self.nats.len();
        let seed = self.rng.next_u64();
        self.nats.push(nat::Nat::new(behaviour, ip, parent, seed));
        self.hosts.insert((parent, ip), Host::Nat(n));
        n
    }

    /// Adds a node (not started) on the LAN behind NAT `nat`, at 192.168.n.h:4433 (the
    /// LANs of different NATs are separate realms, so their ranges may overlap).
    pub fn add_node_behind(
        &mut self,
        nat: usize,
        seeds: &[usize],
        tweak: impl FnOnce(&mut NodeConfig),
    ) -> usize {
        let h = self.lan_hosts.entry(nat).or_insert(0);
        *h += 1;
        let h = *h;
        let ip = Ipv4Addr::new(192, 168, nat as u8, (h % 250) as u8 + 1);
        let addr = SocketAddr::new(IpAddr::V4(ip), 4433 + (h / 250) as u16);
        self.add_node_at(Some(nat), addr, seeds, tweak)
    }

    /// Public IP of NAT `nat`.
    pub fn nat_ip(&self, nat: usize) -> IpAddr {
        self.nats[nat].public_ip
    }

    /// The NAT that NAT `nat` sits behind (a carrier's), if any.
    pub fn nat_parent(&self, nat: usize) -> Option<usize> {
        self.nats[nat].parent
    }

    /// Live mappings of NAT `nat`.
    pub fn nat_mappings(&self, nat: usize) -> usize {
        self.nats[nat].mappings(self.now)
    }

    fn add_node_at(
        &mut self,
        realm: Option<usize>,
        addr: SocketAddr,
        seeds: &[usize],
        tweak: impl FnOnce(&mut NodeConfig),
    ) -> usize {
        let idx = self.nodes.len();
        let mut seed = [0u8; 32];
        self.rng.fill_bytes(&mut seed);
        let mut cfg = NodeConfig::new(SecretKey::from_bytes(seed));
        cfg.listen_addrs = vec![addr];
        cfg.rng_seed = self.rng.next_u64();
        cfg.seeds = seeds
            .iter()
            .map(|&s| (self.nodes[s].node.id(), self.nodes[s].addr))
            .collect();
        tweak(&mut cfg);
        // The core keeps its config unchanged, so a restart takes it from there rather than
        // from a second copy per node.
        let node = Node::new(cfg, Vec::new());
        if realm.is_none() {
            self.by_addr.insert(addr, idx);
        }
        self.by_id.insert(node.id(), idx);
        self.hosts.insert((realm, addr.ip()), Host::Node(idx));
        self.nodes.push(SimNode {
            node,
            addr,
            nat: realm,
            up: false,
            events: Vec::new(),
            sent: Vec::new(),
            store: Store::default(),
            conns: BTreeSet::new(),
            wake: None,
        });
        idx
    }

    /// Overrides the link between `a` and `b` (both directions).
    pub fn set_link(&mut self, a: usize, b: usize, link: LinkModel) {
        self.links.insert((a.min(b), a.max(b)), link);
    }

    /// Starts node `idx` at time `at` (now if in the past).
    pub fn start_at(&mut self, idx: usize, at: Time) {
        self.schedule(at.max(self.now), idx, Msg::Start);
    }

    /// Node `idx`.
    pub fn node(&self, idx: usize) -> &SimNode {
        &self.nodes[idx]
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True when the world has no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// A digest of every event every node emitted, with its time: equal digests mean equal runs.
    pub fn digest(&self) -> u64 {
        self.digest.finish()
    }

    /// Gives node `idx` a command now.
    pub fn command(&mut self, idx: usize, command: Command) -> CommandId {
        let now = self.now;
        let id = self.nodes[idx].node.command(now, command);
        self.drain(idx);
        id
    }

    /// Runs `f` on node `idx` now (a local key-value write, say) and carries out what it
    /// asked for.
    pub fn with_node<R>(&mut self, idx: usize, f: impl FnOnce(&mut Node, Time) -> R) -> R {
        let now = self.now;
        let r = f(&mut self.nodes[idx].node, now);
        self.drain(idx);
        r
    }

    /// The result of a command, once it finished.
    pub fn result(&self, idx: usize, id: CommandId) -> Option<&CommandResult> {
        self.results.get(&(idx, id))
    }

    /// Stops node `idx` as `kill -9` would: its connections drop, its store survives.
    pub fn kill(&mut self, idx: usize) {
        self.nodes[idx].up = false;
        let peers: Vec<usize> = std::mem::take(&mut self.nodes[idx].conns)
            .into_iter()
            .collect();
        let now = self.now;
        let id = self.nodes[idx].node.id();
        for p in peers {
            self.nodes[p].conns.remove(&idx);
            if self.nodes[p].up {
                self.nodes[p].node.handle_connection_down(now, id);
                self.drain(p);
            }
        }
        self.net_kill(idx);
    }

    /// Drops the connection between `a` and `b`, as a network failure would (their NAT
    /// mappings are no longer kept alive by it).
    pub fn disconnect(&mut self, a: usize, b: usize) {
        let now = self.now;
        for (x, y) in [(a, b), (b, a)] {
            if self.nodes[x].conns.remove(&y) && self.nodes[x].up {
                let yid = self.nodes[y].node.id();
                self.nodes[x].node.handle_connection_down(now, yid);
                self.drain(x);
            }
        }
        self.net_conn_down(a, b);
    }

    /// Restarts a killed node from its persisted graph, as the agent does after a crash.
    pub fn restart(&mut self, idx: usize) {
        let restored: Vec<Contact> = self.nodes[idx].store.values().cloned().collect();
        let cfg = self.nodes[idx].node.config().clone();
        self.nodes[idx].node = Node::new(cfg, restored);
        self.nodes[idx].wake = None;
        self.start_at(idx, self.now);
    }

    /// Runs until virtual time `until`.
    pub fn run_until(&mut self, until: Time) {
        while let Some(Reverse(head)) = self.queue.peek() {
            if head.at > until {
                break;
            }
            let Some(Reverse(ev)) = self.queue.pop() else {
                break;
            };
            self.now = ev.at;
            let Some((to, msg)) = self.slab.take(ev.slot) else {
                continue;
            };
            match msg {
                Msg::Packet(p) => self.arrive(p),
                Msg::Net(e) => self.net_event(e),
                msg => self.deliver(to, msg),
            }
        }
        self.now = self.now.max(until);
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        self.run_until(self.now + d);
    }

    // ----- internals -----

    fn schedule(&mut self, at: Time, to: usize, msg: Msg) {
        self.seq += 1;
        let slot = self.slab.put(to, msg);
        self.queue.push(Reverse(Scheduled {
            at,
            seq: self.seq,
            slot,
        }));
    }

    fn link(&self, a: usize, b: usize) -> LinkModel {
        let mut link = self
            .links
            .get(&(a.min(b), a.max(b)))
            .copied()
            .unwrap_or(self.cfg.link);
        if self.cuts.values().any(|c| c.blocks(a, b)) {
            link.loss_pct = 100.0;
        }
        for i in [a, b] {
            if let Some(imp) = self.impaired.get(&i) {
                let kept = (1.0 - link.loss_pct / 100.0) * (1.0 - imp.loss_pct / 100.0);
                link.loss_pct = 100.0 * (1.0 - kept);
                link.latency_ms += imp.delay_ms;
                link.jitter_ms += imp.jitter_ms;
            }
        }
        link
    }

    /// One-way delay of a message on the a-b link, or `None` if it is lost.
    fn transit(&mut self, a: usize, b: usize) -> Option<Duration> {
        let link = self.link(a, b);
        self.stats.sent += 1;
        if link.loss_pct > 0.0 && self.rng.random_range(0.0..100.0) < link.loss_pct {
            self.stats.lost += 1;
            return None;
        }
        let jitter = if link.jitter_ms > 0 {
            self.rng.random_range(0..=link.jitter_ms)
        } else {
            0
        };
        Some(Duration::from_millis(link.latency_ms + jitter))
    }

    /// Delay of a message on an established connection. Without NATs a lost message is
    /// lost (the historical model). At packet level streams are reliable, as QUIC's are: a
    /// lost packet is sent again after a doubling retransmission timeout, and only a link
    /// that loses every try gives up.
    fn stream_transit(&mut self, a: usize, b: usize) -> Option<Duration> {
        if !self.packet_level() {
            return self.transit(a, b);
        }
        let mut waited = Duration::ZERO;
        for k in 0..STREAM_TRIES {
            if let Some(d) = self.transit(a, b) {
                return Some(waited + d);
            }
            waited += Duration::from_millis(STREAM_RTO_MS << k);
        }
        None
    }

    /// Dials from `from` to whoever answers at `addrs` claiming to be `peer`. Returns when
    /// the connection will be up, or `None` if the dial fails.
    fn dial(&mut self, from: usize, peer: NodeId, addrs: &[SocketAddr]) -> Option<(usize, Time)> {
        self.dial_as(from, peer, addrs, ConnMode::Direct)
    }

    fn dial_as(
        &mut self,
        from: usize,
        peer: NodeId,
        addrs: &[SocketAddr],
        mode: ConnMode,
    ) -> Option<(usize, Time)> {
        let to = addrs
            .iter()
            .filter_map(|a| self.by_addr.get(a).copied())
            .find(|&i| self.nodes[i].up && self.nodes[i].node.id() == peer)?;
        // A handshake is one round trip; either leg may be lost.
        let there = self.transit(from, to)?;
        let back = self.transit(to, from)?;
        let up_at = self.now + there + back;
        self.stats.dials += 1;
        let (from_addr, to_addr) = (self.nodes[from].addr, self.nodes[to].addr);
        self.schedule(
            self.now + there,
            to,
            Msg::ConnUp {
                peer: from,
                mode,
                remote: from_addr,
            },
        );
        self.schedule(
            up_at,
            from,
            Msg::ConnUp {
                peer: to,
                mode,
                remote: to_addr,
            },
        );
        Some((to, up_at))
    }

    fn deliver(&mut self, idx: usize, msg: Msg) {
        let now = self.now;
        if !self.nodes[idx].up && !matches!(msg, Msg::Start) {
            return;
        }
        match msg {
            Msg::Start => {
                self.nodes[idx].up = true;
                self.nodes[idx].node.start(now);
            }
            Msg::Wake => {
                if self.nodes[idx].wake.is_some_and(|w| w <= now) {
                    self.nodes[idx].wake = None;
                }
                self.nodes[idx].node.handle_timeout(now);
            }
            Msg::Request {
                from,
                reply,
                request,
            } => {
                if !self.nodes[from].up {
                    return;
                }
                self.next_inbound += 1;
                let inbound = InboundId(self.next_inbound);
                self.inbound.insert((idx, inbound), (from, reply));
                let from_id = self.nodes[from].node.id();
                self.nodes[idx]
                    .node
                    .handle_request(now, from_id, inbound, request);
            }
            Msg::Response { id, result } => self.nodes[idx].node.handle_response(now, id, result),
            Msg::ConnectResult { id, result } => {
                self.nodes[idx].node.handle_connect_result(now, id, result)
            }
            Msg::ConnUp { peer, mode, remote } => {
                if !self.nodes[peer].up {
                    return;
                }
                self.nodes[idx].conns.insert(peer);
                let pid = self.nodes[peer].node.id();
                self.nodes[idx]
                    .node
                    .handle_connection_up(now, pid, remote, mode);
                // The peer's hello carries its listen addresses (how LAN neighbours find
                // each other's private address).
                if self.packet_level() && mode != ConnMode::Relayed {
                    let listen = self.nodes[peer].node.config().listen_addrs.clone();
                    self.nodes[idx].node.handle_listen_addrs(now, pid, &listen);
                }
            }
            Msg::Packet(_) | Msg::Net(_) => {} // handled in run_until
        }
        self.drain(idx);
    }

    fn drain(&mut self, idx: usize) {
        let now = self.now;
        while let Some(out) = self.nodes[idx].node.poll_output() {
            match out {
                Output::Request {
                    id,
                    peer,
                    addrs,
                    request,
                    parent,
                } => {
                    if self.cfg.record_events {
                        self.nodes[idx].sent.push((now, request.kind(), parent));
                    }
                    self.carry_request(idx, Reply::Core(id), peer, &addrs, request)
                }
                Output::Respond { inbound, response } => {
                    match self.inbound.remove(&(idx, inbound)) {
                        Some((_, Reply::RelayOpen(c))) => self.relay_open_answered(c, response),
                        Some((_, Reply::RelayIncoming(c))) => {
                            self.relay_incoming_answered(c, response)
                        }
                        Some((to, reply @ Reply::Injected(_))) => {
                            self.answer(to, reply, Ok(response), now);
                        }
                        Some((to, Reply::Core(id))) => {
                            if let Some(d) = self.stream_transit(idx, to) {
                                self.schedule(
                                    now + d,
                                    to,
                                    Msg::Response {
                                        id,
                                        result: Ok(response),
                                    },
                                );
                            }
                        }
                        None => {}
                    }
                }
                Output::Connect {
                    id,
                    peer,
                    addrs,
                    fresh,
                    path,
                    timeout_ms,
                    parent,
                } => {
                    if self.cfg.record_events {
                        self.nodes[idx].sent.push((now, "connect", parent));
                    }
                    let existing = self
                        .peer_index(peer)
                        .filter(|p| self.nodes[idx].conns.contains(p));
                    let mode = match path {
                        Path::Direct => ConnMode::Direct,
                        Path::Punch(_) => ConnMode::Punched,
                        Path::Relay { .. } => ConnMode::Relayed,
                    };
                    let result_at = match (existing, path) {
                        (Some(p), _) if !fresh => Some((p, now)),
                        (_, Path::Relay { relay, relay_addrs }) => {
                            self.net_relay(idx, Some(id), peer, relay, &relay_addrs, timeout_ms);
                            continue;
                        }
                        (_, path) if self.packet_level() => {
                            self.net_connect(idx, id, peer, &addrs, path, timeout_ms);
                            continue;
                        }
                        _ => self.dial_as(idx, peer, &addrs, mode),
                    };
                    match result_at {
                        Some((p, at)) => {
                            let remote = self.nodes[p].addr;
                            let result = Ok(Connected {
                                mode,
                                remote,
                                birthday_probes: None,
                            });
                            self.schedule(at, idx, Msg::ConnectResult { id, result });
                        }
                        None => {
                            let at = now + Duration::from_millis(self.cfg.unreachable_after_ms);
                            self.schedule(
                                at,
                                idx,
                                Msg::ConnectResult {
                                    id,
                                    result: Err(Failure::Unreachable),
                                },
                            );
                        }
                    }
                }
                // Without NATs every node is reachable, so the target's side of a punch has
                // nothing to open.
                Output::Punch { peer, plan, parent } => {
                    if self.cfg.record_events {
                        self.nodes[idx].sent.push((now, "punch", parent));
                    }
                    self.stats.punches += 1;
                    if self.packet_level() {
                        self.start_punch(idx, peer, plan, None);
                    }
                }
                Output::DialBackListen {
                    server,
                    token,
                    timeout_ms,
                } => self.listen_dialback(idx, server, token, timeout_ms),
                Output::DialBack {
                    to,
                    token,
                    other_port,
                } => {
                    if self.cfg.record_events {
                        self.nodes[idx].sent.push((now, "dial_back_probe", None));
                    }
                    self.send_dialback(idx, to, token, other_port);
                }
                Output::Disconnect { peer } => {
                    if let Some(p) = self.peer_index(peer) {
                        self.nodes[idx].conns.remove(&p);
                        if self.nodes[p].conns.remove(&idx) {
                            let me = self.nodes[idx].node.id();
                            self.nodes[p].node.handle_connection_down(now, me);
                            self.drain(p);
                        }
                        self.net_conn_down(idx, p);
                    }
                }
                // The harness keeps no claims or tuples across restarts: nothing it tests
                // needs them.
                Output::StoreClaim(_) | Output::StoreTuple(_) => {}
                Output::Persist(change) => match change {
                    GraphChange::Upsert(c) => {
                        self.nodes[idx].store.upsert(c);
                    }
                    GraphChange::Remove(id) => {
                        self.nodes[idx].store.remove(&id);
                    }
                },
                Output::Event(e) => {
                    (now, idx, &e).hash(&mut self.digest);
                    if let Event::CommandFinished { id, result } = &e {
                        self.results.insert((idx, *id), result.clone());
                    }
                    if self.cfg.tap.is_some_and(|keep| keep(&e)) {
                        self.tapped.push((now, idx, e.clone()));
                    }
                    if self.cfg.record_events {
                        self.nodes[idx].events.push((now, e));
                    }
                }
            }
        }
        if let Some(t) = self.nodes[idx].node.poll_timeout()
            && self.nodes[idx].wake.is_none_or(|w| t < w)
        {
            self.nodes[idx].wake = Some(t);
            self.schedule(t.max(now), idx, Msg::Wake);
        }
    }

    fn peer_index(&self, peer: NodeId) -> Option<usize> {
        self.by_id.get(&peer).copied()
    }

    fn carry_request(
        &mut self,
        from: usize,
        reply: Reply,
        peer: NodeId,
        addrs: &[SocketAddr],
        request: Request,
    ) {
        let now = self.now;
        let connected = self
            .peer_index(peer)
            .filter(|p| self.nodes[from].conns.contains(p));
        let (to, ready_at) = match connected {
            Some(p) => (p, now),
            None if self.packet_level() => {
                self.net_request(from, reply, peer, addrs, request);
                return;
            }
            None => match self.dial(from, peer, addrs) {
                Some(x) => x,
                None => {
                    let at = now + Duration::from_millis(self.cfg.unreachable_after_ms);
                    self.answer(from, reply, Err(Failure::Unreachable), at);
                    return;
                }
            },
        };
        if let Some(d) = self.stream_transit(from, to) {
            self.schedule(
                ready_at + d,
                to,
                Msg::Request {
                    from,
                    reply,
                    request,
                },
            );
        }
    }
}
