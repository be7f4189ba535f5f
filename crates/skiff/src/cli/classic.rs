//! `skiff classic`: the socket tutorial's programs, wire-compatible with
//! its Python code (DESIGN section 6, docs/CLASSIC.md).

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use skiff_classic::cmd::{self, CmdClient, CmdConfig, CmdServer};
use skiff_classic::text::Encoding;
use skiff_classic::udp::{self, UdpClient, UdpUpperServer};
use skiff_classic::udp_guard::RateLimit;
use skiff_classic::upload::{self, UploadClient, UploadServer};
use skiff_classic::upper::{self, Digest, UpperClient, UpperServer};
use skiff_classic::{self as c, ServerSettings};

/// Arguments of `skiff classic`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    program: Program,
}

#[derive(Debug, clap::Subcommand)]
enum Program {
    /// The custom-header command server (自定制报头的服务端): runs each
    /// command it is sent with the shell. Loopback only.
    CmdServer(CmdServerArgs),
    /// The custom-header command client (自定制报头客户端): the `>>: ` loop.
    CmdClient(CmdClientArgs),
    /// The HMAC-authenticated upper-case echo server (认证客户端的链接合法性).
    UpperServer(UpperServerArgs),
    /// The HMAC client (客户端合法): answers the challenge, then `>>: `.
    UpperClient(UpperClientArgs),
    /// Receives files sent with the custom header {file_name, file_size, md5}.
    /// Loopback only; never overwrites unless told to.
    UploadServer(UploadServerArgs),
    /// Sends files with the custom header {file_name, file_size, md5}.
    UploadClient(UploadClientArgs),
    /// The UDP upper-case echo server (udp服务端: recvfrom/sendto). Does
    /// not answer loop-prone sources, and limits replies per source.
    UdpServer(UdpServerArgs),
    /// The UDP client (udp客户端): the `>>: ` loop over datagrams.
    UdpClient(UdpClientArgs),
}

/// Where a server listens or a client connects: the tutorial's `ip_port`.
#[derive(Debug, clap::Args)]
struct Host {
    /// Host or IP address.
    #[arg(long, default_value = c::DEFAULT_HOST)]
    host: String,
}

/// Flags every TCP server shares.
#[derive(Debug, clap::Args)]
struct ServerFlags {
    /// Most clients served at once; more are closed at once.
    #[arg(long, value_name = "N", default_value_t = 256)]
    max_connections: usize,
    /// Seconds a client may stay silent before it is disconnected.
    #[arg(long, value_name = "SECS", default_value_t = c::DEFAULT_IDLE_TIMEOUT.as_secs_f64())]
    idle_timeout: f64,
}

impl ServerFlags {
    fn settings(&self) -> anyhow::Result<ServerSettings> {
        Ok(ServerSettings {
            max_connections: self.max_connections,
            idle_timeout: seconds(self.idle_timeout, "--idle-timeout")?,
        })
    }
}

/// The opt-in for serving an unauthenticated program beyond this machine.
#[derive(Debug, clap::Args)]
struct Exposure {
    /// Listen on a non-loopback address anyway. There is no
    /// authentication: anyone who can reach the address can use the
    /// server as you.
    #[arg(long)]
    unauthenticated_remote_ok: bool,
}

impl Exposure {
    /// Refuses a non-loopback `addr` unless the flag was given (then
    /// warns). `danger` says what a stranger could do with `program`.
    fn check(&self, addr: SocketAddr, program: &str, danger: &str) -> anyhow::Result<()> {
        if c::is_loopback(&addr) {
            return Ok(());
        }
        anyhow::ensure!(
            self.unauthenticated_remote_ok,
            "refusing to listen on {addr}: {program} {danger}, as you, with no \
             authentication, so anyone who can reach {addr} could take over this account. \
             Listen on a loopback address (the default is {}), use `skiff serve` for \
             authenticated remote access, or pass --unauthenticated-remote-ok if you \
             really mean it",
            c::DEFAULT_HOST
        );
        eprintln!(
            "skiff: WARNING: unauthenticated {program} on {addr}: anyone who can reach it can use it as you"
        );
        Ok(())
    }
}

#[derive(Debug, clap::Args)]
struct CmdServerArgs {
    #[command(flatten)]
    host: Host,
    /// Port (0: any free port, printed as `listening on URL`).
    #[arg(long, default_value_t = cmd::DEFAULT_PORT)]
    port: u16,
    #[command(flatten)]
    exposure: Exposure,
    /// Seconds a command may run before it is killed.
    #[arg(long, value_name = "SECS", default_value_t = 300.0)]
    command_timeout: f64,
    /// Most bytes a command may print on stdout or on stderr.
    #[arg(long, value_name = "BYTES", default_value_t = 64 << 20)]
    max_output: u64,
    #[command(flatten)]
    server: ServerFlags,
}

