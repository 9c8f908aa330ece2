//! The flow filter language, one for `flows`, `watch`, `events`,
//! `unoffload --filter` and `flush --filter`. The daemon parses it, once
//! per request: port names (`ingress=wan0`) are the daemon's configuration,
//! and a script speaking JSON on the socket gets the same language and the
//! same errors as the CLI (the client sends the text as typed).
//!
//! ```text
//! expr  := and (("or" | "||") and)*
//! and   := unary (["and" | "&&" | ","] unary)*      side by side means and
//! unary := ("not" | "!") unary | "(" expr ")" | test
//! test  := FIELD OP VALUE ("," VALUE)*               a list: any of them
//! OP    := "=" | "==" | "!=" | "<" | "<=" | ">" | ">="
//! ```
//!
//! `not` binds tightest, then `and`, then `or`. Keywords, field names,
//! protocol, stage and placement names and units are case-insensitive.
//! The old form (`proto=tcp port=443`, `proto=tcp,port!=443`: terms that
//! must all hold) is the same language: a comma followed by `FIELD OP`
//! starts the next term, any other comma continues a list.
//!
//! A hand-written recursive descent: the grammar is a few lines, its
//! errors must say what was expected in the operator's words and at which
//! column, and the comma is told apart by looking two tokens ahead. A
//! parser crate would bring its own error texts and no less code here.
//!
//! Fields (`FIELD_HELP` is the reference shown by `flows --help`): `id`,
//! `proto`, `port`/`sport`/`dport`, `addr` (`host`)/`src`/`dst`, `vlan`,
//! `ingress`, `stage` (`state`), `placement`, `class` (`rule`), `label`,
//! `packets`, `bytes`, `age`, `idle`, `rate`.

use flowtable_offload::FlowRecord;
use flowtable_sw::key::Endpoints;
use flowtable_sw::{Direction, Flow, FlowId, Stage};
use ipnet::IpNet;
use std::cell::OnceCell;
use std::fmt;
use std::net::IpAddr;

/// The grammar, the fields and the units, as `flows --help` and the README
/// give them.
pub const FIELD_HELP: &str = "\
FILTER: conditions joined by `and` (or side by side, or a comma), `or`,
`not` and parentheses; `not` binds tightest, then `and`, then `or`:
    proto=tcp port=443                   both (as `proto=tcp and port=443`)
    proto=tcp,udp and bytes > 1M         a list means any of them
    not (stage=offloaded or idle > 30s)
    ingress=wan0 and rate >= 10Mbit
Operators: = (also ==), !=, <, <=, >, >=. Lists and ranges (`port=8000-8999`)
go with = and != only; != is true when = is not (`port!=443`: neither side).
Fields:
    id         flow id, as `flows` shows it
    proto      tcp, udp, udplite, sctp, icmp (v4 and v6), icmpv6, gre, esp, ah,
               or a number (0-255)
    port       either side's port (sport, dport: the initiator's, the responder's);
               a number or a range a-b
    addr       either side's address (also host; src, dst: the initiator's, the
               responder's); an address or a prefix (10.0.0.0/8, 2001:db8::/32)
    vlan       outer VLAN id, 0-4095 (0: untagged)
    ingress    a port either direction arrives on: a name from the configuration's
               `ports` (wan0) or its index
    stage      tracking, software, queued, installing, offloaded, removing, refused
               (also state)
    placement  where the rules are: hardware, kernel-software, mixed, none (also
               software)
    class      the classifier rule that decided the flow (also rule)
    label      the label an application set
    packets    both directions; k, M, G, T (1000s): packets > 10k
    bytes      frame bytes, both directions; k, M, G, T (1000s) or Ki, Mi, Gi, Ti
               (1024s), a B after them allowed: bytes > 1M, bytes >= 1.5GiB
    age        since the first packet; ns, us, ms, s, m, h, d (no unit: seconds)
    idle       since the last packet (or the rules' last count); units as age
    rate       mean since the first packet, in bits per second; k, M, G, T with
               bit, bps or b/s (no unit: bit/s), or B/s for bytes: rate > 1Mbit
Quote a value with spaces or symbols: label=\"a b\". An expired event's flow
has ended: its stage is none of the above, its idle 0.";

/// A filter that does not parse: where (a column of the text, from 1) and what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("filter: column {column}: {message}")]
pub struct FilterError {
    pub column: usize,
    pub message: String,
}

/// Names the filter resolves at the daemon: the configuration's ports.
#[derive(Debug, Clone, Default)]
pub struct Names {
    /// Port names by index (`ports` in the configuration).
    pub ports: Vec<String>,
}

/// What a filter may need beyond the flow itself, fetched only when a
/// term asks for it.
pub trait FlowFacts {
    /// The flow's first packet's time (kept beside the table, not in `Flow`).
    fn first_ns(&self, id: FlowId) -> u64;
    fn placement(&self, id: FlowId, flow: &Flow) -> &'static str;
    fn class(&self, flow: &Flow) -> Option<&str>;
    fn label(&self, id: FlowId) -> Option<&str>;
}

/// What a filter reads of a flow: a live one in its shard, a snapshot of
/// one taken when an event left it, or an ended one's record.
pub trait Subject {
    fn id(&self) -> u64;
    fn proto(&self) -> u8;
    /// Oriented by the initiator.
    fn ends(&self) -> Endpoints;
    fn vlan(&self) -> u16;
    /// The ports the two directions arrive on.
    fn ingress(&self) -> [u8; 2];
    /// `None` for a flow that has ended.
    fn stage(&self) -> Option<Stage>;
    fn placement(&self) -> &str;
    fn class(&self) -> Option<&str>;
    fn label(&self) -> Option<&str>;
    fn packets(&self) -> u64;
    fn bytes(&self) -> u64;
    fn age_ns(&self) -> u64;
    fn idle_ns(&self) -> u64;
    fn bits_per_s(&self) -> f64;
}

/// Where a flow's rules are, as `placement` names it.
pub const PLACEMENTS: [&str; 4] = ["hardware", "kernel-software", "mixed", "none"];

const FIELDS: &str =
    "id, proto, port, sport, dport, addr, src, dst, vlan, ingress, stage, placement, class, label, packets, bytes, age, idle, rate";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Id,
    Proto,
    Port,
    Sport,
    Dport,
    Addr,
    Src,
    Dst,
    Vlan,
    Ingress,
    Stage,
    Placement,
    Class,
    Label,
    Packets,
    Bytes,
    Age,
    Idle,
    Rate,
}

impl Field {
    fn parse(word: &str) -> Option<Field> {
        Some(match word.to_ascii_lowercase().as_str() {
            "id" => Field::Id,
            "proto" | "protocol" => Field::Proto,
            "port" => Field::Port,
            "sport" => Field::Sport,
            "dport" => Field::Dport,
            "addr" | "host" => Field::Addr,
            "src" => Field::Src,
            "dst" => Field::Dst,
            "vlan" => Field::Vlan,
            "ingress" => Field::Ingress,
            "stage" | "state" => Field::Stage,
            "placement" => Field::Placement,
            "class" | "rule" => Field::Class,
            "label" => Field::Label,
            "packets" => Field::Packets,
            "bytes" => Field::Bytes,
            "age" => Field::Age,
            "idle" => Field::Idle,
            "rate" => Field::Rate,
            _ => return None,
        })
    }

