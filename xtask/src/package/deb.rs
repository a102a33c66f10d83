//! `cargo xtask deb`: `target/debian/tcptrace_<version>_<arch>.deb`, built with
//! `dpkg-deb --build` from a staged tree, and its checks.
//!
//! A staged tree rather than cargo-deb: every file in the package is generated
//! anyway (the unit from deploy/, the man page and completions from the
//! binary), `dpkg-shlibdeps` gives the same `Depends` as cargo-deb's `$auto`,
//! and the maintainer scripts are written out here from debhelper's own
//! snippets, so nothing needs building first (cargo-deb is a ~1 min `cargo
//! install` on every fresh machine).
use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};

use super::{VERSION, output, run, secs};
use crate::cmd;

const PACKAGE: &str = "tcptrace";
/// The unit for manual installs, which the packaged one is derived from.
const SOURCE_UNIT: &str = "deploy/tcptrace.service";
/// Debian 12's debhelper still installs units under /lib (the /usr-merge
/// moratorium keeps packages from moving files between aliased directories).
const UNIT_PATH: &str = "/lib/systemd/system/tcptrace.service";
const BINARY_PATH: &str = "/usr/bin/tcptrace";
const MAN_DIR: &str = "/usr/share/man/man1";
/// `tcptrace man DIR` writes these (the main page refers to the others); a new
/// subcommand fails the build until it is listed here.
const MAN_PAGES: [&str; 6] = [
    "tcptrace",
    "tcptrace-watch",
    "tcptrace-leaks",
    "tcptrace-hist",
    "tcptrace-serve",
    "tcptrace-completions",
];
const DOC_DIR: &str = "/usr/share/doc/tcptrace";
/// Lintian's overrides for the package, each with its reason.
const LINTIAN_OVERRIDES_PATH: &str = "/usr/share/lintian/overrides/tcptrace";
const LINTIAN_OVERRIDES: &str = "\
# serve --web-config parses YAML with unsafe-libyaml-norway, a Rust translation
# of libyaml compiled into the binary as every Rust crate is; lintian knows it
# by libyaml's error messages.
tcptrace: embedded-library libyaml [usr/bin/tcptrace]
";
const COMPLETIONS: [(&str, &str); 3] = [
    ("bash", "/usr/share/bash-completion/completions/tcptrace"),
    ("zsh", "/usr/share/zsh/vendor-completions/_tcptrace"),
    ("fish", "/usr/share/fish/vendor_completions.d/tcptrace.fish"),
];
/// The project's maintainers as its history names them; `DEBFULLNAME` and
/// `DEBEMAIL` override them, as they do for dch.
const MAINTAINER_NAME: &str = "tcptrace maintainers";
const MAINTAINER_EMAIL: &str = "maintainers@users.noreply.r-seed-f3ffe293.example";
/// The port `serve` listens on in the packaged unit.
pub(super) const SERVE_ADDR: &str = "127.0.0.1:10180";

/// `cargo xtask deb [--check]`.
pub fn deb(check_too: bool) -> Result<()> {
    let deb = build()?;
    if check_too {
        check(&deb)?;
    }
    Ok(())
}

