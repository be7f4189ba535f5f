//! The command line: parses arguments and wires the library together. Each
//! subcommand lives in its own module with its `Args` and `run`.

use clap::{Parser, Subcommand};

mod bench;
mod classic;
mod connect;
mod cp;
mod docs;
mod exec;
mod fanout;
mod files;
mod keygen;
mod known;
mod output;
mod ping;
mod serve;
mod shell;
mod sync;
mod transfer;

pub use output::{exit_code_for, EXIT_CONNECTION};

/// The version `skiff --version` shows: the package version and, when
/// built from a git checkout, the revision.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), env!("SKIFF_VERSION_SUFFIX"));

/// skiff: run commands and move files between your machines, authenticated,
/// encrypted and verified.
#[derive(Debug, Parser)]
#[command(
    name = "skiff",
    version = VERSION,
    about,
    long_about = None,
    after_help = output::EXIT_CODES_HELP
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a key for a user: prints `NAME BASE64KEY`.
    #[command(after_help = "\
Examples:
  skiff keygen --user alice --out ~/.config/skiff/key   # a key for this machine
  skiff keygen --user deploy >> ~/.local/state/skiff/users   # add a user on the server
  skiff keygen                                          # print a line for the current user")]
    Keygen(keygen::Args),
    /// Run the server.
    #[command(after_help = "\
Examples:
  skiff serve                                    # this directory on 127.0.0.1:7878, keys made for you
  skiff serve --root /srv/data --listen 0.0.0.0:7878 --listen udp://0.0.0.0:7878
  skiff serve --listen unix:///run/skiff.sock --no-exec")]
    Serve(serve::Args),
    /// Run a command on the server (like `ssh host cmd`).
    #[command(after_help = "\
Examples:
  skiff exec localhost -- uname -a
  skiff exec -p 7879 alice@build.example -- 'make -j8 2>&1 | tail'
  tar c src | skiff exec web1 -- tar x -C deploy     # stdin is forwarded
  skiff exec -H 'web[01-20],@db' --parallel 50 -- uptime   # many hosts: `host: line`
  skiff exec -H @web --group-output -- cat /etc/os-release
  skiff exec --hosts-file fleet.txt --timeout 5 --json -- 'df -h /' | jq .")]
    Exec(exec::Args),
    /// A shell on the server, like `ssh host`: interactive on a terminal
    /// (pty), else runs stdin as a script.
    #[command(after_help = "\
Examples:
  skiff shell localhost                        # interactive login shell
  printf 'cd logs\\nls\\n' | skiff shell web1     # a script: cd persists
  skiff shell -T alice@[::1]:7879              # no pty, even on a terminal")]
    Shell(shell::Args),
    /// Copy files and trees between machines, like scp: HOST:PATH,
    /// USER@HOST:PATH, [IPv6]:PATH, skiff://HOST:PORT/PATH, `-`.
    #[command(
        override_usage = "skiff cp [OPTIONS] SRC... DST\n       skiff cp [OPTIONS] -H HOSTS LOCAL... :REMOTE\n       skiff cp [OPTIONS] -H HOSTS :REMOTE... LOCAL",
        after_help = "\
Examples:
  skiff cp notes.txt box:inbox/                 # into inbox/ (created if missing)
  skiff cp -r alice@box:projects/site ./site    # a tree; ./site is created as the copy
  skiff cp 'web1:logs/*.log' ./logs/            # the server expands the glob, inside its root
  skiff cp web1:db.dump web2:restore/           # remote to remote, through this machine
  tar c src | skiff cp - 'skiff://box:7879/src.tar'   # stdin; `-` as DST writes stdout
  skiff cp -H @web app.tar :releases/           # to every host of a group"
    )]
    Cp(cp::Args),
    /// Upload files or trees (`-r`): the last argument is the remote
    /// destination.
    #[command(
        after_help = "\
Examples:
  skiff put localhost big.iso backup/          # into directory backup/ (created if missing)
  skiff put -r web1 site/ www                  # tree: into www/ if it exists, else as www
  skiff put --resume localhost big.iso backup/ # finish an interrupted upload
  skiff put -H @web --parallel 50 app.tar releases/   # the same file to many hosts",
        override_usage = "skiff put [OPTIONS] TARGET LOCAL... REMOTE\n       skiff put [OPTIONS] -H HOSTS LOCAL... REMOTE"
    )]
    Put(files::PutArgs),
    /// Download files or trees (`-r`): the last argument is the local
    /// destination.
    #[command(
        after_help = "\
Examples:
  skiff get localhost backup/big.iso .
  skiff get -r web1 logs 'logs/*.gz' ./archive/   # several sources, a glob
  skiff get --resume localhost backup/big.iso .
  skiff get -H 'web[1-3]' logs/app.log ./logs/  # into ./logs/web1/app.log, ...",
        override_usage = "skiff get [OPTIONS] TARGET REMOTE... LOCAL\n       skiff get [OPTIONS] -H HOSTS REMOTE... LOCAL"
    )]
    Get(files::GetArgs),
    /// List a remote directory.
    #[command(after_help = "\
