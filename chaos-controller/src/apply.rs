//! Apply: carries a [`Plan`] out as root, and tears runs down.
//!
//! What it does:
//! - [`preflight`] checks for root and for `ip`, `nft`, `conntrack` and `sysctl`, naming the
//!   Debian package of anything missing; [`apply`] runs it first, so nothing is created when
//!   it fails.
//! - [`apply`] builds a run in phases: namespaces (one `ip -batch`), veth pairs created
//!   directly in their two namespaces (one `ip -batch`, so no interface ever appears in the
//!   root namespace), then, per namespace and in parallel: one `ip -batch` for lo, bridges,
//!   addresses, masters, links and routes; `nft -f -` for each ruleset (this also loads
//!   conntrack); sysctls written to `/proc/sys` from a thread inside the namespace; and
//!   `conntrack -F` in router namespaces. Progress is reported per namespace.
//! - Ownership ([`owner`]): before creating a namespace, apply writes its marker file
//!   (`/run/chaosnet/<run>/netns/<ns>`); teardown deletes only namespaces with a marker (or
//!   named by the caller from a run's state), never one that merely looks like a chaosnet
//!   name. A namespace of the plan's run id without a marker makes apply refuse
//!   ([`ApplyError::NotOwned`]) before it creates anything.
//! - Re-applying is idempotent by replacement: apply first tears down every marked
//!   namespace of the plan's run id (killing the processes inside), then builds from
//!   scratch. So a run left half-built by a killed controller is simply rebuilt, and the
//!   result never depends on what was there before. On any failure, apply tears the run
//!   down again and returns an error naming the failing command (for batches: the failing
//!   line) and its stderr.
//! - [`teardown`] removes one run, [`teardown_all`] every marked namespace on the machine.
//!   Both need no state file (the markers are written before the namespaces), kill every
//!   process inside first, and are idempotent.
//! - [`in_netns`] runs a closure on a thread inside a namespace (tests open sockets there).
//! - [`attach_host`] hands a host namespace's link and name over to a container's network
//!   namespace (the docker runtime).
//! - [`pod`]: the router of a pod ([`pod_setup`] renders, [`apply_pod`] applies in the
//!   caller's own namespace): NAT where a pod's containers share one network namespace.
//! - [`net_exec`] runs one network tool ([`NetCmd`]: `nft`, `tc`, `ip`, `conntrack`) inside a
//!   namespace, with a timeout: what faults and the matrix's cold mode do in a local lab.
//!
//! What it does not do: plan (see `planner`), render nft text (see `nat`), start agents
//! (see [`crate::runtime`]), or touch the root namespace: every link, address, route, rule
//! and sysctl it creates lives in a namespace named `cn<run>-...`, which validation
//! enforces before anything is created. The one exception is [`pod`], which works in the
//! namespace it runs in, and whose command refuses to run outside a container.

mod attach;
pub(crate) mod cmd;
mod netns;
pub mod owner;
pub mod pod;
mod script;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::plan::{Plan, RunId};

pub use attach::{HostWiring, attach_host};
pub use netns::in_netns;
pub use pod::{PodSetup, apply_pod, check_pod, pod_setup, wan_address};

pub(crate) use cmd::{package_of, which};
pub(crate) use netns::{alive, ns_inode, pid_ns_inode, proc_state};

use cmd::Cmd;
use script::NsWork;

/// How long teardown waits for killed processes to die.
const KILL_WAIT: Duration = Duration::from_secs(3);
/// How often teardown re-scans for processes that entered a namespace while it was killing.
const KILL_ROUNDS: usize = 3;

