//! Plan → Kubernetes objects, pure: the same inputs give the same objects, nothing is read
//! or written. The shape is `manifests/base`'s, filled in from the plan:
//!
//! - a namespace labelled Pod Security `privileged` (the router sidecar adds NET_ADMIN),
//!   a ServiceAccount without a token, a headless Service giving every pod a DNS name, a
//!   NetworkPolicy letting in only UDP 4433 and TCP 9100;
//! - a Secret with the seeds' node keys (the plan derives them from the scenario's seed,
//!   so node ids are known before anything runs) and one with the control API's token;
//! - one StatefulSet per plan group: `seed` for the seeds, one per site, each pod named
//!   as the plan names its agent (`<site>-<i>`), `podManagementPolicy: Parallel`, a PVC
//!   for the node graph. Every pod of a NATed site is its own site behind the router
//!   sidecar (`chaosnet pod-router`); a site's agents do not share a LAN, and a carrier
//!   NAT site is approximated by the behaviour it adds up to (see
//!   [`crate::matrix::Behaviour::behind_carrier`]), annotated as such.
//!
//! The agents' flags come from the plan's own command lines ([`AgentArgs`]), with what a
//! pod changes: listen address, seeds by DNS name, data dir, API on TCP with the token,
//! mDNS off (multicast does not cross pods), no fixed rng seed (pods of one StatefulSet
//! share a template).

use std::collections::BTreeMap;

use chaosnet_contract::AgentArgs;
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, ExecAction, Namespace,
    ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSecurityContext,
    PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, Secret,
    SecretVolumeSource, SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec,
    TCPSocketAction, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;

use crate::matrix::Behaviour;
use crate::plan::{AgentPlan, NatKind, Plan, SEED_SITE};

/// The agents' P2P port in a pod (every pod has its own address, so one port serves all).
const P2P_PORT: u16 = 4433;
/// The control API and `/metrics`, on the pod's address.
const API_PORT: u16 = 9100;
/// The agent's inner address behind its pod's router.
const INNER_IP: &str = "10.77.0.2";
/// The StatefulSet (and pod name prefix) of the seeds.
const SEED_SET: &str = "seed";
/// The headless Service every pod's DNS name hangs under.
const SERVICE: &str = "chaosnet";
const SEED_KEYS: &str = "chaosnet-seed-keys";
const API_TOKEN: &str = "chaosnet-api-token";
const ACCOUNT: &str = "chaosnet-agent";
const AGENT_UID: i64 = 10001;

/// What the plan does not say about a cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeOptions {
    /// The namespace to create and fill (default `chaosnet-<run id>`).
    pub namespace: String,
    /// The image of agents and routers (`make image`, loaded into the cluster).
    pub image: String,
    /// The control API's bearer token (at least 16 characters; the agent refuses less).
    pub api_token: String,
    /// Size of each pod's PVC, in MiB.
    pub storage_mib: u32,
}

/// Why a plan cannot run on a cluster as rendered here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// A name that is not a DNS label (RFC 1123), so no pod or object can carry it.
    #[error(
        "{what} {name:?} is not a DNS label (lowercase letters, digits and '-', at most {max} characters)"
    )]
    Name {
        /// What carries the name.
        what: &'static str,
        /// The name.
        name: String,
        /// Its longest allowed length.
        max: usize,
    },
    /// A private network: its key files are not carried into the cluster yet.
    #[error(
        "private networks are not rendered yet (their key files would have to become a Secret); use mainnet or testnet"
    )]
    PrivateNetwork,
    /// The token is too short for the agent.
    #[error("the API token must have at least 16 characters")]
    ShortToken,
    /// An agent's command line in the plan does not parse.
    #[error("agent {agent}: its command line does not parse: {detail}")]
    Args {
        /// The agent.
        agent: String,
        /// clap's message.
        detail: String,
    },
}

