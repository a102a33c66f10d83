//! Reading `/proc`: whole small files, fd links, and the text of
//! `/proc/PID/stat` and `/proc/PID/limits`, each parser strict about what it
//! accepts (a field it cannot read is `None`, never a guess).

use std::{
    ffi::{CStr, CString},
    io,
    os::{
        fd::{OwnedFd, RawFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

use crate::host::sys;

#[cfg(test)]
/// Parse the `socket:[N]` form of an fd link target.
pub fn parse_socket_link(target: &std::ffi::OsStr) -> Option<u64> {
    parse_socket_link_bytes(target.as_bytes())
}

pub(crate) fn parse_socket_link_bytes(target: &[u8]) -> Option<u64> {
    parse_u64(target.strip_prefix(b"socket:[")?.strip_suffix(b"]")?)
}

#[cfg(test)]
/// Field 22 (starttime) of a /proc/PID/stat line. comm (field 2) may contain
/// spaces and ')', so fields are counted after the last ')'.
pub fn parse_stat_start_time(stat: &str) -> Option<u64> {
    parse_stat(stat.as_bytes()).map(|s| s.start_time)
}

pub(crate) struct StatFields<'a> {
    pub comm: &'a [u8],
    pub state: u8,
    pub num_threads: u64,
    pub start_time: u64,
}

pub(crate) fn parse_stat(stat: &[u8]) -> Option<StatFields<'_>> {
    let open = stat.iter().position(|&b| b == b'(')?;
    let close = stat.iter().rposition(|&b| b == b')')?;
    let comm = stat.get(open + 1..close)?;
    let mut fields = stat[close + 1..]
        .split(u8::is_ascii_whitespace)
        .filter(|f| !f.is_empty());
    // Field 3 is the state; 4..=19 are skipped to reach 20 (num_threads),
    // 21 (itrealvalue) and 22 (starttime).
    let state = *fields.next()?.first()?;
    let mut fields = fields.skip(16);
    let num_threads = parse_u64(fields.next()?)?;
    fields.next()?;
    let start_time = parse_u64(fields.next()?)?;
    Some(StatFields {
        comm,
        state,
        num_threads,
        start_time,
    })
}

#[cfg(test)]
/// Soft "Max open files" from /proc/PID/limits text: `Some(n)`, or `None`
/// for "unlimited" (and for text without a readable line).
pub fn parse_limits_nofile(limits: &str) -> Option<u64> {
    parse_limits_nofile_strict(limits).flatten()
}

/// `Some(None)` = unlimited, `None` = no such line or not a number.
pub(crate) fn parse_limits_nofile_strict(limits: &str) -> Option<Option<u64>> {
    let rest = limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))?;
    match rest.split_whitespace().next()? {
        "unlimited" => Some(None),
        soft => parse_u64(soft.as_bytes()).map(Some),
    }
}

/// Plain decimal digits only: no sign, no spaces, no overflow.
pub(crate) fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        if b.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

pub(crate) fn parse_u32(digits: &[u8]) -> Option<u32> {
    parse_u64(digits).and_then(|n| u32::try_from(n).ok())
}

/// Socket links are at most `socket:[` + 20 digits + `]`; anything that
/// fills the buffer is some longer path, not a socket.
pub(crate) const LINK_BUF: usize = 64;

pub(crate) fn readlink_at<'b>(
    dir: RawFd,
    name: &CStr,
    buf: &'b mut [u8; LINK_BUF],
) -> Option<&'b [u8]> {
    sys::readlink_at(dir, name, buf).filter(|t| t.len() < LINK_BUF)
}

pub(crate) fn open_dir_path(path: &Path) -> io::Result<OwnedFd> {
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    sys::open_at(sys::AT_FDCWD, &path, sys::Open::Path)
}

/// Reads a whole small /proc/PID file into `buf`: one that the kernel
/// writes in one go (`stat`, `status`, `comm`, `limits`, `cgroup`: a
/// single-record seq_file), so a read shorter than asked is its end. Plain
/// reads, and no read of the end: `read_to_end` asks `statx` for a size
/// /proc files do not have, then reads once more to see the end, two
/// system calls per file of five (15% of `leaks --once`'s over 2,000
/// processes). Not for multi-record files such as `net/tcp`.
pub(crate) fn read_at(dir: RawFd, name: &CStr, buf: &mut Vec<u8>) -> io::Result<()> {
    use std::io::Read as _;
    let mut file = std::fs::File::from(sys::open_at(dir, name, sys::Open::Read)?);
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        match file.read(&mut chunk) {
            Ok(n) if n < chunk.len() => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(());
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_start_time_counts_fields_after_last_paren() {
        let real = "6258 (cat) R 6251 6251 4847 0 -1 4194304 102 0 0 0 0 0 0 0 20 0 1 0 \
                    40990 3133440 355 18446744073709551615";
        assert_eq!(parse_stat_start_time(real), Some(40990));
        let spaces = "77 (tmux: server) S 1 77 77 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 \
                      12345 0 0";
        assert_eq!(parse_stat_start_time(spaces), Some(12345));
        // A comm may itself contain ") S 1 2 3": only the last ')' ends it.
        let paren = "9 (a) S 1 2 3 (b)) R 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 3 0 777 0 0";
        assert_eq!(parse_stat_start_time(paren), Some(777));
        let only_paren = "9 ()) R 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 3 0 778 0 0";
        assert_eq!(parse_stat_start_time(only_paren), Some(778));
        let s = parse_stat(paren.as_bytes()).unwrap();
        assert_eq!(
            (s.comm, s.state, s.num_threads),
            (&b"a) S 1 2 3 (b)"[..], b'R', 3)
        );
        for bad in [
            "",
            "123",
            "1 (x) S 1 2 3",
            "1 (x) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 -5",
        ] {
            assert_eq!(parse_stat_start_time(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn limits_nofile_soft_value() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max cpu time              unlimited            unlimited            seconds   \n\
                      Max open files            20000                524288               files     \n\
                      Max locked memory         8388608              8388608              bytes     \n";
        assert_eq!(parse_limits_nofile(limits), Some(20000));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_limits_nofile(unlimited), None);
        assert_eq!(parse_limits_nofile_strict(unlimited), Some(None));
        assert_eq!(
            parse_limits_nofile_strict("Max cpu time 1 1 seconds\n"),
            None
        );
        assert_eq!(
            parse_limits_nofile_strict("Max open files   lots  files\n"),
            None
        );
    }

    #[test]
    fn socket_link_forms() {
        let p = |s: &str| parse_socket_link(std::ffi::OsStr::new(s));
        assert_eq!(p("socket:[123]"), Some(123));
        assert_eq!(p("socket:[18446744073709551615]"), Some(u64::MAX));
        for other in [
            "pipe:[1]",
            "anon_inode:[eventfd]",
            "socket:[]",
            "socket:[12a]",
            "socket:[+1]",
            "socket:[18446744073709551616]",
            "socket:[1",
            "/tmp/socket:[1]",
            "",
        ] {
            assert_eq!(p(other), None, "{other:?}");
        }
    }
}
