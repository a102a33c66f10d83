//! cgroup v2 facts about a process: its cgroup path, the container it runs
//! in, and the path behind the cgroup id the kernel program records.

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::{DirEntryExt as _, MetadataExt as _},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// The cgroup v2 path (e.g. "/system.slice/nginx.service") of a process,
/// from the "0::" line of /proc/PID/cgroup.
pub fn cgroup_path_of_pid(pid: u32) -> Option<String> {
    cgroup_path_at(Path::new("/proc"), pid)
}

pub fn cgroup_path_at(proc_root: &Path, pid: u32) -> Option<String> {
    let path = proc_root.join(pid.to_string()).join("cgroup");
    let text = fs::read_to_string(&path)
        .map_err(|e| log::debug!("cgroup: read {}: {e}", path.display()))
        .ok()?;
    parse_proc_cgroup(&text)
}

/// The v2 path from /proc/PID/cgroup text; `None` on a v1-only host.
pub fn parse_proc_cgroup(text: &str) -> Option<String> {
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(str::to_owned)
}

/// Systemd-driver scope names: `<prefix><64 hex>.scope`.
const SCOPE_PREFIXES: &[&str] = &["docker-", "cri-containerd-", "crio-", "libpod-"];

/// A container id if the cgroup path shows one, shortened to 12 characters
/// as `docker ps` shows it.
///
/// Recognised: systemd-driver scopes (`docker-<id>.scope`,
/// `cri-containerd-<id>.scope`, `crio-<id>.scope`, `libpod-<id>.scope`,
/// also under kubepods slices) and cgroupfs-driver directories
/// (`/docker/<id>`, `/kubepods/<qos>/pod<uid>/<id>`). The innermost match
/// wins, so nested containers and sub-cgroups inside a container (e.g.
/// `.../docker-<id>.scope/init.scope`) name the right one.
pub fn container_id(cgroup_path: &str) -> Option<String> {
    let parts: Vec<&str> = cgroup_path.split('/').filter(|p| !p.is_empty()).collect();
    for (i, part) in parts.iter().enumerate().rev() {
        let scoped = part.strip_suffix(".scope").and_then(|stem| {
            SCOPE_PREFIXES
                .iter()
                .find_map(|prefix| stem.strip_prefix(prefix))
        });
        if let Some(id) = scoped.filter(|id| is_container_hex(id)) {
            return Some(id[..12].to_owned());
        }
        // A bare id is only trusted under a runtime's own parent: 64 hex
        // characters alone could be any name.
        let under_runtime = parts[..i]
            .iter()
            .any(|p| *p == "docker" || p.starts_with("kubepods"));
        if under_runtime && is_container_hex(part) {
            return Some(part[..12].to_owned());
        }
    }
    None
}

fn is_container_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The cgroup2 mount point from /proc/self/mountinfo text, preferring a
/// mount of the hierarchy's root (the one whose paths match /proc/PID/cgroup).
pub fn parse_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    let mut fallback = None;
    for line in mountinfo.lines() {
        // "36 35 98:0 /root /mnt opts [optional...] - fstype source superopts"
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_whitespace().next() != Some("cgroup2") {
            continue;
        }
        let mut fields = left.split_whitespace();
        let (Some(root), Some(mount)) = (fields.nth(3), fields.next()) else {
            continue;
        };
        let mount = PathBuf::from(unescape_mountinfo(mount));
        if root == "/" {
            return Some(mount);
        }
        fallback.get_or_insert(mount);
    }
    fallback
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            let value = bytes
                .get(i + 1..i + 4)
                .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)))
                .and_then(|d| {
                    u8::try_from(d.iter().fold(0u32, |n, b| n * 8 + u32::from(b - b'0'))).ok()
                });
            if let Some(value) = value {
                out.push(value);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Paths above this many cached ids are dropped at the next walk.
const MAX_CACHED: usize = 1 << 16;

const DEFAULT_MIN_REWALK: Duration = Duration::from_secs(1);

/// Maps a cgroup id (what `bpf_get_current_cgroup_id` returns: the inode
/// number of the cgroup v2 directory) to its path relative to the cgroup2
/// mount, "/" for the root, in the form /proc/PID/cgroup uses.
pub struct CgroupResolver {
    mount: Option<PathBuf>,
    paths: HashMap<u64, String>,
    min_rewalk: Duration,
    last_walk: Option<Instant>,
    walks: u64,
}

impl Default for CgroupResolver {
    fn default() -> Self {
        Self::new()
    }
}

impl CgroupResolver {
    /// Uses the cgroup2 mount from /proc/self/mountinfo; without one,
    /// nothing resolves.
    pub fn new() -> Self {
        let mount = fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| log::warn!("cgroup: read /proc/self/mountinfo: {e}"))
            .ok()
            .and_then(|text| parse_cgroup2_mount(&text));
        if mount.is_none() {
            log::warn!("cgroup: no cgroup2 mount; cgroup ids will not be resolved");
        }
        Self::with_mount(mount)
    }

    pub fn with_mount(mount: Option<PathBuf>) -> Self {
        Self {
            mount,
            paths: HashMap::new(),
            min_rewalk: DEFAULT_MIN_REWALK,
            last_walk: None,
            walks: 0,
        }
    }

    pub fn mount(&self) -> Option<&Path> {
        self.mount.as_deref()
    }

    /// Least time between two walks of the mount on misses (default 1 s).
    pub fn set_min_rewalk(&mut self, d: Duration) {
        self.min_rewalk = d;
    }

    /// Walks of the mount done so far.
    pub fn walks(&self) -> u64 {
        self.walks
    }

    /// The path of cgroup `id`; on a miss the mount is walked again, at most
    /// once per `min_rewalk`.
    pub fn resolve(&mut self, id: u64) -> Option<String> {
        if let Some(path) = self.paths.get(&id) {
            return Some(path.clone());
        }
        let due = self
            .last_walk
            .is_none_or(|t| t.elapsed() >= self.min_rewalk);
        if !due {
            return None;
        }
        self.walk();
        self.paths.get(&id).cloned()
    }

    fn walk(&mut self) {
        let Some(mount) = self.mount.as_deref() else {
            return;
        };
        self.walks += 1;
        self.last_walk = Some(Instant::now());
        let found = walk_cgroups(mount);
        // Cgroup ids are 64-bit kernfs ids, never reused: entries of cgroups
        // removed since stay right (late events about them still resolve),
        // so they are kept, up to a bound for hosts with container churn.
        if self.paths.len() > MAX_CACHED {
            self.paths = found;
        } else {
            self.paths.extend(found);
        }
    }
}

