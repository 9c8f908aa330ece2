//! The configuration: its schema (serde_json) and loading with errors that
//! name the file, the field and what is wrong.

pub mod schema;
pub mod synth;

pub use schema::*;

use std::path::Path;

/// A configuration error, always naming where.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `message` says what the path is or why it can't be read ("no
    /// such file", "is a directory, not a configuration file").
    #[error("{file}: {message}")]
    Read { file: String, message: String },
    #[error("{file}: at `{field}` (line {line}, column {column}): {message}")]
    Parse { file: String, field: String, line: usize, column: usize, message: String },
    #[error("{file}: at `{field}`: {message}")]
    Invalid { file: String, field: String, message: String },
}

impl ConfigError {
    /// The dotted path of the offending field, when known.
    pub fn field(&self) -> Option<&str> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Parse { field, .. } | ConfigError::Invalid { field, .. } => Some(field),
        }
    }
}

/// Reads and checks a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::Read { file: file.clone(), message: read_error(path, &e) })?;
    parse(&file, &text)
}

/// Why a configuration file can't be read, in words rather than as the
/// system's error and number ("Is a directory (os error 21)").
fn read_error(path: &Path, e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    if path.is_dir() {
        return "is a directory, not a configuration file".to_string();
    }
    match e.kind() {
        ErrorKind::NotFound => "no such file".to_string(),
        ErrorKind::PermissionDenied => "cannot read: permission denied".to_string(),
        ErrorKind::InvalidData => "cannot read: the file is not UTF-8 text, as a JSON configuration is".to_string(),
        _ => {
            let text = e.to_string();
            let text = text.find(" (os error ").map_or(text.as_str(), |i| &text[..i]);
            format!("cannot read: {}", text.to_lowercase())
        }
    }
}

/// Parses and checks configuration text; `file` names it in errors.
pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
    let doc = serde_json::from_str::<serde_json::Value>(text).ok();
    if let Some(doc) = &doc {
        objects_where_expected(doc)
            .and_then(|()| backend_fields(doc))
            .map_err(|(field, message)| ConfigError::Invalid { file: file.to_string(), field, message })?;
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let config: Config = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let field = field_path(e.path());
        // serde_json says "expected value" both for text that is not JSON
        // and for an array or object where a name belongs; the text parsed
        // as JSON, so it is the second, and the value's kind says more.
        let written = doc.as_ref().and_then(|d| value_at(d, e.path()));
        let inner = e.into_inner();
        let mut message = in_plain_words(&strip_position(&inner.to_string()));
        if let (Some(v), true) = (written, inner.is_syntax()) {
            message = format!("{} is not accepted here{}", kind(v), names_hint(&field));
        }
        ConfigError::Parse { file: file.to_string(), field, line: inner.line(), column: inner.column(), message }
    })?;
    // A second document, or anything else after the first, is not ignored.
    de.end().map_err(|e| ConfigError::Parse {
        file: file.to_string(),
        field: "(after the configuration)".to_string(),
        line: e.line(),
        column: e.column(),
        message: "text after the end of the configuration object; a file holds one JSON object".to_string(),
    })?;
    config.validate().map_err(|(field, message)| ConfigError::Invalid { file: file.to_string(), field, message })?;
    Ok(config)
}

/// Sections and list entries must be JSON objects. serde's derived
/// structs also take an array, filled field by field in declaration order
/// (`[7, 1]` would be `instance_id` 7 and `workers` 1), which no one means
/// and nothing documents; refused here, naming where. (The typed parse
/// that follows reports everything else, and a text that isn't JSON.)
fn objects_where_expected(doc: &serde_json::Value) -> Result<(), (String, String)> {
    use serde_json::Value;
    let must = |v: &Value, at: String| -> Result<(), (String, String)> {
        match v {
            Value::Object(_) => Ok(()),
            other => Err((at, format!("must be a JSON object ({{ ... }}), not {}", kind(other)))),
        }
    };
    let Value::Object(top) = doc else {
        return Err((
            "(top level)".into(),
            format!("a configuration is one JSON object ({{ ... }}), not {}", kind(doc)),
        ));
    };
    for section in
        ["table", "timeouts", "classifier", "offload", "backend", "records", "export", "control", "log", "metrics"]
    {
        if let Some(v) = top.get(section) {
            must(v, section.to_string())?;
        }
    }
    let entries = |v: Option<&Value>, at: &str| -> Result<(), (String, String)> {
        if let Some(Value::Array(items)) = v {
            for (i, item) in items.iter().enumerate() {
                must(item, format!("{at}[{i}]"))?;
            }
        }
        Ok(())
    };
    entries(top.get("ports"), "ports")?;
    entries(top.get("sources"), "sources")?;
    entries(top.get("export").and_then(|e| e.get("ipfix")), "export.ipfix")?;
    if let Some(Value::Array(rules)) = top.get("classifier").and_then(|c| c.get("rules")) {
        for (i, rule) in rules.iter().enumerate() {
            must(rule, format!("classifier.rules[{i}]"))?;
            for part in ["match", "trigger"] {
                if let Some(v) = rule.get(part) {
                    must(v, format!("classifier.rules[{i}].{part}"))?;
                }
            }
        }
    }
    Ok(())
}