/// One rendered object, serialized with its `apiVersion` and `kind`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
#[allow(clippy::large_enum_variant)] // a handful per render, printed once
pub enum Object {
    /// The namespace.
    Namespace(Namespace),
    /// The agents' account.
    ServiceAccount(ServiceAccount),
    /// Seed keys, API token.
    Secret(Secret),
    /// The headless Service.
    Service(Service),
    /// What may reach the pods.
    NetworkPolicy(NetworkPolicy),
    /// Seeds, or one site's agents.
    StatefulSet(StatefulSet),
}

impl Object {
    /// `kind/name`, for messages and tests.
    pub fn id(&self) -> String {
        let (kind, meta) = match self {
            Object::Namespace(o) => ("Namespace", &o.metadata),
            Object::ServiceAccount(o) => ("ServiceAccount", &o.metadata),
            Object::Secret(o) => ("Secret", &o.metadata),
            Object::Service(o) => ("Service", &o.metadata),
            Object::NetworkPolicy(o) => ("NetworkPolicy", &o.metadata),
            Object::StatefulSet(o) => ("StatefulSet", &o.metadata),
        };
        format!("{kind}/{}", meta.name.as_deref().unwrap_or_default())
    }
}

/// The objects that run `plan`'s fleet in `opts.namespace`, in apply order.
///
/// # Errors
/// [`RenderError`] when the plan cannot run on a cluster as rendered here.
pub fn render(plan: &Plan, opts: &KubeOptions) -> Result<Vec<Object>, RenderError> {
    dns_label("namespace", &opts.namespace, 63)?;
    if opts.api_token.chars().count() < 16 {
        return Err(RenderError::ShortToken);
    }
    let run = plan.run_id.0.clone();
    let mut out = vec![
        Object::Namespace(Namespace {
            metadata: ObjectMeta {
                name: Some(opts.namespace.clone()),
                labels: Some(labels(&[
                    ("chaosnet.run", &run),
                    ("pod-security.kubernetes.io/enforce", "privileged"),
                    ("pod-security.kubernetes.io/warn", "restricted"),
                ])),
                annotations: Some(labels(&[(
                    "chaosnet.why-privileged",
                    "the router sidecar of NATed pods adds NET_ADMIN for its nftables NAT",
                )])),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        }),
        Object::ServiceAccount(ServiceAccount {
            metadata: meta(opts, ACCOUNT, &run, &[]),
            automount_service_account_token: Some(false),
            ..ServiceAccount::default()
        }),
    ];
    let seeds: Vec<&AgentPlan> = plan.agents.iter().filter(|a| a.seed).collect();
    if !seeds.is_empty() {
        out.push(Object::Secret(Secret {
            metadata: meta(opts, SEED_KEYS, &run, &[]),
            string_data: Some(
                seeds
                    .iter()
                    .map(|a| (format!("{}.key", a.name), a.key_seed_hex.clone()))
                    .collect(),
            ),
            ..Secret::default()
        }));
    }
    out.push(Object::Secret(Secret {
        metadata: meta(opts, API_TOKEN, &run, &[]),
        string_data: Some(BTreeMap::from([(
            "token".to_string(),
            opts.api_token.clone(),
        )])),
        ..Secret::default()
    }));
    out.push(Object::Service(Service {
        metadata: meta(opts, SERVICE, &run, &[]),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(labels(&[("chaosnet.run", &run)])),
            ports: Some(vec![
                ServicePort {
                    name: Some("p2p".into()),
                    port: P2P_PORT.into(),
                    protocol: Some("UDP".into()),
                    ..ServicePort::default()
                },
                ServicePort {
                    name: Some("api".into()),
                    port: API_PORT.into(),
                    protocol: Some("TCP".into()),
                    ..ServicePort::default()
                },
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }));
    out.push(Object::NetworkPolicy(network_policy(opts, &run)));
    // Seeds by DNS name and their planned node ids.
    let seed_args: Vec<String> = seeds
        .iter()
        .map(|a| format!("{}@{}.{SERVICE}:{P2P_PORT}", a.node_id, a.name))
        .collect();
    if !seeds.is_empty() {
        out.push(Object::StatefulSet(stateful_set(
            plan,
            opts,
            &seeds,
            Group {
                name: SEED_SET,
                site: SEED_SITE,
                nat: None,
                nat_label: "none",
                seeds: &seed_args,
            },
        )?));
    }
    for site in &plan.sites {
        let agents: Vec<&AgentPlan> = plan
            .agents
            .iter()
            .filter(|a| !a.seed && a.site == site.name)
            .collect();
        if agents.is_empty() {
            continue;
        }
        dns_label("site", &site.name, 52)?;
        let behaviour = if site.cgnat {
            Behaviour::behind_carrier(site.nat)
        } else {
            Behaviour::of(site.nat)
        };
        let nat = match behaviour {
            Behaviour::Public => None,
            Behaviour::FullCone => Some(NatKind::FullCone),
            Behaviour::RestrictedCone => Some(NatKind::RestrictedCone),
            Behaviour::PortRestrictedCone => Some(NatKind::PortRestrictedCone),
            Behaviour::Symmetric => Some(NatKind::Symmetric),
        };
        let mut set = stateful_set(
            plan,
            opts,
            &agents,
            Group {
                name: &site.name,
                site: &site.name,
                nat,
                nat_label: site.nat_label(),
                seeds: &seed_args,
            },
        )?;
        if site.cgnat {
            set.metadata
                .annotations
                .get_or_insert_with(BTreeMap::new)
                .insert(
                    "chaosnet.cgnat".into(),
                    format!(
                        "approximated: one {} NAT per pod instead of a home router behind a carrier",
                        behaviour.as_str()
                    ),
                );
        }
        out.push(Object::StatefulSet(set));
    }
    Ok(out)
}

/// The objects as one YAML stream (`---`-separated JSON documents, which are YAML),
/// for `kubectl apply -f -`.
pub fn to_yaml(objects: &[Object]) -> String {
    let mut s = String::new();
    for o in objects {
        s.push_str("---\n");
        // An object of plain strings, maps and numbers always serializes.
        s.push_str(&serde_json::to_string_pretty(o).unwrap_or_default());
        s.push('\n');
    }
    s
}

struct Group<'a> {
    /// StatefulSet name, and its pods' name prefix.
    name: &'a str,
    site: &'a str,
    /// The NAT of each pod, or `None` for public pods (no router).
    nat: Option<NatKind>,
    nat_label: &'a str,
    seeds: &'a [String],
}

fn stateful_set(
    plan: &Plan,
    opts: &KubeOptions,
    agents: &[&AgentPlan],
    g: Group<'_>,
) -> Result<StatefulSet, RenderError> {
    let run = plan.run_id.0.clone();
    let first = agents[0];
    let mut args = AgentArgs::from_command_line(&first.args).map_err(|e| RenderError::Args {
        agent: first.name.clone(),
        detail: e.to_string(),
    })?;
    if args.network.starts_with("private:") || !args.network_key_files.is_empty() {
        return Err(RenderError::PrivateNetwork);
    }
    let seed = g.nat.is_none() && first.seed;
    // The listen address is a placeholder here and replaced below by the pod's.
    args.listen = std::net::SocketAddr::from(([0, 0, 0, 0], P2P_PORT));
    args.seeds = g.seeds.to_vec();
    args.data_dir = "/data".into();
    args.api = format!("0.0.0.0:{API_PORT}");
    args.api_token_file = Some("/token/token".into());
    args.api_token = None;
    args.node_key_file = seed.then(|| "/keys/$(POD_NAME).key".into());
    args.mdns = false;
    args.rng_seed = None;
    args.otlp_endpoint = None;
    args.log_format = "json".into();
    let listen = match g.nat {
        Some(_) => format!("{INNER_IP}:{P2P_PORT}"),
        None => format!("$(POD_IP):{P2P_PORT}"),
    };
    let mut argv = args.command_line();
    if let Some(i) = argv.iter().position(|a| a == "--listen") {
        argv[i + 1] = listen;
    }

    let pod_labels = labels(&[
        ("chaosnet.run", &run),
        ("chaosnet.site", g.site),
        ("chaosnet.nat", g.nat_label),
        ("chaosnet.role", if seed { "seed" } else { "agent" }),
        ("chaosnet.group", g.name),
    ]);
    let mut mounts = vec![
        mount("data", "/data", false),
        mount("token", "/token", true),
    ];
    let mut volumes = vec![secret_volume("token", API_TOKEN)];
    if seed {
        mounts.push(mount("keys", "/keys", true));
        volumes.push(secret_volume("keys", SEED_KEYS));
    }
    let agent = Container {
        name: "agent".into(),
        image: Some(opts.image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        args: Some(argv),
        env: Some(vec![
            field_env("POD_IP", "status.podIP"),
            field_env("POD_NAME", "metadata.name"),
        ]),
        ports: Some(vec![
            port("p2p", P2P_PORT, "UDP"),
            port("api", API_PORT, "TCP"),
        ]),
        readiness_probe: Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::String("api".into()),
                ..TCPSocketAction::default()
            }),
            period_seconds: Some(5),
            ..Probe::default()
        }),
        resources: Some(resources("50m", "64Mi", "256Mi")),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(AGENT_UID),
            run_as_group: Some(AGENT_UID),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(mounts),
        ..Container::default()
    };
    let init = g.nat.map(|nat| vec![router(opts, nat)]);
    Ok(StatefulSet {
        metadata: meta(opts, g.name, &run, &[("chaosnet.group", g.name)]),
        spec: Some(StatefulSetSpec {
            service_name: Some(SERVICE.into()),
            pod_management_policy: Some("Parallel".into()),
            replicas: Some(i32::try_from(agents.len()).unwrap_or(i32::MAX)),
            selector: LabelSelector {
                match_labels: Some(labels(&[
                    ("chaosnet.run", &run),
                    ("chaosnet.group", g.name),
                ])),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(ACCOUNT.into()),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(PodSecurityContext {
                        fs_group: Some(AGENT_UID),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    init_containers: init,
                    containers: vec![agent],
                    volumes: Some(volumes),
                    ..PodSpec::default()
                }),
            },
            volume_claim_templates: Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some("data".into()),
                    ..ObjectMeta::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".into()]),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(BTreeMap::from([(
                            "storage".to_string(),
                            Quantity(format!("{}Mi", opts.storage_mib)),
                        )])),
                        ..VolumeResourceRequirements::default()
                    }),
                    ..PersistentVolumeClaimSpec::default()
                }),
                ..PersistentVolumeClaim::default()
            }]),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    })
}