/// Everything that can go wrong while applying or tearing down.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The controller does not run as root.
    #[error(
        "chaosnet needs root to create network namespaces and nftables rules (effective uid is {euid}); run it with sudo"
    )]
    NotRoot {
        /// The effective uid.
        euid: u32,
    },
    /// A required tool is missing.
    #[error(
        "`{binary}` was not found on PATH or in /usr/sbin, /sbin: install the Debian package `{package}` (apt-get install -y {package})"
    )]
    MissingBinary {
        /// The binary, e.g. `nft`.
        binary: String,
        /// The Debian package providing it, e.g. `nftables`.
        package: &'static str,
    },
    /// The plan is inconsistent or names something apply refuses to touch.
    #[error("invalid plan: {0}")]
    InvalidPlan(String),
    /// A command exited non-zero.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line (for batches, with the failing line).
        command: String,
        /// Its exit status.
        status: String,
        /// Its stderr, trimmed.
        stderr: String,
    },
    /// A command ran past its timeout and was killed.
    #[error("`{command}` did not finish within {after:?} and was killed")]
    Timeout {
        /// The command line.
        command: String,
        /// The timeout.
        after: Duration,
    },
    /// A command could not be started.
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A named namespace does not exist.
    #[error("network namespace {ns} does not exist (no /run/netns/{ns})")]
    NoSuchNamespace {
        /// The namespace.
        ns: String,
    },
    /// Entering or inspecting a namespace failed.
    #[error("network namespace {ns}: {what}")]
    Netns {
        /// The namespace.
        ns: String,
        /// What failed.
        what: String,
    },
    /// Setting a sysctl failed.
    #[error("sysctl {key}={value} in {ns}: {source}")]
    Sysctl {
        /// The namespace.
        ns: String,
        /// The dotted key.
        key: String,
        /// The value.
        value: String,
        /// The OS error (ENOENT: the kernel has no such sysctl).
        #[source]
        source: std::io::Error,
    },
    /// Other I/O.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Links did not come up after configuration.
    #[error("links in netns {ns} did not come up within {after:?}: {detail}")]
    NotReady {
        /// The namespace.
        ns: String,
        /// How long apply waited.
        after: Duration,
        /// The first link that was not ready, as `ip -d -o link` shows it.
        detail: String,
    },
    /// Namespaces survived a teardown.
    #[error("could not delete network namespaces {names:?}: {detail}")]
    Leftovers {
        /// The namespaces still present.
        names: Vec<String>,
        /// `ip`'s stderr.
        detail: String,
    },
    /// Namespaces of the run id exist that this controller did not create (no marker).
    #[error(
        "run id {run} is taken: network namespaces {names:?} exist but were not created by chaosnet (no marker under {}); pick another run id, or delete them yourself with `ip netns del`",
        owner::OWNER_DIR
    )]
    NotOwned {
        /// The run id.
        run: String,
        /// The namespaces without a marker.
        names: Vec<String>,
    },
    /// Apply failed, and removing the partial run failed too.
    #[error("{error}; removing the partial run also failed: {cleanup}")]
    CleanupFailed {
        /// The apply error.
        error: Box<ApplyError>,
        /// The teardown error.
        cleanup: Box<ApplyError>,
    },
}

/// A phase of [`apply`], for progress display.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Removing an earlier copy of the same run.
    Cleanup,
    /// Creating all namespaces.
    Namespaces,
    /// Creating all veth pairs.
    Links,
    /// Configuring one namespace (addresses, routes, nft, sysctls, conntrack flush).
    Configure,
    /// Waiting until one namespace's links are up and its bridge ports forward (namespaces
    /// without a bridge pass at once).
    Settle,
    /// Finished.
    Done,
}

/// One progress report: `done` of `total` units are finished. Units are: 1 for cleanup, one
/// per namespace created, 1 for the links, one per namespace configured, one per namespace
/// settled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// The phase that just finished a unit.
    pub phase: Phase,
    /// The namespace, for [`Phase::Configure`].
    pub ns: Option<String>,
    /// Units finished so far.
    pub done: usize,
    /// All units.
    pub total: usize,
}

/// Knobs for [`apply_with`].
#[derive(Clone, Debug)]
pub struct ApplyOptions {
    /// Namespaces configured in parallel (at least 1).
    pub jobs: usize,
    /// Longest wait for links to come up after configuration ([`Phase::Settle`]); zero skips
    /// the check.
    pub settle_timeout: Duration,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        // Mostly fork/exec of short-lived tools and kernel work: a few more workers than
        // cores keeps both cores busy while one worker waits on a child.
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        ApplyOptions {
            jobs: (cores * 2).clamp(2, 16),
            settle_timeout: Duration::from_secs(3),
        }
    }
}

