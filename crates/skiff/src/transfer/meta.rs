//! File metadata in protocol form, and applying it back.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cap_std::fs::MetadataExt;
use skiff_wire::message::files::{Entry, EntryKind};

/// Modification time of a local file in ns since the epoch, the form the
/// protocol carries (saturating: a time past 2262 cannot wrap around).
pub fn mtime_ns(md: &std::fs::Metadata) -> i64 {
    use std::os::unix::fs::MetadataExt as _;
    md.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(md.mtime_nsec())
}

/// Permission bits transfers keep: rwx for user, group and other. setuid,
/// setgid and sticky bits are dropped on purpose, so an upload can never
/// plant a setuid program.
pub const MODE_MASK: u32 = 0o777;

/// Describes an object from its (lstat) metadata.
pub fn entry(path: String, md: &cap_std::fs::Metadata, target: Option<String>) -> Entry {
    let ft = md.file_type();
    let kind = if ft.is_symlink() {
        EntryKind::Symlink
    } else if ft.is_dir() {
        EntryKind::Dir
    } else if ft.is_file() {
        EntryKind::File
    } else {
        EntryKind::Other
    };
    Entry {
        path,
        kind,
        size: if kind == EntryKind::File { md.len() } else { 0 },
        mode: md.mode() & 0o7777,
        mtime_ns: md.mtime().saturating_mul(1_000_000_000) + md.mtime_nsec(),
        target,
    }
}

/// The `SystemTime` for nanoseconds since the epoch.
pub fn time_from_ns(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

/// Sets permission bits (masked with [`MODE_MASK`]) and mtime on an open
/// file or directory.
pub fn apply(file: &std::fs::File, mode: Option<u32>, mtime_ns: Option<i64>) -> io::Result<()> {
    if let Some(mode) = mode {
        file.set_permissions(std::fs::Permissions::from_mode(mode & MODE_MASK))?;
    }
    if let Some(ns) = mtime_ns {
        let t = time_from_ns(ns);
        file.set_times(std::fs::FileTimes::new().set_modified(t).set_accessed(t))?;
    }
    Ok(())
}

/// Applies mode and mtime to a directory held as a capability.
pub fn apply_dir(
    dir: &cap_std::fs::Dir,
    mode: Option<u32>,
    mtime_ns: Option<i64>,
) -> io::Result<()> {
    apply(&open_self(dir)?, mode, mtime_ns)
}

/// The directory itself as a readable file: cap-std holds directories as
/// `O_PATH` descriptors, on which fchmod, futimens and fsync fail.
pub fn open_self(dir: &cap_std::fs::Dir) -> io::Result<std::fs::File> {
    Ok(dir.open(".")?.into_std())
}

/// `ls -l` style: type letter and rwx triplets.
pub fn mode_string(kind: EntryKind, mode: u32) -> String {
    let mut s = String::with_capacity(10);
    s.push(match kind {
        EntryKind::Dir => 'd',
        EntryKind::Symlink => 'l',
        EntryKind::File => '-',
        EntryKind::Other => '?',
    });
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) for nanoseconds since the epoch.
pub fn format_time(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00");
        assert_eq!(
            format_time(1_700_000_000_000_000_000),
            "2023-11-14 22:13:20"
        );
        assert_eq!(mode_string(EntryKind::Dir, 0o755), "drwxr-xr-x");
        assert_eq!(mode_string(EntryKind::File, 0o640), "-rw-r-----");
    }
}
