//! The docker runtime: each agent as a Docker container (bollard), wired into the NAT lab.
//!
//! What it does:
//! - [`Engine::connect`] reaches the engine over its unix socket (`DOCKER_HOST=unix://...`,
//!   else `/var/run/docker.sock`), always negotiates the API version (the engine here is
//!   1.41; bollard speaks 1.53), and refuses engines older than [`MIN_API`]. Every failure
//!   says what to do: engine not reachable, permission denied on the socket, API too old,
//!   image missing (`make image`).
//! - [`DockerRuntime::start`] creates the agent's labelled volume and writes `node.key` into
//!   it (owned by the image's user), creates the container from [`ContainerSpec`] (network
//!   `none`, labels, limits, mounts, the process runtime's command line), starts it, reads
//!   its pid from inspect and hands it the host's place in the lab with
//!   [`crate::apply::attach_host`]: the host's `eth0` moves into the container's network
//!   namespace and the host namespace name `cn<run>-h-<agent>` is re-pointed at it. NAT,
//!   faults, `exec` and the matrix then find the container exactly where the process would
//!   be.
//! - stop (SIGTERM, then SIGKILL after the grace), kill, pause/unpause (cgroup freezer),
//!   restart (stop, start the same container: same volume, so the node graph survives; the
//!   link is moved again into the new namespace), state, logs (streamed from the engine,
//!   with follow), and exec (`ip netns exec` into the container's network namespace from
//!   the host: the image has no shell, and the host's tools are what `exec` is for). The
//!   agent's API is its unix socket in the bind-mounted agent directory, and fault tools run
//!   in the container's network namespace under the host namespace's name.
//! - [`Engine::remove_run`] removes every container and volume labelled with a run id, or
//!   with any run id, which also cleans up after a controller that was killed.
//!
//! bollard is async and the controller is not: the runtime owns a current-thread tokio
//! runtime and blocks on it; nothing async leaks out of this module.
//!
//! What it does not do: create namespaces or links (`apply`), build the image
//! (`scripts/build-image.sh`, `make image`; [`build_image`] only runs that script), or
//! restart containers by itself (their restart policy is `no`).

mod spec;

use std::collections::{BTreeMap, HashMap};
use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::{ContainerStateStatusEnum, VolumeCreateRequest};
use bollard::query_parameters::{
    CreateContainerOptions, KillContainerOptions, ListContainersOptions, ListVolumesOptions,
    LogsOptions, RemoveContainerOptions, RemoveVolumeOptions, StopContainerOptions,
};
use futures_util::StreamExt;

pub use spec::{
    ContainerLimits, ContainerSpec, LABEL_AGENT, LABEL_RUN, NAME_PREFIX, SpecError, container_name,
    labels,
};

use super::{
    AgentState, CleanupReport, ExecStatus, InstanceId, Runtime, RuntimeError, exec_in_netns,
    lab_api, lab_net,
};
use crate::agentapi::ApiError;
use crate::apply::{self, HostWiring};
use crate::apply::{NetCmd, NetOutput};
use crate::http::{Request, Response};
use crate::plan::{AgentPlan, Plan, RunId, RuntimeKind};

/// The engine socket used when `DOCKER_HOST` does not name a unix socket.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// Oldest engine API accepted: 1.40 (Docker 19.03). Everything used here (mounts with
/// volume type, nano CPUs, sysctls, pids limit) exists there; the tests run against 1.41.
pub const MIN_API: (usize, usize) = (1, 40);
/// Seconds the client waits for one engine request.
const REQUEST_TIMEOUT_S: u64 = 120;
/// Containers removed at once by [`Engine::remove_run`]: a forced removal waits mostly on
/// the engine killing the process and unmounting, so a few in flight cut `down` several
/// times without flooding the engine.
const CLEANUP_JOBS: usize = 8;
/// Default time `stop` gives the agent after SIGTERM before the engine sends SIGKILL.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(5);

/// The default image: `chaosnet-agent:<controller version>`, what `make image` builds.
pub fn default_image() -> String {
    format!("chaosnet-agent:{}", env!("CARGO_PKG_VERSION"))
}

