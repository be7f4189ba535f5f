//! `skiff keygen`: a new key line for a user.

use std::path::PathBuf;

use crate::keys::{self, UserKey};

/// Arguments of `skiff keygen`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// User name (default: the current user).
    #[arg(long)]
    user: Option<String>,
    /// Write the line to FILE (created with mode 0600) instead of stdout.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

/// Prints or writes `NAME BASE64KEY`.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let user = args.user.unwrap_or_else(keys::current_user);
    keys::check_user_name(&user).map_err(anyhow::Error::msg)?;
    let line = UserKey::generate(&user).to_line();
    match args.out {
        Some(path) => {
            if path.exists() {
                anyhow::bail!(
                    "{} already exists; refusing to overwrite a key (remove it first or pick another --out)",
                    path.display()
                );
            }
            keys::write_private_new(&path, &format!("{line}\n"))?;
            eprintln!("wrote key for {user} to {}", path.display());
        }
        None => println!("{line}"),
    }
    Ok(0)
}