/// Stages the package's tree and packs it; returns the .deb's path.
pub fn build() -> Result<PathBuf> {
    let binary = super::release_binary()?;
    let start = Instant::now();
    let arch = super::debian_arch()?;
    let epoch = super::source_date_epoch();
    let out_dir = crate::target_dir().join("debian");
    // `work/debian/control` is there for dpkg-shlibdeps, which reads it;
    // `work/debian/tcptrace` is the package's root, as debhelper lays them out.
    let work = out_dir.join("work");
    super::fresh_dir(&work)?;
    let root = work.join("debian").join(PACKAGE);
    let at = |path: &str| root.join(path.trim_start_matches('/'));

    super::install_stripped(&binary, &at(BINARY_PATH))?;
    super::write_file(&at(UNIT_PATH), packaged_unit(&read_source_unit()?)?, 0o644)?;
    let binary = at(BINARY_PATH);
    install_man_pages(&binary, &out_dir.join("man"), &at(MAN_DIR))?;
    for (shell, path) in COMPLETIONS {
        let script = output(Command::new(&binary).args(["completions", shell]))?;
        super::write_file(&at(path), script, 0o644)?;
    }
    super::write_file(&at(LINTIAN_OVERRIDES_PATH), LINTIAN_OVERRIDES, 0o644)?;
    let doc = at(DOC_DIR);
    super::write_file(&doc.join("copyright"), super::copyright()?, 0o644)?;
    let (name, email) = maintainer();
    let changelog = changelog(&name, &email, epoch)?;
    super::write_file(
        &doc.join("changelog.gz"),
        gzip(changelog.as_bytes())?,
        0o644,
    )?;

    for (script, text) in [("postinst", POSTINST), ("prerm", PRERM), ("postrm", POSTRM)] {
        super::write_file(&root.join("DEBIAN").join(script), text, 0o755)?;
    }
    super::write_file(
        &work.join("debian").join("control"),
        format!("Source: {PACKAGE}\n\nPackage: {PACKAGE}\nArchitecture: any\n"),
        0o644,
    )?;
    let depends = shlib_depends(&work, BINARY_PATH)?;
    let control = control(&arch, &depends, &name, &email, installed_size_kib(&root)?);
    super::write_file(&root.join("DEBIAN").join("control"), control, 0o644)?;

    let deb = out_dir.join(format!("{PACKAGE}_{VERSION}_{arch}.deb"));
    run(Command::new("dpkg-deb")
        // dpkg-deb clamps file times to it, so the same commit packs alike.
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&root)
        .arg(&deb))?;
    let size = fs::metadata(&deb)
        .with_context(|| format!("stat {}", deb.display()))?
        .len();
    eprintln!(
        "deb: built {} ({:.1} MiB, Depends: {depends}) in {}",
        deb.display(),
        size as f64 / 1048576.0,
        secs(start)
    );
    Ok(deb)
}

fn read_source_unit() -> Result<String> {
    let path = crate::workspace_root().join(SOURCE_UNIT);
    fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// The packaged unit, from the one in deploy/ for manual installs: the binary
/// at /usr/bin, the install notes for a package, and the man page linked.
fn packaged_unit(source: &str) -> Result<String> {
    let mut out = String::new();
    let mut in_install_note = false;
    for line in source.lines() {
        // The manual-install note: `# Install: cp …` and its indented
        // continuation lines.
        if line.starts_with("# Install:") {
            in_install_note = true;
            out.push_str(
                "# Installed by the tcptrace package: it is neither enabled nor started on\n\
                 # install. Start it with: systemctl enable --now tcptrace\n",
            );
            continue;
        }
        if in_install_note && line.starts_with("#  ") {
            continue;
        }
        in_install_note = false;
        out.push_str(&line.replace("/usr/local/bin/tcptrace", BINARY_PATH));
        out.push('\n');
        if line.starts_with("Description=") {
            out.push_str("Documentation=man:tcptrace(1)\n");
        }
    }
    ensure!(
        out.lines()
            .any(|l| l.starts_with(&format!("ExecStart={BINARY_PATH} "))),
        "{SOURCE_UNIT} has no `ExecStart=/usr/local/bin/tcptrace …` line to point at {BINARY_PATH}"
    );
    ensure!(
        !out.contains("/usr/local"),
        "{SOURCE_UNIT} names /usr/local beyond the tcptrace binary's path; the packaged unit would too"
    );
    ensure!(
        out.contains("Documentation="),
        "{SOURCE_UNIT} has no Description= line"
    );
    Ok(out)
}

fn maintainer() -> (String, String) {
    let name = std::env::var("DEBFULLNAME").unwrap_or_else(|_| MAINTAINER_NAME.to_owned());
    let email = std::env::var("DEBEMAIL").unwrap_or_else(|_| MAINTAINER_EMAIL.to_owned());
    (name, email)
}

/// `gzip -9n`: no name or time in the header, as Debian wants.
fn man_path(page: &str) -> String {
    format!("{MAN_DIR}/{page}.1.gz")
}

/// The pages `tcptrace man` writes into `scratch`, gzipped into `dest`;
/// exactly [`MAN_PAGES`].
fn install_man_pages(binary: &Path, scratch: &Path, dest: &Path) -> Result<()> {
    super::fresh_dir(scratch)?;
    run(Command::new(binary).arg("man").arg(scratch))?;
    let mut written: Vec<String> = fs::read_dir(scratch)
        .with_context(|| format!("reading {}", scratch.display()))?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("reading {}", scratch.display()))?;
    written.sort();
    let mut expected: Vec<String> = MAN_PAGES.iter().map(|p| format!("{p}.1")).collect();
    expected.sort();
    ensure!(
        written == expected,
        "tcptrace man wrote {written:?}, the package lists {expected:?} (MAN_PAGES)"
    );
    for page in MAN_PAGES {
        let roff = fs::read(scratch.join(format!("{page}.1")))
            .with_context(|| format!("reading {page}.1"))?;
        super::write_file(&dest.join(format!("{page}.1.gz")), gzip(&roff)?, 0o644)?;
    }
    Ok(())
}

fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    super::filter(Command::new("gzip").args(["-9n", "-c"]), data)
}

/// A native package's changelog: one entry for this build.
fn changelog(name: &str, email: &str, epoch: u64) -> Result<String> {
    let date = output(Command::new("date").args(["-u", "-R", "-d", &format!("@{epoch}")]))?;
    let commit = cmd::stdout(
        Command::new("git")
            .current_dir(crate::workspace_root())
            .args(["rev-parse", "--short=12", "HEAD"]),
    )
    .map(|c| format!(" from commit {}", c.trim()))
    .unwrap_or_default();
    Ok(format!(
        "{PACKAGE} ({VERSION}) unstable; urgency=medium\n\n  \
         * Built{commit} by cargo xtask deb.\n\n \
         -- {name} <{email}>  {}\n",
        date.trim()
    ))
}

/// `Depends` from the libraries the binary links, as dpkg-shlibdeps reads
/// them off the installed system (cargo-deb's `$auto` does the same).
fn shlib_depends(work: &Path, binary: &str) -> Result<String> {
    let binary = Path::new("debian")
        .join(PACKAGE)
        .join(binary.trim_start_matches('/'));
    let out = output(
        Command::new("dpkg-shlibdeps")
            .current_dir(work)
            .arg("-O")
            .arg(&binary),
    )?;
    let depends = out
        .lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .with_context(|| format!("dpkg-shlibdeps printed no shlibs:Depends: {out:?}"))?;
    ensure!(
        depends.contains("libc6"),
        "dpkg-shlibdeps found no libc6 dependency ({depends})"
    );
    Ok(depends.trim().to_owned())
}

/// What dpkg-gencontrol would write: the sizes of files and directories in KiB.
fn installed_size_kib(root: &Path) -> Result<u64> {
    fn walk(dir: &Path, total: &mut u64) -> Result<()> {
        for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let entry = entry?;
            if entry.file_name() == "DEBIAN" {
                continue;
            }
            let meta = entry.metadata()?;
            *total += meta.len().div_ceil(1024).max(1);
            if meta.is_dir() {
                walk(&entry.path(), total)?;
            }
        }
        Ok(())
    }
    let mut total = 0;
    walk(root, &mut total)?;
    Ok(total)
}

fn control(arch: &str, depends: &str, name: &str, email: &str, size_kib: u64) -> String {
    format!(
        "Package: {PACKAGE}\n\
         Version: {VERSION}\n\
         Architecture: {arch}\n\
         Maintainer: {name} <{email}>\n\
         Installed-Size: {size_kib}\n\
         Depends: {depends}\n\
         Section: net\n\
         Priority: optional\n\
         Description: eBPF tracer of TCP state transitions naming each socket's owner\n \
         tcptrace shows which state every TCP socket is in, since when, and which\n \
         process holds it: `tcptrace watch` streams every transition, `tcptrace\n \
         leaks` names the processes holding CLOSE_WAIT sockets (the peer closed,\n \
         the application never did), `tcptrace hist` times each state, and\n \
         `tcptrace serve` exports it all as Prometheus metrics.\n \
         .\n \
         The package ships the systemd unit tcptrace.service (serve on\n \
         {SERVE_ADDR}, as a dynamic user with only the capabilities it needs);\n \
         it is neither enabled nor started on install. Needs Linux 5.8 or later\n \
         with BTF.\n"
    )
}