/// The backend section read as its kind's own settings, so that an error
/// names its field: serde reads an internally tagged enum (`"kind"`) whole
/// and its errors name only `backend` ("give path string" for a journal
/// given as a number). The dpdk kind is read as the DPDK backend reads it,
/// in every build.
fn backend_fields(doc: &serde_json::Value) -> Result<(), (String, String)> {
    use serde_json::Value;
    let Some(Value::Object(section)) = doc.get("backend") else { return Ok(()) };
    let mut rest = section.clone();
    let kind = rest.remove("kind");
    let rest = Value::Object(rest);
    let named = |e: serde_path_to_error::Error<serde_json::Error>| {
        let field = match field_path(e.path()).as_str() {
            "(top level)" => "backend".to_string(),
            p => format!("backend.{p}"),
        };
        (field, in_plain_words(&strip_position(&e.into_inner().to_string())))
    };
    const KINDS: &str = r#"give "sim", "tc" or "dpdk""#;
    match kind.as_ref().map(|k| (k, k.as_str())) {
        None => Err(("backend.kind".into(), format!("missing: {KINDS}"))),
        Some((_, Some("sim"))) => {
            serde_path_to_error::deserialize::<_, SimBackendConfig>(rest).map(drop).map_err(named)
        }
        Some((_, Some("tc"))) => serde_path_to_error::deserialize::<_, TcBackendConfig>(rest).map(drop).map_err(named),
        Some((_, Some("dpdk"))) => {
            serde_path_to_error::deserialize::<_, flowtable_hw::dpdk_config::DpdkConfig>(rest).map(drop).map_err(named)
        }
        Some((k, _)) => Err(("backend.kind".into(), format!("{k} is not a backend: {KINDS}"))),
    }
}

/// The value the typed parse stopped at, found in the parsed document.
fn value_at<'a>(doc: &'a serde_json::Value, path: &serde_path_to_error::Path) -> Option<&'a serde_json::Value> {
    use serde_path_to_error::Segment;
    let mut v = doc;
    for segment in path.iter() {
        v = match segment {
            Segment::Seq { index } => v.get(*index)?,
            Segment::Map { key } | Segment::Enum { variant: key } => v.get(key.as_str())?,
            Segment::Unknown => return None,
        };
    }
    Some(v)
}

/// The names a field of named choices takes, for errors.
fn names_hint(field: &str) -> &'static str {
    match field {
        "offload.placement" => r#": give "hardware", "software" or "auto""#,
        "table.full_policy" => r#": give "evict-idle" or "reject-new""#,
        "log.format" => r#": give "human" or "json""#,
        _ if field.ends_with(".pace") => r#": give "timestamps" or "fast""#,
        _ if field.ends_with(".proto") => r#": give "tcp", "udp", "sctp", "icmp", "gre" or "esp""#,
        _ => "",
    }
}

pub(crate) fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::Bool(_) => "true or false",
        serde_json::Value::Null => "null",
        serde_json::Value::Object(_) => "an object",
    }
}

/// The dotted path of a field as errors name it (`table.max_flows`,
/// `classifier.rules[1].match.proto`), `(top level)` for the document
/// itself. A key that the dotted form can't show — empty, or holding a
/// dot, a bracket, a quote or white space — is written as a JSON string,
/// so that a field is never named as nothing (`{"": 1}` is at `""`, where
/// serde_path_to_error gives an empty path) nor mistaken for a nested one.
fn field_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                let plain = !key.is_empty()
                    && !key
                        .chars()
                        .any(|c| matches!(c, '.' | '[' | ']' | '"' | '`') || c.is_whitespace() || c.is_control());
                if plain {
                    out.push_str(key);
                } else {
                    out.push_str(&serde_json::to_string(key).unwrap_or_else(|_| "?".to_string()));
                }
            }
            Segment::Unknown => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push('?');
            }
        }
    }
    // A syntax error after a section's last field (a trailing comma) is at
    // a field serde never got to name: the section is where it is.
    while let Some(cut) = out.strip_suffix(".?").or_else(|| out.strip_suffix('?')) {
        out = cut.to_string();
    }
    if out.is_empty() {
        out.push_str("(top level)");
    }
    out
}

