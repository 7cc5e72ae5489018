//! Running the system tools (`ip`, `nft`, `conntrack`) with a bounded wait.
//!
//! Tools are located once (on `PATH`, then in the usual sbin directories, since `sudo` and
//! cron often drop `/usr/sbin` from `PATH`), and every run has a timeout after which the
//! child is killed. Errors name the command line, its exit status and its stderr, and a
//! missing binary names the Debian package that provides it. This module only runs what it
//! is given; it does not decide what to run.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::ApplyError;

/// Directories searched after `PATH`.
const FALLBACK_DIRS: &[&str] = &["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// The Debian package that ships `binary`, for error messages.
pub(crate) fn package_of(binary: &str) -> &'static str {
    match binary {
        "ip" | "tc" => "iproute2",
        "nft" => "nftables",
        "conntrack" => "conntrack",
        "sysctl" => "procps",
        "setsid" => "util-linux",
        _ => "(unknown package)",
    }
}

/// Finds `binary` on `PATH` or in the sbin/bin directories; `None` when it is nowhere.
pub(crate) fn which(binary: &str) -> Option<PathBuf> {
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path_var)
        .chain(FALLBACK_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(binary))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Like [`which`], but a missing binary is an [`ApplyError::MissingBinary`].
pub(crate) fn require(binary: &str) -> Result<PathBuf, ApplyError> {
    which(binary).ok_or_else(|| ApplyError::MissingBinary {
        binary: binary.to_string(),
        package: package_of(binary),
    })
}

/// A command to run: program, arguments, optional stdin text and a timeout.
#[derive(Debug, Clone)]
pub(crate) struct Cmd {
    program: PathBuf,
    /// Short name used in messages (`ip`, `nft`, ...).
    name: String,
    args: Vec<String>,
    stdin: Option<Vec<u8>>,
    timeout: Duration,
}

impl Cmd {
    /// A command running `program` (an absolute path from [`require`]).
    pub(crate) fn new(program: &Path) -> Cmd {
        let name = program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| program.display().to_string());
        Cmd {
            program: program.to_path_buf(),
            name,
            args: Vec::new(),
            stdin: None,
            timeout: Duration::from_secs(30),
        }
    }

    /// Appends arguments.
    pub(crate) fn args<I, S>(mut self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Text fed on stdin (otherwise stdin is /dev/null).
    pub(crate) fn stdin(mut self, text: impl Into<Vec<u8>>) -> Cmd {
        self.stdin = Some(text.into());
        self
    }

    /// Overrides the default 30 s timeout.
    pub(crate) fn timeout(mut self, t: Duration) -> Cmd {
        self.timeout = t;
        self
    }

    /// The command line as shown in errors, e.g. `ip -n cnabc123-inet -batch -`.
    pub(crate) fn display(&self) -> String {
        let mut s = self.name.clone();
        for a in &self.args {
            s.push(' ');
            s.push_str(a);
        }
        s
    }

    /// Runs the command in the calling thread's namespaces and returns its stdout; a
    /// non-zero exit is an error carrying stderr.
    pub(crate) fn run(&self) -> Result<String, ApplyError> {
        let (status, stdout, stderr) = self.run_raw()?;
        if status.success() {
            Ok(stdout)
        } else {
            Err(ApplyError::Command {
                command: self.display(),
                status: status.to_string(),
                stderr: stderr.trim().to_string(),
            })
        }
    }

    /// Runs the command and returns its status, stdout and stderr whatever the status.
    pub(crate) fn run_raw(&self) -> Result<(ExitStatus, String, String), ApplyError> {
        let mut command = Command::new(&self.program);
        die_with_parent(&mut command);
        let mut child = command
            .args(&self.args)
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| self.spawn_error(source))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        // Feed and drain on helper threads so a chatty child never blocks on a full pipe
        // while we wait for it.
        std::thread::scope(|s| {
            let input = self.stdin.as_deref();
            let writer = s.spawn(move || {
                if let (Some(mut pipe), Some(text)) = (stdin, input) {
                    // A child that exits early closes the pipe; its status tells the story.
                    let _ = pipe.write_all(text);
                }
            });
            let out = s.spawn(move || read_all(stdout));
            let err = s.spawn(move || read_all(stderr));
            let status = self.wait_bounded(&mut child);
            let _ = writer.join();
            let stdout = out.join().unwrap_or_default();
            let stderr = err.join().unwrap_or_default();
            status.map(|st| (st, stdout, stderr))
        })
    }

    fn spawn_error(&self, source: std::io::Error) -> ApplyError {
        if source.kind() == std::io::ErrorKind::NotFound {
            ApplyError::MissingBinary {
                binary: self.name.clone(),
                package: package_of(&self.name),
            }
        } else {
            ApplyError::Spawn {
                command: self.display(),
                source,
            }
        }
    }

    /// Polls the child with a short back-off until it exits or the timeout passes; on
    /// timeout it is killed and reaped.
    fn wait_bounded(&self, child: &mut Child) -> Result<ExitStatus, ApplyError> {
        let start = Instant::now();
        let mut pause = Duration::from_micros(50);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) => {}
                Err(source) => {
                    return Err(ApplyError::Spawn {
                        command: self.display(),
                        source,
                    });
                }
            }
            if start.elapsed() >= self.timeout {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ApplyError::Timeout {
                    command: self.display(),
                    after: self.timeout,
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(2));
        }
    }
}