    /// Whether `<`, `>` and their kin apply (the field is a quantity).
    fn ordered(self) -> bool {
        matches!(
            self,
            Field::Id
                | Field::Port
                | Field::Sport
                | Field::Dport
                | Field::Vlan
                | Field::Packets
                | Field::Bytes
                | Field::Age
                | Field::Idle
                | Field::Rate
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Op {
    fn text(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
        }
    }
}

/// A test's values, typed by its field.
#[derive(Debug, Clone, PartialEq)]
enum Values {
    /// Numbers as inclusive ranges (a number is a range of one); times in ns.
    Ranges(Vec<(u64, u64)>),
    /// Bits per second.
    Rates(Vec<f64>),
    Protos(Vec<u8>),
    Nets(Vec<IpNet>),
    Ports(Vec<u8>),
    Stages(Vec<Stage>),
    Words(Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
struct Test {
    field: Field,
    op: Op,
    values: Values,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    And(Vec<Node>),
    Or(Vec<Node>),
    Not(Box<Node>),
    Test(Test),
}

/// A parsed filter; the empty filter matches every flow.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    root: Option<Node>,
}

// ---- lexer ----

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// A word: a field, a value, or one of the keywords `and`, `or`, `not`
    /// (which a word is depends on where it stands: `label=or` is a value).
    Word(String),
    /// A quoted value.
    Quoted(String),
    Op(Op),
    Open,
    Close,
    Comma,
    /// `&&`
    AndSym,
    /// `||`
    OrSym,
    /// `!`
    Bang,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Word(w) => format!("{w:?}"),
            Tok::Quoted(w) => format!("\"{w}\""),
            Tok::Op(op) => format!("'{}'", op.text()),
            Tok::Open => "'('".into(),
            Tok::Close => "')'".into(),
            Tok::Comma => "','".into(),
            Tok::AndSym => "'&&'".into(),
            Tok::OrSym => "'||'".into(),
            Tok::Bang => "'!'".into(),
        }
    }

    fn keyword(&self, kw: &str) -> bool {
        matches!(self, Tok::Word(w) if w.eq_ignore_ascii_case(kw))
    }
    fn is_and(&self) -> bool {
        *self == Tok::AndSym || self.keyword("and")
    }
    fn is_or(&self) -> bool {
        *self == Tok::OrSym || self.keyword("or")
    }
    fn is_not(&self) -> bool {
        *self == Tok::Bang || self.keyword("not")
    }
    /// Whether a condition can start here.
    fn starts_condition(&self) -> bool {
        match self {
            Tok::Open | Tok::Bang => true,
            Tok::Word(_) => !self.is_and() && !self.is_or(),
            _ => false,
        }
    }
}

fn err(column: usize, message: impl Into<String>) -> FilterError {
    FilterError { column, message: message.into() }
}

fn is_word_char(c: char) -> bool {
    !c.is_whitespace() && !"(),=!<>&|\"".contains(c)
}

/// The tokens and the column (from 1, in characters) each starts at.
fn lex(text: &str) -> Result<Vec<(Tok, usize)>, FilterError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let col = i + 1;
        let next = chars.get(i + 1).copied();
        let (tok, len) = match c {
            c if c.is_whitespace() => {
                i += 1;
                continue;
            }
            '(' => (Tok::Open, 1),
            ')' => (Tok::Close, 1),
            ',' => (Tok::Comma, 1),
            '=' if next == Some('=') => (Tok::Op(Op::Eq), 2),
            '=' => (Tok::Op(Op::Eq), 1),
            '!' if next == Some('=') => (Tok::Op(Op::Ne), 2),
            '!' => (Tok::Bang, 1),
            '<' if next == Some('=') => (Tok::Op(Op::Le), 2),
            '<' => (Tok::Op(Op::Lt), 1),
            '>' if next == Some('=') => (Tok::Op(Op::Ge), 2),
            '>' => (Tok::Op(Op::Gt), 1),
            '&' if next == Some('&') => (Tok::AndSym, 2),
            '|' if next == Some('|') => (Tok::OrSym, 2),
            '&' | '|' => return Err(err(col, format!("'{c}' alone means nothing: write {c}{c}, or 'and'/'or'"))),
            '"' => {
                let Some(len) = chars[i + 1..].iter().position(|c| *c == '"') else {
                    return Err(err(col, "this quote is never closed"));
                };
                out.push((Tok::Quoted(chars[i + 1..i + 1 + len].iter().collect()), col));
                i += len + 2;
                continue;
            }
            _ => {
                let len = chars[i..].iter().take_while(|c| is_word_char(**c)).count();
                (Tok::Word(chars[i..i + len].iter().collect()), len)
            }
        };
        out.push((tok, col));
        i += len;
    }
    Ok(out)
}

// ---- parser ----

/// Most parentheses and `not`s open at once. The parser, the evaluation
/// and the tree's drop all recurse once a level, on the daemon's and the
/// workers' stacks; no filter a person writes comes near this.
pub const MAX_DEPTH: usize = 64;

