//! What pyreload prints is true: each message here was once false or
//! unhelpful for a user who tried the tool (issue #12, "Messages that say
//! what is true"). Each test reads the message a user would read.

mod common;

use common::{repo, stderr, stdout, unwrapped, KvServer, Sandbox};

fn repo_arg(relative: &str) -> String {
    repo().join(relative).display().to_string()
}

#[test]
fn rollback_after_every_update_was_rolled_back_says_so() {
    let sandbox = Sandbox::new();
    let server = KvServer::start(&sandbox, "v1", "1.0");
    let socket = server.hosted.socket();
    let socket = socket.to_str().unwrap();

    // Before any update: nothing was ever applied.
    let out = sandbox.run(&["rollback", "--socket", socket]);
    assert_eq!(out.status.code(), Some(1), "{}", sandbox.transcript());
    assert!(
        stderr(&out).contains("no update has been applied since the program started"),
        "{}",
        stderr(&out)
    );

    let out = sandbox.run(&["apply", "--socket", socket, &repo_arg("specs/v1-to-v2.toml")]);
    assert_eq!(out.status.code(), Some(0), "{}", sandbox.transcript());
    let out = sandbox.run(&["rollback", "--socket", socket]);
    assert_eq!(out.status.code(), Some(0), "{}", sandbox.transcript());
    assert_eq!(server.ask("VERSION"), "VERSION 1.0");

    // Now one was applied and rolled back: saying "no update has been
    // applied" would be false.
    let out = sandbox.run(&["rollback", "--socket", socket]);
    assert_eq!(out.status.code(), Some(1), "{}", sandbox.transcript());
    let err = unwrapped(&stderr(&out));
    assert!(!err.contains("no update has been applied"), "{err}");
    assert!(
        err.contains("1 update(s) were applied since the program started and 1 rolled back"),
        "{err}"
    );
    assert!(err.contains("the version it started with (1.0)"), "{err}");
}