// The maintainer scripts: what debhelper 13.11's dh_installsystemd writes for
// `--no-enable --no-start` (postinst-systemd-dont-enable,
// postinst-systemd-restartnostart, postrm-systemd,
// postrm-systemd-reload-only), plus its stop-on-remove (prerm-systemd-restart),
// which --no-start would leave out, though a service the admin enabled must not
// keep running a deleted binary. Not started on install: tcptrace loads a
// kernel program and opens a port, which the admin chooses with `systemctl
// enable --now tcptrace`; an upgrade restarts it only if it was running.

const POSTINST: &str = r#"#!/bin/sh
set -e
if [ "$1" = "configure" ] || [ "$1" = "abort-upgrade" ] || [ "$1" = "abort-deconfigure" ] || [ "$1" = "abort-remove" ] ; then
	if deb-systemd-helper debian-installed 'tcptrace.service'; then
		# The following line should be removed in trixie or trixie+1
		deb-systemd-helper unmask 'tcptrace.service' >/dev/null || true

		if deb-systemd-helper --quiet was-enabled 'tcptrace.service'; then
			# Create new symlinks, if any.
			deb-systemd-helper enable 'tcptrace.service' >/dev/null || true
		fi
	fi

	# Update the statefile to add new symlinks (if any), which need to be cleaned
	# up on purge. Also remove old symlinks.
	deb-systemd-helper update-state 'tcptrace.service' >/dev/null || true
