//! rte_flow action lists: what a rule does with its packets (drop, queue,
//! mark, send to another port, mirror) plus the COUNT and AGE actions that
//! let the backend read the rule's traffic back.

use core::ffi::c_void;
use core::ptr;

use dpdk_sys as sys;
use sys::rte_flow_action_type as act;

pub use crate::dpdk_config::PortAction;

/// Where the packets of a rule go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fate {
    Drop,
    /// Deliver to an rx queue of the ingress port.
    Queue {
        queue: u16,
    },
    /// Mark with `id` and deliver to `queue` (partial offload).
    Mark {
        id: u32,
        queue: u16,
    },
    /// Send out of ethdev port `port`.
    Port {
        port: u16,
        how: PortAction,
    },
    /// Copy to ethdev port `port`, deliver the original to `queue`.
    Mirror {
        port: u16,
        how: PortAction,
        queue: u16,
    },
}

/// The kind of a fate without its values: part of the PMD capability cache key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FateKind {
    Drop,
    Queue,
    Mark,
    Port(PortAction),
    Mirror(PortAction),
}

impl Fate {
    pub fn kind(&self) -> FateKind {
        match *self {
            Fate::Drop => FateKind::Drop,
            Fate::Queue { .. } => FateKind::Queue,
            Fate::Mark { .. } => FateKind::Mark,
            Fate::Port { how, .. } => FateKind::Port(how),
            Fate::Mirror { how, .. } => FateKind::Mirror(how),
        }
    }
}

/// An action list's shape: the unit of the PMD capability cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ActionShape {
    pub fate: FateKind,
    pub count: bool,
    pub age: bool,
}

impl ActionShape {
    pub fn name(&self) -> String {
        let mut s = String::new();
        if self.count {
            s.push_str("count/");
        }
        if self.age {
            s.push_str("age/");
        }
        s.push_str(match self.fate {
            FateKind::Drop => "drop",
            FateKind::Queue => "queue",
            FateKind::Mark => "mark/queue",
            FateKind::Port(PortAction::PortId) => "port_id",
            FateKind::Port(PortAction::RepresentedPort) => "represented_port",
            FateKind::Mirror(PortAction::PortId) => "sample(port_id)/queue",
            FateKind::Mirror(PortAction::RepresentedPort) => "sample(represented_port)/queue",
        });
        s
    }
}

/// What an action list is built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActionPlan {
    pub fate: Fate,
    pub count: bool,
    /// AGE timeout in seconds, when aging by the NIC is asked for.
    pub age_s: Option<u32>,
}

impl ActionPlan {
    pub fn shape(&self) -> ActionShape {
        ActionShape { fate: self.fate.kind(), count: self.count, age: self.age_s.is_some() }
    }
}

#[derive(Default)]
struct Confs {
    queue: sys::rte_flow_action_queue,
    mark: sys::rte_flow_action_mark,
    count: sys::rte_flow_action_count,
    age: sys::rte_flow_action_age,
    port_id: sys::rte_flow_action_port_id,
    ethdev: sys::rte_flow_action_ethdev,
    sample: sys::rte_flow_action_sample,
}

/// An END-terminated rte_flow action array with the configurations it
/// points to (boxed, so the pointers survive moves).
pub struct FlowActions {
    // Read by the PMD through the pointers in `actions`.
    #[allow(dead_code)]
    confs: Box<Confs>,
    /// The sub-actions of SAMPLE (mirroring); its buffer is what
    /// `confs.sample.actions` points at.
    #[allow(dead_code)]
    sample_actions: Vec<sys::rte_flow_action>,
    actions: Vec<sys::rte_flow_action>,
    plan: ActionPlan,
}

// The raw pointers point into `confs` and `sample_actions`, owned here.
// SAFETY: `confs` and the `sample_actions` buffer are heap memory that moves with the value and is
// read only through `actions`; nothing else points into it, so the value can go to another thread.
unsafe impl Send for FlowActions {}

fn action(ty: act::Type, conf: *const c_void) -> sys::rte_flow_action {
    sys::rte_flow_action { type_: ty, conf }
}

fn conf<T>(c: &T) -> *const c_void {
    c as *const T as *const c_void
}

