//! The offload engine: classifier, offload decisions, counters polling,
//! aging, and the records and events flows end in.

pub mod classifier;
pub mod engine;
pub mod record;

pub use classifier::{Classifier, Decision};
pub use engine::{Engine, EngineConfig, EngineError, EngineStats, FlowView, OffloadState, BATCH};
pub use record::{DirRecord, EndReason, Event, FlowRecord, OffloadRecord};
