//! The command line: parses arguments and wires the library together. Each
//! subcommand lives in its own module with its `Args` and `run`.

use clap::{Parser, Subcommand};

mod bench;
mod classic;
mod connect;
mod docs;
mod exec;
mod files;
mod keygen;
mod output;
mod ping;
mod serve;
mod shell;

pub use output::{exit_code_for, EXIT_CONNECTION};

/// The version `skiff --version` shows: the package version and, when
/// built from a git checkout, the revision.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), env!("SKIFF_VERSION_SUFFIX"));

/// skiff: run commands and move files between your machines, authenticated,
/// encrypted and verified.
#[derive(Debug, Parser)]
#[command(name = "skiff", version = VERSION, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a key for a user: prints `NAME BASE64KEY`.
    Keygen(keygen::Args),
    /// Run the server.
    Serve(serve::Args),
    /// Run a command on the server (like `ssh host cmd`).
    Exec(exec::Args),
    /// Interactive shell on the server (`-t` for a real terminal).
    Shell(shell::Args),
    /// Upload a file or tree (`-r`).
    Put(files::PutArgs),
    /// Download a file or tree (`-r`).
    Get(files::GetArgs),
    /// List a remote directory.
    Ls(files::PathArgs),
    /// Show a remote file's metadata.
    Stat(files::PathArgs),
    /// Remove a remote file (`-r` for a directory).
    Rm(files::RmArgs),
    /// Create a remote directory.
    Mkdir(files::MkdirArgs),
    /// Rename or move a remote file.
    Mv(files::MvArgs),
    /// Measure round trips to the server (session, or `--udp`).
    Ping(ping::Args),
    /// Load generator: ping, put, get and exec throughput and latency.
    Bench(bench::Args),
    /// The socket tutorial's own programs, wire-compatible.
    Classic(classic::Args),
    /// Print a shell completion script (bash, zsh, fish, ...).
    Completions(docs::CompletionsArgs),
    /// Write man pages, one per subcommand, into a directory.
    Man(docs::ManArgs),
}

/// Parses the command line, runs it, and returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    // A server's log is its record: `info` by default. A client says
    // nothing unless something is wrong.
    init_tracing(if matches!(cli.command, Command::Serve(_)) {
        "info"
    } else {
        "warn"
    });
    let result = match cli.command {
        Command::Keygen(a) => keygen::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Exec(a) => exec::run(a),
        Command::Shell(a) => shell::run(a),
        Command::Put(a) => files::put(a),
        Command::Get(a) => files::get(a),
        Command::Ls(a) => files::ls(a),
        Command::Stat(a) => files::stat(a),
        Command::Rm(a) => files::rm(a),
        Command::Mkdir(a) => files::mkdir(a),
        Command::Mv(a) => files::mv(a),
        Command::Ping(a) => ping::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Classic(a) => classic::run(a),
        Command::Completions(a) => docs::completions(a),
        Command::Man(a) => docs::man(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("skiff: {}", output::describe(&e));
            exit_code_for(&e)
        }
    }
}

/// Logs to stderr at `default` (or `$RUST_LOG`), with colours only on a
/// terminal. rustls' own messages stay at `error`: skiff logs handshake
/// failures itself, in words.
fn init_tracing(default: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("{default},rustls=error")));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// A multi-threaded tokio runtime for one command.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
