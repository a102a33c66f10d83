//! Debian's kernels, fetched with a side apt configuration (the system's
//! sources stay untouched), unpacked once and cached under target/matrix/.
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::cmd;

/// What the guest's tests need from the kernel package: sock_diag answers
/// ENOENT without `inet_diag`/`tcp_diag` (modules in every Debian cloud
/// kernel), and network-namespace tests pair namespaces with `veth`.
pub const GUEST_MODULES: &[&str] = &["inet_diag", "tcp_diag", "veth"];

/// The metapackage a Debian cloud machine tracks; its candidate's dependency
/// names the suite's current kernel image.
const METAPACKAGE: &str = "linux-image-cloud-amd64";

/// The system's Debian mirrors, read from its apt sources.
pub struct Mirrors {
    archive: Source,
    security: Option<Source>,
}

struct Source {
    uri: String,
    signed_by: Option<String>,
}

impl Mirrors {
    /// The mirror the system uses for its own release (and its security
    /// mirror, when it has one), from /etc/apt/sources.list(.d).
    pub fn from_system() -> Result<Self> {
        let codename = codename()?;
        let entries = system_sources()?;
        let find = |suite: &str| {
            entries
                .iter()
                .find(|e| e.suites.iter().any(|s| s == suite))
                .map(|e| Source {
                    uri: e.uri.trim_end_matches('/').to_owned(),
                    signed_by: e.signed_by.clone(),
                })
        };
        let archive = find(&codename).with_context(|| {
            format!(
                "no `deb` source for {codename} in /etc/apt/sources.list or /etc/apt/sources.list.d"
            )
        })?;
        let security = find(&format!("{codename}-security"));
        Ok(Self { archive, security })
    }
}

/// One `deb` line or deb822 stanza, reduced to what we reuse.
struct Entry {
    uri: String,
    suites: Vec<String>,
    signed_by: Option<String>,
}

fn codename() -> Result<String> {
    let text = fs::read_to_string("/etc/os-release").context("reading /etc/os-release")?;
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_owned())
        .filter(|v| !v.is_empty())
        .context("no VERSION_CODENAME in /etc/os-release")
}

