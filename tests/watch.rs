//! `pyreload watch` and `pyreload run --reload`: updates driven by files.

mod common;

use std::time::Duration;

use common::{probe, repo, wait_until, KvServer, Sandbox, PROBE_LOOP};

#[test]
fn a_spec_dropped_into_a_watched_directory_is_applied_and_its_result_written_beside_it() {
    let sandbox = Sandbox::new();
    let server = KvServer::start(&sandbox, "v1", "1.0");
    let deploy = sandbox.path().join("deploy");
    std::fs::create_dir_all(&deploy).unwrap();
    let (mut watcher, _stderr) = sandbox.watch(&deploy, &server.hosted.socket());
    // Paths in the spec are relative to where it is, so point them at the repo.
    let spec = std::fs::read_to_string(repo().join("specs/v1-to-v2.toml"))
        .unwrap()
        .replace("../case-study/", &format!("{}/case-study/", repo().display()));
    std::fs::write(deploy.join("v2.toml"), &spec).unwrap();
    let result = deploy.join("v2.toml.result.json");
    wait_until(
        Duration::from_secs(60),
        || result.exists() && std::fs::read_to_string(&result).is_ok_and(|t| t.ends_with("}\n")),
        || "no result was written".into(),
    );
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&result).unwrap()).unwrap();
    assert_eq!(report["outcome"], "committed", "{report:#}");
    assert_eq!(server.ask("VERSION"), "VERSION 2.0");

    // A second drop of the same spec is refused, and says so in its result.
    std::fs::write(deploy.join("again.toml"), &spec).unwrap();
    let again = deploy.join("again.toml.result.json");
    wait_until(
        Duration::from_secs(60),
        || again.exists() && std::fs::read_to_string(&again).is_ok_and(|t| t.ends_with("}\n")),
        || "no result for the second spec".into(),
    );
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&again).unwrap()).unwrap();
    assert_eq!(report["outcome"], "refused");
    assert!(
        report["problem"]["message"]
            .as_str()
            .unwrap()
            .contains("already at version 2.0"),
        "{report:#}"
    );
    let _ = watcher.kill();
    let _ = watcher.wait();
}

#[test]
fn run_reload_reloads_a_changed_module_and_refuses_a_broken_edit() {
    let sandbox = Sandbox::new();
    sandbox.write("live.py", "CALLS = []\n\ndef answer():\n    return 1\n");
    sandbox.write("prog.py", &format!("import sys, live\n{PROBE_LOOP}"));
    let mut p = probe(&sandbox, &["--reload", "prog.py"]);
    // The program's directory is watched before its code runs, so by its
    // `ready` an edit is seen.
    assert_eq!(p.ask("live.answer()"), "1");
    sandbox.write("live.py", "CALLS = []\n\ndef answer():\n    return 2\n");
    wait_until(
        Duration::from_secs(60),
        || p.ask("live.answer()") == "2",
        || "the edit was not reloaded".into(),
    );
    wait_until(
        Duration::from_secs(60),
        || p.stderr().contains("pyreload: applied update `reload live`"),
        || p.stderr(),
    );
    // A broken edit is refused; the program keeps the last good code.
    sandbox.write("live.py", "CALLS = []\n\ndef answer(:\n    return 3\n");
    wait_until(
        Duration::from_secs(60),
        || p.stderr().contains("does not compile"),
        || format!("no refusal logged\n{}", p.stderr()),
    );
    assert_eq!(p.ask("live.answer()"), "2");
    assert_eq!(p.ask("__import__('pyreload').version()"), "'dev'");
}
