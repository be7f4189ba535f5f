//! Starting the command in its own process group, and the guard that makes
//! sure the whole group dies with the request.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use skiff_wire::message::exec::{Exec, SignalSpec};
use skiff_wire::{ErrorCode, ErrorMsg};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};

use super::pty::PtyMaster;

/// Kernel buffer asked for each output pipe: fewer, larger reads when a
/// command produces output fast (the kernel may grant less).
const PIPE_SIZE: libc::c_int = 1024 * 1024;

/// A started command: its process, its group, and its standard streams.
pub struct Started {
    /// The direct child (`sh` or the program itself).
    pub child: Child,
    /// Kills the group when dropped unless disarmed.
    pub group: GroupGuard,
    /// How the command's streams are connected.
    pub streams: Streams,
}

/// Pipes, or one pseudo-terminal for everything.
pub enum Streams {
    /// Separate stdin, stdout and stderr pipes.
    Pipes {
        /// The command's stdin.
        stdin: ChildStdin,
        /// The command's stdout.
        stdout: ChildStdout,
        /// The command's stderr.
        stderr: ChildStderr,
    },
    /// The master side of the command's terminal.
    Pty(PtyMaster),
}

/// Owns a process group: dropping it (an early return, a cancelled
/// request, a server shutting down) sends SIGKILL to every member.
pub struct GroupGuard {
    pgid: Pid,
    armed: bool,
}

impl GroupGuard {
    /// Sends `sig` to every process of the group. A group that is already
    /// gone is not an error.
    pub fn signal(&self, sig: Signal) {
        let _ = killpg(self.pgid, sig);
    }

    /// The process group id (the child's pid).
    pub fn pgid(&self) -> Pid {
        self.pgid
    }

    /// Leaves the group alone on drop (the command ended on its own; any
    /// daemon it started with its own output may keep running).
    pub fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.armed {
            self.signal(Signal::SIGKILL);
        }
    }
}

/// Why a command could not be started: either an error to answer, or
/// a shell-style exit (127: not found, 126: not executable).
pub enum SpawnError {
    /// Answer with this error frame.
    Refused(ErrorMsg),
    /// Report this exit code with this message on stderr, as a shell would.
    Exit(i32, String),
}

/// The working directory for `cwd` (relative to `root`, a leading `/`
/// meaning the root), which must resolve to a directory inside `root`.
/// `root` must be canonical. This is a convenience, not a sandbox: the
/// command itself can `cd` anywhere the server's user can.
pub fn resolve_cwd(root: &Path, cwd: Option<&str>) -> Result<PathBuf, ErrorMsg> {
    let Some(cwd) = cwd else {
        return Ok(root.to_path_buf());
    };
    let rel = cwd.trim_start_matches('/');
    let joined = root.join(rel);
    let real = joined.canonicalize().map_err(|e| {
        let code = match e.kind() {
            io::ErrorKind::NotFound => ErrorCode::NotFound,
            io::ErrorKind::PermissionDenied => ErrorCode::Permission,
            _ => ErrorCode::Internal,
        };
        ErrorMsg::new(code, format!("working directory {cwd:?}: {e}"))
    })?;
    if !real.starts_with(root) {
        return Err(ErrorMsg::new(
            ErrorCode::PathEscape,
            format!("working directory {cwd:?} is outside the server root"),
        ));
    }
    if !real.is_dir() {
        return Err(ErrorMsg::new(
            ErrorCode::NotFound,
            format!("working directory {cwd:?} is not a directory"),
        ));
    }
    Ok(real)
}

/// Starts the command of `req` in `cwd`, in a new process group (pipes)
/// or a new session with the pty as controlling terminal. The program
/// named by `argv[0]` is looked up in `env`'s `PATH`.
/// `env` is the command's whole environment: nothing of the server's own
/// environment is inherited.
pub fn spawn(req: &Exec, cwd: &Path, env: &[(String, String)]) -> Result<Started, SpawnError> {
    let (program, args) = program_and_args(req)?;
    let mut cmd = Command::new(&program);
    cmd.args(&args)
        .current_dir(cwd)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)));
    let mut pty = None;
    if let Some(p) = &req.pty {
        pty = Some(attach_pty(&mut cmd, p.rows, p.cols)?);
    } else {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let code = match e.kind() {
                io::ErrorKind::NotFound => 127,
                io::ErrorKind::PermissionDenied => 126,
                _ => return Err(internal(e)),
            };
            return Err(SpawnError::Exit(code, format!("skiff: {program}: {e}\n")));
        }
    };
    // The slave copies held by `cmd` must close, or the master never sees
    // the end of the terminal.
    drop(cmd);
    let Some(pid) = child.id() else {
        return Err(internal(io::Error::other("child exited before it started")));
    };
    let group = GroupGuard {
        pgid: Pid::from_raw(pid as i32),
        armed: true,
    };
    let streams = match pty {
        Some(master) => Streams::Pty(PtyMaster::new(master).map_err(internal)?),
        None => pipe_streams(&mut child)?,
    };
    Ok(Started {
        child,
        group,
        streams,
    })
}

