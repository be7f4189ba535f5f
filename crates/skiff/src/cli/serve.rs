//! `skiff serve`: flags, zero-config defaults, then [`crate::server::serve`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::keys::{self, UserKey};
use crate::server::{Listen, ServeConfig};
use crate::session::accept::AuthPolicy;

/// Arguments of `skiff serve`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on (repeatable): tcp://HOST:PORT or HOST:PORT (TLS),
    /// tcp+plain://HOST:PORT (loopback only), unix:///PATH, udp://HOST:PORT
    /// (UDP ping). Port 0 picks a free port.
    #[arg(long, value_name = "URL", value_parser = parse_listen)]
    listen: Vec<Listen>,
    /// Directory to serve (default: the current directory).
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Users file, lines `NAME BASE64KEY` (default: STATE_DIR/users; created
    /// with a key for the current user when missing).
    #[arg(long, value_name = "FILE")]
    users: Option<PathBuf>,
    /// Where the certificate lives (default: ~/.local/state/skiff).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Refuse remote command execution.
    #[arg(long)]
    no_exec: bool,
    /// Most connections served at once; more get a `busy` error.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    max_connections: usize,
    /// Seconds a client gets to complete TLS and authentication.
    #[arg(long, value_name = "SECS", default_value_t = 10.0, hide = true)]
    handshake_timeout: f64,
    /// Milliseconds to wait before answering a failed authentication.
    #[arg(long, value_name = "MS", default_value_t = 500, hide = true)]
    auth_fail_delay_ms: u64,
    /// Failed authentications per address per minute before it is refused.
    #[arg(long, value_name = "N", default_value_t = 10, hide = true)]
    auth_max_failures: u32,
    /// Days an interrupted upload is kept for `put --resume` (in
    /// STATE_DIR/partial) before it is removed.
    #[arg(long, value_name = "DAYS", default_value_t = 7.0)]
    partial_max_age_days: f64,
}

fn parse_listen(s: &str) -> Result<Listen, String> {
    s.parse()
}

/// Runs the server until SIGINT/SIGTERM.
pub fn run(args: Args) -> anyhow::Result<i32> {
    raise_fd_limit();
    let state_dir = args.state_dir.unwrap_or_else(keys::state_dir);
    let users_file = match args.users {
        Some(u) => u,
        None => {
            let u = state_dir.join("users");
            if !u.exists() {
                first_run_users(&u)?;
            }
            u
        }
    };
    let root = match args.root {
        Some(r) => r,
        None => std::env::current_dir().context("finding the current directory")?,
    };
    let listen = if args.listen.is_empty() {
        vec![parse_listen("tcp://127.0.0.1:7878").map_err(anyhow::Error::msg)?]
    } else {
        args.listen
    };
    let cfg = ServeConfig {
        listen,
        root,
        users_file,
        state_dir,
        no_exec: args.no_exec,
        max_connections: args.max_connections,
        handshake_timeout: Duration::from_secs_f64(args.handshake_timeout.max(0.05)),
        auth: AuthPolicy {
            fail_delay: Duration::from_millis(args.auth_fail_delay_ms),
            max_failures: args.auth_max_failures,
            ..AuthPolicy::default()
        },
        partial_max_age: Duration::from_secs_f64(
            args.partial_max_age_days.clamp(0.0, 36_500.0) * 86_400.0,
        ),
    };
    super::runtime()?.block_on(crate::server::serve(cfg))?;
    Ok(0)
}

/// Zero config: creates the users file with a key for the current user, and
/// the matching client key file if there is none (reusing an existing
/// client key otherwise, so earlier setups keep working).
fn first_run_users(users_file: &Path) -> anyhow::Result<()> {
    let key_path = std::env::var_os("SKIFF_KEY_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(keys::default_key_path);
    let uk = if key_path.exists() {
        keys::load_key(&key_path)?
    } else {
        let uk = UserKey::generate(&keys::current_user());
        keys::write_private_new(&key_path, &format!("{}\n", uk.to_line()))?;
        crate::server::announce(format_args!(
            "wrote client key for {} to {}",
            uk.user,
            key_path.display()
        ));
        uk
    };
    keys::write_private_new(
        users_file,
        &format!("# skiff users: NAME BASE64KEY per line\n{}\n", uk.to_line()),
    )?;
    crate::server::announce(format_args!(
        "created users file {} with a key for {}",
        users_file.display(),
        uk.user
    ));
    Ok(())
}

/// Serving many clients needs more than the usual 1024 descriptors.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard.min(1 << 20), hard);
        }
    }
}