Examples:
  skiff ls localhost
  skiff ls web1 logs
  skiff ls --json web1 logs | jq '.[].path'")]
    Ls(files::PathArgs),
    /// Show a remote file's metadata.
    #[command(after_help = "\
Examples:
  skiff stat localhost backup/big.iso
  skiff stat --json web1 logs/")]
    Stat(files::PathArgs),
    /// Remove a remote file (`-r` for a directory).
    #[command(after_help = "\
Examples:
  skiff rm localhost backup/old.iso
  skiff rm -r web1 tmp/build
  skiff rm -f web1 maybe-there.txt           # no error if missing")]
    Rm(files::RmArgs),
    /// Create a remote directory.
    #[command(after_help = "\
Examples:
  skiff mkdir localhost backup
  skiff mkdir -p web1 a/b/c                 # with parents
  skiff mkdir -P 7879 localhost incoming    # -P PORT (-p is --parents)")]
    Mkdir(files::MkdirArgs),
    /// Rename or move a remote file.
    #[command(after_help = "\
Examples:
  skiff mv localhost draft.txt final.txt
  skiff mv web1 report.pdf archive/         # into a directory
  skiff mv -f web1 new.conf app.conf        # replace the destination")]
    Mv(files::MvArgs),
    /// Mirror a directory tree to or from a server, sending only what
    /// changed (one side local, the other HOST:PATH).
    #[command(after_help = "\
Examples:
  skiff sync site/ web1:www                  # push: www now holds what site/ holds
  skiff sync web1:logs ./logs                # pull (trailing slashes change nothing)
  skiff sync -n --delete site web1:www       # show what would change, change nothing
  skiff sync -z --exclude '*.o' --stats src build1:src")]
    Sync(sync::Args),
    /// Measure round trips to the server (session, or `--udp`).
    #[command(after_help = "\
Examples:
  skiff ping localhost
  skiff ping -c 5 -i 0.2 web1
  skiff ping --udp -c 3 localhost           # needs `serve --listen udp://…`
  skiff ping -H 'web[01-20]' -c 3 -i 0.2    # many hosts: a line each")]
    Ping(ping::Args),
    /// The pinned server certificates: list them, or remove one.
    #[command(after_help = "\
Examples:
  skiff known list
  skiff known remove web1                   # after the server was reinstalled
  skiff known remove 127.0.0.1:7879")]
    Known(known::Args),
    /// Load generator: ping, put, get and exec throughput and latency.
    #[command(after_help = "\
Examples:
  skiff bench ping -c 50 -d 5 localhost
  skiff bench put --size 1073741824 localhost
  skiff bench exec -n 200 --json localhost")]
    Bench(bench::Args),
    /// The socket tutorial's own programs, wire-compatible.
    #[command(after_help = "\
Examples:
  skiff classic cmd-server &  skiff classic cmd-client
  skiff classic upper-server --digest sha256
  skiff classic upload-server --root incoming &  skiff classic upload-client notes.txt")]
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
        Command::Cp(a) => cp::run(a),
        Command::Put(a) => files::put(a),
        Command::Get(a) => files::get(a),
        Command::Ls(a) => files::ls(a),
        Command::Stat(a) => files::stat(a),
        Command::Rm(a) => files::rm(a),
        Command::Mkdir(a) => files::mkdir(a),
        Command::Mv(a) => files::mv(a),
        Command::Sync(a) => sync::run(a),
        Command::Ping(a) => ping::run(a),
        Command::Known(a) => known::run(a),
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
