//! Taking over, at start, what an earlier run left: its rules, found by
//! the backend, paired by flow and matched with the offload journal, go
//! back into their shards before any packet is read (see `shard::adopt`).
//! A flow that can't go back (no journal line for its rules' flow, half a
//! pair, another number of workers, no room under its id, its rules gone)
//! has its rules removed and, where the journal knows it, ends now in its
//! one record, with what the rules counted to the end. Rules the journal
//! doesn't know are removed: nothing can say whose they were.

use crate::coordinator::Coordinator;
use crate::journal::{Journal, JournalEntry};
use crate::shard::Shard;
use flowtable_hw::{AdoptedRule, Backend, BackendError, Cookie, RuleCounters};
use std::collections::{BTreeMap, HashMap};

pub struct Takeover {
    journal: Option<Journal>,
    /// By shard: each flow's journal entry and its rules by direction.
    per_shard: Vec<Vec<(JournalEntry, [AdoptedRule; 2])>>,
    /// Flows that can't go back, with their rules' final counters: their
    /// records are made by the first shard.
    left: Vec<(JournalEntry, [Option<RuleCounters>; 2])>,
    kept: Vec<JournalEntry>,
    /// The lines of the flows `end_left` ended: kept in the journal until
    /// their gone lines say the records went out (`Shard::release_left`).
    ended: Vec<JournalEntry>,
    kept_rules: Vec<AdoptedRule>,
    /// Taken over, but this configuration doesn't put their rules in so:
    /// their rules are on their way out.
    unwanted: usize,
    /// Rules removed with no journal line to make a record from.
    unknown: usize,
    /// Rules whose removal failed: the offload thread asks again.
    not_removed: Vec<Cookie>,
}

impl Takeover {
    pub fn prepare(
        backend: &mut dyn Backend,
        journal: Option<&std::path::Path>,
        shards: usize,
    ) -> Result<Takeover, String> {
        let rules = backend.take_adopted();
        let mut t = Takeover {
            journal: None,
            per_shard: vec![Vec::new(); shards],
            left: Vec::new(),
            kept: Vec::new(),
            ended: Vec::new(),
            kept_rules: Vec::new(),
            unwanted: 0,
            unknown: 0,
            not_removed: Vec::new(),
        };
        let mut entries = HashMap::new();
        if let Some(path) = journal {
            let (j, found, unreadable) = Journal::open(path).map_err(|e| e.to_string())?;
            if unreadable > 0 {
                tracing::warn!(path = %path.display(), lines = unreadable, "offload journal lines that don't read (cut short by a kill?): skipped");
            }
            entries = found;
            t.journal = Some(j);
        }
        let mut by_flow: BTreeMap<u64, [Option<AdoptedRule>; 2]> = BTreeMap::new();
        for r in rules {
            by_flow.entry(r.cookie.flow).or_default()[r.cookie.direction().index()] = Some(r);
        }
        let mut unknown = Vec::new();
        let mut leaving = Vec::new();
        for (flow, pair) in by_flow {
            let shard = flowtable_sw::FlowId(flow).shard() as usize;
            match (pair, entries.remove(&flow)) {
                // The same workers, so the kernel's fanout sends the flow's
                // packets to the worker its id names.
                ([Some(a), Some(b)], Some(entry))
                    if shard < shards && (entry.workers == 0 || entry.workers as usize == shards) =>
                {
                    t.per_shard[shard].push((entry, [a, b]))
                }
                (pair, Some(entry)) => leaving.push((entry, pair)),
                (pair, None) => unknown.extend(pair.iter().flatten().map(|r| r.cookie)),
            }
        }
        // Journal lines whose rules are gone (a reboot, a `tc qdisc del`):
        // the flows ended while no run was there; their records come now.
        leaving.extend(entries.into_values().map(|e| (e, [None, None])));
        let pairs: Vec<_> = leaving.iter().map(|(_, pair)| *pair).collect();
        let finals = remove_rules(backend, &pairs, &mut t.not_removed);
        t.left.extend(leaving.into_iter().map(|(entry, _)| entry).zip(finals));
        if !unknown.is_empty() {
            t.unknown = unknown.len();
            remove_noting_failures(backend, &unknown, &mut t.not_removed);
        }
        Ok(t)
    }