#[test]
fn an_undecided_draft_is_refused_naming_each_todo() {
    let sandbox = Sandbox::new();
    let draft = sandbox.path().join("draft.toml");
    let out = sandbox.draft("case-study/v1", "case-study/v2", &draft);
    assert_eq!(out.status.code(), Some(0), "{}", sandbox.transcript());
    let server = KvServer::start(&sandbox, "v1", "1.0");

    for command in ["check", "apply"] {
        let out = sandbox.run(&[
            command,
            "--socket",
            server.hosted.socket().to_str().unwrap(),
            draft.to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(2), "{}", sandbox.transcript());
        let err = unwrapped(&stderr(&out));
        for key in ["[update] name", "[update] from", "[update] to"] {
            assert!(
                err.contains(&format!("{key} is still an undecided TODO from `pyreload new`")),
                "{command}: {key} not named\n{err}"
            );
        }
        assert!(err.contains("not decided"), "no label at the TODO\n{err}");
        assert!(err.contains("draft.toml:"), "no location\n{err}");
        assert!(!err.contains("this update is from version TODO"), "{err}");
        assert!(!err.contains("apply the updates in order"), "{err}");
    }
    assert_eq!(server.ask("VERSION"), "VERSION 1.0");
}

#[test]
fn a_condition_that_merely_mentions_todo_is_not_a_draft_placeholder() {
    let sandbox = Sandbox::new();
    let spec = sandbox.write(
        "spec.toml",
        "[update]\nname = \"x\"\nto = \"2.0\"\n[[reload]]\nmodule = \"kvserver.store\"\n\
         [safe_point]\ncondition = \"TODO_COUNT == 0\"\n",
    );
    // `schema`-free static check: `check` with no program fails on finding
    // the program, not on the spec.
    let out = sandbox.run(&["check", spec.to_str().unwrap()]);
    let err = unwrapped(&stderr(&out));
    assert!(!err.contains("undecided TODO"), "{err}");
    assert!(err.contains("no program is running"), "{err}");
}

#[test]
fn check_shows_only_the_phases_that_happened() {
    let sandbox = Sandbox::new();
    let server = KvServer::start(&sandbox, "v1", "1.0");
    let out = sandbox.run(&[
        "check",
        "--socket",
        server.hosted.socket().to_str().unwrap(),
        &repo_arg("specs/v1-to-v2.toml"),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", sandbox.transcript());
    let text = stdout(&out);
    assert!(text.starts_with("Checked (nothing changed)"), "{text}");
    let time = text
        .lines()
        .find(|l| l.trim_start().starts_with("time:"))
        .unwrap_or_else(|| panic!("no time line\n{text}"));
    assert!(time.contains("prepare "), "{time}");
    for never in ["stage ", "commit ", "rollback "] {
        assert!(!time.contains(never), "check never ran {never}but says so: {time}");
    }
    assert!(!text.contains("pause: 0.000 ms"), "{text}");
    assert!(text.contains("pause: none, the program was not stopped"), "{text}");

    // A real apply still shows every phase and its pause.
    let out = sandbox.run(&[
        "apply",
        "--socket",
        server.hosted.socket().to_str().unwrap(),
        &repo_arg("specs/v1-to-v2.toml"),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", sandbox.transcript());
    let text = stdout(&out);
    for phase in ["prepare ", "wait ", "stage ", "commit "] {
        assert!(text.contains(phase), "apply report lacks {phase}\n{text}");
    }
    assert!(text.contains("other threads stopped"), "{text}");
}

#[test]
fn a_spec_naming_a_program_that_is_not_running_points_at_its_program_line() {
    let sandbox = Sandbox::new();
    let _server = KvServer::start(&sandbox, "v1", "1.0");
    let spec = sandbox.write(
        "webapp.toml",
        "[update]\nname = \"x\"\nprogram = \"webapp\"\nto = \"2.0\"\n\n[[reload]]\nmodule = \"kvserver.store\"\n",
    );
    let out = sandbox.run(&["apply", spec.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", sandbox.transcript());
    let err = unwrapped(&stderr(&out));
    assert!(err.contains("no running program is named `webapp`"), "{err}");
    // The same form as every other error: located, with the line and a help.
    assert!(err.contains("webapp.toml:3:"), "not located at the program line\n{err}");
    assert!(err.contains("program = \"webapp\""), "no snippet\n{err}");
    assert!(err.contains("no running program has this name"), "{err}");
    assert!(err.contains("help:"), "{err}");
    assert!(
        err.contains("`kvserver` version 1.0"),
        "the running programs are not listed\n{err}"
    );
    assert!(!err.starts_with("error: "), "{err}");
}

#[test]
fn status_lists_every_running_program_and_narrows_by_name_or_pid() {
    let sandbox = Sandbox::new();
    let a = KvServer::start(&sandbox, "v1", "1.0");
    let b = KvServer::start(&sandbox, "v2", "2.0");

    let out = sandbox.run(&["status"]);
    assert_eq!(out.status.code(), Some(0), "{}", sandbox.transcript());
    let text = stdout(&out);
    assert!(text.starts_with("2 programs running under `pyreload run`:"), "{text}");
    for (server, version) in [(&a, "1.0"), (&b, "2.0")] {
        let pid = server.hosted.pid().to_string();
        let row = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(pid.as_str()))
            .unwrap_or_else(|| panic!("no row for pid {pid}\n{text}"));
        assert!(row.contains("kvserver") && row.contains(version), "{row}");
    }

    let out = sandbox.run(&["status", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", sandbox.transcript());
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut pids: Vec<u64> = all
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {all}"))
        .iter()
        .map(|p| p["pid"].as_u64().unwrap())
        .collect();
    pids.sort();
    let mut expected = vec![u64::from(a.hosted.pid()), u64::from(b.hosted.pid())];
    expected.sort();
    assert_eq!(pids, expected);

    let pid = b.hosted.pid().to_string();
    let out = sandbox.run(&["status", "--pid", &pid, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", sandbox.transcript());
    let one: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(one["pid"].as_u64(), Some(u64::from(b.hosted.pid())), "{one}");
    assert_eq!(one["version"], "2.0");

    let out = sandbox.run(&["status", "--name", "nosuch"]);
    assert_eq!(out.status.code(), Some(2), "{}", sandbox.transcript());
    let err = unwrapped(&stderr(&out));
    assert!(err.contains("no running program is named `nosuch`"), "{err}");
    assert!(err.contains(&format!("pid {pid}")), "{err}");
}

#[test]
fn watch_puts_the_diagnostics_of_a_spec_that_does_not_parse_in_its_result_file() {
    let sandbox = Sandbox::new();
    let server = KvServer::start(&sandbox, "v1", "1.0");
    let deploy = sandbox.path().join("deploy");
    std::fs::create_dir_all(&deploy).unwrap();
    let (mut watcher, _stderr) = sandbox.watch(&deploy, &server.hosted.socket());

    std::fs::write(deploy.join("bad.toml"), "[update]\nnmae = \"x\"\nto = \"2.0\"\n").unwrap();
    let result = deploy.join("bad.toml.result.json");
    common::wait_until(
        std::time::Duration::from_secs(30),
        || std::fs::read_to_string(&result).is_ok_and(|t| t.ends_with("}\n")),
        || "no result was written".into(),
    );
    let _ = watcher.kill();
    let _ = watcher.wait();
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&result).unwrap()).unwrap();
    let message = json["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("is not a valid update spec"), "{json:#}");
    let problem = &json["problems"][0];
    assert!(
        problem["message"]
            .as_str()
            .unwrap_or_default()
            .contains("unknown field `nmae`"),
        "{json:#}"
    );
    assert_eq!(problem["location"]["line"], 2, "{json:#}");
    assert_eq!(problem["location"]["column"], 1, "{json:#}");
    assert_eq!(problem["help"], "did you mean `name`?", "{json:#}");
    assert_eq!(server.ask("VERSION"), "VERSION 1.0");
}