fn system_sources() -> Result<Vec<Entry>> {
    let mut entries = Vec::new();
    let main = Path::new("/etc/apt/sources.list");
    if main.exists() {
        entries.extend(one_line_sources(&read(main)?));
    }
    let dir = Path::new("/etc/apt/sources.list.d");
    if dir.is_dir() {
        let mut files: Vec<PathBuf> = fs::read_dir(dir)
            .with_context(|| format!("listing {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        files.sort();
        for file in files {
            // apt itself reads only these two suffixes.
            match file.extension().and_then(|e| e.to_str()) {
                Some("list") => entries.extend(one_line_sources(&read(&file)?)),
                Some("sources") => entries.extend(deb822_sources(&read(&file)?)),
                _ => {}
            }
        }
    }
    Ok(entries)
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// `deb [signed-by=K arch=A] URI SUITE COMPONENT...`
fn one_line_sources(text: &str) -> Vec<Entry> {
    let mut entries = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default().trim();
        let Some(rest) = line.strip_prefix("deb ") else {
            continue;
        };
        let mut rest = rest.trim_start();
        let mut signed_by = None;
        if let Some(opts) = rest.strip_prefix('[') {
            let Some((opts, tail)) = opts.split_once(']') else {
                continue;
            };
            signed_by = opts
                .split_whitespace()
                .find_map(|o| o.strip_prefix("signed-by="))
                .map(str::to_owned);
            rest = tail.trim_start();
        }
        let mut words = rest.split_whitespace();
        if let (Some(uri), Some(suite)) = (words.next(), words.next()) {
            entries.push(Entry {
                uri: uri.to_owned(),
                suites: vec![suite.to_owned()],
                signed_by,
            });
        }
    }
    entries
}

/// Stanzas of `Types:`, `URIs:`, `Suites:`, `Signed-By:` (a path; an inline
/// key block is skipped: its continuation lines start with a space).
fn deb822_sources(text: &str) -> Vec<Entry> {
    let mut entries = Vec::new();
    for stanza in text.split("\n\n") {
        let mut fields: BTreeMap<String, String> = BTreeMap::new();
        for line in stanza.lines() {
            if line.starts_with('#') || line.starts_with([' ', '\t']) {
                continue;
            }
            if let Some((key, value)) = line.split_once(':') {
                fields.insert(key.trim().to_ascii_lowercase(), value.trim().to_owned());
            }
        }
        let words = |key: &str| -> Vec<String> {
            fields
                .get(key)
                .map(|v| v.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default()
        };
        let enabled = fields.get("enabled").is_none_or(|v| v != "no");
        if !enabled || !words("types").iter().any(|t| t == "deb") {
            continue;
        }
        let signed_by = fields
            .get("signed-by")
            .filter(|v| v.starts_with('/'))
            .cloned();
        for uri in words("uris") {
            entries.push(Entry {
                uri,
                suites: words("suites"),
                signed_by: signed_by.clone(),
            });
        }
    }
    entries
}

/// A kernel of the matrix: the image package a machine of `suite` runs.
pub struct Kernel {
    /// `linux-image-6.1.0-57-cloud-amd64`
    pub package: String,
    /// `6.1.192-3`
    pub version: String,
    /// `bookworm-security`, where that version comes from
    pub origin: String,
    /// The unpacked package.
    pub root: PathBuf,
}

impl Kernel {
    /// `6.1.0-57-cloud-amd64`: the one directory under (usr/)lib/modules.
    pub fn release(&self) -> Result<String> {
        let dir = self.modules_dir()?;
        Ok(dir
            .file_name()
            .context("modules directory")?
            .to_string_lossy()
            .into_owned())
    }

    fn modules_dir(&self) -> Result<PathBuf> {
        // trixie moved them under usr/.
        for base in ["lib/modules", "usr/lib/modules"] {
            let base = self.root.join(base);
            if let Ok(mut dirs) = fs::read_dir(&base)
                && let Some(dir) = dirs.next()
            {
                return Ok(dir?.path());
            }
        }
        bail!("no lib/modules/<release> in {}", self.root.display())
    }

    pub fn vmlinuz(&self) -> Result<PathBuf> {
        let boot = self.root.join("boot");
        fs::read_dir(&boot)
            .with_context(|| format!("listing {}", boot.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
            })
            .with_context(|| format!("no vmlinuz-* in {}", boot.display()))
    }

    /// `modules` and everything they depend on, dependencies first, as
    /// (name, uncompressed .ko bytes). The package has no modules.dep (depmod
    /// writes it when the package is installed), so the dependencies come
    /// from where depmod reads them: each module's `.modinfo` `depends=`.
    pub fn modules_with_deps(&self, modules: &[&str]) -> Result<Vec<(String, Vec<u8>)>> {
        let dir = self.modules_dir()?;
        let mut index = BTreeMap::new();
        index_modules(&dir.join("kernel"), &mut index)?;
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        for m in modules {
            add_module(&index, &module_key(m), &mut seen, &mut order, 0)?;
        }
        Ok(order)
    }
}

/// Module names treat `-` and `_` alike.
fn module_key(name: &str) -> String {
    name.replace('-', "_")
}

fn index_modules(dir: &Path, index: &mut BTreeMap<String, PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            index_modules(&path, index)?;
            continue;
        }
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let stem = name
            .strip_suffix(".ko")
            .or_else(|| name.strip_suffix(".ko.xz"))
            .or_else(|| name.strip_suffix(".ko.zst"));
        if let Some(stem) = stem {
            index.insert(module_key(stem), path.clone());
        }
    }
    Ok(())
}

fn add_module(
    index: &BTreeMap<String, PathBuf>,
    name: &str,
    seen: &mut BTreeSet<String>,
    order: &mut Vec<(String, Vec<u8>)>,
    depth: usize,
) -> Result<()> {
    if !seen.insert(name.to_owned()) {
        return Ok(());
    }
    if depth > 32 {
        bail!("module dependencies nest deeper than 32 at {name}");
    }
    let path = index
        .get(name)
        .with_context(|| format!("module {name} is not in the kernel package (built in?)"))?;
    let bytes = uncompressed(path)?;
    let deps = modinfo(&bytes, "depends")
        .with_context(|| format!("reading .modinfo of {}", path.display()))?;
    for dep in deps
        .iter()
        .flat_map(|d| d.split(','))
        .filter(|d| !d.is_empty())
    {
        add_module(index, &module_key(dep), seen, order, depth + 1)?;
    }
    order.push((name.to_owned(), bytes));
    Ok(())
}

/// The module's bytes; compressed ones are expanded on the host, since
/// busybox's insmod may not read them.
fn uncompressed(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        "xz"
    } else if name.ends_with(".zst") {
        "zstd"
    } else {
        return fs::read(path).with_context(|| format!("reading {name}"));
    };
    let out = Command::new(tool)
        .args(["-dc", "--"])
        .arg(path)
        .output()
        .with_context(|| format!("cannot run {tool}"))?;
    if !out.status.success() {
        bail!(
            "{tool} -dc {name}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// The values of `key` in an ELF64 module's `.modinfo` section
/// (NUL-separated `key=value` strings).
fn modinfo(elf: &[u8], key: &str) -> Result<Vec<String>> {
    let u16_at = |o: usize| -> Result<usize> {
        let b = elf.get(o..o + 2).context("truncated ELF")?;
        Ok(usize::from(u16::from_le_bytes([b[0], b[1]])))
    };
    let u32_at = |o: usize| -> Result<usize> {
        let b = elf.get(o..o + 4).context("truncated ELF")?;
        Ok(u32::from_le_bytes(b.try_into()?) as usize)
    };
    let u64_at = |o: usize| -> Result<usize> {
        let b = elf.get(o..o + 8).context("truncated ELF")?;
        Ok(usize::try_from(u64::from_le_bytes(b.try_into()?))?)
    };
    if elf.get(..5) != Some(b"\x7fELF\x02") || elf.get(5) != Some(&1) {
        bail!("not a little-endian ELF64 file");
    }
    let (shoff, shentsize, shnum, shstrndx) =
        (u64_at(0x28)?, u16_at(0x3a)?, u16_at(0x3c)?, u16_at(0x3e)?);
    let section = |i: usize| -> Result<(usize, usize, usize)> {
        let h = shoff + i * shentsize;
        Ok((u32_at(h)?, u64_at(h + 24)?, u64_at(h + 32)?))
    };
    let (_, strtab, strtab_size) = section(shstrndx)?;
    let names = elf
        .get(strtab..strtab + strtab_size)
        .context("section names outside the file")?;
    for i in 0..shnum {
        let (name, offset, size) = section(i)?;
        let name = names.get(name..).unwrap_or_default();
        if !name.starts_with(b".modinfo\0") {
            continue;
        }
        let data = elf
            .get(offset..offset + size)
            .context(".modinfo outside the file")?;
        let prefix = format!("{key}=");
        return Ok(data
            .split(|&b| b == 0)
            .filter_map(|s| std::str::from_utf8(s).ok())
            .filter_map(|s| s.strip_prefix(&prefix))
            .map(str::to_owned)
            .collect());
    }
    bail!("no .modinfo section")
}

/// A side apt configuration for one suite (and its security updates), all
/// of it under `dir`; the system's sources, lists and pins play no part.
pub struct SideApt {
    dir: PathBuf,
    suites: Vec<String>,
}

impl SideApt {
    pub fn new(matrix_dir: &Path, mirrors: &Mirrors, suite: &str) -> Result<Self> {
        let dir = matrix_dir.join("apt").join(suite);
        for sub in [
            "sources.list.d",
            "preferences.d",
            "lists/partial",
            "cache/archives/partial",
        ] {
            fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        let line = |source: &Source, suite: &str| {
            let opts = source
                .signed_by
                .as_deref()
                .map(|k| format!("[signed-by={k}] "))
                .unwrap_or_default();
            format!("deb {opts}{} {suite} main\n", source.uri)
        };
        let mut list = line(&mirrors.archive, suite);
        let mut suites = vec![suite.to_owned()];
        if let Some(security) = &mirrors.security {
            let s = format!("{suite}-security");
            list.push_str(&line(security, &s));
            suites.push(s);
        }
        let path = dir.join("sources.list");
        fs::write(&path, list).with_context(|| format!("writing {}", path.display()))?;
        Ok(Self { dir, suites })
    }

    fn options(&self) -> Vec<String> {
        let d = |sub: &str| self.dir.join(sub).display().to_string();
        vec![
            format!("-oDir::Etc::sourcelist={}", d("sources.list")),
            format!("-oDir::Etc::sourceparts={}", d("sources.list.d")),
            format!("-oDir::Etc::preferences={}", d("preferences")),
            format!("-oDir::Etc::preferencesparts={}", d("preferences.d")),
            format!("-oDir::State::lists={}", d("lists")),
            format!("-oDir::Cache={}", d("cache")),
            "-oAPT::Architectures=amd64".to_owned(),
            // Our directories are root's: apt's _apt user could not write them.
            "-oAPT::Sandbox::User=root".to_owned(),
        ]
    }

    fn apt(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.args(self.options());
        c
    }

    /// `apt-get update` for this suite; with lists from an earlier run, a
    /// failed update warns and goes on with those.
    pub fn update(&self, tag: &str) -> Result<()> {
        let mut update = self.apt("apt-get");
        update.args(["-q", "update"]);
        let out = update
            .output()
            .with_context(|| format!("cannot run {}", cmd::display(&update)))?;
        if out.status.success() {
            return Ok(());
        }
        let why = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        // A suite's lists start with its Release file (`lists/lock` is not one).
        let have_lists = fs::read_dir(self.dir.join("lists"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .any(|e| e.file_name().to_string_lossy().ends_with("Release"))
            })
            .unwrap_or(false);
        if have_lists {
            println!(
                "[{tag}] warning: apt-get update failed, using the lists of an earlier run: {why}"
            );
            return Ok(());
        }
        bail!("apt-get update for {} failed: {why}", self.suites.join(" "))
    }

    /// The candidate kernel image of the suite, downloaded (once) and unpacked
    /// (once) under `matrix_dir`.
    pub fn fetch(&self, matrix_dir: &Path, series: &str) -> Result<Kernel> {
        let (package, version, origin) = self.candidate()?;
        if !version.starts_with(&format!("{series}.")) {
            bail!(
                "{METAPACKAGE} {version} of {} is not a {series} kernel",
                self.suites.join("/")
            );
        }
        let root = matrix_dir
            .join("kernels")
            .join(format!("{package}_{version}"));
        let done = root.join(".unpacked");
        if !done.exists() {
            let debs = matrix_dir.join("debs");
            fs::create_dir_all(&debs).with_context(|| format!("creating {}", debs.display()))?;
            let deb = self.download(&debs, &package, &version)?;
            let _ = fs::remove_dir_all(&root);
            fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
            let mut unpack = Command::new("dpkg-deb");
            unpack.arg("-x").arg(&deb).arg(&root);
            let out = unpack
                .output()
                .with_context(|| format!("cannot run {}", cmd::display(&unpack)))?;
            if !out.status.success() {
                bail!(
                    "{} failed: {}",
                    cmd::display(&unpack),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            fs::write(&done, "").with_context(|| format!("writing {}", done.display()))?;
        }
        Ok(Kernel {
            package,
            version,
            origin,
            root,
        })
    }

    /// (image package, version, suite) of the metapackage's candidate.
    fn candidate(&self) -> Result<(String, String, String)> {
        let mut policy = self.apt("apt-cache");
        policy.args(["show", "--no-all-versions", METAPACKAGE]);
        let out = policy
            .output()
            .with_context(|| format!("cannot run {}", cmd::display(&policy)))?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || text.trim().is_empty() {
            bail!(
                "{METAPACKAGE} is not in {}: {}",
                self.suites.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
        };
        // `Depends: linux-image-6.1.0-57-cloud-amd64 (= 6.1.192-3)`
        let depends = field("Depends:").context("metapackage without Depends")?;
        let image = depends
            .split(',')
            .map(str::trim)
            .find(|d| d.starts_with("linux-image-"))
            .with_context(|| format!("no linux-image-* in Depends: {depends}"))?;
        let package = image.split_whitespace().next().unwrap_or(image).to_owned();
        let version = field("Version:")
            .context("metapackage without Version")?
            .to_owned();
        let origin = self.origin(&package, &version)?;
        Ok((package, version, origin))
    }

    /// Which of our suites offers `package` at `version` (apt-cache madison).
    fn origin(&self, package: &str, version: &str) -> Result<String> {
        let mut madison = self.apt("apt-cache");
        madison.args(["madison", package]);
        let text = cmd::stdout(&mut madison).unwrap_or_default();
        // `pkg | 6.1.192-3 | http://... bookworm-security/main amd64 Packages`
        let origin = text.lines().find_map(|l| {
            let cols: Vec<&str> = l.split('|').map(str::trim).collect();
            (cols.get(1) == Some(&version))
                .then(|| cols.get(2)?.split_whitespace().nth(1))
                .flatten()
                .map(|s| s.split('/').next().unwrap_or(s).to_owned())
        });
        origin.with_context(|| format!("apt-cache madison offers no {package} {version}"))
    }

    fn download(&self, debs: &Path, package: &str, version: &str) -> Result<PathBuf> {
        let mut get = self.apt("apt-get");
        get.current_dir(debs)
            .args(["-q", "download"])
            .arg(format!("{package}={version}"));
        let out = get
            .output()
            .with_context(|| format!("cannot run {}", cmd::display(&get)))?;
        if !out.status.success() {
            bail!(
                "apt-get download {package}={version} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        // apt names it `<package>_<version, ':' as %3a>_amd64.deb`.
        let prefix = format!("{package}_{}_", version.replace(':', "%3a"));
        fs::read_dir(debs)
            .with_context(|| format!("listing {}", debs.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
            })
            .with_context(|| format!("apt-get download left no {prefix}*.deb"))
    }
}
