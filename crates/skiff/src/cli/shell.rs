//! `skiff shell`: the tutorial's `>>: ` command loop over one session, or
//! with `-t` an interactive login-like shell on a remote pty.

use std::io::{BufRead, Write};

use skiff_wire::message::exec::Exec;

use super::connect::{parse_target, KeyArg};
use super::exec::{execute, report};
use super::output::{describe, EXIT_CONNECTION};
use crate::client::exec::{self as remote, LocalSide};
use crate::client::ClientError;
use crate::target::Target;

/// The prompt of the tutorial's command client.
const PROMPT: &str = ">>: ";

/// What runs on the remote pty for `shell -t`: the server user's shell,
/// interactive.
const INTERACTIVE_SHELL: &str = "exec \"${SHELL:-/bin/sh}\" -i";

/// Arguments of `skiff shell`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    key: KeyArg,
    /// A real terminal: an interactive shell on a remote pseudo-terminal.
    #[arg(short = 't')]
    tty: bool,
    /// Server: HOST[:PORT], [IPv6]:PORT or a URL.
    #[arg(value_parser = parse_target)]
    target: Target,
}

/// Runs `skiff shell`.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let rt = super::runtime()?;
    let code = if args.tty {
        let result = rt.block_on(async {
            let mut client = super::connect::open(&args.target, &args.key).await?;
            let req = Exec {
                cmd: Some(INTERACTIVE_SHELL.to_string()),
                ..Exec::default()
            };
            execute(&mut client.session, req, true, true).await
        });
        report(result)
    } else {
        line_loop(&rt, &args)
    };
    rt.shutdown_background();
    Ok(code)
}

/// `>>: ` prompt, one line, one exec (no stdin) over the same session;
/// output as it comes, a non-zero exit shown on stderr. `quit` or EOF
/// leaves.
fn line_loop(rt: &tokio::runtime::Runtime, args: &Args) -> i32 {
    let mut client = match rt.block_on(super::connect::open(&args.target, &args.key)) {
        Ok(c) => c,
        Err(e) => return report(Err(e)),
    };
    let stdin = std::io::stdin();
    let mut line = Vec::new();
    loop {
        print!("{PROMPT}");
        let _ = std::io::stdout().flush();
        line.clear();
        match stdin.lock().read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => {
                println!();
                break;
            }
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        let cmd = text.trim();
        if cmd.is_empty() {
            continue;
        }
        if cmd == "quit" {
            break;
        }
        let req = Exec {
            cmd: Some(cmd.to_string()),
            ..Exec::default()
        };
        let local = LocalSide {
            stdin: None,
            forward_signals: false,
        };
        match rt.block_on(remote::run(&mut client.session, &req, local)) {
            Ok(outcome) => {
                let status = outcome.exit_status();
                if status != 0 {
                    eprintln!("[exit {status}]");
                }
            }
            Err(ClientError::Remote(e)) => eprintln!("skiff: {}", e.message),
            Err(e) => {
                eprintln!("skiff: {}", describe(&anyhow::Error::new(e)));
                return EXIT_CONNECTION;
            }
        }
    }
    let _ = rt.block_on(client.session.close());
    0
}
