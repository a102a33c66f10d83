//! The one selection every view applies: built once from the command
//! line's filters, it answers for the kernel (its [`Filter`]), for an owner
//! and for a socket.

use tcptrace_common::{Filter, MAX_FILTER_PIDS, MAX_FILTER_PORTS, TcpState};

use crate::model::{event::Family, owner::Comm};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    /// Owners' pids (empty: any).
    pub pids: Vec<u32>,
    /// Owners' process name.
    pub comm: Option<Comm>,
    pub lports: Vec<u16>,
    pub rports: Vec<u16>,
    pub family: Option<Family>,
    /// Transitions into or out of these states (empty: all).
    pub states: Vec<TcpState>,
}

impl Selection {
    /// Whether pids or a name select owners.
    pub fn by_owner(&self) -> bool {
        !self.pids.is_empty() || self.comm.is_some()
    }

    pub fn owner_passes(&self, pid: u32, comm: &Comm) -> bool {
        (self.pids.is_empty() || self.pids.contains(&pid))
            && self.comm.as_ref().is_none_or(|c| c == comm)
    }

    pub fn socket_passes(&self, lport: u16, rport: u16, family: Option<Family>) -> bool {
        (self.lports.is_empty() || self.lports.contains(&lport))
            && (self.rports.is_empty() || self.rports.contains(&rport))
            && (self.family.is_none() || self.family == family)
    }

    /// The kernel's filter: the same selection, applied where it is cheapest.
    pub fn kernel_filter(&self) -> anyhow::Result<Filter> {
        let mut f = Filter::NONE;
        anyhow::ensure!(
            self.pids.len() <= MAX_FILTER_PIDS,
            "at most {MAX_FILTER_PIDS} --pid values"
        );
        anyhow::ensure!(
            self.lports.len() <= MAX_FILTER_PORTS && self.rports.len() <= MAX_FILTER_PORTS,
            "at most {MAX_FILTER_PORTS} ports in one list"
        );
        f.pids[..self.pids.len()].copy_from_slice(&self.pids);
        f.n_pids = self.pids.len() as u16;
        f.lports[..self.lports.len()].copy_from_slice(&self.lports);
        f.n_lports = self.lports.len() as u16;
        f.rports[..self.rports.len()].copy_from_slice(&self.rports);
        f.n_rports = self.rports.len() as u16;
        f.family = self.family.map_or(0, Family::af);
        f.states = TcpState::mask(&self.states);
        if let Some(c) = &self.comm {
            f.has_comm = 1;
            f.comm = c.raw();
        }
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_selection_answers_for_kernel_owner_and_socket() {
        let s = Selection {
            pids: vec![7],
            comm: Some(Comm::new(b"java")),
            lports: vec![80, 443],
            rports: vec![61616],
            family: Some(Family::V6),
            states: vec![TcpState::CloseWait],
        };
        let f = s.kernel_filter().unwrap();
        assert_eq!((f.n_pids, f.pids[0]), (1, 7));
        assert_eq!((f.n_lports, &f.lports[..2]), (2, &[80, 443][..]));
        assert_eq!((f.n_rports, f.rports[0]), (1, 61616));
        assert_eq!(f.family, tcptrace_common::AF_INET6);
        assert_eq!(f.states, 1 << 8);
        assert_eq!((f.has_comm, &f.comm[..5]), (1, &b"java\0"[..]));
        assert!(s.owner_passes(7, &Comm::new(b"java")));
        assert!(!s.owner_passes(8, &Comm::new(b"java")));
        assert!(!s.owner_passes(7, &Comm::new(b"javac")));
        assert!(s.socket_passes(443, 61616, Some(Family::V6)));
        assert!(!s.socket_passes(443, 61616, Some(Family::V4)));
        assert!(!s.socket_passes(81, 61616, Some(Family::V6)));
        assert!(Selection::default().socket_passes(1, 2, None));
    }
}