/// id -> path of every cgroup under `mount`. Ids come from readdir's d_ino,
/// which kernfs fills with the id, so no directory is stat'ed but the root.
fn walk_cgroups(mount: &Path) -> HashMap<u64, String> {
    let mut found = HashMap::new();
    match fs::metadata(mount) {
        Ok(meta) => {
            found.insert(meta.ino(), "/".to_owned());
        }
        Err(e) => {
            log::warn!("cgroup: stat {}: {e}", mount.display());
            return found;
        }
    }
    let mut stack = vec![(mount.to_path_buf(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        // Cgroups removed mid-walk give ENOENT: skipped, not errors.
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let name = entry.file_name();
            let child_rel = format!("{rel}/{}", name.to_string_lossy());
            found.insert(entry.ino(), child_rel.clone());
            stack.push((entry.path(), child_rel));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use std::{
        os::unix::fs::MetadataExt as _,
        process::{Child, Command, Stdio},
        sync::atomic::{AtomicU32, Ordering},
    };

    use anyhow::{Context as _, Result};

    use super::*;

    const ID: &str = "4a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";
    const SHORT: &str = "4a1b2c3d4e5f";

    #[test]
    fn container_id_forms() {
        let uid = "0f3a9c1e_5b2d_4e8f_9a7b_1c2d3e4f5a6b";
        let dashed_uid = "0f3a9c1e-5b2d-4e8f-9a7b-1c2d3e4f5a6b";
        let cases = [
            format!("/system.slice/docker-{ID}.scope"),
            format!("/docker/{ID}"),
            format!("/system.slice/containerd.service/cri-containerd-{ID}.scope"),
            format!("/system.slice/cri-containerd-{ID}.scope"),
            format!("/machine.slice/libpod-{ID}.scope"),
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice/cri-containerd-{ID}.scope"
            ),
            format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid}.slice/crio-{ID}.scope"
            ),
            format!("/kubepods.slice/kubepods-pod{uid}.slice/docker-{ID}.scope"),
            format!("/kubepods/burstable/pod{dashed_uid}/{ID}"),
            format!("/kubepods/pod{dashed_uid}/{ID}"),
            // Sub-cgroups inside the container still name it.
            format!("/system.slice/docker-{ID}.scope/init.scope"),
            // Nested: the innermost container.
            format!("/docker/{}/docker/{ID}", "f".repeat(64)),
        ];
        for path in &cases {
            assert_eq!(container_id(path).as_deref(), Some(SHORT), "{path}");
        }
        let negatives = [
            "/user.slice/user-0.slice/session-1.scope".to_owned(),
            "/".to_owned(),
            String::new(),
            "/system.slice/nginx.service".to_owned(),
            format!("/kubepods/burstable/pod{dashed_uid}"),
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice"),
            // The monitor beside a CRI-O container, not in it.
            format!("/kubepods.slice/kubepods-pod{uid}.slice/crio-conmon-{ID}.scope"),
            // A bare id outside any runtime's tree, and ids of the wrong shape.
            format!("/system.slice/{ID}"),
            format!("/docker/{}", &ID[..63]),
            format!("/docker/{}", ID.to_uppercase()),
            format!("/system.slice/docker-{ID}.service"),
        ];
        for path in &negatives {
            assert_eq!(container_id(path), None, "{path}");
        }
    }

    #[test]
    fn proc_cgroup_text() {
        let hybrid = "9:name=systemd:/\n4:memory:/x/y\n0::/system.slice/nginx.service\n";
        assert_eq!(
            parse_proc_cgroup(hybrid).as_deref(),
            Some("/system.slice/nginx.service")
        );
        assert_eq!(parse_proc_cgroup("0::/\n").as_deref(), Some("/"));
        assert_eq!(parse_proc_cgroup("4:memory:/x\n1:cpu:/\n"), None);
    }

    #[test]
    fn mountinfo_cgroup2_mount() {
        let hybrid = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                      35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified =
            "30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            parse_cgroup2_mount(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        let prefer_root = "50 1 0:26 /docker/abc /mnt/cg rw - cgroup2 cgroup2 rw\n\
                           51 1 0:26 / /my\\040cgroups rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_cgroup2_mount(prefer_root),
            Some(PathBuf::from("/my cgroups"))
        );
        let only_sub = "50 1 0:26 /docker/abc /mnt/cg rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_cgroup2_mount(only_sub),
            Some(PathBuf::from("/mnt/cg"))
        );
        assert_eq!(
            parse_cgroup2_mount("35 31 0:32 / /m rw - cgroup cgroup rw\n"),
            None
        );
        assert_eq!(unescape_mountinfo(r"a\134b\011c\"), "a\\b\tc\\");
    }

    static UNIQUE: AtomicU32 = AtomicU32::new(0);

    struct CgroupDir(PathBuf);

    impl Drop for CgroupDir {
        fn drop(&mut self) {
            if let Err(e) = fs::remove_dir(&self.0) {
                eprintln!("rmdir {}: {e}", self.0.display());
            }
        }
    }

    struct ChildGuard(Child);

    impl Drop for ChildGuard {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn cgroup_inode(mount: &Path, path: &str) -> Result<u64> {
        let dir = mount.join(path.trim_start_matches('/'));
        Ok(fs::metadata(&dir)
            .with_context(|| format!("stat {}", dir.display()))?
            .ino())
    }

    #[test]
    fn resolver_finds_our_own_cgroup() -> Result<()> {
        let ours = cgroup_path_of_pid(std::process::id()).context("our cgroup path")?;
        assert!(ours.starts_with('/'), "{ours}");
        let mut resolver = CgroupResolver::new();
        let mount = resolver.mount().context("no cgroup2 mount")?.to_path_buf();
        let id = cgroup_inode(&mount, &ours)?;
        assert_eq!(resolver.resolve(id).as_deref(), Some(ours.as_str()));
        // A hit does not walk again.
        assert_eq!(resolver.resolve(id).as_deref(), Some(ours.as_str()));
        assert_eq!(resolver.walks(), 1);
        Ok(())
    }

    /// A cgroup made after the first walk: found on the next due walk, and
    /// a process moved into it reports the same path.
    #[test]
    fn resolver_finds_a_new_cgroup_after_rewalk() -> Result<()> {
        let mut resolver = CgroupResolver::new();
        let mount = resolver.mount().context("no cgroup2 mount")?.to_path_buf();
        resolver.set_min_rewalk(Duration::from_secs(3600));
        assert_eq!(
            resolver.resolve(cgroup_inode(&mount, "/")?).as_deref(),
            Some("/")
        );

        let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
        let name = format!("tcptrace-test-{}-{n}", std::process::id());
        let rel = format!("/{name}/inner");
        fs::create_dir(mount.join(&name))
            .with_context(|| format!("mkdir {name} in {}", mount.display()))?;
        let _outer = CgroupDir(mount.join(&name));
        fs::create_dir(mount.join(&name).join("inner"))?;
        let _inner = CgroupDir(mount.join(&name).join("inner"));
        let id = cgroup_inode(&mount, &rel)?;

        assert_eq!(resolver.resolve(id), None, "rewalked within the interval");
        assert_eq!(resolver.walks(), 1);
        resolver.set_min_rewalk(Duration::ZERO);
        assert_eq!(resolver.resolve(id).as_deref(), Some(rel.as_str()));
        assert_eq!(resolver.walks(), 2);

        let child = ChildGuard(
            Command::new("sleep")
                .arg("30")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
        let procs = mount.join(&name).join("inner").join("cgroup.procs");
        fs::write(&procs, child.0.id().to_string())
            .with_context(|| format!("write {}", procs.display()))?;
        assert_eq!(
            cgroup_path_of_pid(child.0.id()).as_deref(),
            Some(rel.as_str())
        );
        assert_eq!(container_id(&rel), None);
        Ok(())
    }
}
