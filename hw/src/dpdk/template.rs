//! The rte_flow template (asynchronous) API: flow queues configured at
//! port start, one pattern template + actions template + table per rule
//! shape, rules enqueued without waiting, pushed to the NIC per batch and
//! their completions pulled. Used where the PMD takes it (mlx5 with
//! dv_flow_en=2); PMDs without it (tap, most others) answer ENOTSUP at
//! rte_flow_info_get and the backend uses the sync API.

use core::ffi::c_void;
use core::ptr::{self, NonNull};
use std::collections::HashMap;
use std::time::{Duration, Instant};

use dpdk_sys as sys;
use sys::rte_flow_action_type as act;
use sys::rte_flow_error_type as et;
use sys::rte_flow_item_type as item;

use super::actions::{ActionShape, FlowActions};
use super::config::TemplateConfig;
use super::error::{libc_errno, FlowError};
use super::pattern::{FlowPattern, PatternShape};
use super::RawFlow;

/// The one flow queue this backend uses (rules are created from one thread).
const QUEUE: u32 = 0;
/// How long to wait for a batch's completions before giving up on them.
const PULL_TIMEOUT: Duration = Duration::from_secs(2);

fn no_error() -> sys::rte_flow_error {
    sys::rte_flow_error { type_: et::RTE_FLOW_ERROR_TYPE_NONE, cause: ptr::null(), message: ptr::null() }
}

/// Asks the PMD for the template API and configures one flow queue; must
/// run between rte_eth_dev_configure and rte_eth_dev_start. Returns the
/// queue size granted.
pub fn configure_port(port: u16, cfg: &TemplateConfig) -> Result<u32, FlowError> {
    let mut pinfo = sys::rte_flow_port_info::default();
    let mut qinfo = sys::rte_flow_queue_info::default();
    let mut err = no_error();
    // SAFETY: `pinfo`, `qinfo` and `err` are live locals the call fills; an invalid port gets -ENODEV.
    let rc = unsafe { sys::rte_flow_info_get(port, &mut pinfo, &mut qinfo, &mut err) };
    if rc < 0 {
        return Err(FlowError::from_raw(rc, &err));
    }
    if pinfo.max_nb_queues == 0 {
        return Err(FlowError::new(
            libc_errno::ENOTSUP,
            et::RTE_FLOW_ERROR_TYPE_UNSPECIFIED,
            "the PMD offers no flow queues",
        ));
    }
    let size = if qinfo.max_size == 0 { cfg.queue_size } else { cfg.queue_size.min(qinfo.max_size) };
    let port_attr = sys::rte_flow_port_attr {
        nb_counters: cfg.counters.min(pinfo.max_nb_counters),
        nb_aging_objects: cfg.aging_objects.min(pinfo.max_nb_aging_objects),
        ..Default::default()
    };
    let qattr = sys::rte_flow_queue_attr { size };
    let mut qattrs = [&qattr as *const sys::rte_flow_queue_attr];
    // SAFETY: `qattrs` holds 1 pointer (nb_queue 1) to `qattr`; it, `port_attr` and `err` live across
    // the call; this runs after rte_eth_dev_configure and before the port is started, as required.
    let rc = unsafe { sys::rte_flow_configure(port, &port_attr, 1, qattrs.as_mut_ptr(), &mut err) };
    if rc < 0 {
        return Err(FlowError::from_raw(rc, &err));
    }
    Ok(size)
}

struct Table {
    pattern: *mut sys::rte_flow_pattern_template,
    actions: *mut sys::rte_flow_actions_template,
    table: *mut sys::rte_flow_template_table,
}

/// The template tables of one port and the rules in flight on its queue.
pub struct TemplateFlows {
    port: u16,
    group: u32,
    table_size: u32,
    batch: usize,
    tables: HashMap<(PatternShape, ActionShape), Result<Table, FlowError>>,
    /// The group-0 table and rule sending everything to `group`.
    jump: Option<(Table, RawFlow)>,
}