#[derive(Debug, clap::Args)]
struct CmdClientArgs {
    #[command(flatten)]
    host: Host,
    /// Port.
    #[arg(long, default_value_t = cmd::DEFAULT_PORT)]
    port: u16,
    /// How the server's output is encoded (gbk: a Chinese Windows server).
    #[arg(long, value_enum, default_value = "utf-8")]
    encoding: Encoding,
    /// Seconds to wait for the server at each step.
    #[arg(long, value_name = "SECS", default_value_t = 600.0)]
    timeout: f64,
}

#[derive(Debug, clap::Args)]
struct Secret {
    /// The shared secret (the tutorial's `secret_key`).
    #[arg(long, env = "SKIFF_CLASSIC_SECRET", default_value = upper::DEFAULT_SECRET, hide_env_values = true)]
    secret: String,
    /// The HMAC's hash.
    #[arg(long, value_enum, default_value = "md5")]
    digest: Digest,
}

#[derive(Debug, clap::Args)]
struct UpperServerArgs {
    #[command(flatten)]
    host: Host,
    /// Port (0: any free port).
    #[arg(long, default_value_t = upper::DEFAULT_PORT)]
    port: u16,
    #[command(flatten)]
    secret: Secret,
    /// Seconds a client gets to answer the challenge.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    auth_timeout: f64,
    #[command(flatten)]
    server: ServerFlags,
}

#[derive(Debug, clap::Args)]
struct UpperClientArgs {
    #[command(flatten)]
    host: Host,
    /// Port.
    #[arg(long, default_value_t = upper::DEFAULT_PORT)]
    port: u16,
    #[command(flatten)]
    secret: Secret,
    /// Seconds to wait for the server at each step.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    timeout: f64,
}

#[derive(Debug, clap::Args)]
struct UploadServerArgs {
    #[command(flatten)]
    host: Host,
    /// Port (0: any free port).
    #[arg(long, default_value_t = upload::DEFAULT_PORT)]
    port: u16,
    /// Directory the files are stored in (default: the current directory).
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Let an upload replace an existing file of the same name (by
    /// default it is refused, and the file is left as it was).
    #[arg(long)]
    overwrite: bool,
    #[command(flatten)]
    exposure: Exposure,
    #[command(flatten)]
    server: ServerFlags,
}

#[derive(Debug, clap::Args)]
struct UploadClientArgs {
    #[command(flatten)]
    host: Host,
    /// Port.
    #[arg(long, default_value_t = upload::DEFAULT_PORT)]
    port: u16,
    /// Seconds to wait for the server at each step.
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    timeout: f64,
    /// Files to send, one connection each.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct UdpServerArgs {
    #[command(flatten)]
    host: Host,
    /// Port (0: any free port).
    #[arg(long, default_value_t = udp::DEFAULT_PORT)]
    port: u16,
    /// Most replies per second to one source (an IPv4 address or an IPv6
    /// /64), with bursts of twice that; the rest are not answered.
    #[arg(long, value_name = "N", default_value_t = udp::DEFAULT_REPLIES_PER_SECOND)]
    max_replies_per_sec: f64,
}

#[derive(Debug, clap::Args)]
struct UdpClientArgs {
    #[command(flatten)]
    host: Host,
    /// Port.
    #[arg(long, default_value_t = udp::DEFAULT_PORT)]
    port: u16,
    /// Seconds to wait for each answer.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    timeout: f64,
}

fn seconds(secs: f64, flag: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| format!("{flag} must be a positive number of seconds, not {secs}"))
}

/// Runs `skiff classic PROGRAM`.
pub fn run(args: Args) -> anyhow::Result<i32> {
    match args.program {
        Program::CmdServer(a) => cmd_server(a),
        Program::CmdClient(a) => cmd_client(a),
        Program::UpperServer(a) => upper_server(a),
        Program::UpperClient(a) => upper_client(a),
        Program::UploadServer(a) => upload_server(a),
        Program::UploadClient(a) => upload_client(a),
        Program::UdpServer(a) => udp_server(a),
        Program::UdpClient(a) => udp_client(a),
    }
}

/// The `>>: ` loop of the command client.
fn cmd_client(a: CmdClientArgs) -> anyhow::Result<i32> {
    let client = CmdClient {
        addr: c::resolve(&a.host.host, a.port)?,
        encoding: a.encoding,
        timeout: seconds(a.timeout, "--timeout")?,
    };
    client.run(&mut io::stdin().lock(), &mut io::stdout().lock())?;
    Ok(0)
}

