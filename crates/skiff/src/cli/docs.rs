//! `skiff completions SHELL` and `skiff man --out DIR`: shell completion
//! scripts and man pages generated from the same clap definitions as the
//! parser, so they never drift from it.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::CommandFactory;

/// Arguments of `skiff completions`.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

/// Arguments of `skiff man`.
#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Directory for the pages (`skiff.1`, `skiff-exec.1`, ...); created
    /// if missing.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

/// Prints the completion script on stdout.
pub fn completions(args: CompletionsArgs) -> anyhow::Result<i32> {
    let mut cmd = super::Cli::command();
    clap_complete::generate(args.shell, &mut cmd, "skiff", &mut std::io::stdout());
    Ok(0)
}

/// Writes `skiff.1` and one page per subcommand (`skiff-classic-cmd-server.1`
/// for nested ones), and prints each path.
pub fn man(args: ManArgs) -> anyhow::Result<i32> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let mut cmd = super::Cli::command();
    cmd.build();
    let mut written = Vec::new();
    write_pages(&cmd, None, &args.out, &mut written)?;
    let mut out = std::io::stdout().lock();
    for p in written {
        // A closed stdout (`| head`) is not an error of ours.
        if writeln!(out, "{}", p.display()).is_err() {
            break;
        }
    }
    Ok(0)
}

fn write_pages(
    cmd: &clap::Command,
    parent: Option<&str>,
    dir: &std::path::Path,
    written: &mut Vec<PathBuf>,
) -> anyhow::Result<()> {
    let name = match parent {
        Some(p) => format!("{p}-{}", cmd.get_name()),
        None => cmd.get_name().to_string(),
    };
    let page = cmd
        .clone()
        .name(name.clone())
        .bin_name(name.replace('-', " "));
    let mut buf = Vec::new();
    clap_mangen::Man::new(page).render(&mut buf)?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, buf).with_context(|| format!("writing {}", path.display()))?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        write_pages(sub, Some(&name), dir, written)?;
    }
    Ok(())
}
