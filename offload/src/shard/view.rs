//! A shard's flows seen from outside: the view the control socket shows,
//! and the record a flow ends in.

use super::*;

/// A snapshot of one flow for queries.
#[derive(Debug, Clone, Serialize)]
pub struct FlowView {
    pub id: FlowId,
    pub key: String,
    pub proto: u8,
    pub src: std::net::IpAddr,
    pub dst: std::net::IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub vlan: u16,
    pub ingress: u8,
    pub stage: Stage,
    pub tcp_state: flowtable_sw::TcpState,
    pub class: Option<String>,
    /// See `FlowRecord::class_removed_in_generation`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class_removed_in_generation: Option<u64>,
    pub start_ns: u64,
    pub last_ns: u64,
    pub orig: DirRecord,
    pub reply: DirRecord,
    pub packets: u64,
    pub bytes: u64,
    pub offload: Option<OffloadState>,
    /// Cookies of the flow's rules, one per direction that has one.
    pub rules: Vec<String>,
    pub context: Option<FlowContext>,
    pub idle_deadline_ns: u64,
}

impl Shard {
    pub(super) fn build_record(
        &self,
        id: FlowId,
        flow: &Flow,
        state: Option<&OffloadState>,
        context: Option<FlowContext>,
        end_reason: EndReason,
    ) -> FlowRecord {
        self.record_of(id, flow, &self.table.framing(id), state, context, end_reason)
    }

    /// `build_record` for a flow that may be in no table (`framing` given).
    pub(super) fn record_of(
        &self,
        id: FlowId,
        flow: &Flow,
        framing: &flowtable_sw::Framing,
        state: Option<&OffloadState>,
        context: Option<FlowContext>,
        end_reason: EndReason,
    ) -> FlowRecord {
        let (src, dst, sport, dport) = endpoints_of(flow);
        let init = flow.initiator();
        let offload = state.filter(|s| s.installed_ns != 0).map(|s| OffloadRecord {
            backend: self.backend.name.clone(),
            action: s.action,
            placement: [s.placement_or_last(init), s.placement_or_last(init.reverse())],
            hw_counters: s.hw_counters,
            installed_ns: s.installed_ns,
            removed_ns: s.removed_ns.filter(|_| end_reason != EndReason::Shutdown || s.removed_ns.is_some()),
            teardown: (flow.key.proto == 6).then_some(if self.backend.capabilities.tcp_teardown_to_software {
                Teardown::FinRst
            } else {
                Teardown::IdleOnly
            }),
            adopted_ns: s.adopted_ns,
        });
        FlowRecord {
            id,
            proto: flow.key.proto,
            src,
            dst,
            sport,
            dport,
            vlan: flow.key.vlan_outer,
            vlan_inner: flow.key.vlan_inner,
            ingress: flow.port(init),
            start_ns: framing.first_ns,
            end_ns: flow.last_ns(),
            orig: DirRecord::of(flow, init, framing),
            reply: DirRecord::of(flow, init.reverse(), framing),
            tcp_state: flow.tcp,
            class: self.classifier.class_name(flow.class).map(str::to_string),
            class_removed_in_generation: self.classifier.removed_in_generation(flow.class),
            offload,
            refused: state.and_then(|s| s.refusal.as_ref()).map(|r| r.to_string()),
            context,
            end_reason,
            kind: RecordKind::Final,
        }
    }

    pub fn flow(&self, id: FlowId) -> Option<FlowView> {
        let flow = self.table.get(id)?;
        Some(self.view(id, flow))
    }

    pub(super) fn view(&self, id: FlowId, flow: &Flow) -> FlowView {
        let (src, dst, sport, dport) = endpoints_of(flow);
        let init = flow.initiator();
        let framing = self.table.framing(id);
        let offload = self.offloads.get(&id).cloned();
        let rules = offload
            .as_ref()
            .map(|s| {
                DIRS.iter()
                    .filter(|d| s.placement[d.index()].is_some())
                    .map(|d| hex(&Cookie::new(self.cfg.instance_id, id.0, *d).to_bytes()))
                    .collect()
            })
            .unwrap_or_default();
        FlowView {
            id,
            key: flow.key.to_string(),
            proto: flow.key.proto,
            src,
            dst,
            sport,
            dport,
            vlan: flow.key.vlan_outer,
            ingress: flow.port(init),
            stage: flow.stage(),
            tcp_state: flow.tcp,
            class: self.classifier.class_name(flow.class).map(str::to_string),
            class_removed_in_generation: self.classifier.removed_in_generation(flow.class),
            start_ns: framing.first_ns,
            last_ns: flow.last_ns(),
            orig: DirRecord::of(flow, init, &framing),
            reply: DirRecord::of(flow, init.reverse(), &framing),
            packets: flow.packets(),
            bytes: flow.bytes(),
            offload,
            rules,
            context: self.contexts.get(id).cloned(),
            idle_deadline_ns: self.table.deadline(flow),
        }
    }
}

impl OffloadState {
    /// Where a direction's rule is, or was before it was removed.
    pub(super) fn placement_or_last(&self, dir: Direction) -> Option<Placement> {
        self.placement[dir.index()].or(self.installed_placement[dir.index()])
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
