//! `skiff shell`: a shell on the server, as `ssh HOST` gives one.
//!
//! When local stdin is a terminal: the server user's login shell on a
//! remote pseudo-terminal of our window's size (`-T` disables the pty,
//! `-t` forces it). Otherwise `sh` reading our stdin as a script. Either
//! way it is one shell process for the whole session, so `cd` and
//! variables persist from line to line; the exit status is the shell's.
//! The tutorial's `>>: ` loop is `skiff classic cmd-client`.

use std::io::IsTerminal;

use skiff_wire::message::exec::Exec;

use super::connect::{parse_target, KeyArg, PortArg};
use super::exec::{execute, report};
use crate::target::HostSpec;

/// What runs on a remote pty: the server user's shell as a login shell.
const LOGIN_SHELL: &str = "exec \"${SHELL:-/bin/sh}\" -l";

/// What runs without a pty: a shell that reads the script on its stdin.
const SCRIPT_SHELL: &str = "exec sh -s";

/// Arguments of `skiff shell`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    key: KeyArg,
    #[command(flatten)]
    port: PortArg,
    /// Allocate a remote pseudo-terminal even when stdin is not a terminal.
    #[arg(short = 't', conflicts_with = "no_tty")]
    tty: bool,
    /// Never allocate a pseudo-terminal: run `sh` on stdin.
    #[arg(short = 'T')]
    no_tty: bool,
    /// Server: [USER@]HOST[:PORT], [IPv6]:PORT, an alias or a URL.
    #[arg(value_parser = parse_target)]
    target: HostSpec,
}

/// Runs `skiff shell`; the exit status is the remote shell's.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let pty = args.tty || (!args.no_tty && std::io::stdin().is_terminal());
    let req = Exec {
        cmd: Some(if pty { LOGIN_SHELL } else { SCRIPT_SHELL }.to_string()),
        ..Exec::default()
    };
    let rt = super::runtime()?;
    let result = rt.block_on(async {
        let mut client = super::connect::open(&args.target, &args.key, args.port, false).await?;
        execute(&mut client.session, req, true, pty).await
    });
    // The stdin thread may sit in a read forever: do not wait for it.
    rt.shutdown_background();
    Ok(report(result))
}
