//! cgroup v2 facts about a process: its cgroup path and the container it runs in.

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

#[cfg(test)]
mod tests {
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
}
