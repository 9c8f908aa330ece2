//! Flow context: what other code or an external application attaches to
//! a flow (a label, a verdict, free-form metadata). Kept out of line so
//! flows without context cost nothing.

use crate::table::FlowId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

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
}

/// Context by flow id.
#[derive(Debug, Default)]
pub struct ContextStore {
    map: HashMap<FlowId, FlowContext>,
}

impl ContextStore {
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
        let mut merged = self.map.get(&id).cloned().unwrap_or_default();
        merged.merge(update);
        if merged.metadata.len() > MAX_METADATA_ENTRIES {
            return Err(ContextError::TooManyEntries(merged.metadata.len()));
        }
        self.map.insert(id, merged);
        Ok(&self.map[&id])
    }

    pub fn remove(&mut self, id: FlowId) -> Option<FlowContext> {
        self.map.remove(&id)
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
