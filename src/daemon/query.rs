//! Answers to the read-only control requests, computed by each worker
//! from its shard's own state and merged: flow listings (filtered, sorted,
//! paged: each shard offers its best `offset + limit`, the merge keeps the
//! page) and one flow in full (from the shard its id names).

use super::filter::{Filter, FlowFacts, Snapshot};
use crate::control::{FlowSummary, FlowsPage, SortKey};
use flowtable_hw::Placement;
use flowtable_offload::{Event, FlowView, OffloadState, Shard};
use flowtable_sw::{Flow, FlowId, Stage};
use serde_json::Value;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Where a flow's rules are: `hardware`, `kernel-software`, `mixed` or `none`.
pub fn placement_of(state: Option<&OffloadState>) -> &'static str {
    let Some(s) = state else { return "none" };
    let mut hw = false;
    let mut ksw = false;
    for p in s.placement.iter().flatten() {
        match p {
            Placement::Hardware => hw = true,
            Placement::KernelSoftware => ksw = true,
        }
    }
    match (hw, ksw) {
        (false, false) => "none",
        (true, false) => "hardware",
        (false, true) => "kernel-software",
        (true, true) => "mixed",
    }
}

/// The filter's view of a shard.
pub struct EngineFacts<'a>(pub &'a Shard);

impl FlowFacts for EngineFacts<'_> {
    fn first_ns(&self, id: FlowId) -> u64 {
        self.0.table().first_ns(id)
    }
    fn placement(&self, id: FlowId, flow: &Flow) -> &'static str {
        // Only offloaded flows have rules in place; the rest need no lookup.
        if flow.stage() != Stage::Offloaded {
            return "none";
        }
        placement_of(self.0.offload_state(id))
    }
    fn class(&self, flow: &Flow) -> Option<&str> {
        self.0.classifier().class_name(flow.class)
    }
    fn label(&self, id: FlowId) -> Option<&str> {
        self.0.context(id).and_then(|c| c.label.as_deref())
    }
}

/// Each event's flow as it is now, for subscribers' filters: `None` for
/// an expiry (its record is the flow) and for a flow already gone (its
/// expiry follows in the same batch).
pub fn event_flows(shard: &Shard, events: &[Event], now_ns: u64) -> Vec<Option<Snapshot>> {
    let facts = EngineFacts(shard);
    events
        .iter()
        .map(|ev| {
            let id = match ev {
                Event::Expired { .. } => return None,
                other => event_flow(other),
            };
            shard.table().get(id).map(|flow| Snapshot::of(id, flow, &facts, now_ns))
        })
        .collect()
}

/// The flow an event is about.
pub fn event_flow(ev: &Event) -> FlowId {
    match ev {
        Event::New { id, .. }
        | Event::Classified { id, .. }
        | Event::Offloaded { id, .. }
        | Event::Refused { id, .. }
        | Event::Unoffloaded { id, .. } => *id,
        Event::Expired { record, .. } => record.id,
    }
}

/// Mean bytes per second from the flow's first packet to `now` (at
/// least a millisecond, so a new flow's rate is finite).
pub fn mean_bytes_per_s(bytes: u64, start_ns: u64, now_ns: u64) -> f64 {
    bytes as f64 * 1e9 / now_ns.saturating_sub(start_ns).max(1_000_000) as f64
}

fn sort_value(sort: SortKey, id: FlowId, flow: &Flow, engine: &Shard, now_ns: u64) -> u64 {
    let first_ns = || engine.table().first_ns(id);
    match sort {
        SortKey::Bytes => flow.bytes(),
        SortKey::Packets => flow.packets(),
        // Milli-bytes per second: an integer order as fine as the f64's.
        SortKey::Rate => (mean_bytes_per_s(flow.bytes(), first_ns(), now_ns) * 1e3) as u64,
        SortKey::Age => now_ns.saturating_sub(first_ns()),
    }
}