/// The HMAC-authenticated upper-case echo server.
fn upper_server(a: UpperServerArgs) -> anyhow::Result<i32> {
    let handler = UpperServer::new(
        a.secret.secret.into_bytes(),
        a.secret.digest,
        seconds(a.auth_timeout, "--auth-timeout")?,
    );
    let addr = c::resolve(&a.host.host, a.port)?;
    let builder = a.server.settings()?.builder().stream(c::tcp(addr), handler);
    serve(builder)
}

/// The HMAC client.
fn upper_client(a: UpperClientArgs) -> anyhow::Result<i32> {
    let client = UpperClient {
        addr: c::resolve(&a.host.host, a.port)?,
        secret: a.secret.secret.into_bytes(),
        digest: a.secret.digest,
        timeout: seconds(a.timeout, "--timeout")?,
    };
    client.run(&mut io::stdin().lock(), &mut io::stdout().lock())?;
    Ok(0)
}

/// The upload server, after checking its root.
fn upload_server(a: UploadServerArgs) -> anyhow::Result<i32> {
    let root = match a.root {
        Some(r) => r,
        None => std::env::current_dir().context("finding the current directory")?,
    };
    anyhow::ensure!(
        root.is_dir(),
        "--root {} is not a directory",
        root.display()
    );
    let addr = c::resolve(&a.host.host, a.port)?;
    a.exposure.check(
        addr,
        "upload-server",
        "stores any file it is sent in its root",
    )?;
    let handler = UploadServer::new(root).overwrite(a.overwrite);
    let builder = a.server.settings()?.builder().stream(c::tcp(addr), handler);
    serve(builder)
}

/// Sends each file; 1 when any failed.
fn upload_client(a: UploadClientArgs) -> anyhow::Result<i32> {
    let client = UploadClient {
        addr: c::resolve(&a.host.host, a.port)?,
        timeout: seconds(a.timeout, "--timeout")?,
    };
    let mut failed = 0;
    for file in &a.files {
        match client.upload(file) {
            Ok(size) => println!("sent {} ({size} bytes)", file.display()),
            Err(e) => {
                eprintln!("skiff: {}: {e}", file.display());
                failed += 1;
            }
        }
    }
    Ok(if failed == 0 { 0 } else { 1 })
}

/// The UDP upper-case echo server.
fn udp_server(a: UdpServerArgs) -> anyhow::Result<i32> {
    let addr = c::resolve(&a.host.host, a.port)?;
    anyhow::ensure!(
        a.max_replies_per_sec.is_finite() && a.max_replies_per_sec > 0.0,
        "--max-replies-per-sec must be a positive number, not {}",
        a.max_replies_per_sec
    );
    let handler = UdpUpperServer::new(RateLimit::per_second(a.max_replies_per_sec));
    let builder = skiff_net::Server::builder()
        .shutdown_on_signals(true)
        .datagram_buffer(udp::MAX_DATAGRAM)
        .datagram(skiff_net::ListenAddr::Udp(addr), handler);
    serve(builder)
}

/// The UDP client; 1 when any datagram was lost.
fn udp_client(a: UdpClientArgs) -> anyhow::Result<i32> {
    let client = UdpClient {
        addr: c::resolve(&a.host.host, a.port)?,
        timeout: seconds(a.timeout, "--timeout")?,
    };
    let lost = client.run(&mut io::stdin().lock(), &mut io::stdout().lock())?;
    Ok(if lost == 0 { 0 } else { 1 })
}

fn cmd_server(a: CmdServerArgs) -> anyhow::Result<i32> {
    let addr = c::resolve(&a.host.host, a.port)?;
    a.exposure
        .check(addr, "cmd-server", "runs every command it is sent")?;
    anyhow::ensure!(
        a.max_output <= cmd::MAX_OUTPUT_LIMIT,
        "--max-output must be at most {} (struct.pack('i') limit)",
        cmd::MAX_OUTPUT_LIMIT
    );
    let config = CmdConfig {
        command_timeout: seconds(a.command_timeout, "--command-timeout")?,
        max_output: a.max_output,
    };
    let builder = a
        .server
        .settings()?
        .builder()
        .stream(c::tcp(addr), CmdServer::new(config));
    serve(builder)
}

fn serve(builder: skiff_net::ServerBuilder) -> anyhow::Result<i32> {
    super::runtime()?.block_on(c::serve(builder))?;
    Ok(0)
}
