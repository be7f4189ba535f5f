//! Puts the git revision into `skiff --version`. Outside a git checkout
//! (a source tarball, a vendored crate) the version is just the package
//! version; `SKIFF_GIT_REV` overrides the revision for packagers.
//!
//! Also lays out the release binary's code: with LLD, the functions listed
//! in `link-order.txt` (written by `bench/link_order.sh`) are placed first,
//! so the code a session runs shares a few MiB of pages (docs/SYNC.md,
//! "Memory").

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

/// The minor version of the rustc that builds us (`1.95.0` -> 95).
fn rustc_minor() -> Option<u32> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(rustc).arg("-V").output().ok()?;
    let v = String::from_utf8(out.stdout).ok()?;
    v.split_whitespace().nth(1)?.split('.').nth(1)?.parse().ok()
}

/// Whether the final link is LLD, the only linker here known to take
/// `--symbol-ordering-file`: rustc links x86_64 Linux (GNU) binaries with
/// its own LLD by default since 1.90, unless a linker was chosen (GNU ld
/// would fail on the option, so then nothing is added).
fn links_with_lld() -> bool {
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    if var("CARGO_CFG_TARGET_ARCH") != "x86_64"
        || var("CARGO_CFG_TARGET_OS") != "linux"
        || var("CARGO_CFG_TARGET_ENV") != "gnu"
        || std::env::var_os("RUSTC_LINKER").is_some()
    {
        return false;
    }
    let flags = var("CARGO_ENCODED_RUSTFLAGS");
    let chosen = ["linker", "link-self-contained", "fuse-ld"];
    if chosen.iter().any(|c| flags.contains(c)) {
        return false;
    }
    rustc_minor().is_some_and(|m| m >= 90)
}

/// Release builds: place the listed functions first, in order. Names that
/// are missing (a stale list) are skipped silently, so a stale list only
/// lays out less well; `SKIFF_LINK_ORDER=0` turns it off.
fn link_order() {
    println!("cargo:rerun-if-changed=link-order.txt");
    println!("cargo:rerun-if-env-changed=SKIFF_LINK_ORDER");
    let list =
        Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default()).join("link-order.txt");
    if std::env::var("PROFILE").as_deref() != Ok("release")
        || std::env::var("SKIFF_LINK_ORDER").as_deref() == Ok("0")
        || !list.is_file()
        || !links_with_lld()
    {
        return;
    }
    println!(
        "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
        list.display()
    );
    println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
}

fn main() {
    link_order();
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