/// Errors of the docker runtime, each saying what to do.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// No engine answers on the socket.
    #[error(
        "the Docker engine is not reachable at {socket} ({detail}): start it (systemctl start docker, service docker start, or `dockerd >/var/log/dockerd.log 2>&1 &`), or run with --runtime process"
    )]
    Unreachable {
        /// The socket.
        socket: String,
        /// What failed.
        detail: String,
    },
    /// The socket exists but we may not use it.
    #[error(
        "permission denied on the Docker socket {socket}: run chaosnet as root (the lab needs root anyway) or as a member of the docker group"
    )]
    PermissionDenied {
        /// The socket.
        socket: String,
    },
    /// `DOCKER_HOST` names something other than a unix socket.
    #[error(
        "DOCKER_HOST={0} is not supported: chaosnet talks to a local engine over a unix socket (unix:///var/run/docker.sock)"
    )]
    UnsupportedHost(String),
    /// The engine's API is older than [`MIN_API`].
    #[error(
        "the Docker engine speaks API {found}, older than {min} which chaosnet needs: upgrade the engine (Debian 12: apt-get install docker.io)"
    )]
    ApiTooOld {
        /// What the engine speaks.
        found: String,
        /// The minimum.
        min: String,
    },
    /// The agent image is not in the engine.
    #[error(
        "image {image} is not in the local Docker engine: build it with `make image` (or `scripts/build-image.sh --tag {image}`), or pass --image"
    )]
    ImageMissing {
        /// The image reference.
        image: String,
    },
    /// Building the image failed.
    #[error("building image {image} failed: {detail}")]
    Build {
        /// The image.
        image: String,
        /// Why.
        detail: String,
    },
    /// Any other engine error.
    #[error("docker {what}: {detail}")]
    Api {
        /// The operation.
        what: String,
        /// The engine's message.
        detail: String,
    },
    /// The container spec could not be made.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The client's async runtime could not start.
    #[error("cannot start the async runtime of the Docker client: {0}")]
    Tokio(std::io::Error),
}

/// The HTTP status of an engine error, if it is one.
fn status_of(e: &BollardError) -> Option<u16> {
    match e {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// The first I/O error in an error's source chain.
fn io_kind(e: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        cur = err.source();
    }
    None
}

/// Turns a bollard error into one that says what to do.
fn classify(e: BollardError, socket: &str, what: &str) -> DockerError {
    if let BollardError::SocketNotFoundError(path) = &e {
        return DockerError::Unreachable {
            socket: path.clone(),
            detail: "no such socket".into(),
        };
    }
    let kind = match &e {
        // Transparent: its `source()` skips the I/O error itself.
        BollardError::IOError { err } => Some(err.kind()),
        other => io_kind(other),
    };
    match kind {
        Some(std::io::ErrorKind::PermissionDenied) => {
            return DockerError::PermissionDenied {
                socket: socket.to_string(),
            };
        }
        Some(
            std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::NotFound
            | std::io::ErrorKind::ConnectionReset,
        ) => {
            return DockerError::Unreachable {
                socket: socket.to_string(),
                detail: e.to_string(),
            };
        }
        _ => {}
    }
    let detail = match &e {
        BollardError::DockerResponseServerError {
            status_code,
            message,
        } => format!("{message} (HTTP {status_code})"),
        other => other.to_string(),
    };
    DockerError::Api {
        what: what.to_string(),
        detail,
    }
}

/// A connection to the engine, with the version negotiated and checked.
pub struct Engine {
    rt: tokio::runtime::Runtime,
    docker: Docker,
    socket: String,
    api: String,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("socket", &self.socket)
            .field("api", &self.api)
            .finish()
    }
}

impl Engine {
    /// Connects to the local engine, negotiates the API version and checks it against
    /// [`MIN_API`].
    ///
    /// # Errors
    /// [`DockerError::Unreachable`], [`DockerError::PermissionDenied`],
    /// [`DockerError::UnsupportedHost`] or [`DockerError::ApiTooOld`].
    pub fn connect() -> Result<Engine, DockerError> {
        let socket = match std::env::var("DOCKER_HOST") {
            Ok(h) if h.starts_with("unix://") => h.trim_start_matches("unix://").to_string(),
            Ok(h) if !h.is_empty() => return Err(DockerError::UnsupportedHost(h)),
            _ => DEFAULT_SOCKET.to_string(),
        };
        Engine::connect_at(&socket)
    }

