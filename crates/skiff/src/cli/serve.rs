//! `skiff serve`: flags, zero-config defaults, then [`crate::server::serve`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::keys::{self, UserKey};
use crate::serve_config::{self, ConfigSource, ServeFile};
use crate::server::{Listen, ServeConfig};
use crate::session::accept::AuthPolicy;
use crate::session::penalty::PenaltyPolicy;
use skiff_net::StartupLimits;

/// Arguments of `skiff serve`. Every setting can also live in the
/// configuration file (same names); flags win.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Configuration file (TOML; default: /etc/skiff/serve.toml for root,
    /// ~/.config/skiff/serve.toml otherwise, when it exists).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the effective configuration (defaults, file, flags) as TOML
    /// and exit.
    #[arg(long)]
    print_config: bool,
    /// Address to listen on (repeatable): tcp://HOST:PORT or HOST:PORT (TLS),
    /// tcp+plain://HOST:PORT (loopback only), unix:///PATH, udp://HOST:PORT
    /// (UDP ping). Port 0 picks a free port. Default: tcp://127.0.0.1:7878.
    #[arg(long, value_name = "URL", value_parser = parse_listen)]
    listen: Vec<Listen>,
    /// Directory to serve (default: the current directory).
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Users file, lines `NAME BASE64KEY [OPTION]...` (default:
    /// STATE_DIR/users; created with a key for the current user when
    /// missing). Re-read when it changes and on SIGHUP.
    #[arg(long, value_name = "FILE")]
    users: Option<PathBuf>,
    /// Where the certificate lives (default: ~/.local/state/skiff).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Refuse remote command execution.
    #[arg(long)]
    no_exec: bool,
    /// Most connections served at once; more get a `busy` error
    /// (default: 1024).
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Audit log: one JSON line per login, command, file change and
    /// session end; `-` for stderr. Reopened on SIGHUP.
    #[arg(long, value_name = "FILE")]
    audit_log: Option<String>,
    /// Seconds a client gets to complete TLS and authentication.
    #[arg(long, value_name = "SECS", hide = true)]
    handshake_timeout: Option<f64>,
    /// Milliseconds to wait before answering a failed authentication.
    #[arg(long, value_name = "MS", hide = true)]
    auth_fail_delay_ms: Option<u64>,
    /// Recent failed authentications from one source before its new
    /// connections are delayed (default: 3).
    #[arg(long, value_name = "N", hide = true)]
    auth_max_failures: Option<u32>,
    /// Longest delay a failing source earns, in milliseconds (default: 2000).
    #[arg(long, value_name = "MS", hide = true)]
    auth_penalty_max_ms: Option<u64>,
    /// Connections still in the handshake, all sources together:
    /// START:RATE:FULL as OpenSSH's MaxStartups (default: 64:30:256).
    #[arg(long, value_name = "START:RATE:FULL", hide = true)]
    max_startups: Option<String>,
    /// Connections still in the handshake from one source (default: 16).
    #[arg(long, value_name = "N", hide = true)]
    per_source_max_startups: Option<usize>,
    /// Seconds an authenticated session may be idle between requests
    /// before it is closed; 0: never (default: 600).
    #[arg(long, value_name = "SECS", hide = true)]
    idle_timeout: Option<f64>,
    /// Seconds a write may wait for a client that does not read
    /// (default: 60).
    #[arg(long, value_name = "SECS", hide = true)]
    write_timeout: Option<f64>,
    /// Days an interrupted upload is kept for `put --resume` (in
    /// STATE_DIR/partial) before it is removed (default: 7).
    #[arg(long, value_name = "DAYS")]
    partial_max_age_days: Option<f64>,
}

fn parse_listen(s: &str) -> Result<Listen, String> {
    s.parse()
}

impl Args {
    /// What the command line says, as a configuration layer.
    fn as_layer(&self, cwd: &Path) -> ServeFile {
        let mut layer = ServeFile {
            listen: (!self.listen.is_empty())
                .then(|| self.listen.iter().map(Listen::to_string).collect()),
            root: self.root.clone(),
            users: self.users.clone(),
            state_dir: self.state_dir.clone(),
            no_exec: self.no_exec.then_some(true),
            max_connections: self.max_connections,
            audit_log: self.audit_log.clone(),
            accept_env: None,
            handshake_timeout: self.handshake_timeout,
            auth_fail_delay_ms: self.auth_fail_delay_ms,
            auth_max_failures: self.auth_max_failures,
            auth_penalty_max_ms: self.auth_penalty_max_ms,
            auth_penalty_exempt: None,
            max_startups: self.max_startups.clone(),
            per_source_max_startups: self.per_source_max_startups,
            idle_timeout: self.idle_timeout,
            write_timeout: self.write_timeout,
            partial_max_age_days: self.partial_max_age_days,
        };
        layer.absolutize(cwd);
        layer
    }
}