struct Parser<'a> {
    toks: Vec<(Tok, usize)>,
    pos: usize,
    /// Parentheses and `not`s open here (see `MAX_DEPTH`).
    depth: usize,
    /// The column just past the text, for "expected ... at the end".
    end: usize,
    names: &'a Names,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|(t, _)| t)
    }
    fn peek_at(&self, ahead: usize) -> Option<&Tok> {
        self.toks.get(self.pos + ahead).map(|(t, _)| t)
    }
    fn col(&self) -> usize {
        self.toks.get(self.pos).map_or(self.end, |(_, c)| *c)
    }
    fn bump(&mut self) -> Option<(Tok, usize)> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn starts_condition(&self) -> bool {
        self.peek().is_some_and(Tok::starts_condition)
    }

    fn or(&mut self) -> Result<Node, FilterError> {
        let mut parts = vec![self.and()?];
        while self.peek().is_some_and(Tok::is_or) {
            let (_, col) = self.bump().expect("peeked");
            if !self.starts_condition() {
                return Err(err(self.col(), format!("expected a condition after the 'or' at column {col}")));
            }
            parts.push(self.and()?);
        }
        Ok(if parts.len() == 1 { parts.pop().expect("one") } else { Node::Or(parts) })
    }

    fn and(&mut self) -> Result<Node, FilterError> {
        let mut parts = vec![self.unary()?];
        loop {
            match self.peek() {
                Some(t) if t.is_and() || *t == Tok::Comma => {
                    let (tok, col) = self.bump().expect("peeked");
                    let what = if tok == Tok::Comma { "','".to_string() } else { "'and'".to_string() };
                    if !self.starts_condition() {
                        return Err(err(self.col(), format!("expected a condition after the {what} at column {col}")));
                    }
                    parts.push(self.unary()?);
                }
                Some(t) if t.starts_condition() => parts.push(self.unary()?),
                _ => break,
            }
        }
        Ok(if parts.len() == 1 { parts.pop().expect("one") } else { Node::And(parts) })
    }

    fn unary(&mut self) -> Result<Node, FilterError> {
        let col = self.col();
        if self.peek().is_some_and(|t| t.is_not() || *t == Tok::Open) {
            if self.depth == MAX_DEPTH {
                return Err(err(col, format!("more than {MAX_DEPTH} parentheses and 'not's open at once")));
            }
            self.depth += 1;
            let node = self.nested(col);
            self.depth -= 1;
            return node;
        }
        self.nested(col)
    }

    /// A `not`, a parenthesis or a condition, from `unary`.
    fn nested(&mut self, col: usize) -> Result<Node, FilterError> {
        match self.bump() {
            Some((t, _)) if t.is_not() => {
                if !self.starts_condition() {
                    return Err(err(self.col(), format!("expected a condition after the 'not' at column {col}")));
                }
                Ok(Node::Not(Box::new(self.unary()?)))
            }
            Some((Tok::Open, _)) => {
                if self.peek() == Some(&Tok::Close) {
                    return Err(err(self.col(), "empty parentheses: expected a condition"));
                }
                let inner = self.or()?;
                match self.bump() {
                    Some((Tok::Close, _)) => Ok(inner),
                    Some((t, c)) => Err(err(
                        c,
                        format!("expected 'and', 'or' or ')' to close the '(' at column {col}, found {}", t.describe()),
                    )),
                    None => Err(err(self.end, format!("expected ')' to close the '(' at column {col}"))),
                }
            }
            Some((t, _)) if t.starts_condition() => {
                let Tok::Word(w) = t else { unreachable!("a condition starts with a word, '(' or a 'not'") };
                self.test(w, col)
            }
            Some((t, c)) => {
                Err(err(c, format!("expected a condition (FIELD OP VALUE, 'not' or '('), found {}", t.describe())))
            }
            None => Err(err(self.end, "expected a condition (FIELD OP VALUE, 'not' or '(') at the end")),
        }
    }

    fn test(&mut self, word: String, col: usize) -> Result<Node, FilterError> {
        let Some(field) = Field::parse(&word) else {
            return Err(err(col, format!("unknown field {word:?}; fields: {FIELDS}")));
        };
        let (op, op_col) = match self.bump() {
            Some((Tok::Op(op), c)) => (op, c),
            Some((t, c)) => {
                return Err(err(
                    c,
                    format!("expected an operator (=, !=, <, <=, >, >=) after {word:?}, found {}", t.describe()),
                ))
            }
            None => return Err(err(self.end, format!("expected an operator (=, !=, <, <=, >, >=) after {word:?}"))),
        };
        if !field.ordered() && !matches!(op, Op::Eq | Op::Ne) {
            return Err(err(op_col, format!("{word:?} is not a quantity: it takes = or !=, not '{}'", op.text())));
        }
        let mut raw = vec![self.value(&format!("'{}'", op.text()))?];
        // A comma then FIELD OP is the next term (the old form's
        // separator); any other comma continues the list.
        while self.peek() == Some(&Tok::Comma)
            && !(matches!(self.peek_at(1), Some(Tok::Word(_))) && matches!(self.peek_at(2), Some(Tok::Op(_))))
        {
            let (_, comma) = self.bump().expect("peeked");
            if !matches!(op, Op::Eq | Op::Ne) {
                return Err(err(comma, format!("a list of values goes with = or != only, not '{}'", op.text())));
            }
            raw.push(self.value("','")?);
        }
        let values = values(field, op, &raw, self.names)?;
        Ok(Node::Test(Test { field, op, values }))
    }

    fn value(&mut self, after: &str) -> Result<(String, usize), FilterError> {
        match self.bump() {
            Some((Tok::Word(w) | Tok::Quoted(w), c)) => Ok((w, c)),
            Some((t, c)) => Err(err(c, format!("expected a value after {after}, found {}", t.describe()))),
            None => Err(err(self.end, format!("expected a value after {after}"))),
        }
    }
}

// ---- values ----

fn parse_u64(text: &str, what: &str) -> Result<u64, String> {
    text.parse::<u64>().map_err(|_| format!("{text:?} is not {what}"))
}

/// A number with a unit: the number's text and the unit's; an error when
/// no number leads.
fn split_number(text: &str) -> Result<(&str, &str), String> {
    let end = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    if end == 0 {
        return Err(format!("{text:?} is not a number"));
    }
    Ok(text.split_at(end))
}

/// `number * scale`, exact for whole numbers, rounded otherwise.
fn scaled(text: &str, number: &str, scale: u64) -> Result<u64, String> {
    if number.is_empty() || number.starts_with('.') || number.ends_with('.') || number.matches('.').count() > 1 {
        return Err(format!("{text:?} is not a number"));
    }
    if let Ok(n) = number.parse::<u64>() {
        return n.checked_mul(scale).ok_or_else(|| format!("{text:?} is too large"));
    }
    let x = number.parse::<f64>().map_err(|_| format!("{text:?} is not a number"))? * scale as f64;
    if x >= u64::MAX as f64 {
        return Err(format!("{text:?} is too large"));
    }
    Ok(x.round() as u64)
}

fn si(prefix: &str) -> Option<u64> {
    Some(match prefix.to_ascii_lowercase().as_str() {
        "" => 1,
        "k" => 1_000,
        "m" => 1_000_000,
        "g" => 1_000_000_000,
        "t" => 1_000_000_000_000,
        _ => return None,
    })
}

fn bytes_value(text: &str) -> Result<u64, String> {
    let (number, unit) = split_number(text)?;
    let unit = unit.strip_suffix('B').unwrap_or(unit);
    let scale = match unit.to_ascii_lowercase().as_str() {
        "ki" => Some(1 << 10),
        "mi" => Some(1 << 20),
        "gi" => Some(1 << 30),
        "ti" => Some(1 << 40),
        _ => si(unit),
    }
    .ok_or_else(|| {
        format!(
            "{text:?}: unknown unit; bytes take k, M, G, T (1000s) or Ki, Mi, Gi, Ti (1024s), a B after them allowed"
        )
    })?;
    scaled(text, number, scale)
}

fn packets_value(text: &str) -> Result<u64, String> {
    let (number, unit) = split_number(text)?;
    let scale = si(unit).ok_or_else(|| format!("{text:?}: unknown unit; packets take k, M, G or T (1000s)"))?;
    scaled(text, number, scale)
}

fn duration_ns(text: &str) -> Result<u64, String> {
    let (number, unit) = split_number(text)?;
    let scale: u64 = match unit.to_ascii_lowercase().as_str() {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        "" | "s" => 1_000_000_000,
        "m" | "min" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        "d" => 86_400_000_000_000,
        _ => return Err(format!("{text:?}: unknown unit; times take ns, us, ms, s, m, h or d (no unit: seconds)")),
    };
    scaled(text, number, scale)
}