    /// [`Engine::connect`] to the engine socket at `socket`.
    ///
    /// # Errors
    /// As [`Engine::connect`].
    pub fn connect_at(socket: &str) -> Result<Engine, DockerError> {
        let socket = socket.to_string();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(DockerError::Tokio)?;
        let docker =
            Docker::connect_with_unix(&socket, REQUEST_TIMEOUT_S, bollard::API_DEFAULT_VERSION)
                .map_err(|e| classify(e, &socket, "connect"))?;
        let docker = rt
            .block_on(docker.negotiate_version())
            .map_err(|e| classify(e, &socket, "version negotiation"))?;
        let v = docker.client_version();
        let api = format!("{}.{}", v.major_version, v.minor_version);
        if (v.major_version, v.minor_version) < MIN_API {
            return Err(DockerError::ApiTooOld {
                found: api,
                min: format!("{}.{}", MIN_API.0, MIN_API.1),
            });
        }
        Ok(Engine {
            rt,
            docker,
            socket,
            api,
        })
    }

    /// The negotiated API version, e.g. `1.41`.
    pub fn api_version(&self) -> &str {
        &self.api
    }

    fn err(&self, what: &str) -> impl Fn(BollardError) -> DockerError + '_ {
        let what = what.to_string();
        move |e| classify(e, &self.socket, &what)
    }

    /// Whether `image` is in the engine.
    ///
    /// # Errors
    /// Engine errors other than "no such image".
    pub fn has_image(&self, image: &str) -> Result<bool, DockerError> {
        match self.rt.block_on(self.docker.inspect_image(image)) {
            Ok(_) => Ok(true),
            Err(e) if status_of(&e) == Some(404) => Ok(false),
            Err(e) => Err(self.err("image inspect")(e)),
        }
    }

    /// The numeric uid and gid `image` runs as (its `USER`; root when unset).
    ///
    /// # Errors
    /// [`DockerError::ImageMissing`], or a `USER` that is a name rather than numbers.
    pub fn image_user(&self, image: &str) -> Result<(u32, u32), DockerError> {
        let info = match self.rt.block_on(self.docker.inspect_image(image)) {
            Ok(i) => i,
            Err(e) if status_of(&e) == Some(404) => {
                return Err(DockerError::ImageMissing {
                    image: image.to_string(),
                });
            }
            Err(e) => return Err(self.err("image inspect")(e)),
        };
        let user = info.config.and_then(|c| c.user).unwrap_or_default();
        parse_user(&user).ok_or_else(|| DockerError::Api {
            what: "image inspect".into(),
            detail: format!(
                "image {image} runs as user {user:?}; chaosnet needs a numeric uid[:gid] to give it the data volume"
            ),
        })
    }

    /// Removes every container and volume labelled with run `run` (or with any run id when
    /// `run` is `None`: `down --all`). Containers go first (forcibly: they are killed),
    /// then their volumes. Idempotent.
    ///
    /// # Errors
    /// Engine errors (a container or volume that vanished meanwhile is not an error).
    pub fn remove_run(&self, run: Option<&RunId>) -> Result<CleanupReport, DockerError> {
        let label = match run {
            Some(r) => format!("{LABEL_RUN}={}", r.0),
            None => LABEL_RUN.to_string(),
        };
        let filters = HashMap::from([("label".to_string(), vec![label])]);
        let mut report = CleanupReport::default();
        let containers = self
            .rt
            .block_on(self.docker.list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters.clone()),
                ..Default::default()
            })))
            .map_err(self.err("container list"))?;
        let ids: Vec<String> = containers.into_iter().filter_map(|c| c.id).collect();
        let results: Vec<Result<(), BollardError>> = self.rt.block_on(
            futures_util::stream::iter(ids.iter())
                .map(|id| {
                    self.docker.remove_container(
                        id,
                        // v: also the anonymous volume the image's `VOLUME /data` gives
                        // every container (unused: the agent's data is the named volume).
                        Some(RemoveContainerOptions {
                            force: true,
                            v: true,
                            link: false,
                        }),
                    )
                })
                .buffer_unordered(CLEANUP_JOBS)
                .collect(),
        );
        for r in results {
            match r {
                Ok(()) => report.containers += 1,
                Err(e) if status_of(&e) == Some(404) => {}
                Err(e) => return Err(self.err("container remove")(e)),
            }
        }
        let volumes = self
            .rt
            .block_on(self.docker.list_volumes(Some(ListVolumesOptions {
                filters: Some(filters),
            })))
            .map_err(self.err("volume list"))?;
        for v in volumes.volumes.unwrap_or_default() {
            let r = self.rt.block_on(
                self.docker
                    .remove_volume(&v.name, Some(RemoveVolumeOptions { force: true })),
            );
            match r {
                Ok(()) => report.volumes += 1,
                Err(e) if status_of(&e) == Some(404) => {}
                Err(e) => return Err(self.err("volume remove")(e)),
            }
        }
        Ok(report)
    }

    /// Names of the containers labelled with run `run` (tests and `status`).
    ///
    /// # Errors
    /// Engine errors.
    pub fn containers_of(&self, run: &RunId) -> Result<Vec<String>, DockerError> {
        let filters =
            HashMap::from([("label".to_string(), vec![format!("{LABEL_RUN}={}", run.0)])]);
        let list = self
            .rt
            .block_on(self.docker.list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            })))
            .map_err(self.err("container list"))?;
        Ok(list
            .into_iter()
            .flat_map(|c| c.names.unwrap_or_default())
            .map(|n| n.trim_start_matches('/').to_string())
            .collect())
    }

    /// Names of the volumes labelled with run `run`.
    ///
    /// # Errors
    /// Engine errors.
    pub fn volumes_of(&self, run: &RunId) -> Result<Vec<String>, DockerError> {
        let filters =
            HashMap::from([("label".to_string(), vec![format!("{LABEL_RUN}={}", run.0)])]);
        let list = self
            .rt
            .block_on(self.docker.list_volumes(Some(ListVolumesOptions {
                filters: Some(filters),
            })))
            .map_err(self.err("volume list"))?;
        Ok(list
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.name)
            .collect())
    }
}

