//! A scenario as a simulated world: its seeds, sites and agents as `chaosnet-sim` nodes and
//! NAT models, with the agents' settings, node keys and rng seeds derived exactly as the lab
//! derives them (so an agent has the same node id in the simulator and in the lab).
//!
//! What it does not do: run the world (see `drive`), or place anything on a real network.

use std::collections::BTreeMap;

use chaosnet_proto::{NodeConfig, NodeId, SecretKey};
use chaosnet_sim::{NatBehaviour, SimConfig, World};

use crate::chaos::select::{Role, Target};
use crate::plan::{CGNAT, NatKind, SEED_SITE, SEED_STEM, agent_name};
use crate::planner::{key_seed, rng_seed};
use crate::scenario::Scenario;

/// How far apart agents start, ms: seeds first, then every site's agents in file order. A
/// lab starts its agents at about the same time; spreading them keeps 10,000 joins from
/// arriving at three seeds in the same millisecond.
pub const START_SPREAD_MS: u64 = 5;

/// One simulated agent.
#[derive(Clone, Debug)]
pub struct SimAgent {
    /// Its name, as the lab names it (`seed-0`, `home1-2`).
    pub name: String,
    /// Its site (`internet` for seeds).
    pub site: String,
    /// Its site's NAT label (`none`, `cgnat`, ...).
    pub nat: String,
    /// Its node in the world.
    pub idx: usize,
    /// Its node id.
    pub id: NodeId,
}

/// The world of a scenario, and who is where in it.
pub struct Built {
    /// The world; no node has started yet (see [`Built::start_all`]).
    pub world: World,
    /// Every agent, seeds first, then sites in file order.
    pub agents: Vec<SimAgent>,
    /// Agent index by name.
    pub by_name: BTreeMap<String, usize>,
    /// The NAT that a site's agents sit behind (for a cgnat site, its home NAT), by site.
    pub site_nat: BTreeMap<String, usize>,
}

impl Built {
    /// The agents as fault selectors see them, in the lab's plan order.
    pub fn targets(&self, scenario: &Scenario) -> Vec<Target> {
        let labels: BTreeMap<&str, _> = scenario
            .sites
            .iter()
            .map(|s| (s.name.as_str(), &s.labels))
            .collect();
        self.agents
            .iter()
            .map(|a| Target {
                name: a.name.clone(),
                site: a.site.clone(),
                nat: a.nat.clone(),
                role: if a.site == SEED_SITE {
                    Role::Seed
                } else {
                    Role::Peer
                },
                labels: labels
                    .get(a.site.as_str())
                    .map(|l| (*l).clone())
                    .unwrap_or_default(),
            })
            .collect()
    }

    /// Starts every agent, [`START_SPREAD_MS`] apart in order; returns when the last starts.
    pub fn start_all(&mut self) -> u64 {
        let mut at = 0;
        for (i, a) in self.agents.iter().enumerate() {
            at = START_SPREAD_MS * i as u64;
            self.world
                .start_at(a.idx, chaosnet_proto::Time::from_millis(at));
        }
        at
    }
}

/// The NAT model of one NAT kind with `udp_s` as its mapping timeout.
pub fn behaviour(kind: NatKind, udp_s: u32, hairpin: bool) -> NatBehaviour {
    let mut b = match kind {
        // A site without NAT has no router; callers never ask for it, and an open
        // mapping is the closest model if one did.
        NatKind::None | NatKind::FullCone => NatBehaviour::full_cone(),
        NatKind::RestrictedCone => NatBehaviour::restricted_cone(),
        NatKind::PortRestrictedCone => NatBehaviour::port_restricted_cone(),
        NatKind::Symmetric => NatBehaviour::symmetric(),
    };
    b.mapping_timeout_ms = u64::from(udp_s) * 1000;
    b.hairpin = hairpin;
    b
}