/// What [`apply`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyReport {
    /// Namespaces created.
    pub namespaces: usize,
    /// Namespaces of an earlier copy of this run that were removed first.
    pub replaced: usize,
    /// Wall time of the whole apply.
    pub elapsed: Duration,
}

/// What a teardown removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TeardownReport {
    /// Run ids that had namespaces, sorted.
    pub runs: Vec<String>,
    /// Namespaces deleted.
    pub namespaces: usize,
    /// Processes killed.
    pub processes: usize,
    /// Wall time.
    pub elapsed: Duration,
}

/// Resolved paths of the tools apply runs.
#[derive(Clone, Debug)]
struct Tools {
    ip: PathBuf,
    nft: PathBuf,
    conntrack: PathBuf,
}

fn check_root() -> Result<(), ApplyError> {
    let euid = nix::unistd::geteuid();
    if euid.is_root() {
        Ok(())
    } else {
        Err(ApplyError::NotRoot {
            euid: euid.as_raw(),
        })
    }
}

fn locate_tools() -> Result<Tools, ApplyError> {
    let ip = cmd::require("ip")?;
    let nft = cmd::require("nft")?;
    let conntrack = cmd::require("conntrack")?;
    // Not run by apply itself (it writes /proc/sys directly), but part of the lab's
    // toolset: operators and the root tests read lab sysctls with `ip netns exec <ns>
    // sysctl`, so a fresh machine is told about procps up front.
    cmd::require("sysctl")?;
    Ok(Tools { ip, nft, conntrack })
}

/// Checks that apply can work: effective uid 0, and `ip` (iproute2), `nft` (nftables),
/// `conntrack` (conntrack) and `sysctl` (procps) installed. Creates nothing.
///
/// # Errors
/// [`ApplyError::NotRoot`] or [`ApplyError::MissingBinary`] naming the Debian package.
pub fn preflight() -> Result<(), ApplyError> {
    check_root()?;
    locate_tools().map(drop)
}

/// Applies `plan` with [`ApplyOptions::default`], calling `progress` (on the calling
/// thread) after each unit of work. See the module docs for the phases and for
/// idempotency (re-applying replaces the run).
///
/// # Errors
/// Preflight and validation errors (nothing created), or the first failing command, after
/// the partial run was torn down ([`ApplyError::CleanupFailed`] if that failed too).
pub fn apply(plan: &Plan, progress: &dyn Fn(Step)) -> Result<ApplyReport, ApplyError> {
    apply_with(plan, &ApplyOptions::default(), progress)
}

/// [`apply`] with explicit options.
///
/// # Errors
/// As [`apply`].
pub fn apply_with(
    plan: &Plan,
    opts: &ApplyOptions,
    progress: &dyn Fn(Step),
) -> Result<ApplyReport, ApplyError> {
    let t0 = Instant::now();
    check_root()?;
    let tools = locate_tools()?;
    script::validate(plan)?;
    let base = Path::new(owner::OWNER_DIR);
    let foreign = unowned_of(base, &plan.run_id)?;
    if !foreign.is_empty() {
        return Err(ApplyError::NotOwned {
            run: plan.run_id.0.clone(),
            names: foreign,
        });
    }
    let scripts = script::render(plan);
    let n = plan.namespaces.len();
    let total = 2 + 3 * n;

    // An earlier copy of this run (marked, so ours) goes first; then the markers of the new
    // one are written before any namespace exists.
    let replaced = teardown_owned(&tools.ip, base, Some(&plan.run_id), &[])?.namespaces;
    owner::write_markers(base, plan)?;
    raise_neighbour_limits();
    progress(Step {
        phase: Phase::Cleanup,
        ns: None,
        done: 1,
        total,
    });

    match build(&tools, &scripts, opts, progress, total) {
        Ok(()) => {
            progress(Step {
                phase: Phase::Done,
                ns: None,
                done: total,
                total,
            });
            Ok(ApplyReport {
                namespaces: n,
                replaced,
                elapsed: t0.elapsed(),
            })
        }
        Err(error) => match teardown_owned(&tools.ip, base, Some(&plan.run_id), &[]) {
            Ok(_) => Err(error),
            Err(cleanup) => Err(ApplyError::CleanupFailed {
                error: Box::new(error),
                cleanup: Box::new(cleanup),
            }),
        },
    }
}