fi
if [ "$1" = "configure" ] || [ "$1" = "abort-upgrade" ] || [ "$1" = "abort-deconfigure" ] || [ "$1" = "abort-remove" ] ; then
	if [ -z "${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ]; then
		systemctl --system daemon-reload >/dev/null || true
		if [ -n "$2" ]; then
			deb-systemd-invoke try-restart 'tcptrace.service' >/dev/null || true
		fi
	fi
fi
"#;

const PRERM: &str = r#"#!/bin/sh
set -e
if [ -z "${DPKG_ROOT:-}" ] && [ "$1" = remove ] && [ -d /run/systemd/system ] ; then
	deb-systemd-invoke stop 'tcptrace.service' >/dev/null || true
fi
"#;

const POSTRM: &str = r#"#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ] ; then
	systemctl --system daemon-reload >/dev/null || true
fi
if [ "$1" = "purge" ]; then
	if [ -x "/usr/bin/deb-systemd-helper" ]; then
		deb-systemd-helper purge 'tcptrace.service' >/dev/null || true
	fi
fi
"#;

/// Checks the .deb: its fields and files, lintian's verdict, the packaged
/// unit under `systemd-analyze verify`, then a real install and removal on
/// this host, and `systemctl enable --now` on this host where systemd runs,
/// else in a container booted with systemd-nspawn.
pub fn check(deb: &Path) -> Result<()> {
    let start = Instant::now();
    check_info(deb).context("dpkg-deb -I")?;
    let t = Instant::now();
    check_contents(deb).context("dpkg-deb -c")?;
    eprintln!("deb check: fields and file list as expected ({})", secs(t));
    let t = Instant::now();
    lintian(deb)?;
    eprintln!("deb check: lintian found no error ({})", secs(t));
    let t = Instant::now();
    install_and_remove(deb)?;
    eprintln!(
        "deb check: installed, checked and removed here ({})",
        secs(t)
    );
    if !Path::new("/run/systemd/system").is_dir() {
        let t = Instant::now();
        eprintln!(
            "deb check: systemd is not PID 1 here (no /run/systemd/system): \
             booting a Debian container with systemd-nspawn for `systemctl enable --now`"
        );
        super::booted::check(deb).context("the .deb under a booted systemd (systemd-nspawn)")?;
        eprintln!(
            "deb check: the .deb under a booted systemd passed ({})",
            secs(t)
        );
    }
    eprintln!("deb check: all .deb checks passed in {}", secs(start));
    Ok(())
}

fn check_info(deb: &Path) -> Result<()> {
    let field = |name: &str| -> Result<String> {
        let value = output(Command::new("dpkg-deb").arg("--field").arg(deb).arg(name))?;
        Ok(value.trim().to_owned())
    };
    let arch = super::debian_arch()?;
    for (name, want) in [
        ("Package", PACKAGE),
        ("Version", VERSION),
        ("Architecture", arch.as_str()),
    ] {
        let got = field(name)?;
        ensure!(got == want, "{name} is {got:?}, expected {want:?}");
    }
    let depends = field("Depends")?;
    ensure!(
        depends.contains("libc6 (>="),
        "Depends lacks a versioned libc6: {depends:?}"
    );
    // The whole header once, for the log.
    run(Command::new("dpkg-deb").arg("--info").arg(deb))
}

/// The files the package must hold, exactly (directories aside).
fn expected_files() -> Vec<String> {
    let mut files: Vec<String> = [BINARY_PATH, UNIT_PATH, LINTIAN_OVERRIDES_PATH]
        .into_iter()
        .chain(COMPLETIONS.iter().map(|(_, path)| *path))
        .map(str::to_owned)
        .chain(MAN_PAGES.map(man_path))
        .chain(["copyright", "changelog.gz"].map(|f| format!("{DOC_DIR}/{f}")))
        .collect();
    files.sort();
    files
}

fn check_contents(deb: &Path) -> Result<()> {
    let listing = output(Command::new("dpkg-deb").arg("--contents").arg(deb))?;
    eprint!("{listing}");
    // `-rwxr-xr-x root/root 4870840 2026-11-30 20:09 ./usr/bin/tcptrace`
    let mut files = Vec::new();
    for line in listing.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [mode, owner, _, _, _, path] = fields[..] else {
            bail!("unexpected dpkg-deb -c line: {line:?}");
        };
        ensure!(owner == "root/root", "{path} is owned by {owner}");
        if mode.starts_with('d') {
            continue;
        }
        let path = path.trim_start_matches('.').to_owned();
        let want_mode = if path == BINARY_PATH {
            "-rwxr-xr-x"
        } else {
            "-rw-r--r--"
        };
        ensure!(
            mode == want_mode,
            "{path} has mode {mode}, expected {want_mode}"
        );
        files.push(path);
    }
    files.sort();
    let expected = expected_files();
    ensure!(
        files == expected,
        "the package holds {files:?}, expected {expected:?}"
    );
    Ok(())
}

/// Lintian's errors fail the check; its warnings are printed for a person.
fn lintian(deb: &Path) -> Result<()> {
    run(Command::new("lintian")
        .args(["--fail-on", "error", "--tag-display-limit", "0"])
        .arg(deb))
    .context("lintian found errors in the .deb")
}

/// `dpkg -i`, the installed files at work, `dpkg -r` and `dpkg -P` leaving
/// nothing behind, and `systemctl enable --now` where systemd is PID 1. Left
/// out (and said so) when a tcptrace package is already installed here: the
/// check would replace it.
fn install_and_remove(deb: &Path) -> Result<()> {
    if let Some(status) = package_status() {
        eprintln!(
            "deb check: SKIPPED the real install: a {PACKAGE} package is already installed ({status}); \
             `dpkg -P {PACKAGE}` lets this check run"
        );
        let t = Instant::now();
        let unit = Path::new(&crate::target_dir())
            .join("debian/work/debian")
            .join(PACKAGE)
            .join(UNIT_PATH.trim_start_matches('/'));
        systemd_verify(&unit)?;
        eprintln!("deb check: systemd-analyze verify passed ({})", secs(t));
        return Ok(());
    }
    let installed = Installed::new(deb)?;
    let t = Instant::now();
    let version = output(Command::new(BINARY_PATH).arg("--version"))?;
    ensure!(
        version.trim() == format!("tcptrace {VERSION}"),
        "{BINARY_PATH} --version printed {:?}",
        version.trim()
    );
    check_man_page()?;
    check_bash_completion()?;
    systemd_verify(Path::new(UNIT_PATH))?;
    eprintln!(
        "deb check: {BINARY_PATH} --version, man -l, bash completion and systemd-analyze verify passed ({})",
        secs(t)
    );
    if Path::new("/run/systemd/system").is_dir() {
        let t = Instant::now();
        enable_now_and_scrape()?;
        eprintln!(
            "deb check: systemctl enable --now tcptrace served /healthz ({})",
            secs(t)
        );
    }
    installed.remove()
}

