//! Taking over, at start, what an earlier run left: its rules, found by
//! the backend, paired by flow and matched with the offload journal, go
//! back into their shards before any packet is read (see `shard::adopt`);
//! the rest are removed.

use crate::shard::Shard;
use flowtable_hw::Backend;

/// Taking over, at start, the flows whose rules an earlier run left: the
/// rules the backend found are paired by flow and matched with the
/// journal's entries; each pair whose flow the journal knows goes back
/// into its own shard (the shard is in the flow id: a restart with the
/// same workers puts it where the kernel's fanout sends its packets),
/// and every other rule is removed before any packet is read.
pub struct Takeover {
    journal: Option<crate::journal::Journal>,
    /// By shard: each flow's journal entry and its rules by direction.
    per_shard: Vec<Vec<(crate::journal::JournalEntry, [flowtable_hw::AdoptedRule; 2])>>,
    remove: Vec<flowtable_hw::Cookie>,
    kept: Vec<crate::journal::JournalEntry>,
    kept_rules: Vec<flowtable_hw::AdoptedRule>,
    /// Taken over, but this configuration doesn't offload them so: their
    /// rules are on their way out.
    unwanted: usize,
}

impl Takeover {
    pub fn prepare(
        backend: &mut dyn Backend,
        journal: Option<&std::path::Path>,
        shards: usize,
    ) -> Result<Takeover, String> {
        use crate::journal::Journal;
        let rules = backend.take_adopted();
        let mut t = Takeover {
            journal: None,
            per_shard: vec![Vec::new(); shards],
            remove: Vec::new(),
            kept: Vec::new(),
            kept_rules: Vec::new(),
            unwanted: 0,
        };
        let mut entries = std::collections::HashMap::new();
        if let Some(path) = journal {
            let (j, found, unreadable) = Journal::open(path).map_err(|e| e.to_string())?;
            if unreadable > 0 {
                tracing::warn!(path = %path.display(), lines = unreadable, "offload journal lines that don't read (cut short by a kill?): skipped");
            }
            entries = found;
            t.journal = Some(j);
        }
        let mut by_flow: std::collections::BTreeMap<u64, [Option<flowtable_hw::AdoptedRule>; 2]> = Default::default();
        for r in rules {
            by_flow.entry(r.cookie.flow).or_default()[r.cookie.direction().index()] = Some(r);
        }
        for (flow, pair) in by_flow {
            let shard = flowtable_sw::FlowId(flow).shard() as usize;
            match (pair, entries.remove(&flow)) {
                ([Some(a), Some(b)], Some(entry)) if shard < shards => t.per_shard[shard].push((entry, [a, b])),
                (pair, _) => t.remove.extend(pair.iter().flatten().map(|r| r.cookie)),
            }
        }
        Ok(t)
    }

    pub fn adopt_into(&mut self, shard: &mut Shard, index: usize, now_ns: u64) {
        for (entry, rules) in std::mem::take(&mut self.per_shard[index]) {
            match shard.adopt(&entry, rules, now_ns) {
                Ok(keep) => {
                    self.unwanted += usize::from(!keep);
                    self.kept_rules.extend(rules);
                    self.kept.push(entry);
                }
                Err(e) => {
                    tracing::warn!(flow = entry.flow, error = %e, "a flow of an earlier run can't be taken over: its rules are removed");
                    self.remove.extend(rules.iter().map(|r| r.cookie));
                }
            }
        }
    }

    /// Removes the rules not taken over and rewrites the journal with the
    /// flows that were; hands the journal on to the offload thread.
    pub fn finish(&mut self, backend: &mut dyn Backend) -> Result<Option<crate::journal::Journal>, String> {
        if !self.remove.is_empty() {
            let failed = backend.remove(&self.remove).iter().filter(|r| r.is_err()).count();
            tracing::info!(removed = self.remove.len() - failed, failed, "rules of an earlier run not taken over");
        }
        if !self.kept.is_empty() {
            tracing::info!(
                flows = self.kept.len(),
                rules = self.kept_rules.len(),
                not_offloaded_now = self.unwanted,
                "flows of an earlier run taken over, rules and all (those this configuration doesn't offload so go on in software)"
            );
        }
        if let Some(j) = self.journal.as_mut() {
            j.rewrite(self.kept.iter()).map_err(|e| e.to_string())?;
        }
        Ok(self.journal.take())
    }

    /// The rules of the flows taken over, for the offload thread to count
    /// as in place.
    pub fn kept_rules(&self) -> &[flowtable_hw::AdoptedRule] {
        &self.kept_rules
    }
}
