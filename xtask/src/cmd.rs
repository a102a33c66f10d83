//! Running commands: print `$ cmd`, run with their output on stderr, and fail
//! with a one-line error such as `apt-get install failed (exit 100)`.
use std::ffi::OsStr;
use std::fmt;
use std::path::Path;
use std::process::{Command, ExitStatus};

use anyhow::{Context as _, Result};

/// A command ran but did not succeed.
#[derive(Debug)]
pub struct Failed {
    /// Short name of the command, e.g. `apt-get install`.
    pub what: String,
    /// Exit code, or `None` when it was killed by a signal.
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

impl fmt::Display for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.signal) {
            (Some(code), _) => write!(f, "{} failed (exit {code})", self.what),
            (None, Some(sig)) => write!(f, "{} failed (killed by signal {sig})", self.what),
            (None, None) => write!(f, "{} failed", self.what),
        }
    }
}

impl std::error::Error for Failed {}

/// Prints `$ cmd` and runs it, its stdout sent to stderr: what xtask runs
/// is progress, and stdout is kept for what the user asked for (`cargo xtask
/// run -- watch --json > events.json` gets only the events). An error unless
/// it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("$ {}", display(cmd));
    let status = cmd
        .stdout(std::io::stderr())
        .status()
        .with_context(|| format!("cannot run {}", program(cmd)))?;
    check(cmd, status)
}

/// Runs quietly and returns its stdout when it exits 0; `None` when it cannot
/// be started or fails (this is for checks, where both mean "not there").
pub fn stdout(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs quietly; whether it started and exited 0.
pub fn succeeds(cmd: &mut Command) -> bool {
    stdout(cmd).is_some()
}

/// An error naming the command unless `status` is success.
pub fn check(cmd: &Command, status: ExitStatus) -> Result<()> {
    use std::os::unix::process::ExitStatusExt as _;
    if status.success() {
        return Ok(());
    }
    Err(Failed {
        what: name(cmd),
        code: status.code(),
        signal: status.signal(),
    }
    .into())
}

/// `apt-get install`, `cargo build`, `mount`: the program's file name and its
/// first argument when that is a plain word (a subcommand).
pub fn name(cmd: &Command) -> String {
    let mut name = program(cmd);
    if let Some(first) = cmd.get_args().next().and_then(OsStr::to_str)
        && !first.is_empty()
        && first
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && !first.starts_with('-')
    {
        name.push(' ');
        name.push_str(first);
    }
    name
}

fn program(cmd: &Command) -> String {
    let program = Path::new(cmd.get_program());
    program
        .file_name()
        .unwrap_or(program.as_os_str())
        .to_string_lossy()
        .into_owned()
}

/// The command as a shell line: explicitly set variables first (a value that
/// extends the inherited one shows it as `$NAME`), then the quoted words.
pub fn display(cmd: &Command) -> String {
    let mut words = Vec::new();
    for (key, value) in cmd.get_envs() {
        let Some(value) = value else { continue };
        let key = key.to_string_lossy();
        let value = value.to_string_lossy();
        if let Ok(inherited) = std::env::var(&*key)
            && !inherited.is_empty()
            && value.len() > inherited.len()
            && let Some(prefix) = value.strip_suffix(&inherited)
        {
            words.push(format!("{key}={}${key}", quote(prefix)));
            continue;
        }
        words.push(format!("{key}={}", quote(&value)));
    }
    let program = cmd.get_program();
    if std::env::var_os("CARGO").is_some_and(|cargo| cargo == program) {
        words.push("cargo".to_owned());
    } else {
        words.push(quote(&program.to_string_lossy()));
    }
    words.extend(cmd.get_args().map(|a| quote(&a.to_string_lossy())));
    words.join(" ")
}

fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,+@%^".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}