/// `uid[:gid]` as numbers; an empty user is root.
fn parse_user(user: &str) -> Option<(u32, u32)> {
    if user.is_empty() {
        return Some((0, 0));
    }
    let (u, g) = user.split_once(':').unwrap_or((user, user));
    Some((u.parse().ok()?, g.parse().ok()?))
}

/// Builds `image` from `agent_bin` (and this controller) with `scripts/build-image.sh`, found next to the
/// controller's checkout (an ancestor of the running binary, or of the current directory).
/// `--runtime auto` uses this when the image is missing.
///
/// # Errors
/// [`DockerError::Build`] when the script is not found or fails.
pub fn build_image(image: &str, agent_bin: &Path) -> Result<(), DockerError> {
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().map(Path::to_path_buf));
    }
    if let Ok(cwd) = std::env::current_dir() {
        roots.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    let script = roots
        .iter()
        .map(|r| r.join("scripts/build-image.sh"))
        .find(|p| p.is_file())
        .ok_or_else(|| DockerError::Build {
            image: image.to_string(),
            detail:
                "scripts/build-image.sh not found (run chaosnet from its checkout, or `make image`)"
                    .into(),
        })?;
    // The image also carries this controller, for the pod router of the kube manifests.
    let controller = std::env::current_exe().map_err(|e| DockerError::Build {
        image: image.to_string(),
        detail: format!("cannot locate the running chaosnet binary: {e}"),
    })?;
    let out = Command::new("bash")
        .arg(&script)
        .arg("--bin")
        .arg(agent_bin)
        .arg("--controller")
        .arg(&controller)
        .args(["--tag", image])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| DockerError::Build {
            image: image.to_string(),
            detail: format!("cannot run {}: {e}", script.display()),
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(5).collect();
        return Err(DockerError::Build {
            image: image.to_string(),
            detail: tail.into_iter().rev().collect::<Vec<_>>().join(" | "),
        });
    }
    Ok(())
}

/// Settings of a [`DockerRuntime`].
#[derive(Clone, Debug)]
pub struct DockerOptions {
    /// Image reference. Default [`default_image`].
    pub image: String,
    /// Per-container limits.
    pub limits: ContainerLimits,
    /// Grace after SIGTERM on `stop`. Default [`DEFAULT_STOP_GRACE`].
    pub stop_grace: Duration,
}

impl Default for DockerOptions {
    fn default() -> Self {
        DockerOptions {
            image: default_image(),
            limits: ContainerLimits::default(),
            stop_grace: DEFAULT_STOP_GRACE,
        }
    }
}

#[derive(Debug)]
struct Slot {
    plan: AgentPlan,
    /// The container id, once created (or adopted).
    id: Option<String>,
}

/// Agents as Docker containers. See the module docs.
#[derive(Debug)]
pub struct DockerRuntime {
    engine: Engine,
    run_id: RunId,
    run_dir: PathBuf,
    opts: DockerOptions,
    /// The image's uid and gid (owner of the data volume and the agent directory); `None`
    /// when the image is missing (then only `start` fails: `exec`, `logs` and `stop` of an
    /// existing run still work).
    user: Option<(u32, u32)>,
    wiring: BTreeMap<String, HostWiring>,
    slots: Mutex<BTreeMap<String, Slot>>,
}

