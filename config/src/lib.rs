//! The configuration: its schema (serde_json) and loading with errors that
//! name the file, the field and what is wrong.

pub mod schema;
pub mod synth;

pub use schema::*;

use std::path::Path;

/// A configuration error, always naming where.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {message}")]
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
    let text =
        std::fs::read_to_string(path).map_err(|e| ConfigError::Read { file: file.clone(), message: e.to_string() })?;
    parse(&file, &text)
}

/// Parses and checks configuration text; `file` names it in errors.
pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
    let de = &mut serde_json::Deserializer::from_str(text);
    let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
        let field = match e.path().to_string() {
            p if p == "." => "(top level)".to_string(),
            p => p,
        };
        let inner = e.into_inner();
        ConfigError::Parse {
            file: file.to_string(),
            field,
            line: inner.line(),
            column: inner.column(),
            message: strip_position(&inner.to_string()),
        }
    })?;
    config.validate().map_err(|(field, message)| ConfigError::Invalid { file: file.to_string(), field, message })?;
    Ok(config)
}

/// serde_json appends " at line L column C", which we already report.
fn strip_position(msg: &str) -> String {
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
        let empty = parse("empty.json", "{}").unwrap();
        assert_eq!(empty.table.max_flows, 1 << 20);
        assert_eq!(empty.timeouts.udp_s, 60.0);
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
    fn tc_backend_options() {
        let c = parse("t.json", r#"{"backend": {"kind": "tc", "icmp_by_hosts": true}}"#).unwrap();
        assert!(matches!(c.backend, BackendConfig::Tc { icmp_by_hosts: true, keep_rules: false }));
        let c = parse("t.json", r#"{"backend": {"kind": "tc"}}"#).unwrap();
        assert!(matches!(c.backend, BackendConfig::Tc { icmp_by_hosts: false, .. }));
        let err = parse("t.json", r#"{"backend": {"kind": "tc", "icmp_by_host": true}}"#).unwrap_err();
        assert!(err.to_string().contains("icmp_by_host"), "{err}");
    }

    #[test]
    fn dpdk_source_needs_the_dpdk_backend_and_comes_once() {
        let ok =
            parse("d.json", r#"{"backend": {"kind": "dpdk", "eal_args": []}, "sources": [{"dpdk": {}}]}"#).unwrap();
        assert!(matches!(ok.sources[..], [SourceConfig::Dpdk {}]));
        let err = parse("d.json", r#"{"sources": [{"pcap": {"path": "x"}}, {"dpdk": {}}]}"#).unwrap_err();
        assert_eq!(err.field(), Some("sources[1].dpdk"));
        assert!(err.to_string().contains("backend kind \"dpdk\""), "{err}");
        assert!(!ok.backend.keep_rules());
        let keep = parse("d.json", r#"{"backend": {"kind": "dpdk", "keep_rules": true}}"#).unwrap();
        assert!(keep.backend.keep_rules());
        let err =
            parse("d.json", r#"{"backend": {"kind": "dpdk"}, "sources": [{"dpdk": {}}, {"dpdk": {}}]}"#).unwrap_err();
        assert_eq!(err.field(), Some("sources[1].dpdk"));
        let err =
            parse("d.json", r#"{"backend": {"kind": "dpdk"}, "sources": [{"dpdk": {"queues": 2}}]}"#).unwrap_err();
        assert!(err.to_string().contains("queues"), "{err}");
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
        assert!(err.to_string().starts_with("/nonexistent/flowtable.json: cannot read"));
    }
}
