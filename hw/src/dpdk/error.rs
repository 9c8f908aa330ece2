//! PMD errors: an rte_flow_error (what the driver said, about which part
//! of the rule) and the errno, turned into the engine's refusal classes.

use core::ffi::CStr;

use dpdk_sys as sys;
use sys::rte_flow_error_type as et;

use crate::rule::{Refusal, RefusalKind};

/// One failed rte_flow call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowError {
    /// Positive errno (the call returned its negative, or set rte_errno).
    pub errno: i32,
    /// rte_flow_error.type: which part of the rule the PMD objected to.
    pub cause: et::Type,
    /// The PMD's own message, or strerror when it gave none.
    pub message: String,
}

impl FlowError {
    /// Reads an error the PMD filled in. `rc` is the call's return value
    /// (negative errno) or 0 for calls that return a pointer and set rte_errno.
    pub fn from_raw(rc: i32, err: &sys::rte_flow_error) -> FlowError {
        // SAFETY: reads this thread's rte_errno, which the failed call (made on this thread) set.
        let errno = if rc < 0 { -rc } else { unsafe { sys::ft_rte_errno() } };
        let message = if err.message.is_null() {
            strerror(errno)
        } else {
            // SAFETY: non-null (checked above); a PMD sets `message` to a NUL-terminated string that outlives the
            // error it filled in, and it is copied out here at once.
            unsafe { CStr::from_ptr(err.message) }.to_string_lossy().into_owned()
        };
        FlowError { errno, cause: err.type_, message }
    }

    pub fn new(errno: i32, cause: et::Type, message: impl Into<String>) -> FlowError {
        FlowError { errno, cause, message: message.into() }
    }

    /// Whether the PMD objected to the match (an item).
    pub fn is_match(&self) -> bool {
        matches!(
            self.cause,
            et::RTE_FLOW_ERROR_TYPE_ITEM_NUM
                | et::RTE_FLOW_ERROR_TYPE_ITEM_SPEC
                | et::RTE_FLOW_ERROR_TYPE_ITEM_LAST
                | et::RTE_FLOW_ERROR_TYPE_ITEM_MASK
                | et::RTE_FLOW_ERROR_TYPE_ITEM
        )
    }

    /// Whether the PMD objected to an action.
    pub fn is_action(&self) -> bool {
        matches!(
            self.cause,
            et::RTE_FLOW_ERROR_TYPE_ACTION_NUM | et::RTE_FLOW_ERROR_TYPE_ACTION_CONF | et::RTE_FLOW_ERROR_TYPE_ACTION
        )
    }

    pub fn kind(&self) -> RefusalKind {
        match self.errno {
            libc_errno::ENOMEM | libc_errno::ENOSPC => RefusalKind::Capacity,
            libc_errno::EEXIST => RefusalKind::Exists,
            _ if self.is_match() => RefusalKind::UnsupportedMatch,
            _ if self.is_action() => RefusalKind::UnsupportedAction,
            _ => RefusalKind::Driver,
        }
    }

    pub fn cause_name(&self) -> &'static str {
        match self.cause {
            et::RTE_FLOW_ERROR_TYPE_NONE => "none",
            et::RTE_FLOW_ERROR_TYPE_UNSPECIFIED => "unspecified",
            et::RTE_FLOW_ERROR_TYPE_HANDLE => "handle",
            et::RTE_FLOW_ERROR_TYPE_ATTR_GROUP => "attr group",
            et::RTE_FLOW_ERROR_TYPE_ATTR_PRIORITY => "attr priority",
            et::RTE_FLOW_ERROR_TYPE_ATTR_INGRESS => "attr ingress",
            et::RTE_FLOW_ERROR_TYPE_ATTR_EGRESS => "attr egress",
            et::RTE_FLOW_ERROR_TYPE_ATTR_TRANSFER => "attr transfer",
            et::RTE_FLOW_ERROR_TYPE_ATTR => "attr",
            et::RTE_FLOW_ERROR_TYPE_ITEM_NUM => "item number",
            et::RTE_FLOW_ERROR_TYPE_ITEM_SPEC => "item spec",
            et::RTE_FLOW_ERROR_TYPE_ITEM_LAST => "item last",
            et::RTE_FLOW_ERROR_TYPE_ITEM_MASK => "item mask",
            et::RTE_FLOW_ERROR_TYPE_ITEM => "item",
            et::RTE_FLOW_ERROR_TYPE_ACTION_NUM => "action number",
            et::RTE_FLOW_ERROR_TYPE_ACTION_CONF => "action conf",
            et::RTE_FLOW_ERROR_TYPE_ACTION => "action",
            et::RTE_FLOW_ERROR_TYPE_STATE => "state",
            _ => "unknown",
        }
    }

    /// The engine's refusal, keeping the PMD's words; `what` names the rule
    /// shape ("eth/ipv4/tcp -> count/drop on port 0").
    pub fn refusal(&self, what: &str) -> Refusal {
        Refusal { kind: self.kind(), message: format!("{what}: {self}") }
    }
}