fn io_err(name: &str, what: String) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let name = name.to_string();
    move |source| RuntimeError::Io { name, what, source }
}

impl DockerRuntime {
    /// A runtime for the docker agents of `plan`, whose run directory is `run_dir` (made
    /// absolute). Reads the user the image runs as.
    ///
    /// # Errors
    /// Errors of reading the image (a missing image is only an error at `start`).
    pub fn new(
        engine: Engine,
        plan: &Plan,
        run_dir: &Path,
        opts: DockerOptions,
    ) -> Result<DockerRuntime, RuntimeError> {
        let user = match engine.image_user(&opts.image) {
            Ok(u) => Some(u),
            Err(DockerError::ImageMissing { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        let run_dir = std::path::absolute(run_dir).map_err(io_err(
            "",
            format!("cannot make {} absolute", run_dir.display()),
        ))?;
        let wiring = plan
            .agents
            .iter()
            .filter(|a| a.runtime == RuntimeKind::Docker)
            .filter_map(|a| HostWiring::from_plan(plan, &a.ns).map(|w| (a.name.clone(), w)))
            .collect();
        let slots = plan
            .agents
            .iter()
            .filter(|a| a.runtime == RuntimeKind::Docker)
            .map(|a| {
                (
                    a.name.clone(),
                    Slot {
                        plan: a.clone(),
                        id: None,
                    },
                )
            })
            .collect();
        Ok(DockerRuntime {
            engine,
            run_id: plan.run_id.clone(),
            run_dir,
            opts,
            user,
            wiring,
            slots: Mutex::new(slots),
        })
    }

    /// Adopts the containers recorded in a state file.
    pub fn adopt(&self, instances: &BTreeMap<String, InstanceId>) {
        let mut slots = self.lock();
        for (name, inst) in instances {
            if let (Some(slot), InstanceId::Container { id, .. }) = (slots.get_mut(name), inst) {
                slot.id = Some(id.clone());
            }
        }
    }

    /// The engine connection (for cleanup and checks).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Slot>> {
        // A panic while holding the lock leaves plain data behind; keep going.
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn slot_plan(&self, name: &str) -> Result<AgentPlan, RuntimeError> {
        self.lock()
            .get(name)
            .map(|s| s.plan.clone())
            .ok_or_else(|| RuntimeError::UnknownAgent {
                name: name.to_string(),
            })
    }

    /// The container to address: its recorded id, else its name.
    fn target(&self, name: &str) -> Result<String, RuntimeError> {
        let slots = self.lock();
        let slot = slots.get(name).ok_or_else(|| RuntimeError::UnknownAgent {
            name: name.to_string(),
        })?;
        Ok(slot
            .id
            .clone()
            .unwrap_or_else(|| container_name(&self.run_id, name)))
    }

    fn api(&self, what: &str) -> impl Fn(BollardError) -> RuntimeError + '_ {
        let f = self.engine.err(what);
        move |e| RuntimeError::Docker(f(e))
    }

    fn chown(&self, name: &str, path: &Path) -> Result<(), RuntimeError> {
        let (uid, gid) = self.user.ok_or_else(|| DockerError::ImageMissing {
            image: self.opts.image.clone(),
        })?;
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .map_err(io_err(name, format!("cannot chown {}", path.display())))
    }

    /// The agent directory (bind-mounted: the API socket) and the volume with `node.key`,
    /// both owned by the image's user.
    fn prepare(&self, a: &AgentPlan, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        let key = a.key_seed_hex.trim();
        if key.len() != 64 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(RuntimeError::InvalidAgent {
                name: a.name.clone(),
                reason: "key_seed_hex is not 64 hex characters".into(),
            });
        }
        for (dir, _) in spec.binds.iter().filter(|(_, ro)| !ro) {
            let dir = Path::new(dir);
            DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(io_err(&a.name, format!("cannot create {}", dir.display())))?;
            self.chown(&a.name, dir)?;
        }
        let vol = self
            .engine
            .rt
            .block_on(self.engine.docker.create_volume(VolumeCreateRequest {
                name: Some(spec.volume.clone()),
                labels: Some(spec.labels.clone().into_iter().collect()),
                ..Default::default()
            }))
            .map_err(self.api("volume create"))?;
        if vol.mountpoint.is_empty() {
            return Err(RuntimeError::InvalidAgent {
                name: a.name.clone(),
                reason: format!("volume {} has no local mountpoint", spec.volume),
            });
        }
        let data = PathBuf::from(&vol.mountpoint);
        std::fs::set_permissions(&data, Permissions::from_mode(0o700))
            .map_err(io_err(&a.name, format!("cannot chmod {}", data.display())))?;
        self.chown(&a.name, &data)?;
        // Temporary file, then rename, so the agent never reads a half-written key.
        let key_path = data.join("node.key");
        let tmp = data.join(".node.key.tmp");
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err(&a.name, format!("cannot write {}", tmp.display())))?;
        f.set_permissions(Permissions::from_mode(0o600))
            .and_then(|()| f.write_all(format!("{}\n", key.to_ascii_lowercase()).as_bytes()))
            .and_then(|()| f.sync_all())
            .map_err(io_err(&a.name, format!("cannot write {}", tmp.display())))?;
        self.chown(&a.name, &tmp)?;
        std::fs::rename(&tmp, &key_path).map_err(io_err(
            &a.name,
            format!("cannot write {}", key_path.display()),
        ))?;
        Ok(())
    }

