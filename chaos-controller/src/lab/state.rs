//! The run state file, `<run dir>/state.json`: what `status`, `exec`, `logs` and `down` need
//! to find a run again from a new controller process.
//!
//! It records the run id, the full plan, where each agent runs (a pid for the process
//! runtime) and when the run was created. The plan holds every agent's private key seed, so
//! the file is mode 0600 (and a run directory it creates 0700). It is written atomically
//! (temporary file, then rename). It is not the only record for cleanup: `teardown` and
//! `teardown_all` also find the run's namespaces by the ownership markers written before
//! each is created, so a controller killed before it wrote this file still leaves nothing
//! that `down --all` cannot remove.

use std::collections::BTreeMap;
use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::plan::{Plan, RunId};
use crate::runtime::InstanceId;

/// The state file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("run state file {}: {what}", path.display())]
pub struct StateError {
    /// Its path.
    pub path: PathBuf,
    /// What went wrong.
    pub what: String,
}

/// Version of the state file format written by this build.
pub const STATE_VERSION: u32 = 1;

/// Everything a later controller invocation needs to know about a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunState {
    /// Format version ([`STATE_VERSION`]).
    pub version: u32,
    /// The run id.
    pub run_id: RunId,
    /// Creation time, seconds since the Unix epoch.
    pub created_at: u64,
    /// The plan that was applied.
    pub plan: Plan,
    /// Where each agent runs, by agent name (empty until agents are started).
    pub agents: BTreeMap<String, InstanceId>,
    /// The agent image of the run's docker agents, if it has any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

impl RunState {
    /// File name inside the run directory.
    pub const FILE_NAME: &'static str = "state.json";

    /// A fresh state for `plan`, created now, with no agents yet.
    pub fn new(plan: Plan) -> RunState {
        let created_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        RunState {
            version: STATE_VERSION,
            run_id: plan.run_id.clone(),
            created_at,
            plan,
            agents: BTreeMap::new(),
            image: None,
        }
    }

    /// `<run_dir>/state.json`.
    pub fn path(run_dir: &Path) -> PathBuf {
        run_dir.join(Self::FILE_NAME)
    }

    /// Pid of agent `name`, when it runs as a process.
    pub fn pid(&self, name: &str) -> Option<u32> {
        match self.agents.get(name)? {
            InstanceId::Process { pid } => Some(*pid),
            InstanceId::Container { .. } => None,
        }
    }

    /// Writes the state to `<run_dir>/state.json` atomically, mode 0600 (creating `run_dir`
    /// with mode 0700 when missing).
    ///
    /// # Errors
    /// [`StateError`] naming the path on any I/O or encoding failure.
    pub fn save(&self, run_dir: &Path) -> Result<(), StateError> {
        let path = Self::path(run_dir);
        let err = |what: String| StateError {
            path: path.clone(),
            what,
        };
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(run_dir)
            .map_err(|e| err(format!("cannot create the run directory: {e}")))?;
        let json = serde_json::to_vec_pretty(self).map_err(|e| err(format!("encode: {e}")))?;
        let tmp = run_dir.join(format!(".{}.tmp", Self::FILE_NAME));
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| err(format!("create: {e}")))?;
        // A leftover temporary file keeps its old mode on open: force 0600 before writing
        // the key seeds.
        f.set_permissions(Permissions::from_mode(0o600))
            .and_then(|()| f.write_all(&json))
            .and_then(|()| f.write_all(b"\n"))
            .and_then(|()| f.sync_all())
            .map_err(|e| err(format!("write: {e}")))?;
        std::fs::rename(&tmp, &path).map_err(|e| err(format!("rename: {e}")))?;
        Ok(())
    }

    /// Reads `<run_dir>/state.json`.
    ///
    /// # Errors
    /// [`StateError`] naming the path when it is missing, unreadable, malformed or of
    /// another format version.
    pub fn load(run_dir: &Path) -> Result<RunState, StateError> {
        let path = Self::path(run_dir);
        let err = |what: String| StateError {
            path: path.clone(),
            what,
        };
        let bytes = std::fs::read(&path).map_err(|e| err(format!("read: {e}")))?;
        let state: RunState =
            serde_json::from_slice(&bytes).map_err(|e| err(format!("parse: {e}")))?;
        if state.version != STATE_VERSION {
            return Err(err(format!(
                "format version {} is not the supported {STATE_VERSION}",
                state.version
            )));
        }
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_run_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plan = Plan {
            run_id: RunId("0a0b0c".into()),
            namespaces: vec![],
            bridges: vec![],
            veths: vec![],
            routes: vec![],
            sysctls: vec![],
            rulesets: vec![],
            sites: vec![],
            agents: vec![],
        };
        let mut st = RunState::new(plan);
        st.agents
            .insert("seed-0".into(), InstanceId::Process { pid: 4242 });
        st.save(dir.path()).expect("save");
        let back = RunState::load(dir.path()).expect("load");
        assert_eq!(back, st);
        assert_eq!(back.pid("seed-0"), Some(4242));
        assert!(back.created_at > 1_600_000_000);

        // The plan holds key seeds: only the owner reads the file and the directory.
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&RunState::path(dir.path())), 0o600);
        let fresh = dir.path().join("runs/0a0b0c");
        st.save(&fresh).expect("save in a new dir");
        assert_eq!(mode(&fresh), 0o700);
        assert_eq!(mode(&RunState::path(&fresh)), 0o600);
        // A leftover temporary file of another mode does not widen the new file.
        let tmp = fresh.join(".state.json.tmp");
        std::fs::write(&tmp, "x").expect("write");
        std::fs::set_permissions(&tmp, Permissions::from_mode(0o644)).expect("chmod");
        st.save(&fresh).expect("save again");
        assert_eq!(mode(&RunState::path(&fresh)), 0o600);

        let missing = RunState::load(&dir.path().join("nope")).expect_err("missing");
        assert!(missing.to_string().contains("state.json"), "{missing}");
    }
}