/// serde's messages speak of Rust types ("invalid type: floating point
/// `1000.0`, expected usize"); an operator needs what was written and what
/// to write instead. Messages of other shapes pass through.
pub(crate) fn in_plain_words(msg: &str) -> String {
    if msg == "trailing comma" {
        return "a comma after the last entry: JSON allows none there, remove it".to_string();
    }
    if let Some(what) = msg.strip_prefix("EOF while parsing ") {
        let closer = match what {
            "an object" => " (a } is missing)",
            "a list" => " (a ] is missing)",
            "a string" => " (a \" is missing)",
            _ => "",
        };
        return format!("the file ends inside {what}{closer}");
    }
    if msg == "expected value" {
        return "expected a value here (a number, \"text\", true, false, null, [ ... ] or { ... })".to_string();
    }
    let (given, wanted, invalid_type) = if let Some(rest) = msg.strip_prefix("invalid type: ") {
        match rest.split_once(", expected ") {
            Some((g, w)) => (g, w, true),
            None => return msg.to_string(),
        }
    } else if let Some(rest) = msg.strip_prefix("invalid value: ") {
        match rest.split_once(", expected ") {
            Some((g, w)) => (g, w, false),
            None => return msg.to_string(),
        }
    } else {
        return msg.to_string();
    };
    let wanted = match wanted {
        "usize" | "u64" => "a whole number, 0 or more".to_string(),
        "u32" => format!("a whole number, 0 to {}", u32::MAX),
        "u16" => "a whole number, 0 to 65535".to_string(),
        "u8" => "a whole number, 0 to 255".to_string(),
        "isize" | "i64" | "i32" | "i16" | "i8" => "a whole number".to_string(),
        "f64" | "f32" => "a number".to_string(),
        "a boolean" => "true or false".to_string(),
        "a string" | "a borrowed string" => "text in quotes".to_string(),
        "path string" => "a file path as a string (in quotes)".to_string(),
        "a sequence" => "an array ([ ... ])".to_string(),
        w if w.starts_with("struct ") || w == "a map" => "an object ({ ... })".to_string(),
        w => w.to_string(),
    };
    let given = plain_value(given);
    if invalid_type {
        format!("{given} is not accepted here: give {wanted}")
    } else {
        format!("{given} is out of range: give {wanted}")
    }
}

/// serde's description of a value ("floating point `1.5`", "string \"x\"")
/// as it was written.
fn plain_value(given: &str) -> String {
    let quoted = |s: &str| s.trim_matches('`').to_string();
    if let Some(v) = given.strip_prefix("floating point ") {
        format!("{} (a number with a fraction or exponent)", quoted(v))
    } else if let Some(v) = given.strip_prefix("integer ") {
        quoted(v)
    } else if let Some(v) = given.strip_prefix("boolean ") {
        quoted(v)
    } else if let Some(v) = given.strip_prefix("string ") {
        format!("the text {v}")
    } else {
        match given {
            "map" => "an object".to_string(),
            "sequence" => "an array".to_string(),
            "unit value" | "null" => "null".to_string(),
            other => other.to_string(),
        }
    }
}