    /// The container's state, or `None` when it does not exist.
    fn inspect(
        &self,
        target: &str,
    ) -> Result<Option<(String, bollard::models::ContainerState, Option<String>)>, RuntimeError>
    {
        match self
            .engine
            .rt
            .block_on(self.engine.docker.inspect_container(target, None))
        {
            Ok(c) => Ok(Some((
                c.id.unwrap_or_default(),
                c.state.unwrap_or_default(),
                c.log_path,
            ))),
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(self.api("container inspect")(e)),
        }
    }

    fn env() -> Vec<String> {
        ["CHAOSNET_LOG", "RUST_BACKTRACE"]
            .iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| format!("{k}={v}")))
            .collect()
    }

    /// Kills and forgets a container whose wiring failed, so a failed start leaves it
    /// stopped (and `down` removes it).
    fn abort_start(&self, id: &str) {
        let _ = self.engine.rt.block_on(self.engine.docker.kill_container(
            id,
            Some(KillContainerOptions {
                signal: "SIGKILL".into(),
            }),
        ));
    }
}

fn pid_of(state: &bollard::models::ContainerState) -> u32 {
    state
        .pid
        .and_then(|p| u32::try_from(p).ok())
        .unwrap_or_default()
}

impl Runtime for DockerRuntime {
    /// Through the agent directory bind-mounted into the container: its socket is in the
    /// run directory, as a process's is.
    fn api(&self, name: &str, req: &Request<'_>, timeout: Duration) -> Result<Response, ApiError> {
        lab_api(&self.run_dir, &self.slot_plan(name)?, req, timeout)
    }

    fn net(&self, name: &str, cmd: &NetCmd) -> Result<NetOutput, RuntimeError> {
        lab_net(&self.slot_plan(name)?, cmd)
    }

    fn start(&self, agent: &AgentPlan) -> Result<InstanceId, RuntimeError> {
        if !super::valid_name(&agent.name) {
            return Err(RuntimeError::InvalidAgent {
                name: agent.name.clone(),
                reason: "name must be non-empty [A-Za-z0-9_.-]".into(),
            });
        }
        let wiring =
            self.wiring
                .get(&agent.name)
                .cloned()
                .ok_or_else(|| RuntimeError::InvalidAgent {
                    name: agent.name.clone(),
                    reason: "the plan has no host link for it".into(),
                })?;
        let spec = ContainerSpec::for_agent(
            &self.run_id,
            &self.run_dir,
            agent,
            &self.opts.image,
            self.opts.limits,
            Self::env(),
        )
        .map_err(DockerError::from)?;
        let id = match self.inspect(&spec.name)? {
            Some((_, st, _)) if st.running == Some(true) => {
                return Err(RuntimeError::AlreadyRunning {
                    name: agent.name.clone(),
                    pid: pid_of(&st),
                });
            }
            Some((id, _, _)) => {
                self.prepare(agent, &spec)?;
                id
            }
            None => {
                self.prepare(agent, &spec)?;
                self.engine
                    .rt
                    .block_on(self.engine.docker.create_container(
                        Some(CreateContainerOptions {
                            name: Some(spec.name.clone()),
                            platform: String::new(),
                        }),
                        spec.create_body(),
                    ))
                    .map_err(|e| match status_of(&e) {
                        Some(404) => RuntimeError::Docker(DockerError::ImageMissing {
                            image: self.opts.image.clone(),
                        }),
                        _ => self.api("container create")(e),
                    })?
                    .id
            }
        };
        if let Some(slot) = self.lock().get_mut(&agent.name) {
            slot.id = Some(id.clone());
        }
        self.engine
            .rt
            .block_on(self.engine.docker.start_container(&id, None))
            .map_err(self.api("container start"))?;
        let pid = match self.inspect(&id)? {
            Some((_, st, _)) => pid_of(&st),
            None => 0,
        };
        if pid == 0 {
            return Err(RuntimeError::NotRunning {
                name: agent.name.clone(),
            });
        }
        if let Err(e) = apply::attach_host(&wiring, pid) {
            self.abort_start(&id);
            return Err(e.into());
        }
        Ok(InstanceId::Container {
            id,
            name: spec.name,
        })
    }