/// The router sidecar: a native sidecar (init container, `restartPolicy: Always`) whose
/// startupProbe holds the agent back until the NAT is in place.
fn router(opts: &KubeOptions, nat: NatKind) -> Container {
    let cmd = |extra: &[&str]| -> Vec<String> {
        ["/usr/local/bin/chaosnet", "pod-router"]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect()
    };
    Container {
        name: "router".into(),
        image: Some(opts.image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        restart_policy: Some("Always".into()),
        command: Some(cmd(&[])),
        args: Some(vec![
            format!("--inner={INNER_IP}"),
            format!("--open-tcp={API_PORT}"),
            "--site=$(POD_NAME)".into(),
        ]),
        env: Some(vec![
            EnvVar {
                name: "CHAOSNET_NAT".into(),
                value: Some(nat.name().into()),
                ..EnvVar::default()
            },
            field_env("POD_IP", "status.podIP"),
            field_env("POD_NAME", "metadata.name"),
        ]),
        startup_probe: Some(Probe {
            exec: Some(ExecAction {
                command: Some(cmd(&["--check", &format!("--inner={INNER_IP}")])),
            }),
            period_seconds: Some(1),
            failure_threshold: Some(30),
            ..Probe::default()
        }),
        resources: Some(resources("10m", "16Mi", "64Mi")),
        security_context: Some(SecurityContext {
            run_as_user: Some(0),
            run_as_non_root: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: Some(vec!["NET_ADMIN".into()]),
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

fn network_policy(opts: &KubeOptions, run: &str) -> NetworkPolicy {
    let rule = |port: u16, proto: &str| NetworkPolicyIngressRule {
        ports: Some(vec![NetworkPolicyPort {
            port: Some(IntOrString::Int(i32::from(port))),
            protocol: Some(proto.into()),
            ..NetworkPolicyPort::default()
        }]),
        ..NetworkPolicyIngressRule::default()
    };
    NetworkPolicy {
        metadata: meta(opts, SERVICE, run, &[]),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(labels(&[("chaosnet.run", run)])),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![rule(P2P_PORT, "UDP"), rule(API_PORT, "TCP")]),
            ..NetworkPolicySpec::default()
        }),
    }
}

fn meta(opts: &KubeOptions, name: &str, run: &str, extra: &[(&str, &str)]) -> ObjectMeta {
    let mut l = labels(&[
        ("chaosnet.run", run),
        ("app.kubernetes.io/part-of", "chaosnet"),
    ]);
    l.extend(labels(extra));
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(opts.namespace.clone()),
        labels: Some(l),
        ..ObjectMeta::default()
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn port(name: &str, port: u16, proto: &str) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: i32::from(port),
        protocol: Some(proto.into()),
        ..ContainerPort::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

fn secret_volume(name: &str, secret: &str) -> Volume {
    Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            // Group-readable: fsGroup gives the agent's group the files.
            default_mode: Some(0o440),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn resources(cpu: &str, memory: &str, limit: &str) -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu.into())),
            ("memory".to_string(), Quantity(memory.into())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_string(),
            Quantity(limit.into()),
        )])),
        ..ResourceRequirements::default()
    }
}