/// Runs an `ip -batch -` script; on failure, the error names the failing line.
fn ip_batch(ip: &std::path::Path, label: &str, script: &str) -> Result<(), ApplyError> {
    ip_batch_ns(ip, None, label, script)
}

/// [`ip_batch`], inside namespace `ns` (`ip -n <ns>`) when given.
fn ip_batch_ns(
    ip: &std::path::Path,
    ns: Option<&str>,
    label: &str,
    script: &str,
) -> Result<(), ApplyError> {
    if script.is_empty() {
        return Ok(());
    }
    let mut args: Vec<&str> = Vec::with_capacity(4);
    if let Some(ns) = ns {
        args.extend(["-n", ns]);
    }
    args.extend(["-batch", "-"]);
    let cmd = Cmd::new(ip).args(args).stdin(script.as_bytes());
    cmd.run().map(drop).map_err(|e| match e {
        ApplyError::Command {
            command,
            status,
            stderr,
        } => {
            let line = cmd::batch_failed_line(&stderr, script)
                .map(|l| format!(", at line `{l}`"))
                .unwrap_or_default();
            ApplyError::Command {
                command: format!("{command} ({label}{line})"),
                status,
                stderr,
            }
        }
        other => other,
    })
}

fn build(
    tools: &Tools,
    scripts: &script::Scripts,
    opts: &ApplyOptions,
    progress: &dyn Fn(Step),
    total: usize,
) -> Result<(), ApplyError> {
    let n = scripts.per_ns.len();
    ip_batch(&tools.ip, "create namespaces", &scripts.netns_add)?;
    progress(Step {
        phase: Phase::Namespaces,
        ns: None,
        done: 1 + n,
        total,
    });
    ip_batch(&tools.ip, "create veth pairs", &scripts.veths)?;
    let mut done = 2 + n;
    progress(Step {
        phase: Phase::Links,
        ns: None,
        done,
        total,
    });

    run_pool(
        &scripts.per_ns,
        opts.jobs,
        |w| configure_ns(tools, w),
        |i| {
            done += 1;
            progress(Step {
                phase: Phase::Configure,
                ns: Some(scripts.per_ns[i].ns.clone()),
                done,
                total,
            });
        },
    )?;
    // Carrier changes reach bridges and operstate asynchronously (kernel linkwatch): wait
    // until, in every namespace with a bridge, every link is up and every bridge port
    // forwards, so the first packets of a fresh lab are not lost.
    let deadline = Instant::now() + opts.settle_timeout;
    run_pool(
        &scripts.per_ns,
        opts.jobs,
        |w| {
            // Only bridge ports wait for linkwatch before passing traffic; a plain veth
            // sends as soon as both ends are up.
            if opts.settle_timeout.is_zero() || !w.has_bridge {
                Ok(())
            } else {
                settle_ns(tools, w, deadline, opts.settle_timeout)
            }
        },
        |i| {
            done += 1;
            progress(Step {
                phase: Phase::Settle,
                ns: Some(scripts.per_ns[i].ns.clone()),
                done,
                total,
            });
        },
    )
}

