//! Network namespaces by name (`/run/netns/<name>`, as `ip netns` makes them): entering one
//! on a thread, listing them, and finding and killing the processes inside.
//!
//! Entering is per thread: [`in_netns`] runs a closure on a fresh thread that has
//! `setns`'d, so the caller's own namespace never changes, and sockets or child processes
//! created by the closure belong to the target namespace. This module does not create or
//! delete namespaces; `apply` does that with `ip`.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::ApplyError;

/// Where `ip netns add` bind-mounts named namespaces.
pub(crate) const NETNS_DIR: &str = "/run/netns";

/// The file of namespace `ns`.
pub(crate) fn ns_path(ns: &str) -> PathBuf {
    PathBuf::from(NETNS_DIR).join(ns)
}

/// A namespace name that is a plain file name (no `/`, not `.`/`..`, not empty).
fn check_name(ns: &str) -> Result<(), ApplyError> {
    if ns.is_empty() || ns == "." || ns == ".." || ns.contains('/') || ns.contains('\0') {
        return Err(ApplyError::InvalidPlan(format!(
            "{ns:?} is not a valid network namespace name"
        )));
    }
    Ok(())
}

/// Runs `f` on a fresh thread that has entered the network namespace `ns`
/// (`/run/netns/<ns>`), and returns its result.
///
/// Sockets that `f` creates stay in that namespace after it returns, and processes it
/// spawns start there. Other namespaces (mount, pid, user) are the caller's. A panic in
/// `f` is propagated to the caller. Before calling `f`, the thread checks that it really is
/// in `ns` (by comparing namespace inodes), so `f` can never touch the caller's namespace by
/// mistake.
///
/// # Errors
/// [`ApplyError::NoSuchNamespace`] when `ns` does not exist, [`ApplyError::Netns`] when
/// `setns` fails (usually: not root).
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T, ApplyError> {
    check_name(ns)?;
    let path = ns_path(ns);
    let file = File::open(&path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            ApplyError::NoSuchNamespace { ns: ns.to_string() }
        } else {
            ApplyError::Netns {
                ns: ns.to_string(),
                what: format!("cannot open {}: {source}", path.display()),
            }
        }
    })?;
    let want = file
        .metadata()
        .map_err(|e| ApplyError::Netns {
            ns: ns.to_string(),
            what: format!("cannot stat {}: {e}", path.display()),
        })?
        .ino();
    std::thread::scope(|s| {
        let handle = s.spawn(move || -> Result<T, ApplyError> {
            setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| ApplyError::Netns {
                ns: ns.to_string(),
                what: format!("setns failed: {e} (entering a network namespace needs root)"),
            })?;
            let now = std::fs::metadata("/proc/thread-self/ns/net")
                .map(|m| m.ino())
                .map_err(|e| ApplyError::Netns {
                    ns: ns.to_string(),
                    what: format!("cannot check the thread's namespace: {e}"),
                })?;
            if now != want {
                return Err(ApplyError::Netns {
                    ns: ns.to_string(),
                    what: "setns succeeded but the thread is not in the namespace".to_string(),
                });
            }
            Ok(f())
        });
        match handle.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Names of all namespaces in `/run/netns` (empty when the directory does not exist).
pub(crate) fn list() -> Result<Vec<String>, ApplyError> {
    let rd = match std::fs::read_dir(NETNS_DIR) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(ApplyError::Io {
                what: format!("cannot list {NETNS_DIR}"),
                source,
            });
        }
    };
    let mut names: Vec<String> = rd
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    Ok(names)
}

/// The namespace inode of `/run/netns/<ns>`, if it exists.
pub(crate) fn ns_inode(ns: &str) -> Option<u64> {
    std::fs::metadata(ns_path(ns)).ok().map(|m| m.ino())
}

/// The network namespace inode of process `pid`, if it is (still) readable.
pub(crate) fn pid_ns_inode(pid: i32) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|m| m.ino())
}

/// One-letter state of `pid` from `/proc/<pid>/stat` (`R`, `S`, `T`, `Z`, ...), or `None`
/// when the process is gone.
pub(crate) fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces; the state follows the
    // last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    after.trim_start().chars().next()
}

/// True when `pid` exists and is not a zombie.
pub(crate) fn alive(pid: i32) -> bool {
    matches!(proc_state(pid), Some(s) if s != 'Z' && s != 'X')
}

/// For each namespace name in `wanted` (name by inode), the pids whose network namespace it
/// is. One pass over `/proc`, never including this process.
pub(crate) fn pids_by_ns(wanted: &HashMap<u64, String>) -> HashMap<String, Vec<i32>> {
    let mut out: HashMap<String, Vec<i32>> = HashMap::new();
    if wanted.is_empty() {
        return out;
    }
    let me = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in rd.filter_map(Result::ok) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        if let Some(name) = pid_ns_inode(pid).and_then(|ino| wanted.get(&ino)) {
            out.entry(name.clone()).or_default().push(pid);
        }
    }
    out
}

/// Sends SIGKILL to every pid, then waits (at most `wait`) until none is alive. Returns how
/// many were signalled successfully (a pid that vanished in between is not counted).
pub(crate) fn kill_all(pids: &[i32], wait: Duration) -> usize {
    let mut killed = 0;
    for &pid in pids {
        if kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
            killed += 1;
        }
    }
    let start = Instant::now();
    while pids.iter().any(|&p| alive(p)) && start.elapsed() < wait {
        std::thread::sleep(Duration::from_millis(2));
    }
    killed
}