    fn stop(&self, name: &str) -> Result<(), RuntimeError> {
        let target = self.target(name)?;
        let t = i32::try_from(self.opts.stop_grace.as_secs()).unwrap_or(i32::MAX);
        // Unpause first: a frozen agent cannot act on SIGTERM (the engine does that for
        // stop too, but not on every version).
        let _ = self
            .engine
            .rt
            .block_on(self.engine.docker.unpause_container(&target));
        match self.engine.rt.block_on(self.engine.docker.stop_container(
            &target,
            Some(StopContainerOptions {
                t: Some(t),
                signal: None,
            }),
        )) {
            Ok(()) => Ok(()),
            Err(e) if matches!(status_of(&e), Some(304 | 404)) => Ok(()),
            Err(e) => Err(self.api("container stop")(e)),
        }
    }

    fn kill(&self, name: &str) -> Result<(), RuntimeError> {
        let target = self.target(name)?;
        match self.engine.rt.block_on(self.engine.docker.kill_container(
            &target,
            Some(KillContainerOptions {
                signal: "SIGKILL".into(),
            }),
        )) {
            Ok(()) => Ok(()),
            Err(e) if matches!(status_of(&e), Some(404 | 409)) => Ok(()),
            Err(e) => Err(self.api("container kill")(e)),
        }
    }

    fn restart(&self, name: &str) -> Result<InstanceId, RuntimeError> {
        self.stop(name)?;
        let plan = self.slot_plan(name)?;
        self.start(&plan)
    }

    fn pause(&self, name: &str) -> Result<(), RuntimeError> {
        let target = self.target(name)?;
        self.engine
            .rt
            .block_on(self.engine.docker.pause_container(&target))
            .map_err(|e| match status_of(&e) {
                Some(404 | 409) => RuntimeError::NotRunning {
                    name: name.to_string(),
                },
                _ => self.api("container pause")(e),
            })
    }

    fn resume(&self, name: &str) -> Result<(), RuntimeError> {
        let target = self.target(name)?;
        self.engine
            .rt
            .block_on(self.engine.docker.unpause_container(&target))
            .map_err(|e| match status_of(&e) {
                Some(404 | 409) => RuntimeError::NotRunning {
                    name: name.to_string(),
                },
                _ => self.api("container unpause")(e),
            })
    }

    fn state(&self, name: &str) -> Result<AgentState, RuntimeError> {
        let target = self.target(name)?;
        let Some((_, st, _)) = self.inspect(&target)? else {
            return Ok(AgentState::NotStarted);
        };
        let pid = pid_of(&st);
        Ok(match st.status {
            Some(ContainerStateStatusEnum::RUNNING | ContainerStateStatusEnum::RESTARTING) => {
                AgentState::Running { pid }
            }
            Some(ContainerStateStatusEnum::PAUSED) => AgentState::Paused { pid },
            Some(ContainerStateStatusEnum::CREATED) => AgentState::NotStarted,
            _ => AgentState::Exited {
                status: Some(ExecStatus {
                    code: st.exit_code.and_then(|c| i32::try_from(c).ok()),
                    signal: None,
                }),
            },
        })
    }

    /// The engine's json-file log of the container (JSON lines, one per output line); use
    /// [`Runtime::logs`] for the plain text.
    fn log_path(&self, name: &str) -> Result<PathBuf, RuntimeError> {
        let target = self.target(name)?;
        match self.inspect(&target)? {
            Some((_, _, Some(p))) if !p.is_empty() => Ok(PathBuf::from(p)),
            _ => Err(RuntimeError::NotRunning {
                name: name.to_string(),
            }),
        }
    }