/// The program and its arguments: `argv` as given, or `cmd` for `sh -c`.
fn program_and_args(req: &Exec) -> Result<(String, Vec<String>), SpawnError> {
    match (&req.argv, &req.cmd) {
        (Some(argv), None) if !argv.is_empty() => Ok((argv[0].clone(), argv[1..].to_vec())),
        (None, Some(cmd)) => Ok(("sh".into(), vec!["-c".into(), cmd.clone()])),
        _ => Err(SpawnError::Refused(ErrorMsg::new(
            ErrorCode::BadFrame,
            "exec needs exactly one of \"argv\" (non-empty) and \"cmd\"",
        ))),
    }
}

/// Opens a pty of `rows` x `cols` as the command's stdio and controlling
/// terminal (in a new session); returns the master.
fn attach_pty(cmd: &mut Command, rows: u16, cols: u16) -> Result<OwnedFd, SpawnError> {
    let (master, slave) = super::pty::open(rows, cols).map_err(internal)?;
    let stdio = |fd: &OwnedFd| fd.try_clone().map(Stdio::from).map_err(internal);
    cmd.stdin(stdio(&slave)?)
        .stdout(stdio(&slave)?)
        .stderr(stdio(&slave)?);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    drop(slave);
    Ok(master)
}

/// The child's three pipes, the output ones enlarged.
fn pipe_streams(child: &mut Child) -> Result<Streams, SpawnError> {
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(internal(io::Error::other("child pipes missing")));
    };
    for fd in [stdout.as_raw_fd(), stderr.as_raw_fd()] {
        // SAFETY: plain fcntl on a pipe we own; failure is harmless.
        unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, PIPE_SIZE) };
    }
    Ok(Streams::Pipes {
        stdin,
        stdout,
        stderr,
    })
}

fn internal(e: io::Error) -> SpawnError {
    SpawnError::Refused(ErrorMsg::new(
        ErrorCode::Internal,
        format!("cannot start the command: {e}"),
    ))
}

/// The signal a client named (`"INT"`, `"SIGINT"`, `2`).
pub fn parse_signal(spec: &SignalSpec) -> Option<Signal> {
    match spec {
        SignalSpec::Number(n) => Signal::try_from(*n).ok(),
        SignalSpec::Name(name) => {
            let upper = name.to_ascii_uppercase();
            let full = if upper.starts_with("SIG") {
                upper
            } else {
                format!("SIG{upper}")
            };
            full.parse().ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names_and_numbers() {
        let p = |s: SignalSpec| parse_signal(&s);
        assert_eq!(p(SignalSpec::Name("int".into())), Some(Signal::SIGINT));
        assert_eq!(p(SignalSpec::Name("SIGTERM".into())), Some(Signal::SIGTERM));
        assert_eq!(p(SignalSpec::Number(9)), Some(Signal::SIGKILL));
        assert_eq!(p(SignalSpec::Number(0)), None);
        assert_eq!(p(SignalSpec::Name("NOPE".into())), None);
    }

    #[test]
    fn cwd_is_confined_to_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::create_dir(root.join("sub")).unwrap();
        assert_eq!(resolve_cwd(&root, None).unwrap(), root);
        assert_eq!(resolve_cwd(&root, Some("/")).unwrap(), root);
        assert_eq!(resolve_cwd(&root, Some("sub")).unwrap(), root.join("sub"));
        assert_eq!(resolve_cwd(&root, Some("/sub")).unwrap(), root.join("sub"));
        let esc = resolve_cwd(&root, Some("../..")).unwrap_err();
        assert_eq!(esc.code, ErrorCode::PathEscape);
        std::os::unix::fs::symlink("/", root.join("out")).unwrap();
        assert_eq!(
            resolve_cwd(&root, Some("out")).unwrap_err().code,
            ErrorCode::PathEscape
        );
        assert_eq!(
            resolve_cwd(&root, Some("missing")).unwrap_err().code,
            ErrorCode::NotFound
        );
    }
}
