//! `pyreload check` prints the plan, and the plan is what `apply` then does.

mod common;

use common::{repo, stderr, KvServer, Sandbox};

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}): {}{}", common::stdout(out), stderr(out)))
}

#[test]
fn the_plan_of_every_worked_spec_is_what_apply_then_does() {
    let sandbox = Sandbox::new();
    let server = KvServer::start(&sandbox, "v1", "1.0");
    let requests: Vec<String> = (0..2000).map(|k| format!("SET key{k} value{k}")).collect();
    server.client().pipeline(&requests);
    let socket = server.hosted.socket();
    let socket = socket.to_str().unwrap();
    for name in ["v1-to-v2.toml", "v2-to-v3.toml", "v3-to-v4.toml"] {
        let spec = repo().join("specs").join(name);
        let spec = spec.to_str().unwrap();
        let checked = sandbox.run(&["check", "--json", "--socket", socket, spec]);
        assert_eq!(checked.status.code(), Some(0), "{}", stderr(&checked));
        let plan = json(&checked);
        assert_eq!(plan["outcome"], "checked");
        // The text form says the same for a person: line for line what the
        // JSON plan holds (compared below with what apply did).
        let checked_text = sandbox.run(&["check", "--socket", socket, spec]);
        assert_eq!(checked_text.status.code(), Some(0), "{}", stderr(&checked_text));
        assert_eq!(
            plan_lines(&common::stdout(&checked_text)),
            plan_lines_from_json(&plan),
            "{name}: the text plan differs from the JSON plan"
        );
        let applied = sandbox.run(&["apply", "--json", "--socket", socket, spec]);
        assert_eq!(applied.status.code(), Some(0), "{}", stderr(&applied));
        let done = json(&applied);
        let modules = |r: &serde_json::Value| r["modules"].as_array().cloned().unwrap_or_default();
        let (planned_modules, applied_modules) = (modules(&plan), modules(&done));
        let names = |m: &[serde_json::Value]| m.iter().map(|m| m["module"].clone()).collect::<Vec<_>>();
        assert_eq!(
            names(&planned_modules),
            names(&applied_modules),
            "{name}: the modules planned and the modules updated"
        );
        let mut differ = Vec::new();
        for (planned, actual) in planned_modules.iter().zip(&applied_modules) {
            let module = &planned["module"];
            for group in ["functions", "classes"] {
                for key in ["changed", "added", "removed", "unchanged"] {
                    if planned[group][key] != actual[group][key] {
                        differ.push(format!(
                            "{module} {group}.{key}: planned {}, applied {}",
                            planned[group][key], actual[group][key]
                        ));
                    }
                }
            }
            for key in ["kept", "updated", "reset", "transformed", "added", "removed"] {
                if planned["globals"][key] != actual["globals"][key] {
                    differ.push(format!(
                        "{module} globals.{key}: planned {}, applied {}",
                        planned["globals"][key], actual["globals"][key]
                    ));
                }
            }
            if planned["rebound"] != actual["rebound"] {
                differ.push(format!(
                    "{module} rebound: planned {}, applied {}",
                    planned["rebound"], actual["rebound"]
                ));
            }
        }
        assert!(
            differ.is_empty(),
            "{name}: the plan is not what apply did:\n{}",
            differ.join("\n")
        );
        let transforms = |r: &serde_json::Value| r["transforms"].as_array().cloned().unwrap_or_default();
        assert_eq!(transforms(&plan).len(), transforms(&done).len(), "{name}");
        for (planned, actual) in transforms(&plan).iter().zip(&transforms(&done)) {
            assert_eq!(planned["target"], actual["target"]);
            assert_eq!(
                planned["instances"], actual["instances"],
                "{name}: instances to convert"
            );
        }
        assert_eq!(plan["safe_point"], done["safe_point"], "{name}");
    }
    let out = sandbox.run(&[
        "check",
        "--socket",
        socket,
        repo().join("specs/v1-to-v2.toml").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "already at 4.0: {}", stderr(&out));
}

/// The lines of a text report that state the plan: each module and what
/// changes in it, each transform (up to its count), and the safe point.
fn plan_lines(text: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut in_module = false;
    for line in text.lines() {
        if line.starts_with("  module ") {
            in_module = true;
        } else if !(in_module && line.starts_with("    ")) {
            in_module = false;
        }
        if in_module || line.starts_with("  safe point: ") {
            lines.push(line.to_string());
        } else if line.starts_with("  transform ") {
            lines.push(line.split(" converted").next().unwrap().to_string());
        }
    }
    lines
}

/// What [`plan_lines`] should read, from the JSON form of the same report.
fn plan_lines_from_json(report: &serde_json::Value) -> Vec<String> {
    let list = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    };
    let mut lines = Vec::new();
    for m in report["modules"].as_array().unwrap() {
        lines.push(format!(
            "  module {}  ({})",
            m["module"].as_str().unwrap(),
            m["source"].as_str().unwrap()
        ));
        for group in ["functions", "classes"] {
            let mut parts = Vec::new();
            for key in ["changed", "added", "removed"] {
                let names = list(&m[group][key]);
                if !names.is_empty() {
                    parts.push(format!("{key} {}", names.join(", ")));
                }
            }
            let unchanged = m[group]["unchanged"].as_u64().unwrap_or(0);
            if unchanged > 0 {
                parts.push(format!("{unchanged} unchanged"));
            }
            if !parts.is_empty() {
                lines.push(format!("    {group}: {}", parts.join("; ")));
            }
        }
        for (label, names) in [
            ("globals kept", &m["globals"]["kept"]),
            ("constants updated", &m["globals"]["updated"]),
            ("globals reset", &m["globals"]["reset"]),
            ("globals transformed", &m["globals"]["transformed"]),
            ("globals added", &m["globals"]["added"]),
            ("globals removed", &m["globals"]["removed"]),
            ("rebound", &m["rebound"]),
        ] {
            let names = list(names);
            if !names.is_empty() {
                lines.push(format!("    {label}: {}", names.join(", ")));
            }
        }
    }
    for t in report["transforms"].as_array().into_iter().flatten() {
        lines.push(format!(
            "  transform {} `{}`: {}",
            t["kind"].as_str().unwrap(),
            t["target"].as_str().unwrap(),
            t["instances"]
        ));
    }
    let sp = &report["safe_point"];
    let mut required = Vec::new();
    let inactive = list(&sp["inactive"]);
    if !inactive.is_empty() {
        let mut names = inactive.iter().take(6).cloned().collect::<Vec<_>>().join(", ");
        if inactive.len() > 6 {
            names.push_str(&format!(" and {} more", inactive.len() - 6));
        }
        required.push(format!("inactive {names}"));
    }
    if let Some(c) = sp["condition"].as_str() {
        required.push(format!("condition `{c}`"));
    }
    if let Some(p) = sp["update_point"].as_str() {
        required.push(format!("update point `{p}`"));
    }
    if !required.is_empty() {
        lines.push(format!("  safe point: {}", required.join("; ")));
    }
    lines
}