    fn exec(&self, name: &str, argv: &[String]) -> Result<ExecStatus, RuntimeError> {
        let plan = self.slot_plan(name)?;
        exec_in_netns(name, &plan.ns, argv)
    }

    fn instances(&self) -> BTreeMap<String, InstanceId> {
        self.lock()
            .iter()
            .filter_map(|(name, slot)| {
                slot.id.as_ref().map(|id| {
                    (
                        name.clone(),
                        InstanceId::Container {
                            id: id.clone(),
                            name: container_name(&self.run_id, name),
                        },
                    )
                })
            })
            .collect()
    }

    fn logs(&self, name: &str, follow: bool, out: &mut dyn Write) -> Result<(), RuntimeError> {
        let target = self.target(name)?;
        let opts = LogsOptions {
            follow,
            stdout: true,
            stderr: true,
            tail: "all".into(),
            ..Default::default()
        };
        let docker = &self.engine.docker;
        self.engine.rt.block_on(async {
            let mut stream = docker.logs(&target, Some(opts));
            while let Some(item) = stream.next().await {
                let chunk = item.map_err(self.api("logs"))?;
                out.write_all(&chunk.into_bytes())
                    .and_then(|()| out.flush())
                    .map_err(io_err(name, "cannot write the log".into()))?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_user_is_numeric() {
        assert_eq!(parse_user(""), Some((0, 0)));
        assert_eq!(parse_user("10001:10001"), Some((10001, 10001)));
        assert_eq!(parse_user("10001"), Some((10001, 10001)));
        assert_eq!(parse_user("chaosnet"), None);
    }

    #[test]
    fn default_image_is_the_version_tag() {
        assert_eq!(
            default_image(),
            format!("chaosnet-agent:{}", env!("CARGO_PKG_VERSION"))
        );
    }

    /// A one-shot fake engine on a unix socket answering every request with `body`.
    fn fake_engine(body: &'static str) -> (tempfile::TempDir, String) {
        use std::io::{Read, Write};
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("docker.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        std::thread::spawn(move || {
            for stream in listener.incoming().take(4) {
                let Ok(mut s) = stream else { return };
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        let p = path.to_str().expect("utf-8").to_string();
        (dir, p)
    }

    #[test]
    fn old_engines_are_refused_and_new_ones_negotiated_down() {
        let (_d, sock) = fake_engine(r#"{"ApiVersion":"1.30","Version":"17.06.0"}"#);
        let e = Engine::connect_at(&sock).expect_err("1.30 is too old");
        assert!(
            matches!(&e, DockerError::ApiTooOld { found, .. } if found == "1.30"),
            "{e}"
        );
        let (_d, sock) = fake_engine(r#"{"ApiVersion":"1.41","Version":"20.10.24"}"#);
        let engine = Engine::connect_at(&sock).expect("1.41 is fine");
        assert_eq!(
            engine.api_version(),
            "1.41",
            "negotiated down from bollard's"
        );
    }

    #[test]
    fn missing_or_dead_sockets_are_unreachable() {
        let e = Engine::connect_at("/nonexistent/docker.sock").expect_err("no socket");
        assert!(matches!(e, DockerError::Unreachable { .. }), "{e}");
        // A socket file with nobody listening: connection refused.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("dead.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).expect("bind"));
        let e = Engine::connect_at(path.to_str().expect("utf-8")).expect_err("refused");
        assert!(matches!(e, DockerError::Unreachable { .. }), "{e}");
        let e = classify(
            BollardError::IOError {
                err: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
            },
            DEFAULT_SOCKET,
            "connect",
        );
        assert!(matches!(e, DockerError::PermissionDenied { .. }), "{e}");
    }

    #[test]
    fn engine_errors_say_what_to_do() {
        let e = classify(
            BollardError::SocketNotFoundError("/nope.sock".into()),
            "/nope.sock",
            "connect",
        );
        assert!(matches!(e, DockerError::Unreachable { .. }), "{e}");
        assert!(e.to_string().contains("start it"), "{e}");
        let e = DockerError::ImageMissing {
            image: "chaosnet-agent:9".into(),
        };
        assert!(e.to_string().contains("make image"), "{e}");
        let e = DockerError::ApiTooOld {
            found: "1.30".into(),
            min: "1.40".into(),
        };
        assert!(e.to_string().contains("upgrade"), "{e}");
        let e = DockerError::PermissionDenied {
            socket: DEFAULT_SOCKET.into(),
        };
        assert!(e.to_string().contains("docker group"), "{e}");
    }
}