pub fn summary(view: &FlowView, engine: &Shard, now_ns: u64) -> FlowSummary {
    let action = match view.stage {
        Stage::Queued | Stage::Installing | Stage::Offloaded | Stage::Removing => {
            view.offload.as_ref().map(|o| o.action)
        }
        _ => None,
    };
    let current = engine.current_rate(view.id);
    FlowSummary {
        id: view.id,
        proto: view.proto,
        src: view.src.to_string(),
        dst: view.dst.to_string(),
        sport: view.sport,
        dport: view.dport,
        vlan: view.vlan,
        ingress: view.ingress,
        stage: view.stage,
        placement: placement_of(view.offload.as_ref()).to_string(),
        action,
        class: view.class.clone(),
        class_removed_in_generation: view.class_removed_in_generation,
        label: engine.context(view.id).and_then(|c| c.label.clone()),
        packets: view.packets,
        bytes: view.bytes,
        orig_packets: view.orig.packets,
        orig_bytes: view.orig.bytes,
        reply_packets: view.reply.packets,
        reply_bytes: view.reply.bytes,
        sw_packets: view.orig.sw_packets + view.reply.sw_packets,
        hw_packets: view.orig.hw_packets + view.reply.hw_packets,
        start_ns: view.start_ns,
        last_ns: view.last_ns,
        age_ns: now_ns.saturating_sub(view.start_ns),
        mean_bytes_per_s: mean_bytes_per_s(view.bytes, view.start_ns, now_ns),
        mean_bits_per_s: 8.0 * mean_bytes_per_s(view.bytes, view.start_ns, now_ns),
        hw_bytes: view.orig.hw_bytes + view.reply.hw_bytes,
        used_ns: now_ns.saturating_sub(view.last_ns),
        expires_in_ns: view.idle_deadline_ns.saturating_sub(now_ns),
        current_bytes_per_s: current.map(|r| r.bytes_per_s),
        current_bits_per_s: current.map(|r| 8.0 * r.bytes_per_s),
        current_packets_per_s: current.map(|r| r.packets_per_s),
        icmp_type: view.orig.icmp_type,
        icmp_code: view.orig.icmp_code,
    }
}

/// One page of the flows the filter takes, largest first by `sort`
/// (ties by id). Keeps only `offset + limit` candidates while scanning,
/// so a page of the top 100 of a million flows costs one pass and a
/// small heap.
pub fn list(engine: &Shard, filter: &Filter, sort: SortKey, offset: usize, limit: usize, now_ns: u64) -> FlowsPage {
    let keep = offset.saturating_add(limit);
    let facts = EngineFacts(engine);
    let mut heap: Ranked = BinaryHeap::with_capacity(keep.min(1 << 16) + 1);
    let mut total = 0usize;
    // The largest flows by bytes are kept by the table as they grow: when
    // there are enough of them, they are the answer and no scan is needed.
    if sort == SortKey::Bytes && filter.is_empty() {
        let (_, largest) = engine.table().largest_by_bytes();
        let largest: Vec<(FlowId, &Flow)> = largest.collect();
        if largest.len() >= keep {
            for (id, flow) in largest {
                push_bounded(&mut heap, keep, Reverse((flow.bytes(), Reverse(id))));
            }
            return page(engine, heap, engine.table().len(), offset, sort, now_ns);
        }
    }
    for (id, flow) in engine.flows() {
        if !filter.matches(id, flow, &facts, now_ns) {
            continue;
        }
        total += 1;
        if keep == 0 {
            continue;
        }
        push_bounded(&mut heap, keep, Reverse((sort_value(sort, id, flow, engine, now_ns), Reverse(id))));
    }
    page(engine, heap, total, offset, sort, now_ns)
}

type Ranked = BinaryHeap<Reverse<(u64, Reverse<FlowId>)>>;

/// Keeps the `keep` best items (the heap's top is the worst kept).
fn push_bounded(heap: &mut Ranked, keep: usize, item: Reverse<(u64, Reverse<FlowId>)>) {
    if keep == 0 {
        return;
    }
    if heap.len() < keep {
        heap.push(item);
    } else if let Some(worst) = heap.peek() {
        if item < *worst {
            heap.pop();
            heap.push(item);
        }
    }
}

fn page(engine: &Shard, heap: Ranked, total: usize, offset: usize, sort: SortKey, now_ns: u64) -> FlowsPage {
    // Ascending order of Reverse(..) is best first.
    let flows = heap
        .into_sorted_vec()
        .into_iter()
        .skip(offset)
        .filter_map(|Reverse((_, Reverse(id)))| engine.flow(id))
        .map(|v| summary(&v, engine, now_ns))
        .collect();
    FlowsPage { total, offset, sort, now_ns, flows }
}