impl FlowActions {
    pub fn build(plan: ActionPlan) -> FlowActions {
        let mut c = Box::<Confs>::default();
        let mut sample_actions = Vec::new();
        let mut actions = Vec::with_capacity(5);
        if plan.count {
            actions.push(action(act::RTE_FLOW_ACTION_TYPE_COUNT, conf(&c.count)));
        }
        if let Some(timeout) = plan.age_s {
            // 24-bit field in seconds.
            c.age.set_timeout(timeout.min(0x00ff_ffff));
            actions.push(action(act::RTE_FLOW_ACTION_TYPE_AGE, conf(&c.age)));
        }
        let port_action = |c: &mut Confs, port: u16, how: PortAction| -> sys::rte_flow_action {
            match how {
                PortAction::PortId => {
                    c.port_id.id = port as u32;
                    action(act::RTE_FLOW_ACTION_TYPE_PORT_ID, conf(&c.port_id))
                }
                PortAction::RepresentedPort => {
                    c.ethdev.port_id = port;
                    action(act::RTE_FLOW_ACTION_TYPE_REPRESENTED_PORT, conf(&c.ethdev))
                }
            }
        };
        match plan.fate {
            Fate::Drop => actions.push(action(act::RTE_FLOW_ACTION_TYPE_DROP, ptr::null())),
            Fate::Queue { queue } => {
                c.queue.index = queue;
                actions.push(action(act::RTE_FLOW_ACTION_TYPE_QUEUE, conf(&c.queue)));
            }
            Fate::Mark { id, queue } => {
                c.mark.id = id;
                c.queue.index = queue;
                actions.push(action(act::RTE_FLOW_ACTION_TYPE_MARK, conf(&c.mark)));
                actions.push(action(act::RTE_FLOW_ACTION_TYPE_QUEUE, conf(&c.queue)));
            }
            Fate::Port { port, how } => {
                let a = port_action(&mut c, port, how);
                actions.push(a);
            }
            Fate::Mirror { port, how, queue } => {
                let a = port_action(&mut c, port, how);
                sample_actions.push(a);
                sample_actions.push(action(act::RTE_FLOW_ACTION_TYPE_END, ptr::null()));
                // Every packet (ratio 1) is copied to the port.
                c.sample.ratio = 1;
                c.sample.actions = sample_actions.as_ptr();
                c.queue.index = queue;
                actions.push(action(act::RTE_FLOW_ACTION_TYPE_SAMPLE, conf(&c.sample)));
                actions.push(action(act::RTE_FLOW_ACTION_TYPE_QUEUE, conf(&c.queue)));
            }
        }
        actions.push(action(act::RTE_FLOW_ACTION_TYPE_END, ptr::null()));
        FlowActions { confs: c, sample_actions, actions, plan }
    }

    pub fn plan(&self) -> ActionPlan {
        self.plan
    }

    pub fn actions(&self) -> &[sys::rte_flow_action] {
        &self.actions
    }

    pub fn as_ptr(&self) -> *const sys::rte_flow_action {
        self.actions.as_ptr()
    }

    /// The masks array for an actions template: every configuration field
    /// fixed per rule is given (non-null conf = "this value varies per rule").
    pub fn template_masks(&self) -> Vec<sys::rte_flow_action> {
        self.actions.clone()
    }

    /// The COUNT action alone, for rte_flow_query.
    pub fn count_query_action() -> sys::rte_flow_action {
        action(act::RTE_FLOW_ACTION_TYPE_COUNT, ptr::null())
    }

    /// The AGE action alone, for rte_flow_query.
    pub fn age_query_action() -> sys::rte_flow_action {
        action(act::RTE_FLOW_ACTION_TYPE_AGE, ptr::null())
    }

