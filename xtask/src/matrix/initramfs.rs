//! The guest's root: an uncompressed newc cpio (the kernel unpacks it
//! faster than it would decompress one under TCG) holding host files at
//! their host paths, symlinks along those paths included, so that the
//! compile-time paths in the test binaries hold in the guest too.
use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsString;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

#[derive(Clone)]
enum Entry {
    Dir,
    Symlink(PathBuf),
    /// Contents from a host file (read when the archive is written).
    HostFile {
        source: PathBuf,
        mode: u32,
    },
    Bytes {
        data: Vec<u8>,
        mode: u32,
    },
    CharDev {
        major: u32,
        minor: u32,
    },
}

/// The files of an initramfs, by absolute guest path.
#[derive(Clone, Default)]
pub struct Tree {
    entries: BTreeMap<PathBuf, Entry>,
}

impl Tree {
    /// `path` and every directory above it.
    pub fn dir(&mut self, path: &Path) {
        for ancestor in path.ancestors() {
            if ancestor == Path::new("/") || self.entries.contains_key(ancestor) {
                continue;
            }
            self.entries.insert(ancestor.to_owned(), Entry::Dir);
        }
    }

    fn put(&mut self, path: &Path, entry: Entry) {
        if let Some(parent) = path.parent() {
            self.dir(parent);
        }
        self.entries.insert(path.to_owned(), entry);
    }

    pub fn bytes(&mut self, path: &Path, data: Vec<u8>, mode: u32) {
        self.put(path, Entry::Bytes { data, mode });
    }

    pub fn symlink(&mut self, path: &Path, target: &Path) {
        self.put(path, Entry::Symlink(target.to_owned()));
    }

    pub fn char_dev(&mut self, path: &Path, major: u32, minor: u32) {
        self.put(path, Entry::CharDev { major, minor });
    }

    /// Host file `path` at the same guest path, with every symlink met on
    /// the way (`/lib` -> `usr/lib`, `libz.so.1` -> `libz.so.1.2.13`)
    /// recreated, so that the guest resolves the path as the host does.
    /// `contents`, when given, replaces the file's bytes (a stripped copy).
    pub fn host_path(&mut self, path: &Path, contents: Option<&Path>) -> Result<()> {
        let mut rest: VecDeque<OsString> = path
            .components()
            .filter_map(|c| match c {
                Component::Normal(s) => Some(s.to_owned()),
                Component::ParentDir => Some("..".into()),
                _ => None,
            })
            .collect();
        // Always a real directory: symlinks are resolved as they are met.
        let mut cur = PathBuf::from("/");
        let mut hops = 0;
        while let Some(name) = rest.pop_front() {
            if name == ".." {
                cur.pop();
                continue;
            }
            let next = cur.join(&name);
            let meta = fs::symlink_metadata(&next)
                .with_context(|| format!("{} (for {})", next.display(), path.display()))?;
            if meta.file_type().is_symlink() {
                hops += 1;
                if hops > 40 {
                    bail!("too many symlinks resolving {}", path.display());
                }
                let target = fs::read_link(&next)
                    .with_context(|| format!("reading link {}", next.display()))?;
                self.symlink(&next, &target);
                if target.is_absolute() {
                    cur = PathBuf::from("/");
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(s) => rest.push_front(s.to_owned()),
                        Component::ParentDir => rest.push_front("..".into()),
                        _ => {}
                    }
                }
                continue;
            }
            if meta.is_dir() {
                self.dir(&next);
                cur = next;
                continue;
            }
            if !rest.is_empty() {
                bail!(
                    "{} is not a directory (for {})",
                    next.display(),
                    path.display()
                );
            }
            if !self.entries.contains_key(&next) {
                let source = contents.unwrap_or(&next).to_owned();
                let mode = meta.permissions().mode() & 0o7777;
                self.put(&next, Entry::HostFile { source, mode });
            }
            return Ok(());
        }
        Ok(())
    }

    /// Host executable `path` with the shared libraries `ldd` names for it.
    pub fn executable(&mut self, path: &Path, contents: Option<&Path>) -> Result<()> {
        self.host_path(path, contents)?;
        for lib in shared_libraries(path)? {
            self.host_path(&lib, None)?;
        }
        Ok(())
    }

    /// Host directory `dir` and everything under it but the entries named in
    /// `skip`; shared objects bring the libraries they need.
    pub fn host_tree(&mut self, dir: &Path, skip: &[&str]) -> Result<()> {
        let entries = fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?;
        self.host_path(dir, None)?;
        for entry in entries {
            let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
            let name = entry.file_name();
            if skip.iter().any(|s| name == *s) {
                continue;
            }
            let path = entry.path();
            let kind = entry.file_type()?;
            if kind.is_dir() {
                self.host_tree(&path, skip)?;
            } else if kind.is_symlink() {
                self.symlink(&path, &fs::read_link(&path)?);
            } else if name.to_string_lossy().ends_with(".so") {
                self.executable(&path, None)?;
            } else {
                self.host_path(&path, None)?;
            }
        }
        Ok(())
    }

    /// The archive: a newc cpio, parents before children.
    pub fn write(&self, out: &Path) -> Result<u64> {
        let file = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
        let mut w = std::io::BufWriter::new(file);
        let mut written = 0u64;
        for (ino, (path, entry)) in self.entries.iter().enumerate() {
            let name = path.strip_prefix("/").unwrap_or(path);
            let (mode, data, rdev): (u32, Vec<u8>, (u32, u32)) = match entry {
                Entry::Dir => (0o040_755, Vec::new(), (0, 0)),
                Entry::Symlink(target) => (
                    0o120_777,
                    target.as_os_str().as_encoded_bytes().to_vec(),
                    (0, 0),
                ),
                Entry::HostFile { source, mode } => (
                    0o100_000 | mode,
                    fs::read(source).with_context(|| format!("reading {}", source.display()))?,
                    (0, 0),
                ),
                Entry::Bytes { data, mode } => (0o100_000 | mode, data.clone(), (0, 0)),
                Entry::CharDev { major, minor } => (0o020_600, Vec::new(), (*major, *minor)),
            };
            let nlink = if matches!(entry, Entry::Dir) { 2 } else { 1 };
            written += cpio_entry(
                &mut w,
                name.as_os_str().as_encoded_bytes(),
                ino as u32 + 1,
                mode,
                nlink,
                rdev,
                &data,
            )?;
        }
        written += cpio_entry(&mut w, b"TRAILER!!!", 0, 0, 1, (0, 0), &[])?;
        w.flush()
            .with_context(|| format!("writing {}", out.display()))?;
        Ok(written)
    }
}