fn rate_value(text: &str) -> Result<f64, String> {
    let (number, unit) = split_number(text)?;
    let bad = || format!("{text:?}: unknown unit; rates take k, M, G, T with bit, bps or b/s (no unit: bit/s), or B/s");
    // Bytes per second spelled with a capital B; everything else is bits.
    let (prefix, per_byte) = if let Some(p) = unit.strip_suffix("B/s").or_else(|| unit.strip_suffix("Bps")) {
        (p, 8.0)
    } else {
        let lower = unit.to_ascii_lowercase();
        let cut = ["bit/s", "bits/s", "bit", "bits", "bps", "b/s"]
            .iter()
            .find_map(|s| lower.strip_suffix(s).map(|p| p.len()))
            .unwrap_or(lower.len());
        (&unit[..cut], 1.0)
    };
    let scale = si(prefix).ok_or_else(bad)?;
    let x: f64 = number.parse().map_err(|_| format!("{text:?} is not a number"))?;
    Ok(x * scale as f64 * per_byte)
}

fn port_range(text: &str, op: Op) -> Result<(u64, u64), String> {
    let port = |s: &str| s.parse::<u16>().map_err(|_| format!("{s:?} is not a port number (0-65535)"));
    match text.split_once('-') {
        None => port(text).map(|p| (p as u64, p as u64)),
        Some(_) if !matches!(op, Op::Eq | Op::Ne) => Err(format!("a range ({text}) goes with = or != only")),
        Some((a, b)) => {
            let (a, b) = (port(a)?, port(b)?);
            if a > b {
                return Err(format!("range {text}: {a} is above {b}"));
            }
            Ok((a as u64, b as u64))
        }
    }
}

fn proto_numbers(text: &str) -> Result<Vec<u8>, String> {
    if let Ok(n) = text.parse::<u8>() {
        return Ok(vec![n]);
    }
    Ok(match text.to_ascii_lowercase().as_str() {
        "tcp" => vec![6],
        "udp" => vec![17],
        "sctp" => vec![132],
        "icmp" => vec![1, 58],
        "icmpv6" | "icmp6" | "ipv6-icmp" => vec![58],
        "gre" => vec![47],
        "esp" => vec![50],
        "ah" => vec![51],
        "udplite" => vec![136],
        _ => {
            return Err(format!(
            "{text:?} is not a protocol: give tcp, udp, sctp, icmp, icmpv6, gre, esp, ah, udplite or a number (0-255)"
        ))
        }
    })
}

fn net(text: &str) -> Result<IpNet, String> {
    if let Some((addr, len)) = text.split_once('/') {
        let a: IpAddr = addr.parse().map_err(|_| format!("{addr:?} is not an IPv4 or IPv6 address"))?;
        let max = if a.is_ipv4() { 32 } else { 128 };
        let len: u8 = len
            .parse()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("{text:?}: the prefix length must be 0-{max}"))?;
        return IpNet::new(a, len).map_err(|_| format!("{text:?}: the prefix length must be 0-{max}"));
    }
    text.parse::<IpAddr>().map(IpNet::from).map_err(|_| format!("{text:?} is not an address or a prefix"))
}

fn stage(text: &str) -> Result<Stage, String> {
    let lower = text.to_ascii_lowercase();
    Stage::LIVE.into_iter().find(|s| s.as_str() == lower).ok_or_else(|| {
        format!("{text:?} is not a stage: give tracking, software, queued, installing, offloaded, removing or refused")
    })
}

fn ingress(text: &str, names: &Names) -> Result<u8, String> {
    if let Some(i) = names.ports.iter().position(|p| p == text) {
        return Ok(i as u8);
    }
    if let Ok(i) = text.parse::<u8>() {
        return Ok(i);
    }
    Err(if names.ports.is_empty() {
        format!("no port named {text:?}; give a port index (0-255)")
    } else {
        format!("no port named {text:?}; the ports are {} (or give an index)", names.ports.join(", "))
    })
}

fn values(field: Field, op: Op, raw: &[(String, usize)], names: &Names) -> Result<Values, FilterError> {
    fn each<T>(raw: &[(String, usize)], f: impl Fn(&str) -> Result<T, String>) -> Result<Vec<T>, FilterError> {
        raw.iter().map(|(v, col)| f(v).map_err(|m| err(*col, m))).collect()
    }
    let one = |r: Result<u64, String>| r.map(|n| (n, n));
    Ok(match field {
        Field::Id => Values::Ranges(each(raw, |v| one(parse_u64(v, "a flow id (a number, as `flows` shows)")))?),
        Field::Port | Field::Sport | Field::Dport => Values::Ranges(each(raw, |v| port_range(v, op))?),
        Field::Vlan => Values::Ranges(each(raw, |v| {
            v.parse::<u16>()
                .ok()
                .filter(|n| *n <= 4095)
                .map(|n| (n as u64, n as u64))
                .ok_or_else(|| format!("{v:?} is not a VLAN id (0-4095)"))
        })?),
        Field::Packets => Values::Ranges(each(raw, |v| one(packets_value(v)))?),
        Field::Bytes => Values::Ranges(each(raw, |v| one(bytes_value(v)))?),
        Field::Age | Field::Idle => Values::Ranges(each(raw, |v| one(duration_ns(v)))?),
        Field::Rate => Values::Rates(each(raw, rate_value)?),
        Field::Proto => Values::Protos(each(raw, proto_numbers)?.concat()),
        Field::Addr | Field::Src | Field::Dst => Values::Nets(each(raw, net)?),
        Field::Ingress => Values::Ports(each(raw, |v| ingress(v, names))?),
        Field::Stage => Values::Stages(each(raw, stage)?),
        Field::Placement => Values::Words(each(raw, |v| {
            let lower = v.to_ascii_lowercase();
            let p = if lower == "software" { "none".to_string() } else { lower };
            if PLACEMENTS.contains(&p.as_str()) {
                Ok(p)
            } else {
                Err(format!("{v:?} is not a placement: give hardware, kernel-software, mixed or none"))
            }
        })?),
        Field::Class | Field::Label => Values::Words(raw.iter().map(|(v, _)| v.clone()).collect()),
    })
}

// ---- evaluation ----

fn compare<T: PartialOrd>(op: Op, have: T, want: T) -> bool {
    match op {
        Op::Eq => have == want,
        Op::Ne => have != want,
        Op::Lt => have < want,
        Op::Le => have <= want,
        Op::Gt => have > want,
        Op::Ge => have >= want,
    }
}

impl Test {
    /// Whether any of the flow's values (a port field has two sides)
    /// stands in `op` to any of the listed ones; `!=` is `not =`.
    /// Generic over the subject so that a scan of a shard's live flows
    /// makes no indirect call per flow.
    fn holds<S: Subject + ?Sized>(&self, s: &S, ends: &impl Fn() -> Endpoints) -> bool {
        match self.op {
            Op::Ne => !self.holds_as(Op::Eq, s, ends),
            op => self.holds_as(op, s, ends),
        }
    }