/// dpkg's status of the package, when it knows it at all.
fn package_status() -> Option<String> {
    let out = cmd::stdout(Command::new("dpkg-query").args([
        "-W",
        "-f=${Version} ${db:Status-Abbrev}",
        PACKAGE,
    ]))?;
    let out = out.trim();
    // `un` (unknown, not installed) and an empty answer both mean absent.
    (!out.is_empty() && !out.ends_with("un")).then(|| out.to_owned())
}

/// The package installed by the check: purged on drop, so that a failing
/// check leaves the host as it found it.
struct Installed {
    removed: bool,
}

impl Installed {
    fn new(deb: &Path) -> Result<Self> {
        let t = Instant::now();
        let installed = Self { removed: false };
        run(Command::new("dpkg").arg("--install").arg(deb))?;
        eprintln!("deb check: dpkg -i took {}", secs(t));
        Ok(installed)
    }

    fn remove(mut self) -> Result<()> {
        self.removed = true;
        let t = Instant::now();
        run(Command::new("dpkg").args(["--remove", PACKAGE]))?;
        let left: Vec<String> = expected_files()
            .into_iter()
            .filter(|f| Path::new(f).exists())
            .collect();
        ensure!(left.is_empty(), "dpkg -r {PACKAGE} left {left:?}");
        run(Command::new("dpkg").args(["--purge", PACKAGE]))?;
        if let Some(status) = package_status() {
            bail!("dpkg -P {PACKAGE} left it known to dpkg: {status}");
        }
        // deb-systemd-helper's record of the unit, which purge must drop.
        let state = "/var/lib/systemd/deb-systemd-helper-enabled/tcptrace.service.dsh-also";
        ensure!(!Path::new(state).exists(), "dpkg -P {PACKAGE} left {state}");
        ensure!(
            !Path::new(DOC_DIR).exists(),
            "dpkg -P {PACKAGE} left {DOC_DIR}"
        );
        eprintln!(
            "deb check: dpkg -r and dpkg -P removed every file ({})",
            secs(t)
        );
        Ok(())
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        if !self.removed {
            let _ = Command::new("dpkg")
                .args(["--purge", PACKAGE])
                .stdout(std::io::stderr())
                .status();
        }
    }
}

/// The installed man pages render and say what they are, and every page
/// the main one refers to (`tcptrace-watch(1)`, ...) is installed.
fn check_man_page() -> Result<()> {
    let render = |page: &str| {
        let path = man_path(page);
        let text = output(
            Command::new("man")
                .env("MANPAGER", "cat")
                .env("MANWIDTH", "80")
                .args(["-l", &path]),
        )?;
        ensure!(
            text.contains("\nNAME\n") && text.contains("\nSYNOPSIS\n") && text.contains(VERSION),
            "man -l {path} rendered no NAME and SYNOPSIS of tcptrace {VERSION}: {text:?}"
        );
        Ok(text)
    };
    let main = render(MAN_PAGES[0])?;
    ensure!(
        main.contains(&format!("tcptrace {VERSION}")),
        "the main page does not say tcptrace {VERSION}: {main:?}"
    );
    for page in &MAN_PAGES[1..] {
        ensure!(
            main.contains(&format!("{page}(1)")),
            "the main page does not refer to {page}(1): {main:?}"
        );
        render(page)?;
    }
    // A reference to a page that is not installed would send readers nowhere.
    for word in main.split_whitespace() {
        if let Some(page) = word.strip_suffix("(1)") {
            ensure!(
                MAN_PAGES.contains(&page),
                "the main page refers to {page}(1), which the package does not install"
            );
        }
    }
    Ok(())
}

