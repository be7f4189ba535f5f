//! Puts the git revision into `skiff --version`. Outside a git checkout
//! (a source tarball, a vendored crate) the version is just the package
//! version; `SKIFF_GIT_REV` overrides the revision for packagers.

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// Rebuild when the checked-out commit changes (the worktree's HEAD, its
/// reflog and the branch ref); only files that exist, or cargo would
/// rebuild every time.
fn watch(git_path: &str) {
    if let Some(p) = git(&["rev-parse", "--git-path", git_path]) {
        if Path::new(&p).exists() {
            println!("cargo:rerun-if-changed={p}");
        }
    }
}

fn main() {
    println!("cargo:rerun-if-env-changed=SKIFF_GIT_REV");
    let rev = std::env::var("SKIFF_GIT_REV")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]));
    watch("HEAD");
    watch("logs/HEAD");
    if let Some(r) = git(&["rev-parse", "--symbolic-full-name", "HEAD"]) {
        watch(&r);
    }
    let suffix = rev.map(|r| format!(" (git {r})")).unwrap_or_default();
    println!("cargo:rustc-env=SKIFF_VERSION_SUFFIX={suffix}");
}
