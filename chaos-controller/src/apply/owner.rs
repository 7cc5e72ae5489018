//! Ownership markers: how the controller knows a `cn<run>-*` namespace is one it made.
//!
//! A namespace name alone proves nothing: anyone can run `ip netns add cn00beef-x`. So
//! before [`super::apply`] creates a namespace it writes a marker file for it,
//! `/run/chaosnet/<run id>/netns/<namespace>` (the directories 0700, the file 0600, owned
//! by the controller's uid), and teardown deletes only namespaces whose marker is there (or
//! that a run's state file names). The marker is written first, so a controller killed
//! between `ip netns add` and the state file still leaves only marked namespaces, which
//! `down --all` removes. `/run` is a tmpfs like `/run/netns`, so markers and namespaces
//! vanish together at reboot.
//!
//! The paths are pure values of the plan ([`marker_paths`], [`ns_marker`]); writing,
//! checking and removing them touches the file system. What it does not do: create or
//! delete namespaces.

use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::ApplyError;
use super::script;
use crate::plan::{Plan, RunId};

/// Where the markers of every run live.
pub const OWNER_DIR: &str = "/run/chaosnet";
/// Sub-directory of a run's marker directory holding one file per namespace.
const NETNS_SUBDIR: &str = "netns";

/// `<base>/<run id>`: the marker directory of a run.
pub fn run_marker_dir(base: &Path, run: &RunId) -> PathBuf {
    base.join(&run.0)
}

/// `<base>/<run id>/netns/<ns>`: the marker of namespace `ns`, when `ns` is a chaosnet
/// namespace name (`cn<6 hex>-<role>`, a plain file name).
pub fn ns_marker(base: &Path, ns: &str) -> Option<PathBuf> {
    let run = script::run_of_ns(ns)?;
    if ns.contains('/') || ns.contains('\0') {
        return None;
    }
    Some(base.join(run).join(NETNS_SUBDIR).join(ns))
}

/// The marker of every namespace of `plan`, in plan order. A namespace whose name is not a
/// chaosnet name has none (validation refuses such plans anyway).
pub fn marker_paths(base: &Path, plan: &Plan) -> Vec<PathBuf> {
    plan.namespaces
        .iter()
        .filter_map(|n| ns_marker(base, &n.name))
        .collect()
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> ApplyError {
    move |source| ApplyError::Io { what, source }
}

/// Writes the marker of every namespace of `plan` (creating the 0700 directories). Call it
/// before creating the namespaces.
///
/// # Errors
/// [`ApplyError::Io`] naming the path that could not be written.
pub fn write_markers(base: &Path, plan: &Plan) -> Result<(), ApplyError> {
    let dir = run_marker_dir(base, &plan.run_id).join(NETNS_SUBDIR);
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(io(format!("cannot create {}", dir.display())))?;
    // `recursive` leaves existing directories' modes alone: force 0700 on ours.
    for d in [base.to_path_buf(), run_marker_dir(base, &plan.run_id), dir] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))
            .map_err(io(format!("cannot chmod {}", d.display())))?;
    }
    let body = format!("chaosnet run {}\n", plan.run_id.0);
    for path in marker_paths(base, plan) {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(io(format!("cannot write {}", path.display())))?;
        f.write_all(body.as_bytes())
            .map_err(io(format!("cannot write {}", path.display())))?;
    }
    Ok(())
}

/// True when namespace `ns` carries this controller's marker: a regular file owned by our
/// effective uid, in a directory nobody else can write.
pub fn is_marked(base: &Path, ns: &str) -> bool {
    let Some(path) = ns_marker(base, ns) else {
        return false;
    };
    let euid = nix::unistd::geteuid().as_raw();
    let ours = |p: &Path, dir: bool| {
        std::fs::symlink_metadata(p).is_ok_and(|m| {
            m.uid() == euid
                && if dir {
                    m.is_dir() && m.mode() & 0o022 == 0
                } else {
                    m.is_file()
                }
        })
    };
    let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
    ours(&path, false) && ours(&parent, true)
}

/// True when run `run` has a marker directory (some namespace of it was, or is being,
/// created by a controller).
pub fn run_marked(base: &Path, run: &RunId) -> bool {
    run_marker_dir(base, run).exists()
}

