//! Acceptance: the case-study server, updated while clients use it.

mod common;

use std::time::Duration;

use common::{repo, stderr, stdout, KvLoad, KvServer, Sandbox};

const CLIENTS: usize = 8;
const KEYS: usize = 1_000;

fn populate(server: &KvServer) {
    let mut c = server.client();
    for k in 0..KEYS {
        assert_eq!(c.ask(&format!("SET key{k} value{k}")), "OK");
    }
}

fn assert_all_keys(server: &KvServer) {
    let mut c = server.client();
    for k in 0..KEYS {
        assert_eq!(c.ask(&format!("GET key{k}")), format!("VALUE value{k}"), "key{k} lost");
    }
}

#[test]
fn v1_to_v2_applies_under_load_without_dropping_a_connection_or_a_key() {
    update_under_load(&[]);
}

#[test]
fn the_asyncio_server_takes_the_same_update_under_load_with_the_same_guarantees() {
    update_under_load(&["--asyncio"]);
}

/// The acceptance scenario: kvserver 1.0 (threaded, or asyncio with
/// `--asyncio`) with 1,000 keys and 8 clients hammering it, updated to 2.0.
fn update_under_load(server_args: &[&str]) {
    let sandbox = Sandbox::new();
    let server = KvServer::start_with(&sandbox, "v1", "1.0", server_args);
    populate(&server);
    // The v1 behaviour the update changes.
    assert_eq!(server.ask("SET spaced hello world"), "OK");
    assert_eq!(server.ask("GET spaced"), "VALUE hello");
    assert_eq!(server.ask("INCR counter"), "ERR unknown command INCR");

    let load = KvLoad::start(server.port, CLIENTS, Duration::from_secs(60));
    load.wait_for_rounds(0, 200);

    let spec = repo().join("specs/v1-to-v2.toml");
    let (code, report) = sandbox.apply_json(&server.hosted, &spec);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["outcome"], "committed");

    // Keep the load on after the update.
    load.wait_for_rounds(load.rounds(), 200);
    let tallies = load.finish();
    let failures = common::failures(&tallies);
    assert!(failures.is_empty(), "requests failed during the update: {failures:#?}");
    assert!(
        tallies.iter().all(|t| t.requests > 0),
        "a client made no requests: {tallies:?}"
    );
    let total: usize = tallies.iter().map(|t| t.requests).sum();
    eprintln!("{CLIENTS} clients made {total} requests across the update, none failed");

    assert_all_keys(&server);
    assert_eq!(
        server.ask("GET spaced"),
        "VALUE hello",
        "data written before the update is kept as it was"
    );
    assert_eq!(server.ask("SET spaced hello world"), "OK");
    assert_eq!(server.ask("GET spaced"), "VALUE hello world", "the bug fix is live");
    assert_eq!(server.ask("INCR counter"), "VALUE 1", "the new command is live");
    assert_eq!(server.ask("INCR counter"), "VALUE 2");
    assert_eq!(server.ask("VERSION"), "VERSION 2.0");
    // The connection count, kept across the update, comes back to exactly
    // the one connection asking, once the server has seen the load
    // clients' connections close (it notices each on its own thread).
    common::eventually(Duration::from_secs(30), || {
        let stats = server.ask("STATS");
        match stats.ends_with(" connections=1") {
            true => Ok(()),
            false => Err(format!("the open connections are not counted right: {stats}")),
        }
    });

    // The report names what changed.
    let modules = report["modules"].as_array().unwrap();
    assert_eq!(modules[0]["module"], "kvserver.store");
    assert_eq!(modules[0]["functions"]["added"], serde_json::json!(["Store.incr"]));
    assert_eq!(modules[1]["functions"]["changed"], serde_json::json!(["parse"]));
    assert_eq!(modules[1]["functions"]["added"], serde_json::json!(["cmd_incr"]));
    assert_eq!(modules[1]["globals"]["reset"], serde_json::json!(["COMMANDS"]));
    assert_eq!(modules[1]["globals"]["updated"], serde_json::json!(["VERSION"]));

    // Applying it again is refused: the server is already at 2.0.
    let out = sandbox.run(&[
        "apply",
        "--socket",
        server.hosted.socket().to_str().unwrap(),
        spec.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("the program is already at version 2.0"),
        "{}",
        stderr(&out)
    );

    // status shows the version and both attempts.
    let out = sandbox.run(&["status", "--pid", &server.hosted.pid().to_string(), "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["version"], "2.0");
    let outcomes: Vec<&str> = status["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["committed", "refused"]);
    assert!(
        server
            .hosted
            .stderr()
            .contains("pyreload: applied update `v1-to-v2` (1.0 -> 2.0)"),
        "{}",
        server.hosted.stderr()
    );
}

/// (fixture, exit status, what stderr must say)
const BAD_INPUTS: &[(&str, i32, &[&str])] = &[
    (
        "unknown-key",
        2,
        &[
            "unknown field `timeout`",
            "unknown-key.toml:",
            "timeout = 5000",
            "did you mean `timeout_ms`?",
        ],
    ),
    (
        "module-not-loaded",
        1,
        &[
            "module `kvserver.stor` is not loaded in the program",
            "did you mean `kvserver.store`?",
            "module-not-loaded.toml:",
        ],
    ),
    (
        "syntax-error",
        1,
        &[
            "does not compile",
            "SyntaxError: '(' was never closed",
            "protocol_syntax.py:{SET_LINE}",
        ],
    ),
    (
        "wrong-from",
        1,
        &[
            "the program runs version 1.0, but this update is from version 0.9",
            "wrong-from.toml:",
        ],
    ),
    (
        "check-fails",
        1,
        &["`[check] after` was false after the commit", "rolled back"],
    ),
    (
        "body-raises",
        1,
        &[
            "raised while loading",
            "KeyError: 'KVSERVER_MAX_VALUE'",
            "protocol_raises.py:",
        ],
    ),
];

/// Lays out the bad-input fixtures in the sandbox: the specs from
/// `tests/fixtures/specs`, and the broken sources they name, each made from
/// the real v2 protocol with one defect so they never drift from it.
/// Returns the spec directory and the line of the syntax error.
fn bad_input_fixtures(sandbox: &Sandbox) -> (std::path::PathBuf, usize) {
    let v2 = std::fs::read_to_string(repo().join("case-study/v2/kvserver/protocol.py")).unwrap();
    let call = "    STORE.set(args[0], args[1])\n";
    let set_line = v2[..v2.find(call).expect("v2 protocol stores with STORE.set")]
        .matches('\n')
        .count()
        + 1;
    sandbox.write(
        "broken/protocol_syntax.py",
        &v2.replacen(call, "    STORE.set(args[0], args[1]\n", 1),
    );
    sandbox.write(
        "broken/protocol_raises.py",
        &format!("{v2}\n# The new version needs a setting the running server does not have.\nimport os\nMAX_VALUE = int(os.environ[\"KVSERVER_MAX_VALUE\"])\n"),
    );
    let case_study = format!("{}/case-study/", repo().display());
    for entry in std::fs::read_dir(repo().join("tests/fixtures/specs")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("../../../case-study/", &case_study);
        sandbox.write(&format!("specs/{}", path.file_name().unwrap().to_str().unwrap()), &text);
    }
    (sandbox.path().join("specs"), set_line)
}

#[test]
fn each_bad_input_gets_a_clear_error_and_leaves_the_server_as_it_was() {
    let sandbox = Sandbox::new();
    let server = KvServer::start(&sandbox, "v1", "1.0");
    populate(&server);
    let mut watcher = server.client();
    let (spec_dir, set_line) = bad_input_fixtures(&sandbox);
    for (fixture, code, messages) in BAD_INPUTS {
        let spec = spec_dir.join(format!("{fixture}.toml"));
        let out = sandbox.run(&[
            "apply",
            "--socket",
            server.hosted.socket().to_str().unwrap(),
            spec.to_str().unwrap(),
        ]);
        assert_eq!(
            out.status.code(),
            Some(*code),
            "{fixture}: wrong exit status\n{}",
            sandbox.transcript()
        );
        for m in *messages {
            let m = m.replace("{SET_LINE}", &set_line.to_string());
            assert!(
                stderr(&out).contains(&m),
                "{fixture}: stderr lacks {m:?}:\n{}",
                stderr(&out)
            );
        }
        // The program is exactly as it was: v1 behaviour, all data, and an
        // open connection still served.
        assert_eq!(watcher.ask("VERSION"), "VERSION 1.0", "{fixture}");
        assert_eq!(watcher.ask("INCR n"), "ERR unknown command INCR", "{fixture}");
        assert_eq!(watcher.ask("SET s a b"), "OK");
        assert_eq!(watcher.ask("GET s"), "VALUE a", "{fixture}: the v1 bug is still there");
    }
    assert_all_keys(&server);
    let status = sandbox.run(&["status", "--socket", server.hosted.socket().to_str().unwrap()]);
    assert!(stdout(&status).contains("version: 1.0"), "{}", stdout(&status));
    // After all those refusals a good update still applies.
    let (code, report) = sandbox.apply_json(&server.hosted, &repo().join("specs/v1-to-v2.toml"));
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(watcher.ask("VERSION"), "VERSION 2.0");
}

#[test]
fn a_safe_point_that_never_comes_times_out_naming_the_thread() {
    let sandbox = Sandbox::new();
    let server = KvServer::start(&sandbox, "v1", "1.0");
    // Every connection thread sits in Server._serve for as long as its
    // client stays connected, so this safe point cannot be reached while
    // one is.
    let mut client = server.client();
    assert_eq!(client.ask("PING"), "PONG");
    let spec = std::fs::read_to_string(repo().join("specs/v1-to-v2.toml"))
        .unwrap()
        .replace("../case-study/", &format!("{}/case-study/", repo().display()))
        .replace(
            "inactive = [\"kvserver.protocol.dispatch\"]",
            "inactive = [\"kvserver.server.Server._serve\"]",
        )
        .replace("timeout_ms = 5000", "timeout_ms = 300");
    let spec = sandbox.write("blocked.toml", &spec);
    let (code, report) = sandbox.apply_json(&server.hosted, &spec);
    assert_eq!(code, 1);
    assert_eq!(report["outcome"], "refused");
    let problem = &report["problem"];
    assert!(
        problem["message"]
            .as_str()
            .unwrap()
            .contains("not reached within 300 ms"),
        "{problem:#}"
    );
    let causes = problem["causes"].to_string();
    assert!(
        causes.contains("thread `conn-1` is in Server._serve at") && causes.contains("server.py:"),
        "{causes}"
    );
    assert!(report["safe_point_checks"].as_u64().unwrap() > 1);
    assert_eq!(client.ask("VERSION"), "VERSION 1.0");
    // Once the connection closes, the same update goes through.
    drop(client);
    let (code, report) = sandbox.apply_json(&server.hosted, &spec);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(server.ask("VERSION"), "VERSION 2.0");
}

#[test]
fn a_suspended_coroutine_holds_the_update_back_until_its_task_ends() {
    let sandbox = Sandbox::new();
    let server = KvServer::start_with(&sandbox, "v1", "1.0", &["--asyncio"]);
    // A new handle_client: each connection's task is suspended inside it,
    // at `await reader.readline()`, for as long as the client is connected.
    let source = std::fs::read_to_string(repo().join("case-study/v1/kvserver/aserver.py")).unwrap();
    let changed = source.replace(
        "STATS.connection_opened()",
        "STATS.connection_opened()\n    writer.write(b\"HELLO\\n\")",
    );
    assert_ne!(source, changed);
    let new_source = sandbox.write("aserver_v2.py", &changed);
    let spec = sandbox.write(
        "coroutine.toml",
        &format!(
            "[update]\nname = \"greet\"\nfrom = \"1.0\"\nto = \"1.1\"\n\n[[reload]]\nmodule = \"kvserver.aserver\"\nsource = \"{}\"\n\n[safe_point]\ntimeout_ms = 300\n",
            new_source.display()
        ),
    );
    let mut client = server.client();
    assert_eq!(client.ask("PING"), "PONG");
    let (code, report) = sandbox.apply_json(&server.hosted, &spec);
    assert_eq!(code, 1, "{report:#}");
    let causes = report["problem"]["causes"].to_string();
    let await_line = source
        .lines()
        .position(|l| l.contains("await reader.readline()"))
        .unwrap()
        + 1;
    assert!(
        causes.contains("coroutine handle_client is suspended at")
            && causes.contains(&format!("aserver.py:{await_line}"))
            && causes.contains("(asyncio task `Task-"),
        "{causes}"
    );
    assert_eq!(client.ask("VERSION"), "VERSION 1.0", "the connection is still served");
    // With no client connected no task runs handle_client: the update commits.
    drop(client);
    common::wait_until(
        Duration::from_secs(60),
        || server.ask("STATS").ends_with("connections=1"),
        || "the closed connection was never noticed".into(),
    );
    let (code, report) = sandbox.apply_json(&server.hosted, &spec);
    assert_eq!(code, 0, "{report:#}");
    let mut fresh = server.client();
    assert_eq!(fresh.ask("PING"), "HELLO", "new connections get the new coroutine");
}

#[test]
fn check_validates_against_the_running_server_and_changes_nothing() {
    let sandbox = Sandbox::new();
    let server = KvServer::start(&sandbox, "v1", "1.0");
    let spec = repo().join("specs/v1-to-v2.toml");
    let out = sandbox.run(&[
        "check",
        "--pid",
        &server.hosted.pid().to_string(),
        spec.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("Checked (nothing changed) `v1-to-v2` on `kvserver`"),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains("module kvserver.store"));
    assert_eq!(server.ask("VERSION"), "VERSION 1.0");
    let (spec_dir, _) = bad_input_fixtures(&sandbox);
    let bad = spec_dir.join("syntax-error.toml");
    let out = sandbox.run(&[
        "check",
        "--pid",
        &server.hosted.pid().to_string(),
        bad.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("does not compile"));
    let history = sandbox.run(&["status", "--pid", &server.hosted.pid().to_string(), "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&history.stdout).unwrap();
    assert_eq!(
        status["history"],
        serde_json::json!([]),
        "check is not an update attempt"
    );
}

#[test]
fn the_server_shuts_down_cleanly_on_sigterm_after_an_update() {
    let sandbox = Sandbox::new();
    let server = KvServer::start(&sandbox, "v1", "1.0");
    let (code, report) = sandbox.apply_json(&server.hosted, &repo().join("specs/v1-to-v2.toml"));
    assert_eq!(code, 0, "{report:#}");
    server.shut_down_cleanly();
}
