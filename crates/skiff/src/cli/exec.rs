//! `skiff exec`.

/// Arguments of `skiff exec`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Arguments (this command is not built yet).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    rest: Vec<String>,
}

/// Runs `skiff exec`.
pub fn run(_args: Args) -> anyhow::Result<i32> {
    super::not_built("exec")
}
