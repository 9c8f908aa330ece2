//! Flow context: what other code or an external application attaches to
//! a flow (a label, a verdict, free-form metadata). Kept out of line so
//! flows without context cost nothing.

use crate::table::FlowId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// An application's decision for a flow; overrides the classifier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Offload with the classifier's action (or `pass` if none).
    Offload,
    /// Offload with a drop rule.
    Drop,
    /// Keep the flow in software (e.g. DPI still inspecting).
    Software,
}

impl Verdict {
    /// As the control socket and `label --verdict` write it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Offload => "offload",
            Verdict::Drop => "drop",
            Verdict::Software => "software",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowContext {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

impl FlowContext {
    pub fn is_empty(&self) -> bool {
        self.label.is_none() && self.verdict.is_none() && self.metadata.is_empty()
    }

    /// Applies an update: set fields replace, `None` leaves them alone.
    pub fn merge(&mut self, update: FlowContext) {
        if update.label.is_some() {
            self.label = update.label;
        }
        if update.verdict.is_some() {
            self.verdict = update.verdict;
        }
        self.metadata.extend(update.metadata);
    }
}

/// Limits on what an application may attach, so a client can't grow the
/// daemon without bound.
pub const MAX_LABEL_LEN: usize = 256;
pub const MAX_METADATA_ENTRIES: usize = 64;
pub const MAX_METADATA_LEN: usize = 1024;
/// What all contexts may hold together, by default (per run: shared out
/// among the workers' shards).
pub const DEFAULT_MAX_TOTAL_BYTES: usize = 64 << 20;
/// What a context and each metadata entry cost beside their text (the
/// map entries and string headers), counted toward the total.
const CONTEXT_OVERHEAD: usize = 96;
const ENTRY_OVERHEAD: usize = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ContextError {
    #[error("no flow with id {0}")]
    NoSuchFlow(FlowId),
    #[error("label is {0} bytes; the limit is {MAX_LABEL_LEN}")]
    LabelTooLong(usize),
    #[error("metadata would have {0} entries; the limit is {MAX_METADATA_ENTRIES}")]
    TooManyEntries(usize),
    #[error("metadata entry {0:?} is longer than {MAX_METADATA_LEN} bytes")]
    EntryTooLong(String),
    #[error(
        "flow contexts would hold {would} bytes; the limit is {limit} (table.max_context_bytes, shared by the \
         workers): remove context from other flows or raise the limit"
    )]
    StoreFull { would: usize, limit: usize },
}

/// Context by flow id, bounded in total.
#[derive(Debug)]
pub struct ContextStore {
    map: crate::table::FlowMap<FlowContext>,
    /// What the contexts hold, by `cost`.
    bytes: usize,
    limit: usize,
}

impl Default for ContextStore {
    fn default() -> Self {
        ContextStore::with_limit(DEFAULT_MAX_TOTAL_BYTES)
    }
}

/// What a context holds, for the total bound.
fn cost(c: &FlowContext) -> usize {
    CONTEXT_OVERHEAD
        + c.label.as_ref().map_or(0, String::len)
        + c.metadata.iter().map(|(k, v)| ENTRY_OVERHEAD + k.len() + v.len()).sum::<usize>()
}

impl ContextStore {
    /// A store whose contexts hold at most `limit` bytes together.
    pub fn with_limit(limit: usize) -> ContextStore {
        ContextStore { map: Default::default(), bytes: 0, limit }
    }

    /// Bytes the contexts hold now.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn get(&self, id: FlowId) -> Option<&FlowContext> {
        self.map.get(&id)
    }

    /// Merges `update` into the flow's context after checking the limits;
    /// on error nothing changes.
    pub fn update(&mut self, id: FlowId, update: FlowContext) -> Result<&FlowContext, ContextError> {
        if let Some(l) = &update.label {
            if l.len() > MAX_LABEL_LEN {
                return Err(ContextError::LabelTooLong(l.len()));
            }
        }
        for (k, v) in &update.metadata {
            if k.len() + v.len() > MAX_METADATA_LEN {
                return Err(ContextError::EntryTooLong(k.clone()));
            }
        }
        let old = self.map.get(&id);
        let old_cost = old.map_or(0, cost);
        let mut merged = old.cloned().unwrap_or_default();
        merged.merge(update);
        if merged.metadata.len() > MAX_METADATA_ENTRIES {
            return Err(ContextError::TooManyEntries(merged.metadata.len()));
        }
        let would = self.bytes - old_cost + cost(&merged);
        if would > self.limit && would > self.bytes {
            return Err(ContextError::StoreFull { would, limit: self.limit });
        }
        self.bytes = would;
        self.map.insert(id, merged);
        Ok(&self.map[&id])
    }

    pub fn remove(&mut self, id: FlowId) -> Option<FlowContext> {
        let c = self.map.remove(&id)?;
        self.bytes -= cost(&c);
        Some(c)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_together_are_bounded_and_removal_frees_room() {
        let mut store = ContextStore::with_limit(20_000);
        let big = |n: usize| FlowContext {
            metadata: (0..n).map(|i| (format!("k{i}"), "v".repeat(900))).collect(),
            ..FlowContext::default()
        };
        let mut fitted = 0;
        let err = loop {
            match store.update(FlowId::new(fitted, 1), big(4)) {
                Ok(_) => fitted += 1,
                Err(e) => break e,
            }
        };
        assert_eq!(fitted, 5, "each context holds about 3.9 kB");
        assert!(matches!(err, ContextError::StoreFull { limit: 20_000, .. }), "{err}");
        assert!(err.to_string().contains("table.max_context_bytes"), "{err}");
        assert!(store.bytes() <= 20_000);
        assert!(store.get(FlowId::new(fitted, 1)).is_none(), "a refused update changes nothing");
        // Shrinking a context is always allowed; removing one frees its room.
        store.remove(FlowId::new(0, 1));
        assert!(store.update(FlowId::new(fitted, 1), big(4)).is_ok());
        let before = store.bytes();
        store.update(FlowId::new(1, 1), FlowContext { label: Some("x".into()), ..FlowContext::default() }).unwrap();
        assert!(store.bytes() > before);
    }

    #[test]
    fn updates_merge_and_limits_leave_context_unchanged() {
        let mut s = ContextStore::default();
        let id = FlowId::new(1, 1);
        s.update(id, FlowContext { label: Some("web".into()), ..Default::default() }).unwrap();
        let mut md = BTreeMap::new();
        md.insert("app".to_string(), "http".to_string());
        s.update(id, FlowContext { metadata: md, ..Default::default() }).unwrap();
        let c = s.get(id).unwrap();
        assert_eq!(c.label.as_deref(), Some("web"));
        assert_eq!(c.metadata["app"], "http");
        let err =
            s.update(id, FlowContext { label: Some("x".repeat(MAX_LABEL_LEN + 1)), ..Default::default() }).unwrap_err();
        assert_eq!(err, ContextError::LabelTooLong(MAX_LABEL_LEN + 1));
        assert_eq!(s.get(id).unwrap().label.as_deref(), Some("web"));
    }
}
