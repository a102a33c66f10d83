//! The code path that opened a socket: the user stack of the thread that
//! connected or accepted it, symbolized.

use std::sync::Arc;

use serde::Serialize;

/// One frame, innermost first; an inlined call is a frame of its own.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Frame {
    /// Demangled function name; `None` when the module has no symbol for it.
    pub function: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// The executable or library (a path) or `[vdso]`; `None` for JIT code
    /// named by its runtime's perf map.
    pub module: Option<String>,
    /// The address in the process (a return address for all but the first).
    #[serde(serialize_with = "hex")]
    pub address: u64,
    /// Inlined into the frame that follows it.
    pub inlined: bool,
}

fn hex<S: serde::Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:#x}"))
}

/// A symbolized user stack.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Stack {
    pub frames: Vec<Frame>,
    /// Why it may not be the whole path: it does not reach the thread's
    /// start (the unwinder follows frame pointers). `None` when it does.
    pub incomplete: Option<String>,
}

/// What tcptrace knows of the code that opened a socket.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Opened {
    By(Arc<Stack>),
    /// No stack, and why (opened before tcptrace started, stacks off, ...).
    Unknown(&'static str),
}

/// Functions of the C library and language runtimes between the
/// program's code and the system call: the summary starts past them.
const PLUMBING: &[&str] = &[
    "std::",
    "core::",
    "alloc::",
    "<std::",
    "<core::",
    "<alloc::",
    "syscall.",
    "internal/",
    "net.",
    "runtime.",
    "runtime/",
];

impl Frame {
    fn is_plumbing(&self) -> bool {
        let in_libc = self
            .module
            .as_deref()
            .is_some_and(|m| m.contains("/libc.so") || m.contains("/libc-") || m == "[vdso]");
        in_libc
            || self
                .function
                .as_deref()
                .is_some_and(|f| PLUMBING.iter().any(|p| f.starts_with(p)))
    }

    /// `open_broker_connection (client.c:14)`, `?? (in /usr/bin/python3.11)`.
    pub fn label(&self) -> String {
        let name = self.function.as_deref().unwrap_or("??");
        match (&self.file, self.line, &self.module) {
            (Some(f), Some(l), _) => format!("{name} ({}:{l})", basename(f)),
            (Some(f), None, _) => format!("{name} ({})", basename(f)),
            (None, _, Some(m)) if self.function.is_none() => format!("{name} (in {m})"),
            _ => name.to_owned(),
        }
    }
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

impl Stack {
    /// Where the program opened the socket, then its callers, the C
    /// library's and runtimes' own frames left out:
    /// `open_broker_connection (client.c:14) <- reconnect_loop <- main`.
    pub fn summary(&self, callers: usize) -> String {
        let mut parts: Vec<String> = self
            .frames
            .iter()
            .filter(|f| !f.is_plumbing())
            .take(callers + 1)
            .enumerate()
            .map(|(i, f)| {
                if i == 0 {
                    f.label()
                } else {
                    f.function.clone().unwrap_or_else(|| "??".to_owned())
                }
            })
            .collect();
        if parts.is_empty() {
            // Only the library's frames: show where it was entered.
            parts.push(
                self.frames
                    .first()
                    .map_or_else(|| "??".to_owned(), Frame::label),
            );
        }
        let mut s = parts.join(" <- ");
        if let Some(why) = &self.incomplete {
            s.push_str(&format!(" [{why}]"));
        }
        s
    }
}

/// In JSON: `{"frames": [...], "incomplete": null | "why",
/// "missing": null | "why"}` (no frames when missing).
impl Serialize for Opened {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let mut st = s.serialize_struct("Stack", 3)?;
        match self {
            Self::By(stack) => {
                st.serialize_field("frames", &stack.frames)?;
                st.serialize_field("incomplete", &stack.incomplete)?;
                st.serialize_field("missing", &None::<&str>)?;
            }
            Self::Unknown(why) => {
                st.serialize_field("frames", &[] as &[Frame])?;
                st.serialize_field("incomplete", &None::<&str>)?;
                st.serialize_field("missing", why)?;
            }
        }
        st.end()
    }
}

impl Opened {
    /// `opened at <summary>`, or `with no stack: <why>`.
    pub fn summary(&self, callers: usize) -> String {
        match self {
            Self::By(s) => format!("opened at {}", s.summary(callers)),
            Self::Unknown(why) => format!("with no stack: {why}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(function: &str, file: Option<&str>, line: Option<u32>, module: &str) -> Frame {
        Frame {
            function: (!function.is_empty()).then(|| function.to_owned()),
            file: file.map(str::to_owned),
            line,
            module: Some(module.to_owned()),
            address: 0x1000,
            inlined: false,
        }
    }

    #[test]
    fn summary_starts_at_the_programs_own_code() {
        let s = Stack {
            frames: vec![
                frame("connect", None, None, "/usr/lib/x86_64-linux-gnu/libc.so.6"),
                frame(
                    "open_broker_connection",
                    Some("/src/client.c"),
                    Some(14),
                    "/bin/c",
                ),
                frame("reconnect_loop", Some("/src/client.c"), Some(19), "/bin/c"),
                frame("main", Some("/src/client.c"), Some(23), "/bin/c"),
                frame(
                    "__libc_start_call_main",
                    None,
                    None,
                    "/usr/lib/x86_64-linux-gnu/libc.so.6",
                ),
            ],
            incomplete: None,
        };
        assert_eq!(
            s.summary(2),
            "open_broker_connection (client.c:14) <- reconnect_loop <- main"
        );
        let rust = Stack {
            frames: vec![
                frame("std::net::tcp::TcpStream::connect", None, None, "/bin/r"),
                frame(
                    "leaky::open_broker_connection",
                    Some("leaky.rs"),
                    Some(5),
                    "/bin/r",
                ),
            ],
            incomplete: Some("incomplete".into()),
        };
        assert_eq!(
            rust.summary(2),
            "leaky::open_broker_connection (leaky.rs:5) [incomplete]"
        );
        assert_eq!(
            frame("", None, None, "/usr/bin/python3.11").label(),
            "?? (in /usr/bin/python3.11)"
        );
    }
}