    /// Puts shard `index`'s flows back into it, before the shard's worker
    /// starts: no packet of those flows is read before. Those that can't go
    /// back wait for `end_left`.
    pub fn adopt_into(&mut self, shard: &mut Shard, index: usize, now_ns: u64, backend: &mut dyn Backend) {
        for (entry, rules) in std::mem::take(&mut self.per_shard[index]) {
            match shard.adopt(&entry, rules, now_ns) {
                Ok(keep) => {
                    self.unwanted += usize::from(!keep);
                    self.kept_rules.extend(rules);
                    self.kept.push(entry);
                }
                Err(e) => {
                    tracing::debug!(flow = entry.flow, error = %e, "a flow of an earlier run can't be put back under its id");
                    let finals = remove_rules(backend, &[rules.map(Some)], &mut self.not_removed);
                    self.left.push((entry, finals[0]));
                }
            }
        }
    }

    /// Ends, in `shard` (any one: the first), the flows that can't be taken
    /// over, each with its one record. After `adopt_into` of every shard.
    pub fn end_left(&mut self, shard: &mut Shard, now_ns: u64) {
        let left = std::mem::take(&mut self.left);
        if !left.is_empty() {
            tracing::warn!(
                flows = left.len(),
                "flows of an earlier run that can't be taken over (another number of workers, no room under their ids, rules gone or not as the journal has them): their rules are removed and they end now with their records"
            );
        }
        for (entry, finals) in left {
            shard.end_left(&entry, finals, now_ns);
            self.ended.push(entry);
        }
    }

    /// Rewrites the journal with the flows taken over and those just ended
    /// (until their gone lines), and hands it and the rules taken over to
    /// the offload thread's `coordinator`. Whether there is a journal.
    pub fn finish(self, coordinator: &mut Coordinator) -> Result<bool, String> {
        if self.unknown > 0 {
            tracing::info!(rules = self.unknown, "rules of an earlier run the journal doesn't know: removed");
        }
        if !self.kept.is_empty() {
            tracing::info!(
                flows = self.kept.len(),
                rules = self.kept_rules.len(),
                not_as_configured = self.unwanted,
                "flows of an earlier run taken over, rules and all (those this configuration wouldn't put in so go on in software)"
            );
        }
        coordinator.adopt(&self.kept_rules);
        if !self.not_removed.is_empty() {
            tracing::warn!(
                rules = self.not_removed.len(),
                "rules of an earlier run could not be removed at start: they act on traffic no flow counts until they go, and are asked for again each poll"
            );
            coordinator.remove_leftover(self.not_removed);
        }
        let Some(mut journal) = self.journal else { return Ok(false) };
        journal.rewrite(self.kept.iter().chain(&self.ended)).map_err(|e| e.to_string())?;
        coordinator.set_journal(journal);
        Ok(true)
    }
}

/// Removes flows' rules (`pairs`, each by direction) in one backend call;
/// each flow's final counters by direction: none where a rule was missing,
/// the counters read at start where its removal gave none. Rules whose
/// removal failed go into `failed`.
fn remove_rules(
    backend: &mut dyn Backend,
    pairs: &[[Option<AdoptedRule>; 2]],
    failed: &mut Vec<Cookie>,
) -> Vec<[Option<RuleCounters>; 2]> {
    let cookies: Vec<Cookie> = pairs.iter().flatten().flatten().map(|r| r.cookie).collect();
    let mut results = remove_noting_failures(backend, &cookies, failed).into_iter();
    pairs
        .iter()
        .map(|pair| {
            pair.each_ref().map(|r| {
                let r = r.as_ref()?;
                Some(results.next().and_then(|res| res.ok().flatten()).unwrap_or(r.counters))
            })
        })
        .collect()
}

/// Removes `cookies` in one backend call, each one's result in order;
/// those whose removal failed (not already gone) go into `failed`.
fn remove_noting_failures(
    backend: &mut dyn Backend,
    cookies: &[Cookie],
    failed: &mut Vec<Cookie>,
) -> Vec<Result<Option<RuleCounters>, BackendError>> {
    let results = backend.remove(cookies);
    for (cookie, result) in cookies.iter().zip(&results) {
        if result.as_ref().is_err_and(|e| !e.is_unknown_rule()) {
            failed.push(*cookie);
        }
    }
    results
}