// Raw template handles are only used through &mut self.
// SAFETY: template handles are never dereferenced in Rust; flow queue calls aren't thread-safe, and
// all of them go through &mut self, so one thread at a time makes them, whichever thread that is.
unsafe impl Send for TemplateFlows {}

impl TemplateFlows {
    /// Sets up a port whose flow queue is configured: when the rule group
    /// isn't 0, a root rule jumping to it.
    pub fn new(port: u16, cfg: &TemplateConfig, batch: usize) -> Result<TemplateFlows, FlowError> {
        let mut t = TemplateFlows {
            port,
            group: cfg.group,
            table_size: cfg.table_size,
            batch,
            tables: HashMap::new(),
            jump: None,
        };
        if cfg.group != 0 {
            let items = [
                sys::rte_flow_item {
                    type_: item::RTE_FLOW_ITEM_TYPE_ETH,
                    spec: ptr::null(),
                    last: ptr::null(),
                    mask: ptr::null(),
                },
                sys::rte_flow_item {
                    type_: item::RTE_FLOW_ITEM_TYPE_END,
                    spec: ptr::null(),
                    last: ptr::null(),
                    mask: ptr::null(),
                },
            ];
            let jump = sys::rte_flow_action_jump { group: cfg.group };
            let actions = [
                sys::rte_flow_action {
                    type_: act::RTE_FLOW_ACTION_TYPE_JUMP,
                    conf: &jump as *const _ as *const c_void,
                },
                sys::rte_flow_action { type_: act::RTE_FLOW_ACTION_TYPE_END, conf: ptr::null() },
            ];
            let table = t.make_table(0, 1, &items, &actions, &actions)?;
            let tp = table.table;
            let rule = t
                .enqueue(tp, items.as_ptr(), actions.as_ptr(), 0)
                .and_then(|f| t.flush_queue(&mut [(0usize, Ok(f))]).pop().expect("one result").1);
            match rule {
                Ok(f) => t.jump = Some((table, f)),
                Err(e) => {
                    t.destroy_table(table);
                    return Err(e);
                }
            }
        }
        Ok(t)
    }

    fn make_table(
        &self,
        group: u32,
        nb_flows: u32,
        items: &[sys::rte_flow_item],
        actions: &[sys::rte_flow_action],
        masks: &[sys::rte_flow_action],
    ) -> Result<Table, FlowError> {
        let mut err = no_error();
        let mut pattr = sys::rte_flow_pattern_template_attr::default();
        pattr.set_ingress(1);
        // SAFETY: `pattr`, `err` and the END-terminated `items` (and what their pointers point at) live
        // across the call; `self.port` has its flow queues configured.
        let pt = unsafe { sys::rte_flow_pattern_template_create(self.port, &pattr, items.as_ptr(), &mut err) };
        if pt.is_null() {
            return Err(FlowError::from_raw(0, &err));
        }
        let mut aattr = sys::rte_flow_actions_template_attr::default();
        aattr.set_ingress(1);
        // SAFETY: `aattr`, `err` and the END-terminated `actions` and `masks`, of the same length, with what
        // their conf pointers point at, live across the call.
        let at = unsafe {
            sys::rte_flow_actions_template_create(self.port, &aattr, actions.as_ptr(), masks.as_ptr(), &mut err)
        };
        if at.is_null() {
            let e = FlowError::from_raw(0, &err);
            // SAFETY: `pt` was created just above on this port and is destroyed once, without having been used.
            unsafe { sys::rte_flow_pattern_template_destroy(self.port, pt, &mut err) };
            return Err(e);
        }
        let mut tattr = sys::rte_flow_template_table_attr { nb_flows, ..Default::default() };
        tattr.flow_attr.group = group;
        tattr.flow_attr.set_ingress(1);
        let mut pts = [pt];
        let mut ats = [at];
        // SAFETY: `pts` and `ats` each hold the 1 template passed as count, both just created on this port;
        // `tattr` and `err` live across the call.
        let table = unsafe {
            sys::rte_flow_template_table_create(self.port, &tattr, pts.as_mut_ptr(), 1, ats.as_mut_ptr(), 1, &mut err)
        };
        if table.is_null() {
            let e = FlowError::from_raw(0, &err);
            // SAFETY: `at` and `pt` were created just above on this port, are used by no table (creating it
            // failed) and are destroyed once.
            unsafe {
                sys::rte_flow_actions_template_destroy(self.port, at, &mut err);
                sys::rte_flow_pattern_template_destroy(self.port, pt, &mut err);
            }
            return Err(e);
        }
        Ok(Table { pattern: pt, actions: at, table })
    }