    fn holds_as<S: Subject + ?Sized>(&self, op: Op, s: &S, ends: &impl Fn() -> Endpoints) -> bool {
        let hit = |h: u64, ranges: &[(u64, u64)]| {
            ranges.iter().any(|&(lo, hi)| if op == Op::Eq { lo <= h && h <= hi } else { compare(op, h, lo) })
        };
        match &self.values {
            Values::Ranges(r) => {
                let have = match self.field {
                    Field::Id => s.id(),
                    Field::Port => {
                        let e = ends();
                        return hit(e.sport as u64, r) || hit(e.dport as u64, r);
                    }
                    Field::Sport => ends().sport as u64,
                    Field::Dport => ends().dport as u64,
                    Field::Vlan => s.vlan() as u64,
                    Field::Packets => s.packets(),
                    Field::Bytes => s.bytes(),
                    Field::Age => s.age_ns(),
                    Field::Idle => s.idle_ns(),
                    _ => return false,
                };
                hit(have, r)
            }
            Values::Rates(r) => {
                let have = s.bits_per_s();
                r.iter().any(|w| compare(op, have, *w))
            }
            Values::Protos(p) => p.contains(&s.proto()),
            Values::Nets(n) => {
                let e = ends();
                match self.field {
                    Field::Src => n.iter().any(|net| net.contains(&e.src)),
                    Field::Dst => n.iter().any(|net| net.contains(&e.dst)),
                    _ => n.iter().any(|net| net.contains(&e.src) || net.contains(&e.dst)),
                }
            }
            Values::Ports(p) => s.ingress().iter().any(|i| p.contains(i)),
            Values::Stages(st) => s.stage().is_some_and(|x| st.contains(&x)),
            Values::Words(w) => {
                let have = match self.field {
                    Field::Placement => Some(s.placement()),
                    Field::Class => s.class(),
                    _ => s.label(),
                };
                have.is_some_and(|h| w.iter().any(|x| x == h))
            }
        }
    }
}

impl Node {
    fn eval<S: Subject + ?Sized>(&self, s: &S, ends: &impl Fn() -> Endpoints) -> bool {
        match self {
            Node::And(parts) => parts.iter().all(|p| p.eval(s, ends)),
            Node::Or(parts) => parts.iter().any(|p| p.eval(s, ends)),
            Node::Not(inner) => !inner.eval(s, ends),
            Node::Test(t) => t.holds(s, ends),
        }
    }
}

impl Filter {
    /// Parses a filter without port names (ports by index only).
    pub fn parse(text: &str) -> Result<Filter, FilterError> {
        Filter::parse_with(text, &Names::default())
    }

    /// Parses a filter, port names resolved from `names`.
    pub fn parse_with(text: &str, names: &Names) -> Result<Filter, FilterError> {
        let toks = lex(text)?;
        if toks.is_empty() {
            return Ok(Filter::default());
        }
        let mut p = Parser { toks, pos: 0, depth: 0, end: text.chars().count() + 1, names };
        let root = p.or()?;
        if let Some((t, c)) = p.bump() {
            let msg = match t {
                Tok::Close => "this ')' closes no '('".to_string(),
                t => format!("expected 'and', 'or' or the end, found {}", t.describe()),
            };
            return Err(err(c, msg));
        }
        Ok(Filter { root: Some(root) })
    }

    pub fn is_empty(&self) -> bool {
        self.root.is_none()
    }

    /// Whether a live flow of a shard passes, at `now_ns`.
    pub fn matches(&self, id: FlowId, flow: &Flow, facts: &dyn FlowFacts, now_ns: u64) -> bool {
        let Some(root) = &self.root else { return true };
        let live = Live { id, flow, facts, now_ns };
        // Addresses and ports are worked out only if a term asks.
        let cell = OnceCell::new();
        root.eval(&live, &|| *cell.get_or_init(|| flow.key.endpoints(flow.initiator())))
    }

    /// Whether a flow seen through `subject` passes.
    pub fn matches_subject(&self, subject: &dyn Subject) -> bool {
        let Some(root) = &self.root else { return true };
        let cell = OnceCell::new();
        root.eval(subject, &|| *cell.get_or_init(|| subject.ends()))
    }
}

/// Mean bits per second from the first packet to `now` (at least a
/// millisecond, so a new flow's rate is finite).
fn mean_bits_per_s(bytes: u64, start_ns: u64, now_ns: u64) -> f64 {
    8.0 * bytes as f64 * 1e9 / now_ns.saturating_sub(start_ns).max(1_000_000) as f64
}

/// A live flow in its shard.
struct Live<'a> {
    id: FlowId,
    flow: &'a Flow,
    facts: &'a dyn FlowFacts,
    now_ns: u64,
}

impl Subject for Live<'_> {
    fn id(&self) -> u64 {
        self.id.0
    }
    fn proto(&self) -> u8 {
        self.flow.key.proto
    }
    fn ends(&self) -> Endpoints {
        self.flow.key.endpoints(self.flow.initiator())
    }
    fn vlan(&self) -> u16 {
        self.flow.key.vlan_outer
    }
    fn ingress(&self) -> [u8; 2] {
        [self.flow.port(Direction::LoToHi), self.flow.port(Direction::HiToLo)]
    }
    fn stage(&self) -> Option<Stage> {
        Some(self.flow.stage())
    }
    fn placement(&self) -> &str {
        self.facts.placement(self.id, self.flow)
    }
    fn class(&self) -> Option<&str> {
        self.facts.class(self.flow)
    }
    fn label(&self) -> Option<&str> {
        self.facts.label(self.id)
    }
    fn packets(&self) -> u64 {
        self.flow.packets()
    }
    fn bytes(&self) -> u64 {
        self.flow.bytes()
    }
    fn age_ns(&self) -> u64 {
        self.now_ns.saturating_sub(self.facts.first_ns(self.id))
    }
    fn idle_ns(&self) -> u64 {
        self.now_ns.saturating_sub(self.flow.last_ns())
    }
    fn bits_per_s(&self) -> f64 {
        mean_bits_per_s(self.flow.bytes(), self.facts.first_ns(self.id), self.now_ns)
    }
}

/// A live flow as it was at one moment, kept apart from its shard (an
/// event's flow, filtered where the subscribers are).
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub id: FlowId,
    pub proto: u8,
    pub ends: Endpoints,
    pub vlan: u16,
    pub ingress: [u8; 2],
    pub stage: Stage,
    pub placement: &'static str,
    pub class: Option<String>,
    pub label: Option<String>,
    pub packets: u64,
    pub bytes: u64,
    pub start_ns: u64,
    pub last_ns: u64,
    pub now_ns: u64,
}

impl Snapshot {
    pub fn of(id: FlowId, flow: &Flow, facts: &dyn FlowFacts, now_ns: u64) -> Snapshot {
        Snapshot {
            id,
            proto: flow.key.proto,
            ends: flow.key.endpoints(flow.initiator()),
            vlan: flow.key.vlan_outer,
            ingress: [flow.port(Direction::LoToHi), flow.port(Direction::HiToLo)],
            stage: flow.stage(),
            placement: facts.placement(id, flow),
            class: facts.class(flow).map(str::to_string),
            label: facts.label(id).map(str::to_string),
            packets: flow.packets(),
            bytes: flow.bytes(),
            start_ns: facts.first_ns(id),
            last_ns: flow.last_ns(),
            now_ns,
        }
    }
}