#[test]
fn check_prints_the_plan_as_text() {
    let sandbox = Sandbox::new();
    let server = KvServer::start(&sandbox, "v1", "1.0");
    let out = sandbox.run(&[
        "check",
        "--pid",
        &server.hosted.pid().to_string(),
        repo().join("specs/v1-to-v2.toml").to_str().unwrap(),
    ]);
    let text = common::stdout(&out);
    assert!(text.contains("module kvserver.store"), "{text}");
    assert!(text.contains("functions: added Store.incr; 5 unchanged"), "{text}");
    assert!(
        text.contains("functions: changed parse; added cmd_incr; 10 unchanged"),
        "{text}"
    );
    assert!(text.contains("globals reset: COMMANDS"), "{text}");
    assert!(
        text.contains("safe point: inactive kvserver.protocol.parse, kvserver.protocol.dispatch"),
        "{text}"
    );
}

#[test]
fn a_reload_order_against_the_imports_is_refused_with_the_fix() {
    let sandbox = Sandbox::new();
    let server = KvServer::start(&sandbox, "v1", "1.0");
    // protocol imports from store, so store must be reloaded first.
    let text = std::fs::read_to_string(repo().join("specs/v1-to-v2.toml"))
        .unwrap()
        .replace("../case-study/", &format!("{}/case-study/", repo().display()));
    let (head, rest) = text.split_once("[[reload]]\nmodule = \"kvserver.store\"").unwrap();
    let (store, rest) = rest.split_once("[[reload]]\nmodule = \"kvserver.protocol\"").unwrap();
    let (protocol, tail) = rest.split_once("[safe_point]").unwrap();
    let swapped = format!("{head}[[reload]]\nmodule = \"kvserver.protocol\"{protocol}[[reload]]\nmodule = \"kvserver.store\"{store}[safe_point]{tail}");
    let spec = sandbox.write("wrong-order.toml", &swapped);
    let out = sandbox.run(&[
        "check",
        "--json",
        "--pid",
        &server.hosted.pid().to_string(),
        spec.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let problem = &json(&out)["problem"];
    assert_eq!(
        problem["message"],
        "`kvserver.protocol` imports from `kvserver.store`, which this spec reloads after it"
    );
    assert_eq!(
        problem["help"],
        "reload `kvserver.store` first; in import order the [[reload]] tables are: kvserver.store, kvserver.protocol"
    );
    assert_eq!(problem["location"]["line"], 24);
    assert!(stderr(&out).contains("wrong-order.toml:24:10"), "{}", stderr(&out));
    assert_eq!(server.ask("VERSION"), "VERSION 1.0");
}

#[test]
fn diff_shows_the_running_source_against_the_new_one() {
    let sandbox = Sandbox::new();
    let server = KvServer::start(&sandbox, "v1", "1.0");
    let socket = server.hosted.socket();
    let socket = socket.to_str().unwrap();
    let spec = |name: &str| repo().join("specs").join(name).display().to_string();
    let out = sandbox.run(&["diff", "--socket", socket, &spec("v1-to-v2.toml")]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = common::stdout(&out);
    assert!(
        text.contains("--- ") && text.contains("case-study/v1/kvserver/store.py (running)"),
        "{text}"
    );
    assert!(
        text.contains("+++ ") && text.contains("case-study/v2/kvserver/store.py (new)"),
        "{text}"
    );
    assert!(text.contains("\n+    def incr(self, key, by=1):\n"), "{text}");
    assert!(text.contains("\n-    parts = line.split()\n"), "{text}");
    assert!(!text.contains('\x1b'), "no color when stdout is not a terminal");
    assert_eq!(server.ask("VERSION"), "VERSION 1.0", "diff changes nothing");

    // After the update, "running" is what pyreload loaded, not the file the
    // module was first imported from; a rollback puts the old one back.
    assert_eq!(
        sandbox
            .run(&["apply", "--socket", socket, &spec("v1-to-v2.toml")])
            .status
            .code(),
        Some(0)
    );
    let text = common::stdout(&sandbox.run(&["diff", "--socket", socket, &spec("v2-to-v3.toml")]));
    assert!(text.contains("case-study/v2/kvserver/store.py (running)"), "{text}");
    assert!(text.contains("--- kvserver.migrations (new module)"), "{text}");
    assert_eq!(sandbox.run(&["rollback", "--socket", socket]).status.code(), Some(0));
    let text = common::stdout(&sandbox.run(&["diff", "--socket", socket, &spec("v1-to-v2.toml")]));
    assert!(text.contains("case-study/v1/kvserver/store.py (running)"), "{text}");
}

#[test]
fn new_drafts_a_spec_that_applies_once_its_todos_are_decided() {
    let sandbox = Sandbox::new();
    let repo_arg = |p: &str| repo().join(p).display().to_string();
    let draft = sandbox.path().join("specs/draft.toml");
    std::fs::create_dir_all(draft.parent().unwrap()).unwrap();
    let out = sandbox.draft("case-study/v1", "case-study/v2", &draft);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = std::fs::read_to_string(&draft).unwrap();
    let store = text.find("module = \"kvserver.store\"").expect("store is in the draft");
    let protocol = text
        .find("module = \"kvserver.protocol\"")
        .expect("protocol is in the draft");
    assert!(store < protocol, "dependency order: protocol imports store\n{text}");
    assert!(text.contains("# functions: added cmd_incr, changed parse"), "{text}");
    assert!(
        text.contains("# TODO: COMMANDS is built at import and its definition changed"),
        "{text}"
    );
    assert!(text.contains("name = \"TODO: name this update\""), "{text}");

    // Never overwrites.
    let again = sandbox.draft("case-study/v1", "case-study/v2", &draft);
    assert_eq!(again.status.code(), Some(2));

    // Decide the TODOs as a user would, and apply it.
    let decided = text
        .replace("name = \"TODO: name this update\"", "name = \"drafted\"")
        .replace("from = \"TODO: the version the program runs now\"", "from = \"1.0\"")
        .replace("to = \"TODO: the version this update brings\"", "to = \"2.0\"")
        .replace("# reset = [\"COMMANDS\"]", "reset = [\"COMMANDS\"]");
    std::fs::write(&draft, decided).unwrap();
    let server = KvServer::start(&sandbox, "v1", "1.0");
    let out = sandbox.run(&[
        "apply",
        "--pid",
        &server.hosted.pid().to_string(),
        draft.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(server.ask("INCR n"), "VALUE 1");

    // A class whose instances change layout, and a module new in the tree.
    let out = sandbox.run(&[
        "new",
        "--from",
        &repo_arg("case-study/v3"),
        "--to",
        &repo_arg("case-study/v4"),
    ]);
    let text = common::stdout(&out);
    assert!(
        text.contains("module = \"kvserver.hot\"") && text.contains("new = true"),
        "{text}"
    );
    assert!(
        text.contains("# TODO: class kvserver.store.Entry changed its instance layout (+hits, +rev, -version)"),
        "{text}"
    );
}
