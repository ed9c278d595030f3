//! Acceptance: updates that change the data representation, applied and
//! rolled back under load.
//!
//! kvserver with 10,000 keys and 8 clients hammering it goes 1.0 -> 2.0 ->
//! 3.0 (values become Entry objects) -> 4.0 (a new module, and a layout
//! change on every live Entry), then `pyreload rollback` takes it back to
//! 1.0 one step at a time. After every step every key reads back with its
//! value, and the version's own behaviour is visible.

mod common;

use std::time::Duration;

use common::{repo, stderr, KvLoad, KvServer, Sandbox};

const KEYS: usize = 10_000;
const CLIENTS: usize = 8;

fn populate(server: &KvServer) {
    let requests: Vec<String> = (0..KEYS).map(|k| format!("SET key{k} value{k}")).collect();
    assert!(server.client().pipeline(&requests).iter().all(|r| r == "OK"));
}

fn assert_all_keys(server: &KvServer, step: &str) {
    let requests: Vec<String> = (0..KEYS).map(|k| format!("GET key{k}")).collect();
    let replies = server.client().pipeline(&requests);
    let wrong: Vec<String> = replies
        .iter()
        .enumerate()
        .filter(|(k, r)| **r != format!("VALUE value{k}"))
        .take(5)
        .map(|(k, r)| format!("key{k}: {r}"))
        .collect();
    assert!(wrong.is_empty(), "after {step}, keys lost or changed: {wrong:?}");
}

fn step(sandbox: &Sandbox, server: &KvServer, load: &KvLoad, args: &[&str]) -> serde_json::Value {
    let before = load.rounds();
    let socket = server.hosted.socket();
    let mut full = vec![args[0], "--json", "--socket", socket.to_str().unwrap()];
    full.extend(&args[1..]);
    let out = sandbox.run(&full);
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{}", sandbox.transcript()));
    assert_eq!(out.status.code(), Some(0), "{args:?}: {report:#}");
    assert_eq!(report["outcome"], "committed", "{report:#}");
    load.wait_for_rounds(before, 50);
    report
}

#[test]
fn four_versions_forward_and_back_under_load_keep_every_key() {
    forward_and_back(false);
}

#[test]
fn the_same_with_lazy_migrations() {
    forward_and_back(true);
}

/// Specs from `specs/`, with every [[transform]] made lazy when `lazy`.
fn spec_file(sandbox: &Sandbox, name: &str, lazy: bool) -> String {
    let path = repo().join("specs").join(name);
    if !lazy {
        return path.display().to_string();
    }
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("../case-study/", &format!("{}/case-study/", repo().display()))
        .replace("mode = \"eager\"\n", "")
        .replace("[[transform]]\n", "[[transform]]\nmode = \"lazy\"\n");
    sandbox.write(&format!("lazy-{name}"), &text).display().to_string()
}

