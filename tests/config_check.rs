//! `flowtable config check` refuses what the program could not run, naming
//! the field, before anything starts.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_flowtable");

fn check(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flowtable.json");
    std::fs::write(&file, text).unwrap();
    let out = Command::new(BIN).args(["config", "check"]).arg(&file).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), said)
}

#[test]
fn config_check_refuses_what_run_could_not_start_with() {
    let (ok, said) = check(r#"{"table": {"max_flows": 1000}}"#);
    assert!(ok && said.contains(": ok"), "{said}");

    for (text, field, words) in [
        (
            r#"{"table": {"max_flows": 1000}} {"table": {"max_flows": 0}}"#,
            "(after the configuration)",
            "one JSON object",
        ),
        (r#"{"table": {"max_flows": 4294967295}}"#, "table.max_flows", "memory this machine has"),
        (r#"{"table": {"max_fragments": 18446744073709551615}}"#, "table.max_fragments", "memory this machine has"),
        (r#"{"log": {"level": "verbose"}}"#, "log.level", "is not a log level"),
        (r#"{"sources": [{"synthetic": {"bogus": 1}}]}"#, "sources[0].synthetic.bogus", "unknown field"),
        (r#"{"sources": [{"synthetic": {"rate_pps": 1e300}}]}"#, "sources[0].synthetic.rate_pps", "out of range"),
        (r#"{"offload": {"max_queued": 0}}"#, "offload.max_queued", "would ever be offloaded"),
        (r#"{"backend": {"kind": "sim", "max_rules": 1}}"#, "backend.max_rules", "takes 2"),
        (
            r#"{"export": {"ipfix": [{"address": "127.0.0.1:4739"}, {"address": "collector:4739"}]}}"#,
            "export.ipfix[1].address",
            "is not an IP address and port",
        ),
        (
            r#"{"export": {"ipfix": [{"address": "127.0.0.1:4739", "transport": "sctp"}]}}"#,
            "export.ipfix[0].transport",
            "unknown variant",
        ),
        (r#"{"export": {"mtu": 576}}"#, "export.mtu", "give 1100 to 65535"),
        (r#"{"export": {"template_refresh_s": 0}}"#, "export.template_refresh_s", "more than 0"),
        (r#"{"metrics": {"listen": "localhost:9464"}}"#, "metrics.listen", "is not an IP address and port"),
        (r#"{"metrics": {"listen": "[::1]:0"}}"#, "metrics.listen", "port 0"),
        // What `run` finds on the file system before it starts.
        (
            r#"{"records": {"path": "/nonexistent-flowtable-dir/x.jsonl"}}"#,
            "records.path",
            "the directory /nonexistent-flowtable-dir does not exist",
        ),
        (r#"{"control": {"socket": "/tmp"}}"#, "control.socket", "/tmp exists and is not a socket but a directory"),
        (
            r#"{"control": {"socket": "/nonexistent-flowtable-dir/run/s.sock"}}"#,
            "control.socket",
            "the directory /nonexistent-flowtable-dir does not exist (the daemon makes only the socket's own directory",
        ),
        // What was once accepted and silently ignored or misread.
        (
            r#"{"classifier": {"rules": [{"name": "a", "match": {}, "result": {"offload": {"type": "drop", "port": 1}}}]}}"#,
            "classifier.rules[0].result.offload",
            r#""port" is not a field of a drop action: drop takes only "type""#,
        ),
        (
            r#"{"classifier": {"default": {"offload": {"type": "mark", "mark": 1, "port": 2}}}}"#,
            "classifier.default.offload",
            r#""port" is not a field of a mark action: mark takes "type" and "mark""#,
        ),
        (r#"{"backend": {"kind": "dpdk", "bogus": 1}}"#, "backend.bogus", "unknown field `bogus`"),
        (
            r#"{"backend": {"kind": "dpdk", "ports": [{"device": "net_tap0"}]}}"#,
            "backend.ports",
            "1 DPDK port(s), but the top-level `ports` lists 2",
        ),
        (r#"{"backend": {"kind": "tc", "jornal": "/j"}}"#, "backend.jornal", "unknown field `jornal`"),
        (r#"{"sources": [{"synthetic": {"mix": [1, 2]}}]}"#, "sources[0].synthetic.mix", "must be a JSON object"),
        (
            r#"{"sources": [{"interface": {"name": "eth0", "ingress": 5}}]}"#,
            "sources[0].interface.ingress",
            "port 5 does not exist: 2 port(s) are configured",
        ),
        (
            r#"{"sources": [{"pcap": {"path": "x.pcap", "ingress": 2}}]}"#,
            "sources[0].pcap.ingress",
            "port 2 does not exist",
        ),
    ] {
        let (ok, said) = check(text);
        assert!(!ok, "accepted {text}: {said}");
        assert!(said.contains(&format!("at `{field}`")) && said.contains(words), "{text}: {said}");
        assert!(!said.contains("panicked") && !said.contains("memory allocation"), "{said}");
    }
    let long = format!(r#"{{"control": {{"socket": "/tmp/{}"}}}}"#, "s".repeat(120));
    let (ok, said) = check(&long);
    assert!(!ok && said.contains("at `control.socket`") && said.contains("at most 107"), "{said}");
}

#[test]
fn config_errors_are_in_the_operators_words_not_rusts() {
    for (text, field, words) in [
        (
            r#"{"table": {"max_flows": 1e3}}"#,
            "table.max_flows",
            "1000.0 (a number with a fraction or exponent) is not accepted here: give a whole number",
        ),
        (r#"{"table": {"max_flows": -1}}"#, "table.max_flows", "-1 is out of range: give a whole number, 0 or more"),
        (r#"{"timeouts": {"udp_s": "x"}}"#, "timeouts.udp_s", r#"the text "x" is not accepted here: give a number"#),
        (r#"{"workers": true}"#, "workers", "true is not accepted here: give a whole number"),
        (
            r#"{"offload": {"placement": ["hardware", "hardware"]}}"#,
            "offload.placement",
            r#"an array is not accepted here: give "hardware", "software" or "auto""#,
        ),
        (
            r#"{"classifier": {"rules": [{"name": "a", "match": {"server_ports": [70000]}, "result": "software"}]}}"#,
            "classifier.rules[0].match.server_ports[0]",
            "70000 is not a port: give 0 to 65535",
        ),
        (
            r#"{"classifier": {"rules": [{"name": "a", "match": {"ports": ["90-80"]}, "result": "software"}]}}"#,
            "classifier.rules[0].match.ports[0]",
            r#"range "90-80" runs backwards"#,
        ),
        (
            r#"{"classifier": {"rules": [{"name": "a", "match": {"prefixes": ["10.0.0.0/8", "10.0.0.0/33"]}, "result": "software"}]}}"#,
            "classifier.rules[0].match.prefixes[1]",
            r#"prefix "10.0.0.0/33": the length "33" is not 0 to 32"#,
        ),
        (
            r#"{"classifier": {"rules": [{"name": "a", "match": {"client_prefixes": ["10.0.0.300/8"]}, "result": "software"}]}}"#,
            "classifier.rules[0].match.client_prefixes[0]",
            r#""10.0.0.300" is not an IPv4 or IPv6 address"#,
        ),
        (r#"{"table": {"max_flows": 1000,}}"#, "table", "a comma after the last entry"),
        // A synthetic source's settings, read as the generator reads them.
        (
            r#"{"sources": [{"synthetic": {"ipv6_share": "x"}}]}"#,
            "sources[0].synthetic.ipv6_share",
            r#"the text "x" is not accepted here: give a number"#,
        ),
        (
            r#"{"sources": [{"synthetic": {"flows": -3}}]}"#,
            "sources[0].synthetic.flows",
            "-3 is out of range: give a whole number, 0 or more",
        ),
        (
            r#"{"sources": [{"synthetic": {"vlan_first": 70000}}]}"#,
            "sources[0].synthetic.vlan_first",
            "70000 is out of range: give a whole number, 0 to 65535",
        ),
        (
            r#"{"sources": [{"synthetic": {"concurrency": 1.5}}]}"#,
            "sources[0].synthetic.concurrency",
            "1.5 (a number with a fraction or exponent) is not accepted here: give a whole number",
        ),
        (
            r#"{"sources": [{"synthetic": {"keep_truth": "yes"}}]}"#,
            "sources[0].synthetic.keep_truth",
            r#"the text "yes" is not accepted here: give true or false"#,
        ),
        // Results, actions and the backend: what to write instead.
        (
            r#"{"classifier": {"rules": [{"name": "a", "result": {"offload": "drop"}}]}}"#,
            "classifier.rules[0].result.offload",
            r#"the text "drop" is not accepted here: give an action object such as {"type": "drop"}"#,
        ),
        (
            r#"{"classifier": {"rules": [{"name": "a", "result": "offload"}]}}"#,
            "classifier.rules[0].result",
            r#""offload" needs its action: write {"offload": {"type": "drop"}}"#,
        ),
        (
            r#"{"classifier": {"rules": [{"name": "a", "result": {"software": {}}}]}}"#,
            "classifier.rules[0].result",
            r#""software" takes no settings: write "result": "software""#,
        ),
        (
            r#"{"classifier": {"rules": [{"name": "a", "result": "inspect"}]}}"#,
            "classifier.rules[0].result",
            r#""inspect" is not a result: give "software" or {"offload": ACTION}"#,
        ),
        (
            r#"{"backend": {"kind": "tc", "journal": 5}}"#,
            "backend.journal",
            "5 is not accepted here: give a file path as a string",
        ),
        (r#"{"backend": {"kind": "nic"}}"#, "backend.kind", r#""nic" is not a backend: give "sim", "tc" or "dpdk""#),
        (r#"{"table": {"max_flows": 1000}"#, "(top level)", "the file ends inside an object (a } is missing)"),
    ] {
        let (ok, said) = check(text);
        assert!(!ok, "accepted {text}: {said}");
        assert!(said.contains(&format!("at `{field}`")) && said.contains(words), "{text}: {said}");
        for rust in [
            "usize",
            "f64",
            "u64",
            "u32",
            "u16",
            "a boolean",
            "untagged enum",
            "internally tagged",
            "variant",
            "give unit",
            "path string",
            "PortSpec",
            "invalid IP address syntax",
            "`table.?`",
            "expected value",
            "invalid type",
        ] {
            assert!(!said.contains(rust), "{text}: {said}");
        }
    }
    // A plain address is a prefix of one address.
    let (ok, said) = check(
        r#"{"classifier": {"rules": [{"name": "a", "match": {"prefixes": ["10.1.2.3", "2001:db8::/32"]}, "result": "software"}]}}"#,
    );
    assert!(ok, "{said}");
}

/// `config check` finds what `flowtable run` would refuse (an action the
/// backend can't do) and warns of what it would run with but most likely
/// not as meant (a rule an earlier one shadows, no packet source), as the
/// daemon's own log does.
#[test]
fn config_check_finds_refused_actions_shadowed_rules_and_missing_sources() {
    let mirror_on_small = r#"{"backend": {"kind": "sim", "profile": "small"},
        "sources": [{"synthetic": {"flows": 10}}],
        "classifier": {"rules": [{"name": "copy", "match": {"proto": "udp"}, "result": {"offload": {"type": "mirror", "port": 1}}}]}}"#;
    let (ok, said) = check(mirror_on_small);
    assert!(!ok, "{said}");
    assert!(
        said.contains("at `classifier.rules[0].result`") && said.contains("rule \"copy\" offloads with mirror:1"),
        "{said}"
    );
    assert!(said.contains("backend sim (small) can't do"), "{said}");
    // The daemon refuses it too, before reading a packet.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f.json");
    let text = mirror_on_small.replacen(
        '{',
        &format!(r#"{{"control": {{"socket": {:?}}},"#, dir.path().join("s").display().to_string()),
        1,
    );
    std::fs::write(&file, text).unwrap();
    let out = Command::new(BIN).args(["run", "--config"]).arg(&file).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("at `classifier.rules[0].result`") && err.contains("mirror:1"),
        "{err}"
    );
    // The full profile mirrors: the same rule is fine there.
    let (ok, said) = check(&mirror_on_small.replace("small", "full"));
    assert!(ok && !said.contains("warning"), "{said}");

    // The example configuration once put a catch-all before a DNS rule.
    let shadowed = r#"{"sources": [{"synthetic": {"flows": 10}}], "classifier": {"rules": [
        {"name": "elephants", "match": {}, "trigger": {"after_bytes": 1000000}, "result": {"offload": {"type": "pass"}}},
        {"name": "inspect-dns", "match": {"proto": "udp", "server_ports": [53]}, "result": "software"}]}}"#;
    let (ok, said) = check(shadowed);
    assert!(ok, "a warning, not a refusal: {said}");
    assert!(said.contains("warning") && said.contains("at `classifier.rules[1]`"), "{said}");
    assert!(said.contains("rule \"inspect-dns\" can never decide a flow: rule \"elephants\""), "{said}");
    assert!(said.contains("1 warning"), "{said}");
    // A narrower first rule shadows nothing.
    let (ok, said) = check(&shadowed.replace(r#""match": {},"#, r#""match": {"proto": "tcp"},"#));
    assert!(ok && !said.contains("warning"), "{said}");

    let (ok, said) = check(r#"{"table": {"max_flows": 1000}}"#);
    assert!(ok && said.contains("at `sources`: none given"), "{said}");

    // The example itself is clean.
    let example = Command::new(BIN).args(["config", "example"]).output().unwrap();
    let (ok, said) = check(&String::from_utf8(example.stdout).unwrap());
    assert!(ok && !said.contains("warning"), "{said}");
}

/// The synthetic source's errors read the same wherever its settings are
/// read: `run`, `demo --config`.
#[test]
fn synthetic_settings_are_refused_in_the_same_words_by_run_and_demo() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f.json");
    let text = format!(
        r#"{{"control": {{"socket": {:?}}}, "sources": [{{"synthetic": {{"flows": -3}}}}]}}"#,
        dir.path().join("s.sock").display().to_string()
    );
    std::fs::write(&file, text).unwrap();
    for args in [&["run", "--config"][..], &["demo", "--config"][..]] {
        let out = Command::new(BIN).args(args).arg(&file).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {err}");
        assert!(
            err.contains("at `sources[0].synthetic.flows`: -3 is out of range: give a whole number, 0 or more"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("u64"), "{err}");
    }
}

/// A configuration path that is a directory or names nothing is called
/// that, without the system's error number.
#[test]
fn a_configuration_path_that_is_a_directory_or_missing_is_called_that() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN).args(["config", "check"]).arg(dir.path()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains(": is a directory, not a configuration file"), "{err}");
    assert!(!err.contains("os error"), "{err}");
    let missing = dir.path().join("absent.json");
    for args in [&["config", "check"][..], &["run", "--config"][..], &["stats", "--config"][..]] {
        let out = Command::new(BIN).args(args).arg(&missing).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("absent.json: no such file"), "{args:?}: {err}");
        assert!(!err.contains("os error"), "{err}");
    }
}