impl core::fmt::Display for FlowError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} ({}: {}, errno {})", self.message, self.cause_name(), strerror(self.errno), self.errno)
    }
}

pub fn strerror(errno: i32) -> String {
    // SAFETY: takes any errno value and returns a NUL-terminated string (static or in a per-thread buffer).
    let p = unsafe { sys::rte_strerror(errno) };
    if p.is_null() {
        format!("errno {errno}")
    } else {
        // SAFETY: non-null (checked above) and NUL-terminated; a per-thread buffer it may point into is
        // only rewritten by a later strerror call on this thread, and the text is copied out before any.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

/// The errno values the classification needs (Linux numbering, which is
/// what DPDK returns on every platform it supports for rte_flow).
pub mod libc_errno {
    pub const ENOENT: i32 = 2;
    pub const ENOMEM: i32 = 12;
    pub const EEXIST: i32 = 17;
    pub const EINVAL: i32 = 22;
    pub const ENOSPC: i32 = 28;
    pub const ENOSYS: i32 = 38;
    pub const ENOTSUP: i32 = 95;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_by_cause_and_errno() {
        let e = FlowError::new(libc_errno::ENOTSUP, et::RTE_FLOW_ERROR_TYPE_ACTION, "action not supported");
        assert_eq!(e.kind(), RefusalKind::UnsupportedAction);
        let r = e.refusal("eth/ipv4/tcp -> count/drop");
        assert!(r.message.starts_with("eth/ipv4/tcp -> count/drop: action not supported (action: "), "{}", r.message);
        assert_eq!(
            FlowError::new(libc_errno::EINVAL, et::RTE_FLOW_ERROR_TYPE_ITEM_MASK, "m").kind(),
            RefusalKind::UnsupportedMatch
        );
        assert_eq!(
            FlowError::new(libc_errno::ENOSPC, et::RTE_FLOW_ERROR_TYPE_ITEM, "full").kind(),
            RefusalKind::Capacity
        );
        assert_eq!(FlowError::new(libc_errno::EINVAL, et::RTE_FLOW_ERROR_TYPE_ATTR, "x").kind(), RefusalKind::Driver);
        assert_eq!(FlowError::new(libc_errno::EINVAL, 999, "x").cause_name(), "unknown");
    }

    #[test]
    fn reads_the_pmd_message_or_falls_back_to_strerror() {
        let msg = c"Kernel too old for flower support";
        let err = sys::rte_flow_error {
            type_: et::RTE_FLOW_ERROR_TYPE_UNSPECIFIED,
            cause: core::ptr::null(),
            message: msg.as_ptr(),
        };
        let e = FlowError::from_raw(-libc_errno::ENOTSUP, &err);
        assert_eq!(e.errno, libc_errno::ENOTSUP);
        assert_eq!(e.message, "Kernel too old for flower support");
        let none = sys::rte_flow_error {
            type_: et::RTE_FLOW_ERROR_TYPE_NONE,
            cause: core::ptr::null(),
            message: core::ptr::null(),
        };
        let e = FlowError::from_raw(-libc_errno::ENOENT, &none);
        assert_eq!(e.message, strerror(libc_errno::ENOENT));
        assert!(e.message.contains("No such file"), "{}", e.message);
    }
}
