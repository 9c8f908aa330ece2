//! The offload engine: classifier, shards (a worker's flow table, its
//! offload decisions and aging), the offload coordinator that owns the
//! backend, the links between them, and the records and events flows end in.

pub mod classifier;
pub mod coordinator;
pub mod engine;
pub mod journal;
pub mod link;
pub mod record;
pub mod shard;
pub mod takeover;

pub use classifier::{Classifier, Decision};
pub use coordinator::{Coordinator, CoordinatorConfig, CoordinatorStats, OffloadStatus};
pub use engine::{coordinator_config, Engine};
pub use link::{link, OffloadLink, Request, Response, ShardLink, QUEUE_DEPTH};
pub use record::{DirRecord, EndReason, Event, FlowRecord, OffloadRecord, RecordKind, Teardown};
pub use shard::{
    BackendInfo, EngineConfig, EngineError, EngineStats, FlowView, OffloadState, Rate, Shard, Then, BATCH, SAMPLE_NS,
};
