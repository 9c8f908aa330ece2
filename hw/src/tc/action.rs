//! TC actions (`TCA_ACT_*`) as flower carries them in `TCA_FLOWER_ACT`: the
//! gact, mirred and skbedit options we write, the 16-byte action cookie
//! that marks a filter as ours, and a view that reads an action back with
//! its statistics and timestamps.

use super::attr::{Attr, AttrIter, AttrWriter, WireError};
use super::stats::{ActionStats, Tcft};

pub const TCA_ACT_KIND: u16 = 1;
pub const TCA_ACT_OPTIONS: u16 = 2;
pub const TCA_ACT_INDEX: u16 = 3;
pub const TCA_ACT_STATS: u16 = 4;
pub const TCA_ACT_COOKIE: u16 = 6;

/// Options common to gact, mirred and skbedit: their timestamps and the
/// parameter block sit at the same attribute numbers.
pub const TCA_OPT_TM: u16 = 1;
pub const TCA_OPT_PARMS: u16 = 2;
pub const TCA_SKBEDIT_MARK: u16 = 5;

/// Verdicts (`TC_ACT_*`).
pub const TC_ACT_UNSPEC: i32 = -1;
pub const TC_ACT_OK: i32 = 0;
pub const TC_ACT_SHOT: i32 = 2;
pub const TC_ACT_PIPE: i32 = 3;
pub const TC_ACT_STOLEN: i32 = 4;

/// `TCA_EGRESS_REDIR` / `TCA_EGRESS_MIRROR` (mirred's eaction).
pub const TCA_EGRESS_REDIR: i32 = 1;
pub const TCA_EGRESS_MIRROR: i32 = 2;

/// Longest cookie the kernel keeps (`TC_COOKIE_MAX_SIZE`).
pub const COOKIE_MAX: usize = 16;

/// One action to emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionRepr {
    /// Generic action: a bare verdict (`TC_ACT_SHOT` drops, `TC_ACT_OK` passes).
    Gact { verdict: i32 },
    /// Mirror or redirect to the egress of another device.
    Mirred { eaction: i32, ifindex: u32, verdict: i32 },
    /// Set the packet's mark, then carry on with `verdict`.
    SkbeditMark { mark: u32, verdict: i32 },
}

impl ActionRepr {
    pub fn kind(&self) -> &'static str {
        match self {
            ActionRepr::Gact { .. } => "gact",
            ActionRepr::Mirred { .. } => "mirred",
            ActionRepr::SkbeditMark { .. } => "skbedit",
        }
    }

    /// `struct tc_gen` (index, capab, action, refcnt, bindcnt), which heads
    /// every action's parameter block.
    fn emit_tc_gen(out: &mut Vec<u8>, verdict: i32) {
        out.extend_from_slice(&0u32.to_ne_bytes()); // index: let the kernel pick
        out.extend_from_slice(&0u32.to_ne_bytes()); // capab
        out.extend_from_slice(&verdict.to_ne_bytes());
        out.extend_from_slice(&0i32.to_ne_bytes()); // refcnt
        out.extend_from_slice(&0i32.to_ne_bytes()); // bindcnt
    }

    /// Writes this action as entry `order` (1-based) of an action list,
    /// carrying `cookie` when given.
    pub fn emit(&self, w: &mut AttrWriter<'_>, order: u16, cookie: Option<&[u8]>) {
        let entry = w.begin_nest(order);
        w.put_str(TCA_ACT_KIND, self.kind());
        if let Some(c) = cookie {
            w.put(TCA_ACT_COOKIE, c);
        }
        let opts = w.begin_nest(TCA_ACT_OPTIONS);
        let mut parms = Vec::with_capacity(28);
        match *self {
            ActionRepr::Gact { verdict } => {
                Self::emit_tc_gen(&mut parms, verdict);
                w.put(TCA_OPT_PARMS, &parms);
            }
            ActionRepr::Mirred { eaction, ifindex, verdict } => {
                Self::emit_tc_gen(&mut parms, verdict);
                parms.extend_from_slice(&eaction.to_ne_bytes());
                parms.extend_from_slice(&ifindex.to_ne_bytes());
                w.put(TCA_OPT_PARMS, &parms);
            }
            ActionRepr::SkbeditMark { mark, verdict } => {
                Self::emit_tc_gen(&mut parms, verdict);
                w.put(TCA_OPT_PARMS, &parms);
                w.put_u32_ne(TCA_SKBEDIT_MARK, mark);
            }
        }
        w.end_nest(opts);
        w.end_nest(entry);
    }
}

/// One action read back from the kernel, fields borrowed from the dump.
#[derive(Debug, Clone, Copy, Default)]
pub struct ActionView<'a> {
    pub order: u16,
    pub kind: &'a str,
    pub cookie: Option<&'a [u8]>,
    pub index: Option<u32>,
    stats: Option<&'a [u8]>,
    options: Option<&'a [u8]>,
}