fn forward_and_back(lazy: bool) {
    let sandbox = Sandbox::new();
    let server = KvServer::start(&sandbox, "v1", "1.0");
    populate(&server);
    let load = KvLoad::start(server.port, CLIENTS, Duration::from_secs(120));
    let mut c = server.client();
    let spec = |name: &str| spec_file(&sandbox, name, lazy);

    step(&sandbox, &server, &load, &["apply", &spec("v1-to-v2.toml")]);
    assert_all_keys(&server, "v1-to-v2");
    assert_eq!(c.ask("INCR counter"), "VALUE 1");

    let report = step(&sandbox, &server, &load, &["apply", &spec("v2-to-v3.toml")]);
    assert_eq!(report["transforms"][0]["target"], "kvserver.store.Store");
    assert_all_keys(&server, "v2-to-v3");
    assert_eq!(c.ask("VER key42"), "VER 1");
    assert_eq!(c.ask("SETEX session 60 abc"), "OK");
    let ttl: f64 = c.ask("TTL session").strip_prefix("TTL ").unwrap().parse().unwrap();
    assert!(ttl > 50.0 && ttl <= 60.0, "a fresh 60 s expiry: {ttl}");
    assert_eq!(c.ask("GET counter"), "VALUE 1");

    let report = step(&sandbox, &server, &load, &["apply", &spec("v3-to-v4.toml")]);
    let entries = &report["transforms"][0];
    assert_eq!(entries["target"], "kvserver.store.Entry");
    assert!(entries["instances"].as_u64().unwrap() >= KEYS as u64, "{entries:#}");
    assert_eq!(entries["lazy"].is_object(), lazy, "{entries:#}");
    assert_all_keys(&server, "v3-to-v4");
    assert_eq!(c.ask("VER key42"), "VER 1", "`version` became `rev` with its value");
    for _ in 0..3 {
        assert_eq!(c.ask("GET key7"), "VALUE value7");
    }
    assert!(c.ask("HOT 1").starts_with("HOT key"), "the new module is live");
    assert_eq!(c.ask("VERSION"), "VERSION 4.0");

    // status says what can be undone.
    let out = sandbox.run(&["status", "--socket", server.hosted.socket().to_str().unwrap()]);
    assert!(
        common::stdout(&out).contains("`pyreload rollback` undoes `v3-to-v4` (4.0 -> 3.0); 3 update(s)"),
        "{}",
        common::stdout(&out)
    );

    // And back, one step at a time.
    step(&sandbox, &server, &load, &["rollback"]);
    assert_all_keys(&server, "rollback to 3.0");
    assert_eq!(c.ask("VERSION"), "VERSION 3.0");
    assert_eq!(c.ask("VER key42"), "VER 1");
    assert_eq!(c.ask("HOT 1"), "ERR unknown command HOT");

    step(&sandbox, &server, &load, &["rollback"]);
    assert_all_keys(&server, "rollback to 2.0");
    assert_eq!(c.ask("VERSION"), "VERSION 2.0");
    assert_eq!(c.ask("VER key42"), "ERR unknown command VER");
    assert_eq!(
        c.ask("GET session"),
        "VALUE abc",
        "data written at 3.0 survives the rollback"
    );

    step(&sandbox, &server, &load, &["rollback"]);
    assert_all_keys(&server, "rollback to 1.0");
    assert_eq!(c.ask("VERSION"), "VERSION 1.0");
    assert_eq!(c.ask("INCR counter"), "ERR unknown command INCR");
    assert_eq!(c.ask("GET counter"), "VALUE 1");

    let out = sandbox.run(&["rollback", "--socket", server.hosted.socket().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = common::unwrapped(&stderr(&out));
    assert!(
        err.contains(
            "there is nothing more to roll back: 3 update(s) were applied since the program started and 3 rolled back"
        ),
        "{err}"
    );

    let tallies = load.finish();
    assert!(
        common::failures(&tallies).is_empty(),
        "client requests failed: {:#?}",
        common::failures(&tallies)
    );
}

#[test]
fn an_update_that_transformed_data_without_a_reverse_cannot_be_rolled_back() {
    let sandbox = Sandbox::new();
    let server = KvServer::start(&sandbox, "v1", "1.0");
    populate(&server);
    let v3 = std::fs::read_to_string(repo().join("specs/v2-to-v3.toml"))
        .unwrap()
        .replace("../case-study/", &format!("{}/case-study/", repo().display()))
        .replace("reverse = \"kvserver.migrations.store_v2\"\n", "");
    let v3 = sandbox.write("v2-to-v3-no-reverse.toml", &v3);
    let socket = server.hosted.socket();
    let socket = socket.to_str().unwrap();
    for spec in [repo().join("specs/v1-to-v2.toml"), v3] {
        let out = sandbox.run(&["apply", "--socket", socket, spec.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "{}", sandbox.transcript());
    }
    let out = sandbox.run(&["status", "--socket", socket]);
    assert!(
        common::stdout(&out).contains("`v2-to-v3` (3.0 -> 2.0) cannot be rolled back: it transformed `kvserver.store.Store` and its spec declares no `reverse`"),
        "{}",
        common::stdout(&out)
    );
    let out = sandbox.run(&["rollback", "--socket", socket]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot roll back `v2-to-v3`: it transformed `kvserver.store.Store`"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("add `reverse = \"module.function\"`"),
        "{}",
        stderr(&out)
    );
    assert_eq!(server.ask("VERSION"), "VERSION 3.0");
    assert_all_keys(&server, "a refused rollback");
}
