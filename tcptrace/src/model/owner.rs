//! Who owns a socket. The kernel program decides it (see the kernel crate's
//! `owner` module): from the system calls its holders make, the listener it
//! came from, or the holders found in `/proc` at start; never from the task
//! that happens to be on the CPU. What it does not know stays unknown here.
//! Userspace only names the owner's process (`host::names`).

use std::{borrow::Cow, fmt};

pub use tcptrace_common::OwnerSource;
use tcptrace_common::TASK_COMM_LEN;

/// A process name as the kernel keeps it: at most 15 bytes, NUL padded.
/// `Copy`, so events carry it without allocating.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Comm([u8; TASK_COMM_LEN]);

impl Comm {
    pub const fn from_kernel(raw: [u8; TASK_COMM_LEN]) -> Self {
        Self(raw)
    }

    /// A name as `/proc/PID/comm` gives it (without its newline), cut as
    /// the kernel cuts it.
    pub fn new(name: &[u8]) -> Self {
        let mut raw = [0; TASK_COMM_LEN];
        let n = name.len().min(TASK_COMM_LEN - 1);
        raw[..n].copy_from_slice(&name[..n]);
        Self(raw)
    }

    pub fn bytes(&self) -> &[u8] {
        let end = self.0.iter().position(|b| *b == 0).unwrap_or(TASK_COMM_LEN);
        &self.0[..end]
    }

    pub fn is_empty(&self) -> bool {
        self.0[0] == 0
    }

    /// As text; invalid UTF-8 is replaced, not rejected.
    pub fn text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(self.bytes())
    }

    /// The raw bytes, as the kernel's filters compare them.
    pub const fn raw(&self) -> [u8; TASK_COMM_LEN] {
        self.0
    }
}

impl fmt::Display for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.text())
    }
}

impl fmt::Debug for Comm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.text())
    }
}

/// A socket's known owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    /// Its process name (the thread-group leader's, as `ps` shows it).
    pub comm: Comm,
    /// [`OwnerSource::Holder`] or [`OwnerSource::Listener`].
    pub source: OwnerSource,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comm_is_cut_like_the_kernel_and_lossy() {
        let c = Comm::new(b"0123456789abcdefXYZ");
        assert_eq!(c.text(), "0123456789abcde");
        assert_eq!(Comm::new(b"java").text(), "java");
        assert!(Comm::default().is_empty());
        let raw = [0xff; TASK_COMM_LEN];
        assert_eq!(Comm::from_kernel(raw).text().chars().count(), TASK_COMM_LEN);
        assert_eq!(format!("{:<6}|", Comm::new(b"ab")), "ab    |");
    }
}