    fn destroy_table(&self, t: Table) {
        let mut err = no_error();
        // SAFETY: `t` (taken by value) holds handles made by make_table on this port; the table goes first,
        // then the templates it used, each once.
        unsafe {
            sys::rte_flow_template_table_destroy(self.port, t.table, &mut err);
            sys::rte_flow_actions_template_destroy(self.port, t.actions, &mut err);
            sys::rte_flow_pattern_template_destroy(self.port, t.pattern, &mut err);
        }
    }

    /// Creates the table for the rule's shape if there is none yet: the
    /// PMD's verdict on the shape.
    pub fn ensure_table(&mut self, p: &FlowPattern, a: &FlowActions) -> Result<(), FlowError> {
        self.table_for(p, a).map(|_| ())
    }

    /// The table for a rule shape, created on first use; a shape the PMD
    /// refused stays refused.
    fn table_for(&mut self, p: &FlowPattern, a: &FlowActions) -> Result<*mut sys::rte_flow_template_table, FlowError> {
        let key = (p.shape(), a.plan().shape());
        if !self.tables.contains_key(&key) {
            let t = self.make_table(self.group, self.table_size, &p.template_items(), a.actions(), &a.template_masks());
            self.tables.insert(key, t);
        }
        match &self.tables[&key] {
            Ok(t) => Ok(t.table),
            Err(e) => Err(e.clone()),
        }
    }

    fn enqueue(
        &mut self,
        table: *mut sys::rte_flow_template_table,
        items: *const sys::rte_flow_item,
        actions: *const sys::rte_flow_action,
        tag: usize,
    ) -> Result<RawFlow, FlowError> {
        let mut op = sys::rte_flow_op_attr::default();
        op.set_postpone(1);
        let mut err = no_error();
        // SAFETY: `table` is a live table of this port; `items` and `actions` are END-terminated arrays the
        // callers keep alive across this call and flush_queue's push and pull; `tag` is never dereferenced.
        let f = unsafe {
            sys::rte_flow_async_create(self.port, QUEUE, &op, table, items, 0, actions, 0, tag as *mut c_void, &mut err)
        };
        NonNull::new(f).map(RawFlow).ok_or_else(|| FlowError::from_raw(0, &err))
    }