impl<'a> ActionView<'a> {
    /// Reads one entry of an action list (the nest numbered by its order).
    pub fn parse(entry: Attr<&'a [u8]>) -> Result<ActionView<'a>, WireError> {
        let mut v = ActionView { order: entry.kind(), ..ActionView::default() };
        for a in entry.nested() {
            let a = a?;
            match a.kind() {
                TCA_ACT_KIND => v.kind = a.str()?,
                TCA_ACT_COOKIE => v.cookie = Some(a.payload()),
                TCA_ACT_INDEX => v.index = Some(a.u32_ne()?),
                TCA_ACT_STATS => v.stats = Some(a.payload()),
                TCA_ACT_OPTIONS => v.options = Some(a.payload()),
                _ => {}
            }
        }
        if v.kind.is_empty() {
            return Err(WireError::Invalid { what: "tc action", message: "no TCA_ACT_KIND".into() });
        }
        Ok(v)
    }

    /// Packet and byte counts, when the dump carried them.
    pub fn stats(&self) -> Result<Option<ActionStats>, WireError> {
        self.stats.map(ActionStats::parse).transpose()
    }

    /// The action's timestamps (gact, mirred and skbedit keep them at the
    /// same option number).
    pub fn tm(&self) -> Result<Option<Tcft<'a>>, WireError> {
        let Some(opts) = self.options else { return Ok(None) };
        match AttrIter::new(opts).find(TCA_OPT_TM)? {
            Some(a) => Tcft::new_checked(a.payload()).map(Some),
            None => Ok(None),
        }
    }

    /// The verdict in the action's `tc_gen` block.
    pub fn verdict(&self) -> Result<Option<i32>, WireError> {
        Ok(self.parms()?.map(|p| i32::from_ne_bytes([p[8], p[9], p[10], p[11]])))
    }

    /// For mirred: (eaction, target ifindex).
    pub fn mirred_target(&self) -> Result<Option<(i32, u32)>, WireError> {
        if self.kind != "mirred" {
            return Ok(None);
        }
        match self.parms()? {
            Some(p) if p.len() >= 28 => Ok(Some((
                i32::from_ne_bytes([p[20], p[21], p[22], p[23]]),
                u32::from_ne_bytes([p[24], p[25], p[26], p[27]]),
            ))),
            Some(p) => Err(WireError::Truncated { what: "tc_mirred", have: p.len(), need: 28 }),
            None => Ok(None),
        }
    }

    /// For skbedit: the mark it sets, if it sets one.
    pub fn skbedit_mark(&self) -> Result<Option<u32>, WireError> {
        if self.kind != "skbedit" {
            return Ok(None);
        }
        let Some(opts) = self.options else { return Ok(None) };
        AttrIter::new(opts).find(TCA_SKBEDIT_MARK)?.map(|a| a.u32_ne()).transpose()
    }

    fn parms(&self) -> Result<Option<&'a [u8]>, WireError> {
        let Some(opts) = self.options else { return Ok(None) };
        match AttrIter::new(opts).find(TCA_OPT_PARMS)? {
            Some(a) if a.payload().len() >= 20 => Ok(Some(a.payload())),
            Some(a) => Err(WireError::Truncated { what: "tc_gen", have: a.payload().len(), need: 20 }),
            None => Ok(None),
        }
    }
}

/// Iterates the actions of a `TCA_FLOWER_ACT` payload.
pub fn actions(list: &[u8]) -> impl Iterator<Item = Result<ActionView<'_>, WireError>> {
    AttrIter::new(list).map(|a| a.and_then(ActionView::parse))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirred_with_cookie_round_trips() {
        let cookie = *b"FTB\x01\0\0\0\x07\0\0\0\0\0\0\0\x2a";
        let mut buf = Vec::new();
        let mut w = AttrWriter::new(&mut buf);
        ActionRepr::Mirred { eaction: TCA_EGRESS_REDIR, ifindex: 9, verdict: TC_ACT_STOLEN }.emit(
            &mut w,
            1,
            Some(&cookie),
        );
        ActionRepr::Gact { verdict: TC_ACT_SHOT }.emit(&mut w, 2, None);
        let acts: Vec<_> = actions(&buf).collect::<Result<_, _>>().unwrap();
        assert_eq!(acts.len(), 2);
        assert_eq!(acts[0].order, 1);
        assert_eq!(acts[0].kind, "mirred");
        assert_eq!(acts[0].cookie, Some(&cookie[..]));
        assert_eq!(acts[0].mirred_target().unwrap(), Some((TCA_EGRESS_REDIR, 9)));
        assert_eq!(acts[0].verdict().unwrap(), Some(TC_ACT_STOLEN));
        assert_eq!(acts[1].kind, "gact");
        assert_eq!(acts[1].cookie, None);
        assert_eq!(acts[1].verdict().unwrap(), Some(TC_ACT_SHOT));
        assert_eq!(acts[1].mirred_target().unwrap(), None);
        assert!(acts[1].stats().unwrap().is_none());
    }

    #[test]
    fn skbedit_carries_mark() {
        let mut buf = Vec::new();
        ActionRepr::SkbeditMark { mark: 0x77, verdict: TC_ACT_PIPE }.emit(&mut AttrWriter::new(&mut buf), 1, None);
        let a = actions(&buf).next().unwrap().unwrap();
        assert_eq!(a.kind, "skbedit");
        let opts = a.options.unwrap();
        let mark = AttrIter::new(opts).find(TCA_SKBEDIT_MARK).unwrap().unwrap();
        assert_eq!(mark.u32_ne().unwrap(), 0x77);
    }

    #[test]
    fn action_without_kind_is_rejected() {
        let mut buf = Vec::new();
        let mut w = AttrWriter::new(&mut buf);
        let n = w.begin_nest(1);
        w.put_u32_ne(TCA_ACT_INDEX, 3);
        w.end_nest(n);
        assert!(actions(&buf).next().unwrap().is_err());
    }
}