/// Builds the world of `scenario` (already scaled): every seed and agent a node, every NATed
/// site a NAT (a cgnat site a home NAT behind a carrier NAT, EIM + APDF as in the lab).
pub fn build(scenario: &Scenario, world_seed: u64) -> Built {
    let mut world = World::new(SimConfig {
        seed: world_seed,
        record_events: false,
        // Every event: the metrics recorder sees what an agent's would.
        tap: Some(|_| true),
        ..SimConfig::default()
    });
    let settings = &scenario.agent;
    let network = scenario.network.to_string();
    let run_seed = scenario.seed;
    let mut agents: Vec<SimAgent> = Vec::new();
    let mut site_nat = BTreeMap::new();
    let configure = |name: &str| {
        let key = SecretKey::from_bytes(key_seed(run_seed, name));
        let rng = rng_seed(run_seed, name);
        let weights = settings.task_weights;
        let (rate, refresh, gc) = (
            settings.task_rate,
            settings.bucket_refresh_ms,
            settings.gc_interval_ms,
        );
        let network = network.clone();
        move |c: &mut NodeConfig| {
            c.id = key.node_id();
            c.key = key;
            c.rng_seed = rng;
            c.task_rate_per_s = rate;
            c.task_weights = weights;
            c.bucket_refresh_ms = refresh;
            c.gc_interval_ms = gc;
            c.kv_network = network;
        }
    };
    let mut seed_idx = Vec::new();
    for i in 0..scenario.seeds {
        let name = agent_name(SEED_STEM, i);
        let idx = world.add_node(&[], configure(&name));
        seed_idx.push(idx);
        agents.push(SimAgent {
            id: world.node(idx).node.id(),
            name,
            site: SEED_SITE.to_string(),
            nat: NatKind::None.name().to_string(),
            idx,
        });
    }
    for site in &scenario.sites {
        let udp_s = site.conntrack.timeouts().udp_s;
        let nat = if site.cgnat {
            let carrier = world.add_nat(behaviour(NatKind::PortRestrictedCone, udp_s, false));
            Some(world.add_nat_behind(carrier, behaviour(site.nat, udp_s, site.hairpin)))
        } else if site.nat == NatKind::None {
            None
        } else {
            Some(world.add_nat(behaviour(site.nat, udp_s, site.hairpin)))
        };
        if let Some(n) = nat {
            site_nat.insert(site.name.clone(), n);
        }
        let label = if site.cgnat { CGNAT } else { site.nat.name() };
        for j in 0..site.agents {
            let name = agent_name(&site.name, j);
            let idx = match nat {
                Some(n) => world.add_node_behind(n, &seed_idx, configure(&name)),
                None => world.add_node(&seed_idx, configure(&name)),
            };
            agents.push(SimAgent {
                id: world.node(idx).node.id(),
                name,
                site: site.name.clone(),
                nat: label.to_string(),
                idx,
            });
        }
    }
    let by_name = agents
        .iter()
        .enumerate()
        .map(|(i, a)| (a.name.clone(), i))
        .collect();
    Built {
        world,
        agents,
        by_name,
        site_nat,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_get_the_labs_names_and_node_ids() {
        let sc = Scenario::default_scenario();
        let built = build(&sc, 1);
        let plan = crate::planner::plan(&sc, &crate::plan::RunId("000000".into()))
            .expect("the default scenario plans");
        assert_eq!(built.agents.len(), plan.agents.len());
        for a in &plan.agents {
            let s = &built.agents[built.by_name[&a.name]];
            assert_eq!(s.site, a.site, "{}", a.name);
            assert_eq!(
                s.id.to_string(),
                a.node_id,
                "{}: same key as in the lab",
                a.name
            );
            assert_eq!(s.nat, plan.nat_label_of(a), "{}", a.name);
        }
        // One NAT per NATed site; cgnat sites' home NAT is the one named.
        let natted = sc
            .sites
            .iter()
            .filter(|s| s.nat != NatKind::None || s.cgnat);
        assert_eq!(built.site_nat.len(), natted.count());
    }

    #[test]
    fn conntrack_timeouts_become_mapping_timeouts() {
        let b = behaviour(NatKind::Symmetric, 45, true);
        assert_eq!(b.mapping_timeout_ms, 45_000);
        assert!(b.hairpin);
        assert_eq!(b, {
            let mut s = NatBehaviour::symmetric();
            s.mapping_timeout_ms = 45_000;
            s.hairpin = true;
            s
        });
    }
}
