//! Which tests the guests run: the integration test executables as cargo
//! builds them, and the tests of each that the selection names.
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};

use crate::cmd;

/// A test binary and the tests of it a guest runs.
pub struct TestBinary {
    /// The cargo target (`integration`), which names its tests in reports.
    pub name: String,
    pub exe: PathBuf,
    pub tests: Vec<String>,
}

/// Builds tcptrace and its integration tests as `cargo test` does and
/// returns tcptrace's path and the test executables, as cargo reports them.
pub fn build_tests() -> Result<(PathBuf, Vec<TestBinary>)> {
    let mut cargo = Command::new(crate::cargo());
    cargo
        .current_dir(crate::workspace_root())
        .args(["test", "-p", "tcptrace", "--no-run"])
        .arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped());
    println!("$ {}", cmd::display(&cargo));
    let out = cargo.output().context("cannot run cargo test --no-run")?;
    if !out.status.success() {
        bail!("cargo test --no-run failed ({})", out.status);
    }
    let mut tcptrace = None;
    let mut binaries = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let Some(exe) = msg["executable"].as_str() else {
            continue;
        };
        let kinds = msg["target"]["kind"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let name = msg["target"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let is_test = msg["profile"]["test"].as_bool() == Some(true);
        let kind = kinds.first().and_then(|k| k.as_str()).unwrap_or_default();
        if is_test {
            // Unit tests hold kernel checks too (the tracepoint's layout,
            // BTF): an integration test is named by its target, a unit test
            // binary by its target and kind (`tcptrace-lib`).
            let name = if kind == "test" {
                name
            } else {
                format!("{name}-{kind}")
            };
            binaries.push(TestBinary {
                name,
                exe: exe.into(),
                tests: Vec::new(),
            });
        } else if kind == "bin" && name == "tcptrace" {
            tcptrace = Some(PathBuf::from(exe));
        }
    }
    let tcptrace = tcptrace.context("cargo built no tcptrace binary")?;
    if binaries.is_empty() {
        bail!("cargo reported no test executables for tcptrace");
    }
    Ok((tcptrace, binaries))
}

/// The tests each binary runs in the guests: those `wanted` names, or what
/// the user's filter arguments select (libtest's `--list` decides, on the
/// host).
pub fn select_tests(
    binaries: &[TestBinary],
    filter: &[OsString],
    wanted: &[&str],
) -> Result<Vec<TestBinary>> {
    let mut selected = Vec::new();
    let mut matched = vec![false; wanted.len()];
    for b in binaries {
        let mut list = Command::new(&b.exe);
        list.args(["--list", "--format", "terse"]).args(filter);
        let text =
            cmd::stdout(&mut list).with_context(|| format!("{} failed", cmd::display(&list)))?;
        let names = text
            .lines()
            .filter_map(|l| l.strip_suffix(": test"))
            .map(str::to_owned);
        let tests: Vec<String> = if filter.is_empty() {
            names
                .filter(|n| {
                    let short = n.rsplit("::").next().unwrap_or(n);
                    let hit = wanted.iter().position(|t| *t == short);
                    if let Some(i) = hit {
                        matched[i] = true;
                    }
                    hit.is_some()
                })
                .collect()
        } else {
            names.collect()
        };
        if !tests.is_empty() {
            selected.push(TestBinary {
                name: b.name.clone(),
                exe: b.exe.clone(),
                tests,
            });
        }
    }
    if filter.is_empty() {
        let missing: Vec<&str> = wanted
            .iter()
            .zip(&matched)
            .filter(|(_, m)| !**m)
            .map(|(t, _)| *t)
            .collect();
        if !missing.is_empty() {
            bail!(
                "GUEST_TESTS or GUEST_PYTHON_TESTS (xtask/src/matrix.rs) name tests no test binary has: {}",
                missing.join(", ")
            );
        }
    }
    if selected.is_empty() {
        bail!("the filter selects no test");
    }
    Ok(selected)
}
