//! `skiff put|get|ls|stat|rm|mkdir|mv`.

/// Arguments of `skiff put`.
#[derive(Debug, clap::Args)]
pub struct PutArgs {
    /// Arguments (not built yet).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    rest: Vec<String>,
}
/// Arguments of `skiff get`.
pub type GetArgs = PutArgs;
/// Arguments of `skiff ls` and `skiff stat`.
pub type PathArgs = PutArgs;
/// Arguments of `skiff rm`.
pub type RmArgs = PutArgs;
/// Arguments of `skiff mkdir`.
pub type MkdirArgs = PutArgs;
/// Arguments of `skiff mv`.
pub type MvArgs = PutArgs;

/// Runs `skiff put`.
pub fn put(_a: PutArgs) -> anyhow::Result<i32> {
    super::not_built("put")
}
/// Runs `skiff get`.
pub fn get(_a: GetArgs) -> anyhow::Result<i32> {
    super::not_built("get")
}
/// Runs `skiff ls`.
pub fn ls(_a: PathArgs) -> anyhow::Result<i32> {
    super::not_built("ls")
}
/// Runs `skiff stat`.
pub fn stat(_a: PathArgs) -> anyhow::Result<i32> {
    super::not_built("stat")
}
/// Runs `skiff rm`.
pub fn rm(_a: RmArgs) -> anyhow::Result<i32> {
    super::not_built("rm")
}
/// Runs `skiff mkdir`.
pub fn mkdir(_a: MkdirArgs) -> anyhow::Result<i32> {
    super::not_built("mkdir")
}
/// Runs `skiff mv`.
pub fn mv(_a: MvArgs) -> anyhow::Result<i32> {
    super::not_built("mv")
}
