//! What the binary says when it is given something wrong: the thing named
//! as the operator wrote it, what is wrong with it, and what to give.

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_flowtable");

fn run(args: &[&str]) -> (Output, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    let (o, e) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    (out, o, e)
}

#[test]
fn a_socket_path_that_is_no_socket_is_called_what_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flowtable.sock");
    std::fs::write(&file, "").unwrap();
    let (out, _, err) = run(&["stats", "--socket", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(err.contains("is not a socket but a regular file") && !err.contains("stale"), "{err}");
    let (out, _, err) = run(&["flows", "--socket", dir.path().to_str().unwrap()]);
    assert!(!out.status.success() && err.contains("is not a socket but a directory"), "{err}");
    let (out, _, err) = run(&["stats", "--socket", dir.path().join("absent.sock").to_str().unwrap()]);
    assert!(!out.status.success() && err.contains("the daemon is not running: no socket at"), "{err}");
}

#[test]
fn a_records_path_that_is_a_directory_or_under_a_missing_one_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("f.json");
    let write = |records: &str| {
        let text = format!(
            r#"{{"control": {{"socket": {:?}}}, "records": {{"path": {records:?}}}, "sources": [{{"synthetic": {{"flows": 10}}}}]}}"#,
            dir.path().join("s.sock").display().to_string()
        );
        std::fs::write(&config, text).unwrap();
    };
    write(dir.path().to_str().unwrap());
    let (out, _, err) = run(&["config", "check", config.to_str().unwrap()]);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("at `records.path`") && err.contains("is a directory: give the path of a file in it"),
        "{err}"
    );
    assert!(!err.contains("os error") && !err.contains("byte offset"), "{err}");
    write("/nonexistent-flowtable-dir/records.jsonl");
    let (out, _, err) = run(&["run", "--config", config.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(err.contains("the directory /nonexistent-flowtable-dir does not exist"), "{err}");
}

#[test]
fn a_broken_capture_reports_its_fault_and_only_what_was_read_before_it() {
    let whole = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/pcaps/http.pcapng")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Cut inside the first packet block: nothing to report but the fault.
    let early = dir.path().join("early.pcapng");
    std::fs::write(&early, &whole[..300]).unwrap();
    let (out, stdout, err) = run(&["replay", early.to_str().unwrap()]);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.is_empty(), "no empty summary before the fault: {stdout}");
    assert!(err.contains("file ends inside a record"), "{err}");
    // Cut later: the packets before the fault are reported, and said to be so.
    let late = dir.path().join("late.pcapng");
    std::fs::write(&late, &whole[..700]).unwrap();
    let (out, stdout, err) = run(&["replay", late.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stdout.starts_with("(the capture is broken"), "{stdout}");
    assert!(stdout.contains("3 packets"), "{stdout}");
    assert!(err.contains("at byte offset 604: file ends inside a record"), "{err}");
    let (out, stdout, _) = run(&["replay", late.to_str().unwrap(), "--json"]);
    assert!(!out.status.success());
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert!(last["capture_error"].as_str().unwrap().contains("file ends inside a record"), "{last}");
}

#[test]
fn a_capture_path_that_is_a_directory_or_missing_is_called_that() {
    let dir = tempfile::tempdir().unwrap();
    let (out, _, err) = run(&["replay", dir.path().to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(err.contains(": is a directory, not a capture file") && !err.contains("os error"), "{err}");
    let missing = dir.path().join("absent.pcap");
    let (out, _, err) = run(&["replay", missing.to_str().unwrap()]);
    assert!(!out.status.success() && err.contains("absent.pcap: no such file") && !err.contains("os error"), "{err}");
    // As a daemon's source, named by its place in the configuration.
    let config = dir.path().join("f.json");
    let text = format!(
        r#"{{"control": {{"socket": {:?}}}, "sources": [{{"pcap": {{"path": {:?}}}}}]}}"#,
        dir.path().join("s.sock").display().to_string(),
        dir.path().display().to_string()
    );
    std::fs::write(&config, text).unwrap();
    let (out, _, err) = run(&["run", "--config", config.to_str().unwrap()]);
    assert!(!out.status.success() && err.contains("sources[0].pcap: ") && err.contains("is a directory"), "{err}");
}

#[test]
fn numbers_and_addresses_refused_say_what_to_give() {
    let capture = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/pcaps/http.pcapng");
    for (args, words) in [
        (&["flows", "--top", "abc"][..], "expected a whole number, 0 or more"),
        (&["demo", "--seed", "x"][..], "expected a whole number, 0 or more"),
        (&["events", "--count=-1"][..], "expected a whole number, 0 or more"),
        (&["replay", capture, "--ipfix", "foo"][..], "expected an IP address and port such as 127.0.0.1:4739"),
    ] {
        let (out, _, err) = run(args);
        assert!(!out.status.success(), "{args:?}");
        assert!(err.contains(words), "{args:?}: {err}");
        assert!(!err.contains("invalid digit") && !err.contains("address syntax"), "{args:?}: {err}");
    }
}

#[test]
fn a_socket_path_too_long_is_refused_with_the_limit_and_its_length() {
    let long = format!("/tmp/{}", "s".repeat(120));
    let (out, _, err) = run(&["stats", "--socket", &long]);
    assert!(!out.status.success());
    assert!(err.contains("the path is 125 bytes long; a Unix socket path can be at most 107 bytes"), "{err}");
    assert!(err.contains("108 on Linux") && !err.contains("SUN_LEN"), "{err}");
    // The daemon told to listen there says the same.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("f.json");
    std::fs::write(&config, r#"{"sources": [{"synthetic": {"flows": 10}}]}"#).unwrap();
    let (out, _, err) = run(&["run", "--config", config.to_str().unwrap(), "--socket", &long]);
    assert!(!out.status.success());
    assert!(err.contains("the path is 125 bytes long") && !err.contains("SUN_LEN"), "{err}");
}
