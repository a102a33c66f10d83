//! `cargo xtask deb` and `cargo xtask image`: tcptrace packaged the way hosts
//! install software, and the checks that `cargo xtask test` runs on both.
//!
//! Progress goes to stderr, and so does the output of the tools we run (their
//! stdout is redirected): only a tool's own output belongs on stdout.
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

use crate::{build, cmd};
// The packages run their tools as every xtask command does.
use crate::cmd::{check as check_status, run};

mod booted;
pub mod deb;
pub mod image;

/// The workspace's version, which tcptrace's `--version` prints too.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Builds both packages and runs every check on them: the step of `cargo
/// xtask test` after the host tests. Each part reports how long it took.
pub fn test() -> Result<()> {
    let start = Instant::now();
    let deb = deb::build().context("building the .deb")?;
    deb::check(&deb).context("checking the .deb")?;
    let image = image::build().context("building the image")?;
    image::check(&image).context("checking the image")?;
    eprintln!(
        "package: .deb and image built and checked in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Builds the release binary (after set-up) and checks that it is the version
/// being packaged.
fn release_binary() -> Result<PathBuf> {
    build::build(true)?;
    let binary = crate::target_dir().join("release").join("tcptrace");
    let version = output(Command::new(&binary).arg("--version"))?;
    let want = format!("tcptrace {VERSION}");
    if version.trim() != want {
        bail!(
            "{} --version says {:?}, expected {want:?}",
            binary.display(),
            version.trim()
        );
    }
    Ok(binary)
}

/// Copies the binary to `to` and strips it as Debian's dh_strip does (lintian
/// flags an unstripped binary as an error); the image ships the same bytes.
/// The kernel program is data in .rodata, which stripping leaves alone.
fn install_stripped(binary: &Path, to: &Path) -> Result<()> {
    copy_file(binary, to, 0o755)?;
    run(Command::new("strip")
        .args([
            "--strip-unneeded",
            "--remove-section=.comment",
            "--remove-section=.note",
        ])
        .arg(to))
}

/// Runs with stderr inherited and returns stdout; an error unless it exits 0.
fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {}", cmd::name(cmd)))?;
    check_status(cmd, out.status)?;
    String::from_utf8(out.stdout).with_context(|| format!("{} printed non-UTF-8", cmd::name(cmd)))
}

/// Runs with `input` on stdin and returns stdout.
fn filter(cmd: &mut Command, input: &[u8]) -> Result<Vec<u8>> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot run {}", cmd::name(cmd)))?;
    // Small inputs (a man page): the pipe takes them whole before the child
    // needs its stdout drained.
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let writer = {
        let input = input.to_vec();
        std::thread::spawn(move || stdin.write_all(&input))
    };
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for {}", cmd::name(cmd)))?;
    writer
        .join()
        .expect("the writer thread does not panic")
        .with_context(|| format!("writing to {}", cmd::name(cmd)))?;
    check_status(cmd, out.status)?;
    Ok(out.stdout)
}

/// Seconds since the epoch that the packages' timestamps are set to, so that
/// the same commit packs the same way: `$SOURCE_DATE_EPOCH` (the reproducible
/// builds convention), else the last commit's time, else now.
fn source_date_epoch() -> u64 {
    let from_env = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse().ok());
    let from_git = || {
        cmd::stdout(
            Command::new("git")
                .current_dir(crate::workspace_root())
                .args(["log", "-1", "--format=%ct"]),
        )
        .and_then(|s| s.trim().parse().ok())
    };
    from_env.or_else(from_git).unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    })
}

/// The machine's Debian architecture (`amd64`), which names the packages.
fn debian_arch() -> Result<String> {
    Ok(output(Command::new("dpkg").arg("--print-architecture"))?
        .trim()
        .to_owned())
}

