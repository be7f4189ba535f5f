//! `skiff exec`: run a command on the server, like `ssh host cmd`.
//!
//! Exit status: the remote exit code; 128+N when the remote command was
//! killed by signal N; 255 when skiff itself failed (connection,
//! authentication, protocol, or the server refusing the request, e.g.
//! `unsupported` from `--no-exec` or a bad `--cwd`): an exit code of 1 would
//! be indistinguishable from the command's own failure. Details in
//! docs/EXEC.md.

use std::time::Duration;

use skiff_wire::message::exec::{Exec, PtyRequest};

use super::connect::{parse_target, KeyArg, PortArg};
use super::fanout::{self, FanoutArgs};
use super::output::usage;
use super::output::{describe, exit_code_for_client, EXIT_CONNECTION, EXIT_USAGE};
use crate::client::exec::{self as remote, terminal, LocalSide, Outcome};
use crate::client::ClientError;
use crate::session::Session;

/// Arguments of `skiff exec`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    key: KeyArg,
    #[command(flatten)]
    port: PortArg,
    /// Send no stdin: the command sees EOF at once (as `ssh -n`).
    #[arg(short = 'n')]
    no_stdin: bool,
    /// Run the command on a pseudo-terminal (as `ssh -t`).
    #[arg(short = 't')]
    tty: bool,
    /// Kill the remote command (its whole process group) after SECS seconds.
    #[arg(long, value_name = "SECS")]
    timeout: Option<f64>,
    /// Remote working directory, relative to the server root.
    #[arg(long, value_name = "DIR")]
    cwd: Option<String>,
    /// Set a variable in the remote environment (repeatable).
    #[arg(short = 'e', long = "env", value_name = "NAME=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,
    #[command(flatten)]
    fanout: FanoutArgs,
    /// Server: [USER@]HOST[:PORT], [IPv6]:PORT, an alias or a URL (none
    /// with -H or --hosts-file).
    #[arg(value_name = "TARGET")]
    target: Option<String>,
    /// The command and its arguments: joined with spaces and run by `sh -c`
    /// in the server root.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    command: Vec<String>,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not NAME=VALUE")),
    }
}

/// Runs `skiff exec`; returns the exit status described above.
pub fn run(mut args: Args) -> anyhow::Result<i32> {
    let timeout = fanout::parse_timeout(args.timeout)?;
    let timeout_ms = timeout.map(|t| t.as_millis().max(1) as u64);
    // With -H the first word clap took as TARGET begins the command.
    let target = if args.fanout.selected() {
        args.command.splice(0..0, args.target.take());
        None
    } else {
        match args.target.as_deref().map(parse_target) {
            Some(Ok(t)) => Some(t),
            Some(Err(e)) => usage!("{e}"),
            None => usage!("a TARGET (or -H HOSTS) is required"),
        }
    };
    if args.command.is_empty() {
        usage!("no command given: skiff exec TARGET -- CMD [ARG...]");
    }
    let req = Exec {
        cmd: Some(args.command.join(" ")),
        cwd: args.cwd.clone(),
        env: args.env.iter().cloned().collect(),
        timeout_ms,
        ..Exec::default()
    };
    let Some(target) = target else {
        return fanout::exec_many(&args.fanout, &args.key, args.port, req, timeout);
    };
    let rt = super::runtime()?;
    let result = rt.block_on(async {
        let mut client = super::connect::open(&target, &args.key, args.port, false).await?;
        let outcome = execute(&mut client.session, req, !args.no_stdin, args.tty).await?;
        let _ = tokio::time::timeout(Duration::from_millis(200), client.session.close()).await;
        Ok(outcome)
    });
    // The stdin thread may sit in a read forever: do not wait for it.
    rt.shutdown_background();
    Ok(report(result))
}

/// Runs one command with our stdin (unless `forward_stdin` is false) and
/// signals forwarded; with `tty`, on a remote pty of our window's size with
/// our terminal in raw mode until it ends (restored on every way out).
pub(super) async fn execute(
    session: &mut Session<'_>,
    mut req: Exec,
    forward_stdin: bool,
    tty: bool,
) -> Result<Outcome, ClientError> {
    let raw = if tty {
        let (rows, cols) = terminal::window_size();
        req.pty = Some(PtyRequest {
            rows,
            cols,
            term: std::env::var("TERM").ok(),
        });
        terminal::RawMode::enable()
    } else {
        None
    };
    let mut stdin = forward_stdin.then(remote::stdin_reader);
    let local = LocalSide {
        stdin: stdin.as_mut(),
        forward_signals: true,
    };
    let outcome = remote::run(session, &req, local).await;
    drop(raw);
    outcome
}

/// The exit status for an exec's result, saying on stderr what went wrong
/// when it was not the command's own doing.
pub(super) fn report(result: Result<Outcome, ClientError>) -> i32 {
    match result {
        Ok(outcome) => {
            if let Outcome::Exited(e) = &outcome {
                if e.timed_out {
                    eprintln!("skiff: the remote command timed out and was killed");
                }
            }
            outcome.exit_status()
        }
        Err(e) => {
            let code = match exit_code_for_client(&e) {
                EXIT_USAGE => EXIT_USAGE,
                _ => EXIT_CONNECTION,
            };
            eprintln!("skiff: {}", describe(&anyhow::Error::new(e)));
            code
        }
    }
}