/// Merges the shards' pages (each the best `offset + limit` of its own
/// flows, best first) into the page asked for.
pub fn merge(pages: Vec<FlowsPage>, sort: SortKey, offset: usize, limit: usize, now_ns: u64) -> FlowsPage {
    let total = pages.iter().map(|p| p.total).sum();
    let mut flows: Vec<FlowSummary> = pages.into_iter().flat_map(|p| p.flows).collect();
    let value = |f: &FlowSummary| match sort {
        SortKey::Bytes => f.bytes,
        SortKey::Packets => f.packets,
        SortKey::Rate => (f.mean_bytes_per_s * 1e3) as u64,
        SortKey::Age => f.age_ns,
    };
    flows.sort_by(|a, b| value(b).cmp(&value(a)).then(a.id.cmp(&b.id)));
    let flows = flows.into_iter().skip(offset).take(limit).collect();
    FlowsPage { total, offset, sort, now_ns, flows }
}

/// Everything about one flow: the engine's view (counters split by
/// software and hardware, offload state with the backend's refusal,
/// rule cookies, context) plus the backend's name, placement, age and rate.
pub fn detail(engine: &Shard, id: FlowId, now_ns: u64) -> Option<Value> {
    let view = engine.flow(id)?;
    let placement = placement_of(view.offload.as_ref());
    let age_ns = now_ns.saturating_sub(view.start_ns);
    let rate = mean_bytes_per_s(view.bytes, view.start_ns, now_ns);
    let mut v = serde_json::to_value(&view).ok()?;
    if let Value::Object(m) = &mut v {
        m.insert("backend".into(), Value::from(engine.backend().name.as_str()));
        m.insert("placement".into(), Value::from(placement));
        m.insert("now_ns".into(), Value::from(now_ns));
        m.insert("age_ns".into(), Value::from(age_ns));
        m.insert("mean_bytes_per_s".into(), Value::from(rate));
        m.insert("mean_bits_per_s".into(), Value::from(8.0 * rate));
        m.insert("used_ns".into(), Value::from(now_ns.saturating_sub(view.last_ns)));
        m.insert("expires_in_ns".into(), Value::from(view.idle_deadline_ns.saturating_sub(now_ns)));
        if let Some(c) = engine.current_rate(id) {
            m.insert("current_bytes_per_s".into(), Value::from(c.bytes_per_s));
            m.insert("current_bits_per_s".into(), Value::from(8.0 * c.bytes_per_s));
            m.insert("current_packets_per_s".into(), Value::from(c.packets_per_s));
        }
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowtable_offload::Engine;
    use flowtable_sw::{FlowKey, PacketInfo};
    use rand::{Rng, SeedableRng};

    /// The top flows by bytes come from the table's list of largest flows
    /// when it holds enough; they must be exactly what a full scan finds.
    #[test]
    fn top_by_bytes_without_a_scan_equals_the_scan() {
        let config = flowtable_config::parse("t", r#"{"table": {"max_flows": 50000}}"#).unwrap();
        let mut engine = Engine::from_config(&config, crate::backend::build(&config).unwrap()).unwrap();
        let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(5);
        for i in 0..300_000u64 {
            let port = 1000 + (rng.gen::<f64>().powi(2) * 20_000.0) as u16;
            let (key, dir) = FlowKey::from_v4([10, 0, 0, 1].into(), [10, 0, 0, 2].into(), port, 53, 17);
            let len = rng.gen_range(64..9000);
            let p = PacketInfo::whole(key, dir, 0, len, 0);
            engine.process(&p, i);
        }
        let (bar, largest) = engine.table().largest_by_bytes();
        assert!(largest.count() >= 150, "the list is long enough for the fast path (bar {bar})");
        let all = Filter::parse("").unwrap();
        for (offset, limit) in [(0, 100), (50, 100), (0, 1)] {
            let fast = list(engine.shard(), &all, SortKey::Bytes, offset, limit, 0);
            let mut every: Vec<(u64, FlowId)> = engine.flows().map(|(id, f)| (f.bytes(), id)).collect();
            every.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            let expected: Vec<FlowId> = every.iter().skip(offset).take(limit).map(|(_, id)| *id).collect();
            let got: Vec<FlowId> = fast.flows.iter().map(|f| f.id).collect();
            assert_eq!(got, expected, "offset {offset} limit {limit}");
            assert_eq!(fast.total, engine.table().len());
        }
        // Past what the list holds, the scan answers, and agrees too.
        let deep = list(engine.shard(), &all, SortKey::Bytes, 0, 20_000, 0);
        assert_eq!(deep.flows.len(), 20_000.min(engine.table().len()));
    }
}