/// Runs the server until SIGINT/SIGTERM (or prints its configuration).
pub fn run(args: Args) -> anyhow::Result<i32> {
    let cwd = std::env::current_dir().context("finding the current directory")?;
    let file = match &args.config {
        Some(f) => Some(f.clone()),
        None => Some(serve_config::default_path()).filter(|p| p.exists()),
    };
    let source = ConfigSource {
        file,
        flags: args.as_layer(&cwd),
        cwd,
    };
    let effective = source.effective()?;
    let cfg = server_config(&effective, source)?;
    if args.print_config {
        let from = match &cfg.source.file {
            Some(f) => format!("{}, the command line and defaults", f.display()),
            None => "the command line and defaults".to_string(),
        };
        let text = format!(
            "# skiff serve: effective configuration from {from}\n{}",
            effective.to_toml()
        );
        let _ = std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes());
        return Ok(0);
    }
    raise_fd_limit();
    // Zero config: only the default users file is created when missing;
    // one the administrator named must exist.
    if cfg.users_file == cfg.state_dir.join("users") && !cfg.users_file.exists() {
        first_run_users(&cfg.users_file)?;
    }
    super::runtime()?.block_on(crate::server::serve(cfg))?;
    Ok(0)
}

/// The server's settings from a resolved configuration.
pub fn server_config(eff: &ServeFile, source: ConfigSource) -> anyhow::Result<ServeConfig> {
    let missing = |k: &str| anyhow::anyhow!("configuration has no {k}");
    let listen = listen_addresses(eff)?;
    let accept_env = eff.accept_env.clone().unwrap_or_default();
    crate::policy::env::AcceptEnv::new(&accept_env).map_err(anyhow::Error::msg)?;
    Ok(ServeConfig {
        listen,
        root: eff.root.clone().ok_or_else(|| missing("root"))?,
        users_file: eff.users.clone().ok_or_else(|| missing("users"))?,
        state_dir: eff.state_dir.clone().ok_or_else(|| missing("state-dir"))?,
        no_exec: eff.no_exec.unwrap_or(false),
        max_connections: eff
            .max_connections
            .unwrap_or(serve_config::DEFAULT_MAX_CONNECTIONS),
        handshake_timeout: Duration::from_secs_f64(
            eff.handshake_timeout
                .unwrap_or(serve_config::DEFAULT_HANDSHAKE_TIMEOUT)
                .max(0.05),
        ),
        auth: auth_policy(eff)?,
        startups: startup_limits(eff)?,
        idle_timeout: seconds(
            eff.idle_timeout
                .unwrap_or(serve_config::DEFAULT_IDLE_TIMEOUT),
        ),
        write_timeout: seconds(
            eff.write_timeout
                .unwrap_or(serve_config::DEFAULT_WRITE_TIMEOUT),
        )
        .unwrap_or(Duration::from_secs(
            serve_config::DEFAULT_WRITE_TIMEOUT as u64,
        )),
        audit: eff
            .audit_log
            .as_deref()
            .map(crate::audit::Destination::parse),
        accept_env,
        partial_max_age: Duration::from_secs_f64(
            eff.partial_max_age_days
                .unwrap_or(serve_config::DEFAULT_PARTIAL_MAX_AGE_DAYS)
                .clamp(0.0, 36_500.0)
                * 86_400.0,
        ),
        effective: eff.clone(),
        source,
    })
}

/// The addresses to listen on; at least one.
fn listen_addresses(eff: &ServeFile) -> anyhow::Result<Vec<Listen>> {
    let listen = eff
        .listen
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("configuration has no listen"))?
        .iter()
        .map(|l| l.parse::<Listen>().map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if listen.is_empty() {
        anyhow::bail!("listen is empty: give at least one address");
    }
    Ok(listen)
}

/// How failed authentications are slowed down, and for whom not.
fn auth_policy(eff: &ServeFile) -> anyhow::Result<AuthPolicy> {
    Ok(AuthPolicy {
        fail_delay: Duration::from_millis(
            eff.auth_fail_delay_ms
                .unwrap_or(serve_config::DEFAULT_AUTH_FAIL_DELAY_MS),
        ),
        penalties: PenaltyPolicy {
            free_failures: eff
                .auth_max_failures
                .unwrap_or(serve_config::DEFAULT_AUTH_MAX_FAILURES),
            max_delay: Duration::from_millis(
                eff.auth_penalty_max_ms
                    .unwrap_or(serve_config::DEFAULT_AUTH_PENALTY_MAX_MS),
            ),
            exempt: parse_networks(eff.auth_penalty_exempt.as_deref().unwrap_or_default())?,
            ..PenaltyPolicy::default()
        },
    })
}

/// Limits on connections still in the handshake, overall and per source.
fn startup_limits(eff: &ServeFile) -> anyhow::Result<StartupLimits> {
    let text = eff
        .max_startups
        .as_deref()
        .unwrap_or(serve_config::DEFAULT_MAX_STARTUPS);
    let mut limits: StartupLimits = text
        .parse()
        .map_err(|e| anyhow::anyhow!("max-startups: {e}"))?;
    limits.per_source = eff
        .per_source_max_startups
        .unwrap_or(serve_config::DEFAULT_PER_SOURCE_MAX_STARTUPS)
        .max(1);
    Ok(limits)
}

/// A number of seconds from the configuration; 0 (or less) means never.
fn seconds(secs: f64) -> Option<Duration> {
    (secs > 0.0).then(|| Duration::from_secs_f64(secs.min(1e9)))
}

/// CIDR networks (or single addresses) from the configuration.
fn parse_networks(list: &[String]) -> anyhow::Result<Vec<ipnet::IpNet>> {
    list.iter()
        .map(|n| {
            n.parse::<ipnet::IpNet>()
                .or_else(|_| n.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    anyhow::anyhow!("auth-penalty-exempt: {n:?} is not a network like 192.0.2.0/24")
                })
        })
        .collect()
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