/// Runs `f` on every item with up to `jobs` worker threads; `on_ok(i)` runs on the calling
/// thread as each item succeeds. Stops handing out work at the first error and returns it.
fn run_pool<T: Sync>(
    items: &[T],
    jobs: usize,
    f: impl Fn(&T) -> Result<(), ApplyError> + Sync,
    mut on_ok: impl FnMut(usize),
) -> Result<(), ApplyError> {
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let jobs = jobs.max(1).min(items.len().max(1));
    let (tx, rx) = mpsc::channel::<(usize, Result<(), ApplyError>)>();
    std::thread::scope(|s| {
        for _ in 0..jobs {
            let tx = tx.clone();
            let (next, stop, f) = (&next, &stop, &f);
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else {
                        break;
                    };
                    let r = f(item);
                    let failed = r.is_err();
                    if tx.send((i, r)).is_err() || failed {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let mut first_err = None;
        for (i, r) in rx {
            match r {
                Ok(()) => on_ok(i),
                Err(e) => {
                    stop.store(true, Ordering::Relaxed);
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    })
}

/// Polls `ip -d -o link show` inside the namespace until every link other than `lo` and the
/// bridges themselves is operationally up and every bridge port forwards.
fn settle_ns(
    tools: &Tools,
    w: &NsWork,
    deadline: Instant,
    timeout: Duration,
) -> Result<(), ApplyError> {
    in_netns(&w.ns, || -> Result<(), ApplyError> {
        let mut pause = Duration::from_millis(1);
        loop {
            let out = Cmd::new(&tools.ip)
                .args(["-d", "-o", "link", "show"])
                .run()
                .map_err(|e| in_ns(e, &w.ns))?;
            let Some(line) = not_ready(&out) else {
                return Ok(());
            };
            if Instant::now() >= deadline {
                return Err(ApplyError::NotReady {
                    ns: w.ns.clone(),
                    after: timeout,
                    detail: line.to_string(),
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    })?
}

/// The first line of `ip -d -o link show` output whose link is not ready, if any.
fn not_ready(out: &str) -> Option<&str> {
    out.lines().find(|line| {
        let name = line.split(':').nth(1).map(str::trim).unwrap_or("");
        if name == "lo" || line.contains("LOOPBACK") {
            return false;
        }
        // A bridge's own state follows its ports (and a bridge without ports is down for
        // good): check the ports, not the bridge.
        if line.contains(" bridge forward_delay ") {
            return false;
        }
        let oper_ok = line.contains(" state UP ") || line.contains(" state UNKNOWN ");
        let port_ok =
            !line.contains("bridge_slave") || line.contains("bridge_slave state forwarding");
        !(oper_ok && port_ok)
    })
}

/// Configures one namespace from a thread inside it: `ip -batch` (no `-n` needed, and no
/// per-call mount namespace), nft rulesets, sysctls, conntrack flush.
fn configure_ns(tools: &Tools, w: &NsWork) -> Result<(), ApplyError> {
    in_netns(&w.ns, || -> Result<(), ApplyError> {
        ip_batch(&tools.ip, &format!("in netns {}", w.ns), &w.ip_batch)?;
        for text in &w.rulesets {
            Cmd::new(&tools.nft)
                .args(["-f", "-"])
                .stdin(text.as_bytes())
                .run()
                .map_err(|e| in_ns(e, &w.ns))?;
        }
        for (key, value) in &w.sysctls {
            write_sysctl(&w.ns, key, value)?;
        }
        if w.flush_conntrack {
            Cmd::new(&tools.conntrack)
                .args(["-F"])
                .timeout(Duration::from_secs(10))
                .run()
                .map_err(|e| in_ns(e, &w.ns))?;
        }
        Ok(())
    })?
}

/// Neighbour (ARP) entries the kernel keeps in all, over every namespace together, that
/// the lab asks for. The kernel's default (1,024) is exhausted by a few dozen hosts on the
/// emulated internet, which all see each other: packets then vanish with "neighbor table
/// overflow" in the kernel log.
const NEIGH_GC_THRESH: [(&str, u32); 3] = [
    ("gc_thresh1", 4_096),
    ("gc_thresh2", 16_384),
    ("gc_thresh3", 32_768),
];

/// Raises the kernel's global neighbour-table limits to [`NEIGH_GC_THRESH`] when they are
/// lower. These are the only settings of the root namespace the lab changes, and only
/// upwards; failure is logged, not fatal (a small lab fits the defaults).
fn raise_neighbour_limits() {
    for (name, want) in NEIGH_GC_THRESH {
        let path = format!("/proc/sys/net/ipv4/neigh/default/{name}");
        let have: Option<u32> = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        if have.is_some_and(|h| h >= want) {
            continue;
        }
        match std::fs::write(&path, want.to_string()) {
            Ok(()) => {
                tracing::info!(%path, from = ?have, to = want, "raised the kernel's neighbour-table limit")
            }
            Err(e) => tracing::warn!(%path, error = %e, "cannot raise the neighbour-table limit"),
        }
    }
}

/// A network tool to run inside a namespace: `nft`, `tc`, `ip` or `conntrack`, its
/// arguments, what it reads on stdin, and how long it may take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetCmd {
    /// The tool (located with the usual sbin fallbacks).
    pub tool: &'static str,
    /// Its arguments.
    pub args: Vec<String>,
    /// Text fed on stdin (e.g. an nft script).
    pub stdin: Option<String>,
    /// Longest it may run before it is killed.
    pub timeout: Duration,
}

impl NetCmd {
    /// `tool args...` with a 10 s timeout and no stdin.
    pub fn new(tool: &'static str, args: &[&str]) -> NetCmd {
        NetCmd {
            tool,
            args: args.iter().map(|a| a.to_string()).collect(),
            stdin: None,
            timeout: Duration::from_secs(10),
        }
    }

    /// Feeds `text` on stdin.
    pub fn stdin(mut self, text: impl Into<String>) -> NetCmd {
        self.stdin = Some(text.into());
        self
    }

    /// The command line, for messages.
    pub fn display(&self) -> String {
        std::iter::once(self.tool.to_string())
            .chain(self.args.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// How a [`NetCmd`] ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetOutput {
    /// The command line and where it ran, for messages.
    pub command: String,
    /// Exit code 0.
    pub success: bool,
    /// The exit status, as shown.
    pub status: String,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr, trimmed.
    pub stderr: String,
}

impl NetOutput {
    /// Its stdout, or an [`ApplyError::Command`] when it failed.
    pub fn ok(self) -> Result<String, ApplyError> {
        if self.success {
            Ok(self.stdout)
        } else {
            Err(ApplyError::Command {
                command: self.command,
                status: self.status,
                stderr: self.stderr,
            })
        }
    }
}

/// Runs `cmd` inside network namespace `ns` (from a thread that entered it, so the tool
/// inherits it) and returns how it ended; only a tool that cannot run or runs past its
/// timeout is an error.
///
/// # Errors
/// A missing tool (naming its package), no such namespace, a spawn failure or a timeout.
pub fn net_exec(ns: &str, cmd: &NetCmd) -> Result<NetOutput, ApplyError> {
    let program = cmd::require(cmd.tool)?;
    let mut c = Cmd::new(&program)
        .args(cmd.args.iter().cloned())
        .timeout(cmd.timeout);
    if let Some(text) = &cmd.stdin {
        c = c.stdin(text.as_bytes());
    }
    let (status, stdout, stderr) = in_netns(ns, || c.run_raw())?.map_err(|e| in_ns(e, ns))?;
    Ok(NetOutput {
        command: format!("{} (in netns {ns})", cmd.display()),
        success: status.success(),
        status: status.to_string(),
        stdout,
        stderr: stderr.trim().to_string(),
    })
}

/// Adds "in netns X" to a command error run from inside a namespace.
fn in_ns(e: ApplyError, ns: &str) -> ApplyError {
    match e {
        ApplyError::Command {
            command,
            status,
            stderr,
        } => ApplyError::Command {
            command: format!("{command} (in netns {ns})"),
            status,
            stderr,
        },
        ApplyError::Timeout { command, after } => ApplyError::Timeout {
            command: format!("{command} (in netns {ns})"),
            after,
        },
        other => other,
    }
}

/// Writes `/proc/sys/<key with dots as slashes>`. Must run on a thread inside `ns`:
/// `/proc/sys/net` resolves against the writing thread's network namespace.
fn write_sysctl(ns: &str, key: &str, value: &str) -> Result<(), ApplyError> {
    let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
    std::fs::write(&path, format!("{value}\n")).map_err(|source| ApplyError::Sysctl {
        ns: ns.to_string(),
        key: key.to_string(),
        value: value.to_string(),
        source,
    })
}

/// Removes run `run_id`: kills every process in its marked namespaces (SIGKILL, bounded
/// wait), then deletes those namespaces (their veths, bridges, rules and conntrack go with
/// them) and their markers. A namespace with the run's prefix but no marker is left alone.
/// Idempotent: with nothing left, it returns an empty report.
///
/// # Errors
/// [`ApplyError::NotRoot`], a missing `ip`, an invalid run id, or
/// [`ApplyError::Leftovers`] when namespaces could not be deleted.
pub fn teardown(run_id: &RunId) -> Result<TeardownReport, ApplyError> {
    teardown_recorded(run_id, &[])
}

/// [`teardown`], also deleting the namespaces `recorded` names (those a run's state file
/// lists, for a run made before markers existed); only names of this run count.
///
/// # Errors
/// As [`teardown`].
pub fn teardown_recorded(
    run_id: &RunId,
    recorded: &[String],
) -> Result<TeardownReport, ApplyError> {
    check_root()?;
    if !script::valid_run_id(run_id) {
        return Err(ApplyError::InvalidPlan(format!(
            "run id {:?} is not 6 lowercase hex characters",
            run_id.0
        )));
    }
    let ip = cmd::require("ip")?;
    teardown_owned(&ip, Path::new(owner::OWNER_DIR), Some(run_id), recorded)
}

/// Removes every chaosnet run on the machine: each namespace carrying a chaosnet marker,
/// and the processes inside. Needs no state file (markers are written before namespaces
/// are created), so it also cleans up after a controller killed in the middle of `up`.
/// Namespaces that only look like chaosnet's (`cn<6 hex>-*` without a marker) stay, with
/// their processes ([`list_unowned_namespaces`] names them). Idempotent.
///
/// # Errors
/// As [`teardown`].
pub fn teardown_all() -> Result<TeardownReport, ApplyError> {
    check_root()?;
    let ip = cmd::require("ip")?;
    teardown_owned(&ip, Path::new(owner::OWNER_DIR), None, &[])
}

/// Every chaosnet-looking namespace currently on the machine, sorted (names
/// `cn<6 hex>-*`), whether chaosnet made it or not.
///
/// # Errors
/// [`ApplyError::Io`] when `/run/netns` cannot be read.
pub fn list_chaosnet_namespaces() -> Result<Vec<String>, ApplyError> {
    Ok(netns::list()?
        .into_iter()
        .filter(|n| script::run_of_ns(n).is_some())
        .collect())
}

/// The namespaces on the machine that carry a chaosnet marker (what [`teardown_all`]
/// removes), sorted.
///
/// # Errors
/// As [`list_chaosnet_namespaces`].
pub fn list_owned_namespaces() -> Result<Vec<String>, ApplyError> {
    let base = Path::new(owner::OWNER_DIR);
    Ok(list_chaosnet_namespaces()?
        .into_iter()
        .filter(|n| owner::is_marked(base, n))
        .collect())
}

/// The `cn<6 hex>-*` namespaces on the machine without a chaosnet marker: someone else's,
/// or of a run made before markers (its state file still names them), sorted.
///
/// # Errors
/// As [`list_chaosnet_namespaces`].
pub fn list_unowned_namespaces() -> Result<Vec<String>, ApplyError> {
    let base = Path::new(owner::OWNER_DIR);
    Ok(list_chaosnet_namespaces()?
        .into_iter()
        .filter(|n| !owner::is_marked(base, n))
        .collect())
}

/// True when run id `run` is in use on this machine: a namespace with its prefix (marked
/// or not) or a marker directory exists.
///
/// # Errors
/// As [`list_chaosnet_namespaces`].
pub fn run_id_in_use(run: &RunId) -> Result<Vec<String>, ApplyError> {
    let prefix = run.ns("");
    let mut found: Vec<String> = netns::list()?
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    let marker = owner::run_marker_dir(Path::new(owner::OWNER_DIR), run);
    if marker.exists() {
        found.push(marker.display().to_string());
    }
    Ok(found)
}

/// Namespaces with run `run`'s prefix that carry no marker.
fn unowned_of(base: &Path, run: &RunId) -> Result<Vec<String>, ApplyError> {
    let prefix = run.ns("");
    Ok(netns::list()?
        .into_iter()
        .filter(|n| n.starts_with(&prefix) && !owner::is_marked(base, n))
        .collect())
}

/// Deletes the namespaces of `run` (or of every run) that carry a marker under `base` or
/// are in `recorded`, then prunes the markers whose namespace is gone.
fn teardown_owned(
    ip: &Path,
    base: &Path,
    run: Option<&RunId>,
    recorded: &[String],
) -> Result<TeardownReport, ApplyError> {
    let prefix = run.map(|r| r.ns(""));
    let names: Vec<String> = netns::list()?
        .into_iter()
        .filter(|n| script::run_of_ns(n).is_some())
        .filter(|n| prefix.as_deref().is_none_or(|p| n.starts_with(p)))
        .filter(|n| owner::is_marked(base, n) || recorded.contains(n))
        .collect();
    let report = teardown_names(ip, names);
    let left: BTreeSet<String> = netns::list().unwrap_or_default().into_iter().collect();
    owner::prune(base, run, |n| left.contains(n));
    report
}

fn teardown_names(ip: &Path, names: Vec<String>) -> Result<TeardownReport, ApplyError> {
    let t0 = Instant::now();
    if names.is_empty() {
        return Ok(TeardownReport {
            elapsed: t0.elapsed(),
            ..TeardownReport::default()
        });
    }
    let by_inode: HashMap<u64, String> = names
        .iter()
        .filter_map(|n| netns::ns_inode(n).map(|ino| (ino, n.clone())))
        .collect();
    // Re-scan a bounded number of times: a process may enter a namespace (e.g. an agent
    // being restarted) while we kill the others.
    let mut processes = 0;
    for _ in 0..KILL_ROUNDS {
        let pids: Vec<i32> = netns::pids_by_ns(&by_inode)
            .into_values()
            .flatten()
            .filter(|&p| netns::alive(p))
            .collect();
        if pids.is_empty() {
            break;
        }
        processes += netns::kill_all(&pids, KILL_WAIT);
    }
    let mut script = String::new();
    for n in &names {
        script.push_str("netns del ");
        script.push_str(n);
        script.push('\n');
    }
    // -force: keep going past a namespace that vanished meanwhile; leftovers are checked
    // below from the directory itself.
    let res = Cmd::new(ip)
        .args(["-force", "-batch", "-"])
        .stdin(script)
        .run_raw()?;
    let left: Vec<String> = netns::list()?
        .into_iter()
        .filter(|n| names.contains(n))
        .collect();
    if !left.is_empty() {
        return Err(ApplyError::Leftovers {
            names: left,
            detail: res.2.trim().to_string(),
        });
    }
    let runs: BTreeSet<String> = names
        .iter()
        .filter_map(|n| script::run_of_ns(n).map(str::to_string))
        .collect();
    Ok(TeardownReport {
        runs: runs.into_iter().collect(),
        namespaces: names.len(),
        processes,
        elapsed: t0.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_ready_when_up_and_forwarding() {
        let ready = "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN mode DEFAULT\n\
            2: br0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP mode DEFAULT \\    bridge forward_delay 1500\n\
            1001: p0@if1000: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 master br0 state UP mode DEFAULT \\    veth \\    bridge_slave state forwarding priority 32\n";
        assert_eq!(not_ready(ready), None);
        let down = "1001: p0@if1000: <NO-CARRIER,BROADCAST,MULTICAST,UP> mtu 1500 state LOWERLAYERDOWN mode DEFAULT\n";
        assert!(not_ready(down).is_some());
        let disabled = "1001: p0@if1000: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 master br0 state UP mode DEFAULT \\    bridge_slave state disabled priority 32\n";
        assert!(not_ready(disabled).is_some());
    }
}
