//! Reading what the kernel program counts (aggregate mode): the readers
//! `hist` and `serve` share.

use std::ops::RangeInclusive;

use aya::maps::{HashMap, MapData, PerCpuArray, PerCpuHashMap};
use tcptrace_common::{
    HistKey, LOG2_BUCKETS, SLOT_MAX, TASK_COMM_LEN, TOTAL_KINDS, TcpState, TotalHist, total_kind,
    transition_index,
};

/// The aggregate mode's maps.
pub struct AggregateMaps {
    /// The histograms when not grouping: per kind and interval parity.
    pub totals: PerCpuArray<MapData, TotalHist>,
    /// The histograms when grouping: one counter per key.
    pub hist: PerCpuHashMap<MapData, HistKey, u64>,
    /// Owner tgid -> process name, learnt in process context (grouping by process).
    pub comms: HashMap<MapData, u32, [u8; TASK_COMM_LEN]>,
    /// Transitions per (old, new) state ([`transition_index`]).
    pub transitions: PerCpuArray<MapData, u64>,
}

impl AggregateMaps {
    /// `TOTALS` entry `index` summed over the CPUs whose copy is for an
    /// interval in `wanted` (buckets and sums added, the maximum kept);
    /// `None` when empty.
    pub fn total(
        &self,
        index: u32,
        wanted: &RangeInclusive<u64>,
    ) -> anyhow::Result<Option<TotalHist>> {
        let mut total: Option<TotalHist> = None;
        for h in self.totals.get(&index, 0)?.iter() {
            if !wanted.contains(&h.epoch) || h.buckets.iter().all(|n| *n == 0) {
                continue;
            }
            let t = total.get_or_insert(TotalHist {
                epoch: h.epoch,
                max_ns: 0,
                sum_ns: 0,
                buckets: [0; LOG2_BUCKETS as usize],
            });
            for (sum, n) in t.buckets.iter_mut().zip(h.buckets) {
                *sum += n;
            }
            t.max_ns = t.max_ns.max(h.max_ns);
            t.sum_ns += h.sum_ns;
        }
        Ok(total)
    }

    /// Not grouping: each kind's histogram for the intervals in `epochs`.
    /// The next interval of the same parity resets them in the kernel.
    pub fn totals(&self, epochs: &RangeInclusive<u32>) -> anyhow::Result<Vec<(u8, TotalHist)>> {
        let wanted = u64::from(*epochs.start())..=u64::from(*epochs.end());
        let mut out = Vec::new();
        for index in 0..TOTAL_KINDS * 2 {
            if let Some(h) = self.total(index, &wanted)? {
                out.push((total_kind(index), h));
            }
        }
        Ok(out)
    }

    /// Grouping: reads and deletes the counters of the intervals in
    /// `epochs`, summed over CPUs (the maximum slot: maxed).
    pub fn drain_grouped(
        &mut self,
        epochs: &RangeInclusive<u32>,
    ) -> anyhow::Result<Vec<(HistKey, u64)>> {
        // Collect first: deleting while walking the keys would restart the walk.
        let mut keys = Vec::new();
        for key in self.hist.keys() {
            let key = key?;
            if epochs.contains(&key.epoch) {
                keys.push(key);
            }
        }
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let per_cpu = self.hist.get(&key, 0)?;
            let value = if key.slot == SLOT_MAX {
                per_cpu.iter().copied().max().unwrap_or(0)
            } else {
                per_cpu.iter().sum()
            };
            out.push((key, value));
            self.hist.remove(&key)?;
        }
        Ok(out)
    }

    /// Transitions counted since the program was attached, per (old, new).
    pub fn transitions(&self) -> anyhow::Result<Vec<(TcpState, TcpState, u64)>> {
        let mut out = Vec::new();
        for old in TcpState::ALL {
            for new in TcpState::ALL {
                let per_cpu = self
                    .transitions
                    .get(&transition_index(old as u8, new as u8), 0)?;
                let n: u64 = per_cpu.iter().sum();
                if n > 0 {
                    out.push((old, new, n));
                }
            }
        }
        Ok(out)
    }

    /// The process name the kernel learnt for `tgid`.
    pub fn comm(&self, tgid: u32) -> Option<[u8; TASK_COMM_LEN]> {
        self.comms.get(&tgid, 0).ok()
    }
}