/// serde_json appends " at line L column C", which we already report.
pub(crate) fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// A commented example configuration (JSON has no comments, so the
/// explanations are in `_comment` fields, which the loader ignores).
pub fn example() -> String {
    schema::EXAMPLE.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_parses_and_defaults_apply() {
        let c = parse("example.json", &example()).unwrap();
        assert!(!c.classifier.rules.is_empty());
        let t = &c.classifier.rules[1].trigger;
        assert!(t.tcp_established && t.after_packets == Some(8), "{t:?}");
        assert!(t.comment.as_deref().is_some_and(|s| s.contains("all conditions must hold")), "{t:?}");
        assert_eq!(c.export.addresses().unwrap(), vec!["127.0.0.1:4739".parse().unwrap()]);
        assert_eq!(c.export.ipfix[0].transport, ExportTransport::Udp);
        assert_eq!(c.backend.journal(), Some(std::path::Path::new("/var/lib/flowtable/journal.jsonl")));
        let no_adopt =
            parse("t.json", r#"{"backend": {"kind": "tc", "adopt_rules": false, "journal": "/j"}}"#).unwrap();
        assert_eq!(no_adopt.backend.journal(), None, "adopt_rules off: nothing to take over, no journal");
        let tc = parse("t.json", r#"{"backend": {"kind": "tc", "journal": "/j"}}"#).unwrap();
        assert!(tc.backend.journal().is_some(), "adopt_rules is on by default");
        let warned = |c: &str| parse("t.json", c).unwrap().warnings().iter().any(|(at, _)| at == "backend.keep_rules");
        assert!(warned(r#"{"backend": {"kind": "tc", "keep_rules": true}}"#), "kept rules nobody takes over");
        assert!(!warned(r#"{"backend": {"kind": "tc", "keep_rules": true, "journal": "/j"}}"#));
        let empty = parse("empty.json", "{}").unwrap();
        assert!(empty.export.ipfix.is_empty(), "no export unless asked for");
        assert_eq!((empty.export.mtu, empty.export.enterprise_number), (1500, 32473));
        assert_eq!(empty.table.max_flows, 1 << 20);
        assert_eq!(empty.timeouts.udp_s, 60.0);
    }

    /// Keys the dotted path can't show, found by the `config` fuzz target
    /// (`fuzz/`): an empty key was named as nothing (`at ```); one with a
    /// dot read as two nested fields.
    #[test]
    fn odd_keys_are_named_quoted() {
        let err = parse("k.json", r#"{"": 1}"#).unwrap_err();
        assert_eq!(err.field(), Some(r#""""#), "{err}");
        let err = parse("k.json", r#"{"table": {"max.flows": 1}}"#).unwrap_err();
        assert_eq!(err.field(), Some(r#"table."max.flows""#), "{err}");
        let err = parse("k.json", r#"{"ports": [{"name": "a", " x": 1}]}"#).unwrap_err();
        assert_eq!(err.field(), Some(r#"ports[0]." x""#), "{err}");
        let err = parse("k.json", "1").unwrap_err();
        assert_eq!(err.field(), Some("(top level)"), "{err}");
    }

    #[test]
    fn unknown_field_names_its_path() {
        let err = parse("c.json", r#"{"table": {"max_flow": 10}}"#).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("c.json: at `table.max_flow`"), "{msg}");
        assert!(msg.contains("unknown field `max_flow`"), "{msg}");
        assert!(msg.contains("line 1"), "{msg}");
    }

    #[test]
    fn wrong_type_deep_in_rules_names_the_index() {
        let text = r#"{"classifier": {"rules": [
            {"name": "a", "match": {"proto": "tcp"}, "result": "software"},
            {"name": "b", "match": {"proto": "tpc"}, "result": "software"}
        ]}}"#;
        let err = parse("r.json", text).unwrap_err();
        assert_eq!(err.field(), Some("classifier.rules[1].match.proto"));
        assert!(err.to_string().contains("line 3"), "{err}");
    }

    #[test]
    fn semantic_errors_name_the_field() {
        let err = parse("t.json", r#"{"timeouts": {"udp_s": -1}}"#).unwrap_err();
        assert_eq!(err.field(), Some("timeouts.udp_s"));
        let err = parse("t.json", r#"{"table": {"max_flows": 0}}"#).unwrap_err();
        assert_eq!(err.field(), Some("table.max_flows"));
        let err = parse(
            "t.json",
            r#"{"classifier": {"rules": [{"name": "x", "match": {"ports": ["90-80"]}, "result": "software"}]}}"#,
        )
        .unwrap_err();
        assert_eq!(err.field(), Some("classifier.rules[0].match.ports[0]"));
        let err = parse(
            "t.json",
            r#"{"classifier": {"rules": [{"name": "x", "match": {}, "result": {"offload": {"type": "forward", "port": 3}}}]}}"#,
        )
        .unwrap_err();
        assert_eq!(err.field(), Some("classifier.rules[0].result.offload.port"));
    }

    #[test]
    fn inline_pairs_join_ports_by_name_and_bad_ones_name_the_field() {
        let c = parse("p.json", r#"{"ports": [{"name": "wan"}, {"name": "lan", "pair": "wan"}, {"name": "mgmt"}]}"#)
            .unwrap();
        let map = c.port_map().unwrap();
        assert_eq!((map.partner(0), map.partner(1), map.partner(2)), (Some(1), Some(0), None));
        assert_eq!(map.ingress(1).zone, 0);
        // Named from both sides: one pair.
        parse("p.json", r#"{"ports": [{"name": "a", "pair": "b"}, {"name": "b", "pair": "a"}]}"#).unwrap();

        let bad = |text: &str| parse("p.json", text).unwrap_err();
        let err = bad(r#"{"ports": [{"name": "a", "pair": "c"}, {"name": "b"}]}"#);
        assert_eq!(err.field(), Some("ports[0].pair"));
        assert!(err.to_string().contains("no port is named \"c\"; ports: a, b"), "{err}");
        let err = bad(r#"{"ports": [{"name": "a"}, {"name": "b", "pair": "b"}]}"#);
        assert_eq!(err.field(), Some("ports[1].pair"));
        assert!(err.to_string().contains("itself"), "{err}");
        let err = bad(r#"{"ports": [{"name": "a", "pair": "b"}, {"name": "b"}, {"name": "c", "pair": "b"}]}"#);
        assert_eq!(err.field(), Some("ports[2].pair"));
        assert!(err.to_string().contains("\"b\" is already paired with \"a\""), "{err}");
        let err = bad(r#"{"ports": [{"name": "a"}, {"name": "a"}]}"#);
        assert_eq!(err.field(), Some("ports[1].name"));
    }

    #[test]
    fn egress_gives_a_hosts_own_port_a_twin_after_the_listed_ports() {
        let c = parse(
            "e.json",
            r#"{"ports": [{"name": "wan"}, {"name": "eth0", "egress": true}, {"name": "eth1", "egress": true}],
                "classifier": {"rules": [{"name": "mine", "match": {"ingress": 4}, "result": "software"}]}}"#,
        )
        .unwrap();
        assert_eq!(c.egress_twins(), [(1, 3), (2, 4)]);
        assert_eq!((c.egress_twin(1), c.egress_twin(0), c.port_count()), (Some(3), None, 5));
        assert_eq!(
            (c.port_label(1), c.port_label(3), c.port_label(4), c.port_label(9)),
            ("eth0".to_string(), "eth0 egress".to_string(), "eth1 egress".to_string(), "port9".to_string())
        );
        let map = c.port_map().unwrap();
        assert_eq!((map.ingress(3).zone, map.ingress(4).zone), (1, 2), "a twin's flows are keyed by its port");
        assert!(map.is_egress(3) && !map.is_egress(1) && map.inline_partner(1).is_none());
        assert!(!serde_json::to_string(&c.ports[0]).unwrap().contains("egress"), "left out when off");

        let bad = |text: &str| parse("e.json", text).unwrap_err();
        let err = bad(r#"{"ports": [{"name": "a", "egress": true, "pair": "b"}, {"name": "b"}]}"#);
        assert_eq!(err.field(), Some("ports[0].egress"), "{err}");
        assert!(err.to_string().contains("inline pair with \"b\""), "{err}");
        let err = bad(r#"{"ports": [{"name": "a"}, {"name": "b", "pair": "a"}, {"name": "c"}], "classifier":
            {"rules": [{"name": "x", "match": {"ingress": 3}, "result": "software"}]}}"#);
        assert_eq!(err.field(), Some("classifier.rules[0].match.ingress"), "{err}");
        let err = bad(r#"{"ports": [{"name": "a", "egress": true}], "backend": {"kind": "dpdk"}}"#);
        assert_eq!(err.field(), Some("ports[0].egress"), "{err}");
        assert!(err.to_string().contains("no egress hook"), "{err}");
        let many: Vec<String> = (0..200).map(|i| format!(r#"{{"name": "p{i}", "egress": true}}"#)).collect();
        let err = bad(&format!(r#"{{"ports": [{}]}}"#, many.join(",")));
        assert_eq!(err.field(), Some("ports[0].egress"), "{err}");
        assert!(err.to_string().contains("more than 256 port indexes"), "{err}");
    }

    #[test]
    fn tc_backend_options() {
        let c = parse("t.json", r#"{"backend": {"kind": "tc", "icmp_by_hosts": true}}"#).unwrap();
        assert!(matches!(
            c.backend,
            BackendConfig::Tc(TcBackendConfig {
                icmp_by_hosts: true,
                keep_rules: false,
                adopt_rules: true,
                journal: None
            })
        ));
        let c = parse("t.json", r#"{"backend": {"kind": "tc"}}"#).unwrap();
        assert!(matches!(c.backend, BackendConfig::Tc(TcBackendConfig { icmp_by_hosts: false, .. })));
        let err = parse("t.json", r#"{"backend": {"kind": "tc", "icmp_by_host": true}}"#).unwrap_err();
        assert!(err.to_string().contains("icmp_by_host"), "{err}");
    }

    #[test]
    fn dpdk_source_needs_the_dpdk_backend_and_comes_once() {
        let dpdk = r#""kind": "dpdk", "ports": [{"device": "net_tap0"}, {"device": "net_tap1"}]"#;
        let ok =
            parse("d.json", &format!(r#"{{"backend": {{{dpdk}, "eal_args": []}}, "sources": [{{"dpdk": {{}}}}]}}"#))
                .unwrap();
        assert!(matches!(ok.sources[..], [SourceConfig::Dpdk {}]));
        let err = parse("d.json", r#"{"sources": [{"pcap": {"path": "x"}}, {"dpdk": {}}]}"#).unwrap_err();
        assert_eq!(err.field(), Some("sources[1].dpdk"));
        assert!(err.to_string().contains("backend kind \"dpdk\""), "{err}");
        assert!(!ok.backend.keep_rules());
        let keep = parse("d.json", &format!(r#"{{"backend": {{{dpdk}, "keep_rules": true}}}}"#)).unwrap();
        assert!(keep.backend.keep_rules());
        let err =
            parse("d.json", &format!(r#"{{"backend": {{{dpdk}}}, "sources": [{{"dpdk": {{}}}}, {{"dpdk": {{}}}}]}}"#))
                .unwrap_err();
        assert_eq!(err.field(), Some("sources[1].dpdk"));
        let err = parse("d.json", &format!(r#"{{"backend": {{{dpdk}}}, "sources": [{{"dpdk": {{"queues": 2}}}}]}}"#))
            .unwrap_err();
        assert!(err.to_string().contains("queues"), "{err}");
        // The section is read as the DPDK backend reads it, in every build.
        let err = parse("d.json", &format!(r#"{{"backend": {{{dpdk}, "bogus": 1}}}}"#)).unwrap_err();
        assert_eq!(err.field(), Some("backend.bogus"), "{err}");
        assert!(err.to_string().contains("unknown field `bogus`"), "{err}");
        let err = parse("d.json", r#"{"backend": {"kind": "dpdk", "rx_queues": "2"}}"#).unwrap_err();
        assert_eq!(err.field(), Some("backend.rx_queues"), "{err}");
        assert!(err.to_string().contains(r#"the text "2" is not accepted here: give a whole number, 0 to 65535"#));
        let err = parse("d.json", r#"{"backend": {"kind": "dpdk"}}"#).unwrap_err();
        assert_eq!(err.field(), Some("backend.ports"), "{err}");
        assert!(err.to_string().contains("at least one port"), "{err}");
        // One device per top-level port (two by default).
        let err = parse("d.json", r#"{"backend": {"kind": "dpdk", "ports": [{"device": "net_tap0"}]}}"#).unwrap_err();
        assert_eq!(err.field(), Some("backend.ports"), "{err}");
        assert!(err.to_string().contains("1 DPDK port(s), but the top-level `ports` lists 2"), "{err}");
    }

    #[test]
    fn bad_json_reports_line_and_column() {
        let err = parse("b.json", "{\n  \"table\": {,}\n}").unwrap_err();
        match err {
            ConfigError::Parse { line, column, .. } => {
                assert_eq!(line, 2);
                assert!(column > 0);
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn missing_file_names_it() {
        let err = load(Path::new("/nonexistent/flowtable.json")).unwrap_err();
        assert_eq!(err.to_string(), "/nonexistent/flowtable.json: no such file");
        let dir = std::env::temp_dir();
        let err = load(&dir).unwrap_err();
        assert!(err.to_string().ends_with(": is a directory, not a configuration file"), "{err}");
    }

    /// Refused with its field named; the message, without the file and
    /// field, is returned for checks on its wording.
    fn refused(text: &str, field: &str) -> String {
        let err = parse("h.json", text).unwrap_err();
        assert_eq!(err.field(), Some(field), "{err}");
        let msg = err.to_string();
        assert!(msg.starts_with(&format!("h.json: at `{field}`")), "{msg}");
        msg
    }

    #[test]
    fn text_after_the_configuration_is_refused() {
        for text in [r#"{} {"table": {"max_flows": 0}}"#, "{}\n{", "{} trailing", "{}}", "{}\n\n  x"] {
            let msg = refused(text, "(after the configuration)");
            assert!(msg.contains("one JSON object"), "{msg}");
        }
        let err = parse("h.json", "{}\n\n  x").unwrap_err();
        assert!(matches!(err, ConfigError::Parse { line: 3, .. }), "{err}");
        // Whitespace after it is fine.
        parse("h.json", "{}\n\n \t\n").unwrap();
    }

    #[test]
    fn arrays_where_objects_belong_are_refused_naming_where() {
        let at = |text: &str| match parse("a.json", text).unwrap_err() {
            ConfigError::Invalid { field, message, .. } => (field, message),
            e => panic!("{e}"),
        };
        let (field, message) = at("[7, 1]");
        assert_eq!(field, "(top level)");
        assert!(message.contains("not an array"), "{message}");
        assert_eq!(at(r#"{"table": [5]}"#).0, "table");
        assert_eq!(at(r#"{"sources": [[1]]}"#).0, "sources[0]");
        let rules = r#"{"classifier": {"rules": [{"name": "a", "match": [], "result": "software"}]}}"#;
        assert_eq!(at(rules).0, "classifier.rules[0].match");
        assert_eq!(at(r#"{"export": {"ipfix": ["127.0.0.1:4739"]}}"#).0, "export.ipfix[0]");
        // Objects are as before; so are texts that aren't JSON.
        parse("a.json", r#"{"table": {"max_flows": 5}}"#).unwrap();
        assert!(matches!(parse("a.json", "{"), Err(ConfigError::Parse { .. })));
    }

    #[test]
    fn sizes_the_machine_cannot_hold_are_refused() {
        let memory = physical_memory().expect("sysconf gives the memory size");
        let msg = refused(r#"{"table": {"max_flows": 4294967295}}"#, "table.max_flows");
        assert!(msg.contains("4294967295 flows need about") && msg.contains("memory this machine has"), "{msg}");
        let msg = refused(r#"{"table": {"max_fragments": 18446744073709551615}}"#, "table.max_fragments");
        assert!(msg.contains("fragments need about"), "{msg}");
        let msg = refused(r#"{"table": {"max_context_bytes": 0}}"#, "table.max_context_bytes");
        assert!(msg.contains("at least 1"), "{msg}");
        // The largest table that fits is taken.
        let fits = memory / 2 / BYTES_PER_FLOW;
        parse("h.json", &format!(r#"{{"table": {{"max_flows": {fits}}}}}"#)).unwrap();
        let too_many = memory / BYTES_PER_FLOW + 1;
        refused(&format!(r#"{{"table": {{"max_flows": {too_many}}}}}"#), "table.max_flows");
    }

    #[test]
    fn log_level_must_be_a_level_or_a_filter() {
        for ok in ["info", "DEBUG", "warn,flowtable=trace", "flowtable::daemon=debug", "off", " error "] {
            parse("h.json", &format!(r#"{{"log": {{"level": {ok:?}}}}}"#)).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        let msg = refused(r#"{"log": {"level": "verbose"}}"#, "log.level");
        assert!(msg.contains("\"verbose\" is not a log level: give one of error, warn, info"), "{msg}");
        let msg = refused(r#"{"log": {"level": "info,flowtable=loud"}}"#, "log.level");
        assert!(msg.contains("\"flowtable=loud\" is not a log level"), "{msg}");
        refused(r#"{"log": {"level": ""}}"#, "log.level");
        refused(r#"{"log": {"level": "info,[{"}}"#, "log.level");
    }

    #[test]
    fn synthetic_source_settings_are_checked_as_the_generator_reads_them() {
        parse("h.json", r#"{"sources": [{"synthetic": {"flows": 10, "rate_pps": 1000, "pace": "fast"}}]}"#).unwrap();
        let msg = refused(r#"{"sources": [{"synthetic": {"bogus": 1}}]}"#, "sources[0].synthetic.bogus");
        assert!(msg.contains("unknown field `bogus`"), "{msg}");
        let msg = refused(r#"{"sources": [{"synthetic": {"rate_pps": 1e300}}]}"#, "sources[0].synthetic.rate_pps");
        assert!(msg.contains("out of range"), "{msg}");
        refused(r#"{"sources": [{"synthetic": {"mix": {"tcp_long": 1}}}]}"#, "sources[0].synthetic.mix.tcp_long");
        refused(r#"{"sources": [{"synthetic": {"flows": "many"}}]}"#, "sources[0].synthetic.flows");
        refused(r#"{"sources": [{"synthetic": {"pace": "slow"}}]}"#, "sources[0].synthetic.pace");
        refused(
            r#"{"sources": [{"synthetic": {}}, {"synthetic": {"concurrency": 0}}]}"#,
            "sources[1].synthetic.concurrency",
        );
    }

    #[test]
    fn control_socket_path_must_fit_a_unix_address() {
        let fits = format!("/{}", "s".repeat(MAX_SOCKET_PATH - 1));
        parse("h.json", &format!(r#"{{"control": {{"socket": {fits:?}}}}}"#)).unwrap();
        let long = format!("/{}", "s".repeat(MAX_SOCKET_PATH));
        let msg = refused(&format!(r#"{{"control": {{"socket": {long:?}}}}}"#), "control.socket");
        assert!(msg.contains("108 bytes long; a Unix socket path can be at most 107"), "{msg}");
    }

    #[test]
    fn metrics_listen_is_an_ip_address_and_a_real_port() {
        assert_eq!(parse("h.json", "{}").unwrap().metrics.address(), Ok(None));
        for (text, want) in
            [("127.0.0.1:9464", "127.0.0.1:9464"), ("[::1]:9100", "[::1]:9100"), ("0.0.0.0:80", "0.0.0.0:80")]
        {
            let c = parse("h.json", &format!(r#"{{"metrics": {{"listen": {text:?}}}}}"#)).unwrap();
            assert_eq!(c.metrics.address().unwrap().unwrap().to_string(), want);
        }
        let msg = refused(r#"{"metrics": {"listen": "localhost:9464"}}"#, "metrics.listen");
        assert!(msg.contains("\"localhost:9464\" is not an IP address and port: give e.g."), "{msg}");
        let msg = refused(r#"{"metrics": {"listen": "127.0.0.1"}}"#, "metrics.listen");
        assert!(msg.contains("is not an IP address and port"), "{msg}");
        let msg = refused(r#"{"metrics": {"listen": "127.0.0.1:0"}}"#, "metrics.listen");
        assert!(msg.contains("port 0 would be a different port at every start"), "{msg}");
        refused(r#"{"metrics": {"listen": "127.0.0.1:70000"}}"#, "metrics.listen");
        refused(r#"{"metrics": {"listen": 9464}}"#, "metrics.listen");
        refused(r#"{"metrics": {"address": "127.0.0.1:9464"}}"#, "metrics.address");
    }

    #[test]
    fn settings_that_can_never_offload_are_refused() {
        let msg = refused(r#"{"offload": {"max_queued": 0}}"#, "offload.max_queued");
        assert!(msg.contains("no flow would ever be offloaded"), "{msg}");
        let msg = refused(r#"{"backend": {"kind": "sim", "max_rules": 1}}"#, "backend.max_rules");
        assert!(msg.contains("each offloaded flow takes 2"), "{msg}");
        let msg = refused(r#"{"backend": {"kind": "sim", "insert_rate": 1}}"#, "backend.insert_rate");
        assert!(msg.contains("its 2 rules go in together"), "{msg}");
        for ok in [r#""max_rules": 0"#, r#""max_rules": 2"#, r#""insert_rate": 0"#, r#""insert_rate": 2"#] {
            parse("h.json", &format!(r#"{{"backend": {{"kind": "sim", {ok}}}}}"#)).unwrap();
        }
        parse("h.json", r#"{"offload": {"max_queued": 1}}"#).unwrap();
    }

    #[test]
    fn a_match_covers_another_only_where_it_can_be_shown() {
        let m = |text: &str| -> MatchConfig { serde_json::from_str(text).unwrap() };
        let covers = |a: &str, b: &str| m(a).covers(&m(b));
        assert!(covers("{}", r#"{"proto": "udp", "server_ports": [53]}"#));
        assert!(covers(r#"{"proto": "udp"}"#, r#"{"proto": "udp", "server_ports": [53]}"#));
        assert!(!covers(r#"{"proto": "tcp"}"#, r#"{"proto": "udp"}"#));
        assert!(!covers(r#"{"proto": "udp"}"#, "{}"));
        // Ports: either side covers a server or client side; not the reverse.
        assert!(covers(r#"{"ports": ["1-1023"]}"#, r#"{"server_ports": [53, "80-90"]}"#));
        assert!(!covers(r#"{"server_ports": [53]}"#, r#"{"ports": [53]}"#));
        assert!(!covers(r#"{"ports": ["1-100"]}"#, r#"{"ports": ["50-200"]}"#));
        // Prefixes by containment.
        assert!(covers(r#"{"prefixes": ["10.0.0.0/8"]}"#, r#"{"client_prefixes": ["10.1.0.0/16"]}"#));
        assert!(!covers(r#"{"prefixes": ["10.1.0.0/16"]}"#, r#"{"prefixes": ["10.0.0.0/8"]}"#));
        assert!(!covers(r#"{"vlan": 10}"#, r#"{"vlan": 20}"#));
        assert!(covers(r#"{"ingress": 1}"#, r#"{"ingress": 1, "proto": "tcp"}"#));
    }
}