impl Subject for Snapshot {
    fn id(&self) -> u64 {
        self.id.0
    }
    fn proto(&self) -> u8 {
        self.proto
    }
    fn ends(&self) -> Endpoints {
        self.ends
    }
    fn vlan(&self) -> u16 {
        self.vlan
    }
    fn ingress(&self) -> [u8; 2] {
        self.ingress
    }
    fn stage(&self) -> Option<Stage> {
        Some(self.stage)
    }
    fn placement(&self) -> &str {
        self.placement
    }
    fn class(&self) -> Option<&str> {
        self.class.as_deref()
    }
    fn label(&self) -> Option<&str> {
        self.label.as_deref()
    }
    fn packets(&self) -> u64 {
        self.packets
    }
    fn bytes(&self) -> u64 {
        self.bytes
    }
    fn age_ns(&self) -> u64 {
        self.now_ns.saturating_sub(self.start_ns)
    }
    fn idle_ns(&self) -> u64 {
        self.now_ns.saturating_sub(self.last_ns)
    }
    fn bits_per_s(&self) -> f64 {
        mean_bits_per_s(self.bytes, self.start_ns, self.now_ns)
    }
}

/// An ended flow, by its record: no stage, idle 0, age and rate over its life.
impl Subject for FlowRecord {
    fn id(&self) -> u64 {
        self.id.0
    }
    fn proto(&self) -> u8 {
        self.proto
    }
    fn ends(&self) -> Endpoints {
        Endpoints { src: self.src, dst: self.dst, sport: self.sport, dport: self.dport }
    }
    fn vlan(&self) -> u16 {
        self.vlan
    }
    fn ingress(&self) -> [u8; 2] {
        [self.orig.ingress, self.reply.ingress]
    }
    fn stage(&self) -> Option<Stage> {
        None
    }
    fn placement(&self) -> &str {
        let Some(o) = &self.offload else { return "none" };
        let hw = o.placement.iter().flatten().any(|p| *p == flowtable_hw::Placement::Hardware);
        let ksw = o.placement.iter().flatten().any(|p| *p == flowtable_hw::Placement::KernelSoftware);
        match (hw, ksw) {
            (true, true) => "mixed",
            (true, false) => "hardware",
            (false, true) => "kernel-software",
            (false, false) => "none",
        }
    }
    fn class(&self) -> Option<&str> {
        self.class.as_deref()
    }
    fn label(&self) -> Option<&str> {
        self.context.as_ref().and_then(|c| c.label.as_deref())
    }
    fn packets(&self) -> u64 {
        FlowRecord::packets(self)
    }
    fn bytes(&self) -> u64 {
        FlowRecord::bytes(self)
    }
    fn age_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }
    fn idle_ns(&self) -> u64 {
        0
    }
    fn bits_per_s(&self) -> f64 {
        mean_bits_per_s(FlowRecord::bytes(self), self.start_ns, self.end_ns)
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowtable_sw::{FlowKey, FlowTable, Lookup, PacketInfo, TableConfig};
    use std::net::Ipv4Addr;

    struct Facts {
        /// The test flow's first packet: t = 1 s (see `flow`).
        first_ns: u64,
        placement: &'static str,
        class: Option<&'static str>,
        label: Option<&'static str>,
    }
    impl FlowFacts for Facts {
        fn first_ns(&self, _: FlowId) -> u64 {
            self.first_ns
        }
        fn placement(&self, _: FlowId, _: &Flow) -> &'static str {
            self.placement
        }
        fn class(&self, _: &Flow) -> Option<&str> {
            self.class
        }
        fn label(&self, _: FlowId) -> Option<&str> {
            self.label
        }
    }
    const FACTS: Facts = Facts { first_ns: 1_000_000_000, placement: "hardware", class: Some("web"), label: None };

    /// A TCP flow 10.1.2.3:40000 -> 192.168.0.9:443 on port 1, vlan 7:
    /// 3 packets of 1000 bytes from t=1 s, the last at t=3 s.
    fn flow() -> (FlowTable, FlowId) {
        let mut t = FlowTable::new(TableConfig::default());
        let (mut key, dir) = FlowKey::from_v4(Ipv4Addr::new(10, 1, 2, 3), Ipv4Addr::new(192, 168, 0, 9), 40000, 443, 6);
        key.vlan_outer = 7;
        let p = PacketInfo::whole(key, dir, 1, 1000, 0x02);
        let Lookup::Inserted { id, .. } = t.lookup_or_insert(&p, 1_000_000_000) else { panic!() };
        for ts in [1, 2, 3] {
            t.observe(id, &p, ts * 1_000_000_000, true);
        }
        (t, id)
    }

    /// At t = 11 s: age 10 s, idle 8 s, 3000 bytes over 10 s = 2400 bit/s.
    const NOW: u64 = 11_000_000_000;

    fn check(t: &FlowTable, id: FlowId, facts: &Facts, text: &str) -> bool {
        let names = Names { ports: vec!["wan0".into(), "lan0".into()] };
        let f = Filter::parse_with(text, &names).unwrap_or_else(|e| panic!("{text}: {e}"));
        f.matches(id, t.get(id).unwrap(), facts, NOW)
    }

    #[test]
    fn every_field_matches_and_misses() {
        let (t, id) = flow();
        let f = t.get(id).unwrap();
        assert_eq!((f.packets(), f.bytes()), (3, 3000), "the flow the cases are written for");
        let m = |s: &str| check(&t, id, &FACTS, s);
        let cases: &[(&str, bool)] = &[
            ("", true),
            (&format!("id={}", id.0), true),
            (&format!("id!={}", id.0), false),
            ("proto=tcp", true),
            ("proto=TCP", true),
            ("proto=6", true),
            ("proto=udp", false),
            ("proto=udp,tcp", true),
            ("proto!=udp,icmp", true),
            ("port=443", true),
            ("port=40000", true),
            ("port=400-500", true),
            ("port=80", false),
            ("sport=40000", true),
            ("sport=443", false),
            ("dport=443", true),
            ("dport<1024", true),
            ("sport<1024", false),
            ("port>=40000", true),
            ("addr=192.168.0.9", true),
            ("host=10.0.0.0/8", true),
            ("src=10.0.0.0/8", true),
            ("dst=10.0.0.0/8", false),
            ("dst=192.168.0.0/16,10.0.0.0/8", true),
            ("src=2001:db8::/32", false),
            ("vlan=7", true),
            ("vlan=0", false),
            ("vlan>5", true),
            ("ingress=1", true),
            ("ingress=lan0", true),
            ("ingress=wan0", false),
            ("stage=tracking", true),
            ("state=TRACKING", true),
            ("stage=offloaded", false),
            ("stage=offloaded,tracking", true),
            ("placement=hardware", true),
            ("placement=none", false),
            ("placement!=software", true),
            ("class=web", true),
            ("rule=web", true),
            ("class=Web", false),
            ("label=x", false),
            ("label!=x", true),
            ("packets=3", true),
            ("packets>2", true),
            ("packets>=4", false),
            ("packets<1k", true),
            ("bytes=3000", true),
            ("bytes>2k", true),
            ("bytes>3k", false),
            ("bytes>=3k", true),
            ("bytes<3KiB", true),
            ("bytes>2.9KB", true),
            ("age>9s", true),
            ("age>10s", false),
            ("age>=10000ms", true),
            ("age<1m", true),
            ("age>0.1h", false),
            ("idle=8", true),
            ("idle>5s", true),
            ("idle<8s", false),
            ("rate=2400", true),
            ("rate>2k", true),
            ("rate>2.4kbit", false),
            ("rate>=2.4kbps", true),
            ("rate<300B/s", false),
            ("rate<301B/s", true),
            ("rate<=300B/s", true),
            ("rate<0.3kB/s", false),
        ];
        for (text, want) in cases {
            assert_eq!(m(text), *want, "{text}");
        }
        let labelled = Facts { first_ns: 1_000_000_000, placement: "none", class: None, label: Some("a b") };
        assert!(check(&t, id, &labelled, r#"label="a b" placement=software"#));
        assert!(!check(&t, id, &labelled, "class=web"));
        assert!(check(&t, id, &labelled, "class!=web"));
    }

    #[test]
    fn precedence_not_then_and_then_or() {
        let (t, id) = flow();
        let m = |s: &str| check(&t, id, &FACTS, s);
        // true or (false and false): and binds tighter than or.
        assert!(m("proto=tcp or proto=udp and port=80"));
        // (true or false) and false.
        assert!(!m("(proto=tcp or proto=udp) and port=80"));
        // not binds tighter than and: (not false) and true.
        assert!(m("not proto=udp and port=443"));
        // ... and tighter than or: (not true) or true.
        assert!(m("not proto=tcp or port=443"));
        assert!(!m("not (proto=tcp or port=80)"));
        assert!(m("!(proto=udp) && port=443 || vlan=9"));
        assert!(m("NOT proto=udp AND (vlan=9 OR vlan=7)"));
        assert!(m("not not proto=tcp"));
        // Side by side and commas are and, as the old form had them.
        assert!(m("proto=tcp port=443"));
        assert!(!m("proto=tcp port=80"));
        assert!(m("proto=tcp,port!=80"));
        assert!(!m("proto=tcp,port!=443"));
        // A comma before FIELD OP is a separator, any other a list.
        assert!(m("proto=udp,tcp port=443"));
        assert!(!m("proto=udp,port=443"));
        // A keyword where a value goes is a value.
        let or_label = Facts { first_ns: 1_000_000_000, placement: "none", class: None, label: Some("or") };
        assert!(check(&t, id, &or_label, "label=or or label=and"));
        // The tree is what the precedence says.
        let f = Filter::parse("proto=tcp or port=1 and not vlan=2").unwrap();
        let Some(Node::Or(parts)) = &f.root else { panic!("{f:?}") };
        assert!(matches!(&parts[1], Node::And(a) if matches!(a[1], Node::Not(_))), "{f:?}");
    }

    #[test]
    fn units_scale_as_documented() {
        assert_eq!(bytes_value("1k"), Ok(1_000));
        assert_eq!(bytes_value("1M"), Ok(1_000_000));
        assert_eq!(bytes_value("1m"), Ok(1_000_000));
        assert_eq!(bytes_value("2G"), Ok(2_000_000_000));
        assert_eq!(bytes_value("1T"), Ok(1_000_000_000_000));
        assert_eq!(bytes_value("1Ki"), Ok(1024));
        assert_eq!(bytes_value("1KiB"), Ok(1024));
        assert_eq!(bytes_value("1MiB"), Ok(1 << 20));
        assert_eq!(bytes_value("1.5GiB"), Ok(3 << 29));
        assert_eq!(bytes_value("1TiB"), Ok(1 << 40));
        assert_eq!(bytes_value("1MB"), Ok(1_000_000));
        assert_eq!(bytes_value("1500"), Ok(1500));
        assert_eq!(bytes_value("18446744073709551615"), Ok(u64::MAX));
        assert!(bytes_value("20000000T").unwrap_err().contains("too large"));
        assert!(bytes_value("1Mb").unwrap_err().contains("unknown unit"));
        assert!(bytes_value("1.2.3").unwrap_err().contains("not a number"));
        assert!(bytes_value("M").unwrap_err().contains("not a number"));
        assert_eq!(packets_value("10k"), Ok(10_000));
        assert_eq!(packets_value("1.5M"), Ok(1_500_000));
        assert!(packets_value("1Ki").unwrap_err().contains("packets take"));
        assert_eq!(duration_ns("30s"), Ok(30_000_000_000));
        assert_eq!(duration_ns("30"), Ok(30_000_000_000));
        assert_eq!(duration_ns("1.5s"), Ok(1_500_000_000));
        assert_eq!(duration_ns("250ms"), Ok(250_000_000));
        assert_eq!(duration_ns("7us"), Ok(7_000));
        assert_eq!(duration_ns("9ns"), Ok(9));
        assert_eq!(duration_ns("2m"), Ok(120_000_000_000));
        assert_eq!(duration_ns("2min"), Ok(120_000_000_000));
        assert_eq!(duration_ns("1h"), Ok(3_600_000_000_000));
        assert_eq!(duration_ns("1d"), Ok(86_400_000_000_000));
        assert!(duration_ns("1y").unwrap_err().contains("times take"));
        assert_eq!(rate_value("1M"), Ok(1e6));
        assert_eq!(rate_value("1Mbit"), Ok(1e6));
        assert_eq!(rate_value("1mbit/s"), Ok(1e6));
        assert_eq!(rate_value("10Mbps"), Ok(1e7));
        assert_eq!(rate_value("1kb/s"), Ok(1e3));
        assert_eq!(rate_value("1MB/s"), Ok(8e6));
        assert_eq!(rate_value("1kBps"), Ok(8e3));
        assert_eq!(rate_value("5"), Ok(5.0));
        assert!(rate_value("1Xbit").unwrap_err().contains("rates take"));
    }

    #[test]
    fn nesting_past_the_limit_is_refused_not_a_crash() {
        let deep = |open: &str, n: usize, close: &str| format!("{}proto=tcp{}", open.repeat(n), close.repeat(n));
        // At the limit it parses and judges as written.
        assert!(Filter::parse(&deep("(", MAX_DEPTH, ")")).is_ok());
        assert!(Filter::parse(&deep("not ", MAX_DEPTH, "")).is_ok());
        // Past it, and far past it (a request of 64 KiB holds 60,000), the
        // error names the column of the first level too many.
        for text in
            [deep("(", MAX_DEPTH + 1, ")"), deep("(", 30_000, ")"), deep("!", 60_000, ""), deep("not (", 20_000, ")")]
        {
            let e = Filter::parse(&text).unwrap_err();
            assert!(e.message.contains("more than 64 parentheses and 'not's"), "{e:?}");
        }
        let e = Filter::parse(&deep("(", MAX_DEPTH + 1, ")")).unwrap_err();
        assert_eq!(e.column, MAX_DEPTH + 1);
    }

    #[test]
    fn errors_name_the_column_and_what_was_expected() {
        let names = Names { ports: vec!["wan0".into(), "lan0".into()] };
        let e = |s: &str| Filter::parse_with(s, &names).unwrap_err();
        let cases: &[(&str, usize, &str)] = &[
            ("proto=tcp and bytes >", 22, "expected a value after '>'"),
            ("bytes > and", 9, "not a number"),
            ("colour=red", 1, "unknown field \"colour\""),
            ("proto=tcp colour=red", 11, "unknown field"),
            ("justaword", 1, "unknown field \"justaword\""),
            ("proto", 6, "expected an operator (=, !=, <, <=, >, >=) after \"proto\""),
            ("proto tcp", 7, "expected an operator (=, !=, <, <=, >, >=) after \"proto\", found \"tcp\""),
            ("proto=tpc", 7, "\"tpc\" is not a protocol"),
            ("proto=tcp,tpc", 11, "\"tpc\" is not a protocol"),
            ("proto>tcp", 6, "not a quantity"),
            ("port=9-1", 6, "9 is above 1"),
            ("port>1-9", 6, "goes with = or != only"),
            ("port=70000", 6, "not a port number"),
            ("bytes>1,2", 8, "a list of values goes with = or != only"),
            ("src=10.0.0.300", 5, "not an address or a prefix"),
            ("src=10.0.0.0/33", 5, "prefix length must be 0-32"),
            ("dst=2001:db8::/129", 5, "prefix length must be 0-128"),
            ("vlan=5000", 6, "not a VLAN id"),
            ("stage=gone", 7, "not a stage"),
            ("placement=nic", 11, "not a placement"),
            ("ingress=wan9", 9, "no port named \"wan9\"; the ports are wan0, lan0"),
            ("bytes>1Mb", 7, "unknown unit"),
            ("age>3y", 5, "times take"),
            ("(proto=tcp", 11, "expected ')' to close the '(' at column 1"),
            ("proto=tcp)", 10, "closes no '('"),
            ("()", 2, "empty parentheses"),
            ("proto=tcp and", 14, "expected a condition after the 'and' at column 11"),
            ("proto=tcp or", 13, "expected a condition after the 'or' at column 11"),
            ("not", 4, "expected a condition after the 'not' at column 1"),
            ("proto=tcp,", 11, "expected a value after ','"),
            ("proto=tcp & port=1", 11, "'&' alone"),
            ("label=\"open", 7, "never closed"),
            ("= tcp", 1, "expected a condition"),
            ("proto=tcp port=443 )", 20, "closes no '('"),
        ];
        for (text, column, want) in cases {
            let got = e(text);
            assert_eq!(got.column, *column, "{text}: {got}");
            assert!(got.message.contains(want), "{text}: {got}");
            assert!(got.to_string().starts_with(&format!("filter: column {column}: ")), "{got}");
        }
    }

    #[test]
    fn records_and_snapshots_are_judged_as_the_live_flow() {
        let (t, id) = flow();
        let f = t.get(id).unwrap();
        let snap = Snapshot::of(id, f, &FACTS, NOW);
        for text in
            ["proto=tcp and dport=443", "bytes=3000 and age=10s and idle=8s", "rate=2400", "ingress=1 stage=tracking"]
        {
            let filter = Filter::parse(text).unwrap();
            assert!(filter.matches_subject(&snap), "{text}");
            assert!(filter.matches(id, f, &FACTS, NOW), "{text}");
        }
        assert!(!Filter::parse("class=other").unwrap().matches_subject(&snap));
    }

    /// Random strings of the grammar's pieces: none panics, each parses or
    /// is refused naming a column within the text (or just past its end),
    /// and what parses judges a flow without panicking.
    #[test]
    fn any_text_parses_or_names_a_column_inside_it() {
        use rand::{Rng, SeedableRng};
        let pieces = [
            "proto",
            "port",
            "bytes",
            "age",
            "rate",
            "ingress",
            "label",
            "stage",
            "src",
            "=",
            "!=",
            "<",
            ">=",
            "==",
            "(",
            ")",
            ",",
            " ",
            "and",
            "or",
            "not",
            "!",
            "&&",
            "||",
            "&",
            "|",
            "\"",
            "tcp",
            "1M",
            "30s",
            "1.5",
            "10.0.0.0/8",
            "::1",
            "wan0",
            "x",
            "1-2",
            "offloaded",
            "9999999999999999999999",
            "µs",
            "é",
        ];
        let (t, id) = flow();
        let names = Names { ports: vec!["wan0".into()] };
        let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(12);
        let mut parsed = 0;
        for _ in 0..50_000 {
            let n = rng.gen_range(0..12);
            let text: String = (0..n).map(|_| pieces[rng.gen_range(0..pieces.len())]).collect();
            match Filter::parse_with(&text, &names) {
                Ok(f) => {
                    parsed += 1;
                    let _ = f.matches(id, t.get(id).unwrap(), &FACTS, NOW);
                }
                Err(e) => {
                    assert!(e.column >= 1 && e.column <= text.chars().count() + 1, "{text:?}: {e}");
                    assert!(!e.message.is_empty() && !e.message.contains("Some("), "{text:?}: {e}");
                }
            }
        }
        assert!(parsed > 100, "{parsed} of the random filters parsed");
    }

    /// What judging a flow costs against the same test written by hand,
    /// over a table of 500,000 flows (`cargo test --release -- --ignored
    /// filter_cost --nocapture`).
    #[test]
    #[ignore]
    fn filter_cost() {
        let mut t = FlowTable::new(TableConfig { max_flows: 1 << 20, ..TableConfig::default() });
        for i in 0..500_000u32 {
            let proto = if i % 3 == 0 { 6 } else { 17 };
            let dport = if i % 5 == 0 { 53 } else { 1000 + (i % 50_000) as u16 };
            let (key, dir) =
                FlowKey::from_v4(Ipv4Addr::from(0x0a00_0000 + i), Ipv4Addr::new(192, 168, 0, 9), 40000, dport, proto);
            let p = PacketInfo::whole(key, dir, 0, 100, 0);
            if let Lookup::Inserted { id, .. } = t.lookup_or_insert(&p, 1) {
                t.observe(id, &p, 1, true);
            }
        }
        // The fastest of several rounds: the machine may be busy.
        for text in ["proto=udp dport=53", "proto=udp,sctp and not (dport<1024 or bytes > 1M)"] {
            let f = Filter::parse(text).unwrap();
            let (mut filtered, mut by_hand) = (std::time::Duration::MAX, std::time::Duration::MAX);
            let mut n = 0;
            for _ in 0..9 {
                let start = std::time::Instant::now();
                n = t.iter().filter(|(id, fl)| f.matches(*id, fl, &FACTS, NOW)).count();
                filtered = filtered.min(start.elapsed());
                let start = std::time::Instant::now();
                let m = t
                    .iter()
                    .filter(|(_, fl)| fl.key.proto == 17 && fl.key.endpoints(fl.initiator()).dport == 53)
                    .count();
                by_hand = by_hand.min(start.elapsed());
                assert!(m > 0);
            }
            println!("{text}: {n} of {} flows: filter {filtered:?}, proto=udp dport=53 by hand {by_hand:?}", t.len());
        }
    }
}