/// Makes the kernel SIGKILL the child when the thread that spawned it dies. A controller
/// killed in the middle of `up` would otherwise leave its `ip -batch` creating namespaces
/// after `down --all` has cleaned up, with markers already pruned. Only for tools that
/// [`Cmd::run_raw`] waits for on the spawning thread: that thread outlives them, so the
/// signal fires only when the controller itself dies. Agents are not started through here.
/// The one `unsafe` of the controller: std offers no safe way to run code between fork and
/// exec, and PR_SET_PDEATHSIG has to be set there.
#[allow(unsafe_code)]
fn die_with_parent(command: &mut Command) {
    let parent = std::process::id();
    // SAFETY: the closure runs between fork and exec and only makes two async-signal-safe
    // system calls (prctl, getppid); it allocates nothing and takes no lock.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect: then nobody would kill us.
            if u32::try_from(libc::getppid()).ok() != Some(parent) {
                return Err(std::io::Error::other(
                    "the controller exited before the tool started",
                ));
            }
            Ok(())
        });
    }
}

fn read_all(pipe: Option<impl Read>) -> String {
    let mut buf = Vec::new();
    if let Some(mut p) = pipe {
        let _ = p.read_to_end(&mut buf);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// For an `ip -batch` failure, the script line its stderr points at (`Command failed -:3`).
pub(crate) fn batch_failed_line<'a>(stderr: &str, script: &'a str) -> Option<&'a str> {
    let tail = stderr.rsplit("Command failed -:").next()?;
    if tail.len() == stderr.len() {
        return None;
    }
    let n: usize = tail
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    script.lines().nth(n.checked_sub(1)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_failing_batch_line() {
        let script = "link set lo up\naddr add 10.0.0.1/24 dev x\nroute add default via 1.2.3.4\n";
        let stderr = "Error: Nexthop has invalid gateway.\nCommand failed -:3\n";
        assert_eq!(
            batch_failed_line(stderr, script),
            Some("route add default via 1.2.3.4")
        );
        assert_eq!(batch_failed_line("Error: something", script), None);
    }

    #[test]
    fn missing_program_names_its_package() {
        let cmd = Cmd::new(Path::new("/nonexistent/dir/nft"));
        let err = cmd.run().expect_err("no such binary");
        let msg = err.to_string();
        assert!(msg.contains("nftables"), "{msg}");
    }

    #[test]
    fn timeout_kills_the_child() {
        let Some(sleep) = which("sleep") else {
            return;
        };
        let t0 = Instant::now();
        let err = Cmd::new(&sleep)
            .args(["5"])
            .timeout(Duration::from_millis(100))
            .run()
            .expect_err("must time out");
        assert!(matches!(err, ApplyError::Timeout { .. }), "{err}");
        assert!(t0.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn nonzero_exit_carries_stderr() {
        let Some(sh) = which("sh") else {
            return;
        };
        let err = Cmd::new(&sh)
            .args(["-c", "echo boom >&2; exit 3"])
            .run()
            .expect_err("exit 3");
        let msg = err.to_string();
        assert!(msg.contains("boom") && msg.contains("sh -c"), "{msg}");
    }
    /// Set in the re-executed test binary: run one long tool and wait to be killed.
    const ORPHAN_HELPER_ENV: &str = "CHAOSNET_CMD_ORPHAN_HELPER";

    #[test]
    fn orphan_helper() {
        // Only does something when the test below re-executes this binary for it.
        let Ok(tag) = std::env::var(ORPHAN_HELPER_ENV) else {
            return;
        };
        let sleep = which("sleep").expect("sleep");
        let _ = Cmd::new(&sleep)
            .args([tag])
            .timeout(Duration::from_secs(600))
            .run();
    }

    fn processes_with_arg(arg: &str) -> Vec<i32> {
        let Ok(rd) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        rd.filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c.split(|&b| b == 0).any(|a| a == arg.as_bytes()))
            })
            .collect()
    }

    /// A controller killed while a tool runs (SIGKILL in the middle of `up`) must not leave
    /// the tool running: an orphaned `ip -batch` would go on creating namespaces after
    /// `down --all` has cleaned up.
    #[test]
    fn a_killed_controller_leaves_no_tool_running() {
        let Some(_) = which("sleep") else {
            return;
        };
        // A unique duration tells our sleep from any other.
        let tag = format!(
            "{}.{}",
            3000 + std::process::id() % 500,
            rand::random::<u32>()
        );
        let exe = std::env::current_exe().expect("test binary");
        let mut helper = Command::new(exe)
            .args([
                "--exact",
                "apply::cmd::tests::orphan_helper",
                "--test-threads=1",
            ])
            .env(ORPHAN_HELPER_ENV, &tag)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("re-execute the test binary");
        let deadline = Instant::now() + Duration::from_secs(20);
        while processes_with_arg(&tag).is_empty() {
            assert!(
                Instant::now() < deadline,
                "the helper never started its tool"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        helper.kill().expect("SIGKILL the helper");
        let _ = helper.wait();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut left = processes_with_arg(&tag);
        while !left.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            left = processes_with_arg(&tag);
        }
        for pid in &left {
            // Clean up before failing, so a failure leaves nothing behind either.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        assert_eq!(left, Vec::<i32>::new(), "the tool outlived its controller");
    }
}