/// RFC 1123 label: what pod names and most object names must be.
fn dns_label(what: &'static str, name: &str, max: usize) -> Result<(), RenderError> {
    let ok = !name.is_empty()
        && name.len() <= max
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(RenderError::Name {
            what,
            name: name.to_string(),
            max,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::RunId;
    use crate::planner;
    use crate::scenario::Scenario;

    fn opts() -> KubeOptions {
        KubeOptions {
            namespace: "chaosnet-abc123".into(),
            image: "chaosnet-agent:0.1.0".into(),
            api_token: "0123456789abcdef0123".into(),
            storage_mib: 256,
        }
    }

    fn default_plan() -> Plan {
        planner::plan(&Scenario::default_scenario(), &RunId("abc123".into())).expect("plan")
    }

    fn sets(objects: &[Object]) -> Vec<&StatefulSet> {
        objects
            .iter()
            .filter_map(|o| match o {
                Object::StatefulSet(s) => Some(s),
                _ => None,
            })
            .collect()
    }

    fn pod(s: &StatefulSet) -> &PodSpec {
        s.spec
            .as_ref()
            .and_then(|x| x.template.spec.as_ref())
            .expect("a pod template")
    }

    #[test]
    fn every_agent_of_the_plan_is_a_pod_with_the_plan_name() {
        let plan = default_plan();
        let objects = render(&plan, &opts()).expect("renders");
        let mut pods: Vec<String> = Vec::new();
        for s in sets(&objects) {
            let name = s.metadata.name.clone().expect("named");
            let n = s.spec.as_ref().and_then(|x| x.replicas).expect("replicas");
            pods.extend((0..n).map(|i| format!("{name}-{i}")));
        }
        let mut planned: Vec<String> = plan.agents.iter().map(|a| a.name.clone()).collect();
        pods.sort();
        planned.sort();
        assert_eq!(pods, planned);
        assert!(
            objects.iter().all(
                |o| !matches!(o, Object::Namespace(_)) || o.id() == "Namespace/chaosnet-abc123"
            )
        );
        // Same inputs, same objects.
        assert_eq!(
            to_yaml(&objects),
            to_yaml(&render(&plan, &opts()).expect("renders"))
        );
    }

    #[test]
    fn natted_pods_get_a_router_with_net_admin_only_and_agents_no_capability() {
        let plan = default_plan();
        let objects = render(&plan, &opts()).expect("renders");
        for s in sets(&objects) {
            let name = s.metadata.name.as_deref().expect("named");
            let site = plan.sites.iter().find(|x| x.name == name);
            let natted = site.is_some_and(|x| x.nat != NatKind::None);
            let p = pod(s);
            let agent = &p.containers[0];
            let caps = agent
                .security_context
                .as_ref()
                .and_then(|c| c.capabilities.as_ref())
                .expect("capabilities");
            assert_eq!(caps.drop, Some(vec!["ALL".to_string()]), "{name}");
            assert_eq!(caps.add, None, "{name}");
            let args = agent.args.as_ref().expect("args");
            let listen = &args[args.iter().position(|a| a == "--listen").expect("listen") + 1];
            match p.init_containers.as_deref() {
                Some([router]) => {
                    assert!(natted, "{name}: a public group has a router");
                    assert_eq!(listen, "10.77.0.2:4433", "{name}");
                    let c = router
                        .security_context
                        .as_ref()
                        .and_then(|c| c.capabilities.as_ref())
                        .expect("capabilities");
                    assert_eq!(c.add, Some(vec!["NET_ADMIN".to_string()]), "{name}");
                    assert_eq!(c.drop, Some(vec!["ALL".to_string()]), "{name}");
                    assert_eq!(router.restart_policy.as_deref(), Some("Always"));
                    assert!(router.startup_probe.is_some(), "{name}");
                }
                None => {
                    assert!(!natted, "{name}: a NATed site has no router");
                    assert_eq!(listen, "$(POD_IP):4433", "{name}");
                }
                other => panic!("{name}: unexpected init containers {other:?}"),
            }
            assert!(
                !args.contains(&"--mdns".to_string()),
                "{name}: mDNS does not cross pods"
            );
            assert!(!args.contains(&"--rng-seed".to_string()), "{name}");
        }
    }

    #[test]
    fn agents_find_the_seeds_by_dns_name_and_planned_id() {
        let plan = default_plan();
        let objects = render(&plan, &opts()).expect("renders");
        let want: Vec<String> = plan
            .agents
            .iter()
            .filter(|a| a.seed)
            .map(|a| format!("{}@{}.chaosnet:4433", a.node_id, a.name))
            .collect();
        for s in sets(&objects) {
            let args = pod(s).containers[0].args.clone().expect("args");
            let seeds: Vec<String> = args
                .windows(2)
                .filter(|w| w[0] == "--seed")
                .map(|w| w[1].clone())
                .collect();
            assert_eq!(seeds, want, "{:?}", s.metadata.name);
        }
        let keys = objects
            .iter()
            .find_map(|o| match o {
                Object::Secret(s) if o.id() == "Secret/chaosnet-seed-keys" => s.string_data.clone(),
                _ => None,
            })
            .expect("the seed keys");
        for a in plan.agents.iter().filter(|a| a.seed) {
            assert_eq!(keys.get(&format!("{}.key", a.name)), Some(&a.key_seed_hex));
        }
    }

    #[test]
    fn what_a_cluster_cannot_carry_is_refused() {
        let plan = default_plan();
        let mut o = opts();
        o.api_token = "short".into();
        assert_eq!(render(&plan, &o), Err(RenderError::ShortToken));
        let mut o = opts();
        o.namespace = "Not_A_Label".into();
        assert!(matches!(render(&plan, &o), Err(RenderError::Name { .. })));
    }
}