fn cpio_entry(
    w: &mut impl std::io::Write,
    name: &[u8],
    ino: u32,
    mode: u32,
    nlink: u32,
    (rdev_major, rdev_minor): (u32, u32),
    data: &[u8],
) -> Result<u64> {
    let size = u32::try_from(data.len()).context("a file over 4 GiB")?;
    let header = format!(
        "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{size:08x}{:08x}{:08x}{rdev_major:08x}{rdev_minor:08x}{:08x}{:08x}",
        0, // uid
        0, // gid
        0, // mtime
        0, // dev major
        0, // dev minor
        name.len() + 1,
        0, // check
    );
    let pad = |n: usize| (4 - n % 4) % 4;
    let mut buf = Vec::with_capacity(header.len() + name.len() + 8);
    buf.extend_from_slice(header.as_bytes());
    buf.extend_from_slice(name);
    buf.push(0);
    buf.resize(buf.len() + pad(buf.len()), 0);
    w.write_all(&buf)?;
    w.write_all(data)?;
    w.write_all(&[0; 3][..pad(data.len())])?;
    Ok((buf.len() + data.len() + pad(data.len())) as u64)
}

/// The libraries (and the ELF interpreter) `ldd` resolves for `exe`; none
/// for a static one.
fn shared_libraries(exe: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(exe)
        .output()
        .context("cannot run ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        if text.contains("not a dynamic executable")
            || String::from_utf8_lossy(&out.stderr).contains("not a dynamic executable")
        {
            return Ok(Vec::new());
        }
        bail!(
            "ldd {}: {}",
            exe.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)`,
        // `/lib64/ld-linux-x86-64.so.2 (0x...)`, `linux-vdso.so.1 (0x...)`
        if line.contains("=> not found") {
            bail!("ldd {}: {}", exe.display(), line.trim());
        }
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

/// A copy of `exe` without debug sections, in `dir`: debug builds carry
/// tens of MiB of DWARF that the guest would unpack for nothing.
pub fn stripped(exe: &Path, dir: &Path) -> Result<PathBuf> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let out = dir.join(exe.file_name().context("executable without a name")?);
    let status = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(exe)
        .arg(&out)
        .status()
        .context("cannot run objcopy (binutils)")?;
    if !status.success() {
        bail!("objcopy --strip-debug {} failed", exe.display());
    }
    Ok(out)
}
