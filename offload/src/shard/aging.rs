//! Aging: flows past their idle deadline end, or, with rules, have them
//! removed first (or their install withdrawn).

use super::*;

impl Shard {
    pub(super) fn expire(&mut self, now: u64) {
        self.report_active(now);
        for id in std::mem::take(&mut self.retry_removal) {
            if let Some(then) = self.offloads.get(&id).and_then(|s| s.then) {
                if self.table.get(id).is_some_and(|f| f.stage() == Stage::Offloaded) {
                    self.request_removal(id, then);
                }
            }
        }
        let mut due = std::mem::take(&mut self.due_buf);
        due.clear();
        self.table.expire(now, &mut due);
        for &id in &due {
            let Some(flow) = self.table.get(id) else { continue };
            match flow.stage() {
                Stage::Offloaded => {
                    let state = &self.offloads[&id];
                    // Without counters a rule that hides packets from software
                    // would look idle at once: it lives its hard timeout instead.
                    if !state.hw_counters && matches!(state.action, Action::Drop | Action::Forward { .. }) {
                        let hard = state.installed_ns + self.cfg.hard_timeout_ns;
                        if now < hard {
                            self.table.reschedule(id, hard);
                            continue;
                        }
                    }
                    self.table.reschedule(id, now + self.cfg.poll_interval_ns);
                    self.request_removal(id, Then::Idle);
                }
                Stage::Queued | Stage::Installing => {
                    // Idle before its rules went in: withdrawn, it ends;
                    // if they went in meanwhile, their counters age it.
                    self.table.reschedule(id, now + self.cfg.poll_interval_ns);
                    self.request_cancel(id, Then::Idle);
                }
                Stage::Removing => self.table.reschedule(id, now + self.cfg.poll_interval_ns),
                _ => self.end(id, reason_for(flow)),
            }
        }
        self.due_buf = due;
    }
}

pub(super) fn reason_for(flow: &Flow) -> EndReason {
    if flow.tcp.is_closed() {
        EndReason::TcpClose
    } else {
        EndReason::Idle
    }
}