    /// Pushes the queued operations and waits for their completions;
    /// entries still `Ok` whose completion reports an error become errors.
    fn flush_queue<T>(&mut self, ops: &mut [(usize, Result<T, FlowError>)]) -> Vec<(usize, Result<T, FlowError>)>
    where
        T: Copy,
    {
        let mut err = no_error();
        let mut out: Vec<(usize, Result<T, FlowError>)> = ops.iter().map(|(i, r)| (*i, r.clone())).collect();
        // SAFETY: QUEUE was configured on this port and is used only through &mut self; `err` is a live local.
        let rc = unsafe { sys::rte_flow_push(self.port, QUEUE, &mut err) };
        if rc < 0 {
            let e = FlowError::from_raw(rc, &err);
            for o in out.iter_mut().filter(|o| o.1.is_ok()) {
                o.1 = Err(e.clone());
            }
            return out;
        }
        let mut waiting: usize = out.iter().filter(|o| o.1.is_ok()).count();
        let mut results = vec![sys::rte_flow_op_result { status: 0, user_data: ptr::null_mut() }; waiting.max(1)];
        let deadline = Instant::now() + PULL_TIMEOUT;
        while waiting > 0 {
            // SAFETY: `results` has `results.len()` entries and the count passed is at most that (the u16 cast
            // can only lower it); QUEUE is used only through &mut self; `err` is a live local.
            let n =
                unsafe { sys::rte_flow_pull(self.port, QUEUE, results.as_mut_ptr(), results.len() as u16, &mut err) };
            if n < 0 {
                let e = FlowError::from_raw(n, &err);
                for o in out.iter_mut().filter(|o| o.1.is_ok()) {
                    o.1 = Err(e.clone());
                }
                return out;
            }
            for r in &results[..n as usize] {
                waiting = waiting.saturating_sub(1);
                if r.status != sys::rte_flow_op_status::RTE_FLOW_OP_SUCCESS {
                    let tag = r.user_data as usize;
                    if let Some(o) = out.iter_mut().find(|o| o.0 == tag) {
                        o.1 = Err(FlowError::new(
                            libc_errno::EINVAL,
                            et::RTE_FLOW_ERROR_TYPE_UNSPECIFIED,
                            "the PMD failed the queued operation",
                        ));
                    }
                }
            }
            if n == 0 {
                if Instant::now() > deadline {
                    tracing::warn!(port = self.port, waiting, "flow queue completions overdue");
                    break;
                }
                std::thread::yield_now();
            }
        }
        out
    }

    /// Creates rules in batches of `batch`: enqueued (postponed), pushed,
    /// completions pulled. One result per rule, in order.
    pub fn create(&mut self, rules: &[(&FlowPattern, &FlowActions)]) -> Vec<Result<RawFlow, FlowError>> {
        let mut out = Vec::with_capacity(rules.len());
        for chunk in rules.chunks(self.batch) {
            let mut ops: Vec<(usize, Result<RawFlow, FlowError>)> = Vec::with_capacity(chunk.len());
            for (i, (p, a)) in chunk.iter().enumerate() {
                let r = self.table_for(p, a).and_then(|t| self.enqueue(t, p.as_ptr(), a.as_ptr(), i));
                ops.push((i, r));
            }
            out.extend(self.flush_queue(&mut ops).into_iter().map(|(_, r)| r));
        }
        out
    }

    /// Destroys rules in batches; one result per rule, in order.
    pub fn destroy(&mut self, flows: &[RawFlow]) -> Vec<Result<(), FlowError>> {
        let mut out = Vec::with_capacity(flows.len());
        for chunk in flows.chunks(self.batch) {
            let mut ops: Vec<(usize, Result<(), FlowError>)> = Vec::with_capacity(chunk.len());
            for (i, f) in chunk.iter().enumerate() {
                let mut op = sys::rte_flow_op_attr::default();
                op.set_postpone(1);
                let mut err = no_error();
                // SAFETY: `f` is a live rule created on this port's table and is destroyed once; `op` and `err` live
                // across the call; `i` is a tag, never dereferenced; QUEUE is used only through &mut self.
                let rc = unsafe {
                    sys::rte_flow_async_destroy(self.port, QUEUE, &op, f.0.as_ptr(), i as *mut c_void, &mut err)
                };
                ops.push((i, if rc < 0 { Err(FlowError::from_raw(rc, &err)) } else { Ok(()) }));
            }
            out.extend(self.flush_queue(&mut ops).into_iter().map(|(_, r)| r));
        }
        out
    }
}

impl Drop for TemplateFlows {
    fn drop(&mut self) {
        if let Some((table, rule)) = self.jump.take() {
            let _ = self.destroy(&[rule]);
            self.destroy_table(table);
        }
        let tables: Vec<_> = self.tables.drain().filter_map(|(_, t)| t.ok()).collect();
        for t in tables {
            self.destroy_table(t);
        }
    }
}