/// Removes the markers (of run `run`, or of every run) whose namespace no longer exists
/// (`exists` says), then each run marker directory left empty. Best effort: a marker that
/// cannot be removed only makes a later teardown look for a namespace that is gone.
pub fn prune(base: &Path, run: Option<&RunId>, exists: impl Fn(&str) -> bool) {
    let runs: Vec<PathBuf> = match run {
        Some(r) => vec![run_marker_dir(base, r)],
        None => std::fs::read_dir(base)
            .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default(),
    };
    for dir in runs {
        let netns = dir.join(NETNS_SUBDIR);
        if let Ok(rd) = std::fs::read_dir(&netns) {
            for e in rd.filter_map(Result::ok) {
                let name = e.file_name().to_string_lossy().into_owned();
                if !exists(&name) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        // remove_dir fails on a non-empty directory: a marker of a namespace that still
        // exists keeps it.
        let _ = std::fs::remove_dir(&netns);
        let _ = std::fs::remove_dir(&dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_paths_are_per_run_and_per_namespace() {
        let base = Path::new("/run/chaosnet");
        assert_eq!(
            ns_marker(base, "cnabc123-inet"),
            Some(PathBuf::from("/run/chaosnet/abc123/netns/cnabc123-inet"))
        );
        assert_eq!(
            run_marker_dir(base, &RunId("abc123".into())),
            PathBuf::from("/run/chaosnet/abc123")
        );
        for not_ours in [
            "cnABC123-x",
            "cnabc12-x",
            "cnabc123-",
            "cnabc123",
            "xyz",
            "cnabc123-a/b",
        ] {
            assert_eq!(ns_marker(base, not_ours), None, "{not_ours}");
        }
        let plan = crate::planner::plan(
            &crate::scenario::Scenario::default_scenario(),
            &RunId("abc123".into()),
        )
        .expect("plan");
        let paths = marker_paths(base, &plan);
        assert_eq!(paths.len(), plan.namespaces.len());
        for (p, n) in paths.iter().zip(&plan.namespaces) {
            assert_eq!(p, &base.join("abc123/netns").join(&n.name));
        }
    }

    #[test]
    fn markers_are_written_checked_and_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = dir.path().join("chaosnet");
        let plan = crate::planner::plan(
            &crate::scenario::Scenario::default_scenario(),
            &RunId("abc123".into()),
        )
        .expect("plan");
        let names: Vec<String> = plan.namespaces.iter().map(|n| n.name.clone()).collect();
        assert!(!is_marked(&base, &names[0]));
        assert!(!run_marked(&base, &plan.run_id));
        write_markers(&base, &plan).expect("write");
        assert!(run_marked(&base, &plan.run_id));
        for n in &names {
            assert!(is_marked(&base, n), "{n}");
        }
        assert!(!is_marked(&base, "cnabc123-stranger"));
        assert!(!is_marked(&base, "cn00beef-x"));
        let mode = std::fs::metadata(run_marker_dir(&base, &plan.run_id))
            .expect("stat")
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        // Pruning keeps the markers of namespaces that still exist, and their directory.
        let first = names[0].clone();
        prune(&base, Some(&plan.run_id), |n| n != first);
        assert!(!is_marked(&base, &names[0]));
        assert!(is_marked(&base, &names[1]));
        assert!(run_marked(&base, &plan.run_id));
        prune(&base, None, |_| false);
        assert!(!run_marked(&base, &plan.run_id));
    }

    #[test]
    fn a_group_writable_marker_directory_is_not_trusted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = dir.path().to_path_buf();
        let plan = crate::planner::plan(
            &crate::scenario::Scenario::default_scenario(),
            &RunId("abc123".into()),
        )
        .expect("plan");
        write_markers(&base, &plan).expect("write");
        let n = &plan.namespaces[0].name;
        assert!(is_marked(&base, n));
        let netns = run_marker_dir(&base, &plan.run_id).join(NETNS_SUBDIR);
        std::fs::set_permissions(&netns, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        assert!(!is_marked(&base, n));
    }
}