/// The files a dynamically linked binary loads: its interpreter and every
/// library `ldd` resolves (the vDSO, which is in no file, aside).
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let listing = output(Command::new("ldd").arg(binary))?;
    let mut libs = Vec::new();
    for line in listing.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("not found") {
            bail!("ldd {}: {line}", binary.display());
        }
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)`, or the
        // interpreter alone: `/lib64/ld-linux-x86-64.so.2 (0x…)`.
        let path = match line.split_once("=>") {
            Some((_, resolved)) => resolved.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(path));
        }
    }
    if libs.is_empty() {
        bail!("ldd {} named no library", binary.display());
    }
    Ok(libs)
}

/// The crates compiled into tcptrace and its kernel program, as `name
/// version: license` lines, for the copyright file.
fn crate_licenses() -> Result<Vec<String>> {
    let tree = output(
        Command::new(crate::cargo())
            .current_dir(crate::workspace_root())
            .args(["tree", "--quiet", "--locked", "--offline"])
            .args(["-p", "tcptrace", "-p", "tcptrace-ebpf", "-e", "normal"])
            .args(["--prefix", "none", "--format", "{p}|{l}"]),
    )?;
    let mut lines: Vec<String> = tree
        .lines()
        .filter_map(|line| line.split_once('|'))
        // Path dependencies are the workspace's own crates.
        .filter(|(package, _)| !package.contains(" (/"))
        .map(|(package, license)| {
            let package = package.replace(" (proc-macro)", "");
            let license = license.trim_end_matches(" (*)");
            let license = if license.is_empty() {
                "unknown"
            } else {
                license
            };
            format!("{package}: {license}")
        })
        .collect();
    lines.sort();
    lines.dedup();
    if lines.is_empty() {
        bail!("cargo tree listed no crate for tcptrace");
    }
    Ok(lines)
}

/// A machine-readable Debian copyright file, shipped in the .deb and in the
/// image: the workspace's license, and each crate compiled into the binary.
fn copyright() -> Result<String> {
    let year = output(Command::new("date").args([
        "-u",
        "+%Y",
        "-d",
        &format!("@{}", source_date_epoch()),
    ]))?;
    let mut text = format!(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: tcptrace\n\
         \n\
         Files: *\n\
         Copyright: {} the tcptrace developers\n\
         License: Expat or Apache-2.0\n\
         Comment: /usr/bin/tcptrace embeds its eBPF kernel program, which declares\n \
         the license \"Dual MIT/GPL\" to the kernel. It is statically linked with\n \
         these crates from crates.io, each under the license it declares:\n .\n",
        year.trim()
    );
    for line in crate_licenses()? {
        writeln!(text, " {line}").expect("writing to a String");
    }
    text.push_str(
        "\n\
         License: Expat\n \
         Permission is hereby granted, free of charge, to any person obtaining a copy\n \
         of this software and associated documentation files (the \"Software\"), to deal\n \
         in the Software without restriction, including without limitation the rights\n \
         to use, copy, modify, merge, publish, distribute, sublicense, and/or sell\n \
         copies of the Software, and to permit persons to whom the Software is\n \
         furnished to do so, subject to the following conditions:\n \
         .\n \
         The above copyright notice and this permission notice shall be included in\n \
         all copies or substantial portions of the Software.\n \
         .\n \
         THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR\n \
         IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,\n \
         FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE\n \
         AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER\n \
         LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,\n \
         OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN\n \
         THE SOFTWARE.\n\
         \n\
         License: Apache-2.0\n \
         Licensed under the Apache License, Version 2.0 (the \"License\"); you may not\n \
         use this file except in compliance with the License.\n \
         .\n \
         On Debian systems, the full text of the Apache License, Version 2.0 is in\n \
         /usr/share/common-licenses/Apache-2.0.\n",
    );
    Ok(text)
}

/// Writes a file with the given mode, creating its parent directories.
fn write_file(path: &Path, contents: impl AsRef<[u8]>, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    fs::write(path, contents).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {:o} {}", mode, path.display()))
}

/// Copies a file (following symlinks, as `cp -L`) with the given mode.
fn copy_file(from: &Path, to: &Path, mode: u32) -> Result<()> {
    let contents = fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    write_file(to, contents, mode)
}

/// Removes a directory tree if it exists and creates it empty.
fn fresh_dir(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| format!("removing {}", dir.display())),
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

/// Every regular file and symlink under `root`, as absolute paths inside it
/// (`/usr/bin/tcptrace`), sorted.
fn files_under(root: &Path) -> Result<Vec<String>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
        for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
            let path = entry.path();
            let kind = entry
                .file_type()
                .with_context(|| format!("stat {}", path.display()))?;
            if kind.is_dir() {
                walk(root, &path, out)?;
            } else {
                let inside = path.strip_prefix(root).expect("walked from root");
                out.push(format!("/{}", inside.display()));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(root, root, &mut out)?;
    out.sort();
    Ok(out)
}

/// How long since `start`, for the timing lines.
fn secs(start: Instant) -> String {
    format!("{:.1} s", start.elapsed().as_secs_f64())
}