/// The installed bash completion loads and registers a completion for
/// tcptrace. (zsh and fish are not installed here.)
fn check_bash_completion() -> Result<()> {
    let path = COMPLETIONS[0].1;
    let out = output(
        Command::new("bash").args(["-c", &format!("source {path} && complete -p tcptrace")]),
    )?;
    ensure!(
        out.contains("tcptrace"),
        "{path} registered no completion for tcptrace: {out:?}"
    );
    Ok(())
}

/// `systemd-analyze verify` runs without systemd as PID 1. It also checks that
/// ExecStart's binary exists, so it runs on an installed unit. Warnings about
/// the unit fail it too, as a unit with an unknown key still loads.
fn systemd_verify(unit: &Path) -> Result<()> {
    eprintln!("$ systemd-analyze verify {}", unit.display());
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(unit)
        .output()
        .context("cannot run systemd-analyze")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprint!("{stderr}");
    super::check_status(Command::new("systemd-analyze").arg("verify"), out.status)?;
    ensure!(
        !stderr.contains("tcptrace.service"),
        "systemd-analyze verify complained about the unit"
    );
    let security = output(
        Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager"])
            .arg(unit),
    )?;
    if let Some(line) = security.lines().find(|l| l.contains("Overall exposure")) {
        eprintln!("deb check: systemd-analyze security: {}", line.trim());
    }
    Ok(())
}

/// Where systemd runs: the service starts under its hardening and answers
/// /healthz; then it is stopped and disabled again.
fn enable_now_and_scrape() -> Result<()> {
    run(Command::new("systemctl").args(["enable", "--now", "tcptrace"]))?;
    let healthy = wait_healthy(Duration::from_secs(30));
    let status = output(Command::new("systemctl").args(["is-active", "tcptrace"]));
    run(Command::new("systemctl").args(["disable", "--now", "tcptrace"]))?;
    healthy.with_context(|| {
        format!(
            "tcptrace.service ({}) did not answer http://{SERVE_ADDR}/healthz; see journalctl -u tcptrace",
            status.unwrap_or_default().trim()
        )
    })
}

/// Until `serve` answers /healthz with `ok`.
pub(super) fn wait_healthy(timeout: Duration) -> Result<()> {
    let addr = SERVE_ADDR
        .to_socket_addrs()?
        .next()
        .context("no address to scrape")?;
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        match get(&addr, "/healthz") {
            Ok(body) if body.ends_with("ok") || body.ends_with("ok\n") => return Ok(()),
            Ok(body) => last = format!("answered {body:?}"),
            Err(err) => last = format!("{err:#}"),
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    bail!("{last}")
}

/// A plain HTTP/1.0 GET; the response's body.
fn get(addr: &std::net::SocketAddr, path: &str) -> Result<String> {
    let mut stream = TcpStream::connect_timeout(addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("no end of headers")?;
    ensure!(
        head.starts_with("HTTP/1.") && head.contains(" 200 "),
        "{head}"
    );
    Ok(body.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packaged_unit_runs_usr_bin_and_drops_the_manual_install_note() {
        let unit = packaged_unit(&read_source_unit().unwrap()).unwrap();
        assert!(
            unit.contains("\nExecStart=/usr/bin/tcptrace serve --listen 127.0.0.1:10180\n"),
            "{unit}"
        );
        assert!(!unit.contains("/usr/local"), "{unit}");
        assert!(!unit.contains("cp target/release"), "{unit}");
        assert!(unit.contains("\nDocumentation=man:tcptrace(1)\n"), "{unit}");
        // Everything else, hardening and limits included, as in deploy/.
        for line in read_source_unit().unwrap().lines() {
            if !line.starts_with('#') && !line.contains("/usr/local") {
                assert!(unit.lines().any(|l| l == line), "lost {line:?}");
            }
        }
    }

    #[test]
    fn packaged_unit_refuses_a_source_without_the_expected_exec_start() {
        let err =
            packaged_unit("[Unit]\nDescription=x\n[Service]\nExecStart=/opt/tcptrace serve\n")
                .unwrap_err();
        assert!(err.to_string().contains("ExecStart"), "{err}");
    }
}