    #[cfg(test)]
    fn sample_len(&self) -> usize {
        self.sample_actions.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn types(a: &FlowActions) -> Vec<act::Type> {
        a.actions().iter().map(|x| x.type_).collect()
    }

    #[test]
    fn drop_with_count_and_age() {
        let a = FlowActions::build(ActionPlan { fate: Fate::Drop, count: true, age_s: Some(30) });
        assert_eq!(
            types(&a),
            vec![
                act::RTE_FLOW_ACTION_TYPE_COUNT,
                act::RTE_FLOW_ACTION_TYPE_AGE,
                act::RTE_FLOW_ACTION_TYPE_DROP,
                act::RTE_FLOW_ACTION_TYPE_END
            ]
        );
        // SAFETY: actions()[1] is AGE, whose conf points at the rte_flow_action_age in `a`'s boxed confs.
        let age = unsafe { &*(a.actions()[1].conf as *const sys::rte_flow_action_age) };
        assert_eq!(age.timeout(), 30);
        assert!(a.actions()[2].conf.is_null());
        assert_eq!(a.plan().shape().name(), "count/age/drop");
    }

    #[test]
    fn age_timeout_clamped_to_its_24_bits() {
        let a = FlowActions::build(ActionPlan { fate: Fate::Drop, count: false, age_s: Some(u32::MAX) });
        // SAFETY: actions()[0] is AGE, whose conf points at the rte_flow_action_age in `a`'s boxed confs.
        let age = unsafe { &*(a.actions()[0].conf as *const sys::rte_flow_action_age) };
        assert_eq!(age.timeout(), 0x00ff_ffff);
    }

    #[test]
    fn mark_then_queue_carry_their_values() {
        let a =
            FlowActions::build(ActionPlan { fate: Fate::Mark { id: 0xabcdef, queue: 3 }, count: false, age_s: None });
        assert_eq!(
            types(&a),
            vec![act::RTE_FLOW_ACTION_TYPE_MARK, act::RTE_FLOW_ACTION_TYPE_QUEUE, act::RTE_FLOW_ACTION_TYPE_END]
        );
        // SAFETY: actions()[0] is MARK, whose conf points at the rte_flow_action_mark in `a`'s boxed confs.
        let mark = unsafe { &*(a.actions()[0].conf as *const sys::rte_flow_action_mark) };
        // SAFETY: actions()[1] is QUEUE, whose conf points at the rte_flow_action_queue in `a`'s boxed confs.
        let queue = unsafe { &*(a.actions()[1].conf as *const sys::rte_flow_action_queue) };
        assert_eq!(mark.id, 0xabcdef);
        assert_eq!(queue.index, 3);
        // Raw bytes as the PMD reads them: host-order u32 / u16.
        // SAFETY: the MARK conf is an rte_flow_action_mark, whose first field is the 4-byte `id`.
        let raw = unsafe { core::slice::from_raw_parts(a.actions()[0].conf as *const u8, 4) };
        assert_eq!(raw, &0xabcdefu32.to_ne_bytes());
    }

    #[test]
    fn port_actions() {
        let a = FlowActions::build(ActionPlan {
            fate: Fate::Port { port: 5, how: PortAction::PortId },
            count: true,
            age_s: None,
        });
        assert_eq!(
            types(&a),
            vec![act::RTE_FLOW_ACTION_TYPE_COUNT, act::RTE_FLOW_ACTION_TYPE_PORT_ID, act::RTE_FLOW_ACTION_TYPE_END]
        );
        // SAFETY: actions()[1] is PORT_ID, whose conf points at the rte_flow_action_port_id in `a`'s confs.
        let pid = unsafe { &*(a.actions()[1].conf as *const sys::rte_flow_action_port_id) };
        assert_eq!(pid.id, 5);
        assert_eq!(pid.original(), 0);
        let b = FlowActions::build(ActionPlan {
            fate: Fate::Port { port: 2, how: PortAction::RepresentedPort },
            count: false,
            age_s: None,
        });
        assert_eq!(b.actions()[0].type_, act::RTE_FLOW_ACTION_TYPE_REPRESENTED_PORT);
        // SAFETY: actions()[0] is REPRESENTED_PORT, whose conf points at the rte_flow_action_ethdev in `b`'s
        // boxed confs.
        let e = unsafe { &*(b.actions()[0].conf as *const sys::rte_flow_action_ethdev) };
        assert_eq!(e.port_id, 2);
    }

    #[test]
    fn mirror_samples_every_packet_to_the_port_and_queues_the_original() {
        let a = FlowActions::build(ActionPlan {
            fate: Fate::Mirror { port: 1, how: PortAction::PortId, queue: 0 },
            count: false,
            age_s: None,
        });
        let moved = Box::new(a);
        let a = &*moved;
        assert_eq!(
            types(a),
            vec![act::RTE_FLOW_ACTION_TYPE_SAMPLE, act::RTE_FLOW_ACTION_TYPE_QUEUE, act::RTE_FLOW_ACTION_TYPE_END]
        );
        // SAFETY: actions()[0] is SAMPLE, whose conf points at the rte_flow_action_sample in `a`'s boxed confs.
        let sample = unsafe { &*(a.actions()[0].conf as *const sys::rte_flow_action_sample) };
        assert_eq!(sample.ratio, 1);
        // SAFETY: `sample.actions` points at `a`'s `sample_actions` buffer, which holds 2 actions.
        let sub = unsafe { core::slice::from_raw_parts(sample.actions, 2) };
        assert_eq!(sub[0].type_, act::RTE_FLOW_ACTION_TYPE_PORT_ID);
        assert_eq!(sub[1].type_, act::RTE_FLOW_ACTION_TYPE_END);
        // SAFETY: sub[0] is PORT_ID, whose conf points at the rte_flow_action_port_id in `a`'s boxed confs.
        assert_eq!(unsafe { &*(sub[0].conf as *const sys::rte_flow_action_port_id) }.id, 1);
        assert_eq!(a.sample_len(), 2);
    }
}
