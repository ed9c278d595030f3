//! `pyreload prepare`, `commit` and `abort` on one program: the update
//! held prepared, its lease, its id, and the answers a second command,
//! a bad id, an expired lease or a restarted program get.

mod common;

use std::time::Duration;

use common::{eventually, repo, status, stderr, stdout, unwrapped, KvServer, Sandbox};

fn spec() -> String {
    repo().join("specs/v1-to-v2.toml").display().to_string()
}

/// `pyreload prepare --json` on the server: the exit status and the JSON.
fn prepare(sandbox: &Sandbox, server: &KvServer, lease: &str) -> (i32, serde_json::Value) {
    let socket = server.hosted.socket();
    let out = sandbox.run(&[
        "prepare",
        "--socket",
        socket.to_str().unwrap(),
        "--json",
        "--lease",
        lease,
        &spec(),
    ]);
    let json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("prepare printed no JSON ({e}):\n{}", sandbox.transcript()));
    (out.status.code().unwrap(), json)
}

fn outcomes(server: &KvServer) -> Vec<String> {
    status(&server.hosted.socket())["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["outcome"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_prepared_update_serves_the_old_version_blocks_applies_and_commits_once() {
    let sandbox = Sandbox::new();
    let server = KvServer::start(&sandbox, "v1", "1.0");
    let (code, prepared) = prepare(&sandbox, &server, "60s");
    assert_eq!(code, 0, "{}", sandbox.transcript());
    let id = prepared["id"].as_str().unwrap().to_string();
    assert!(id.starts_with(&format!("{}-", server.hosted.pid())), "{id}");
    assert_eq!(prepared["report"]["outcome"], "checked");
    assert!(prepared["report"]["timings"]["stage_ms"].as_f64().unwrap() > 0.0);

    // Prepared: the old version serves, `status` shows it, applies are busy.
    assert_eq!(server.ask("VERSION"), "VERSION 1.0");
    assert!(server.ask("INCR n").starts_with("ERR unknown command"));
    let now = status(&server.hosted.socket());
    assert_eq!(now["prepared"]["id"], id.as_str());
    assert_eq!(now["prepared"]["spec"], spec().as_str());
    let left = now["prepared"]["lease_left_s"].as_f64().unwrap();
    assert!(left > 0.0 && left <= 60.0, "{left}");
    let text = sandbox.run(&["status", "--socket", server.hosted.socket().to_str().unwrap()]);
    assert!(
        stdout(&text).contains(&format!("prepared: `v1-to-v2` ({id})")),
        "{}",
        stdout(&text)
    );
    let apply = sandbox.run(&["apply", "--socket", server.hosted.socket().to_str().unwrap(), &spec()]);
    assert_eq!(apply.status.code(), Some(1));
    assert!(
        unwrapped(&stderr(&apply)).contains(&format!("the update `v1-to-v2` ({id}) is prepared in this program")),
        "{}",
        stderr(&apply)
    );
    let again = sandbox.run(&["prepare", "--socket", server.hosted.socket().to_str().unwrap(), &spec()]);
    assert_eq!(again.status.code(), Some(1), "a second prepare is busy too");

    // Commit: the same report as apply, with the id and the release time.
    let commit = sandbox.run(&["commit", "--json", &id]);
    assert_eq!(commit.status.code(), Some(0), "{}", sandbox.transcript());
    let report: serde_json::Value = serde_json::from_slice(&commit.stdout).unwrap();
    assert_eq!(report["outcome"], "committed");
    assert_eq!(report["prepared_id"], id.as_str());
    assert!(report["released_at"].as_f64().unwrap() > 1.0e9);
    assert!(report["timings"]["pause_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(server.ask("VERSION"), "VERSION 2.0");
    assert_eq!(server.ask("INCR n"), "VALUE 1");
    assert!(status(&server.hosted.socket()).get("prepared").is_none());

    // Asked again: the same report, said to be the earlier commit's.
    let twice = sandbox.run(&["commit", "--json", &id]);
    assert_eq!(twice.status.code(), Some(0), "{}", sandbox.transcript());
    let second: serde_json::Value = serde_json::from_slice(&twice.stdout).unwrap();
    assert_eq!(second["outcome"], "committed");
    assert_eq!(second["released_at"], report["released_at"]);
    assert!(
        second["warnings"]
            .to_string()
            .contains("already; this is the report of that commit"),
        "{second:#}"
    );
    assert_eq!(outcomes(&server), ["committed"], "committed once");

    // Abort cannot undo it, and says what can.
    let abort = sandbox.run(&["abort", &id]);
    assert_eq!(abort.status.code(), Some(1));
    let said = unwrapped(&stderr(&abort));
    assert!(
        said.contains("abort cannot undo a committed update") && said.contains("pyreload rollback"),
        "{said}"
    );
}

#[test]
fn abort_changes_nothing_and_is_idempotent_and_an_aborted_id_cannot_commit() {
    let sandbox = Sandbox::new();
    let server = KvServer::start(&sandbox, "v1", "1.0");
    let (_, prepared) = prepare(&sandbox, &server, "60s");
    let id = prepared["id"].as_str().unwrap().to_string();
    for _ in 0..2 {
        let abort = sandbox.run(&["abort", "--json", &id]);
        assert_eq!(abort.status.code(), Some(0), "{}", sandbox.transcript());
        let fate: serde_json::Value = serde_json::from_slice(&abort.stdout).unwrap();
        assert_eq!(fate["state"], "aborted");
        assert_eq!(fate["id"], id.as_str());
    }
    assert_eq!(server.ask("VERSION"), "VERSION 1.0");
    assert_eq!(outcomes(&server), ["cancelled"]);
    let commit = sandbox.run(&["commit", &id]);
    assert_eq!(commit.status.code(), Some(1));
    assert!(
        unwrapped(&stderr(&commit)).contains("was aborted at") && stderr(&commit).contains("nothing was committed"),
        "{}",
        stderr(&commit)
    );
    // The gate is free again: an apply goes through.
    let (code, _) = sandbox.apply_json(&server.hosted, std::path::Path::new(&spec()));
    assert_eq!(code, 0, "{}", sandbox.transcript());
}

#[test]
fn an_expired_lease_aborts_by_itself_and_is_logged() {
    let sandbox = Sandbox::new();
    let server = KvServer::start(&sandbox, "v1", "1.0");
    let (code, prepared) = prepare(&sandbox, &server, "300ms");
    assert_eq!(code, 0, "{}", sandbox.transcript());
    let id = prepared["id"].as_str().unwrap().to_string();
    eventually(Duration::from_secs(30), || {
        let now = status(&server.hosted.socket());
        match now.get("prepared") {
            None if now["in_progress"].is_null() => Ok(()),
            _ => Err(format!("still prepared: {now:#}")),
        }
    });
    assert_eq!(server.ask("VERSION"), "VERSION 1.0");
    assert_eq!(outcomes(&server), ["cancelled"]);
    assert!(
        server.hosted.stderr().contains(&format!(
            "pyreload: prepared update `v1-to-v2` ({id}): expired: nobody committed it within its lease of 300 ms, so it was aborted by itself; nothing was changed"
        )),
        "{}",
        server.hosted.logs()
    );
    let commit = sandbox.run(&["commit", "--json", &id]);
    assert_eq!(commit.status.code(), Some(1));
    let error: serde_json::Value = serde_json::from_slice(&commit.stdout).unwrap();
    assert!(
        error["error"]["message"].as_str().unwrap().contains("expired"),
        "{error:#}"
    );
    assert!(unwrapped(&stderr(&commit)).contains("--lease"), "{}", stderr(&commit));
    let abort = sandbox.run(&["abort", &id]);
    assert_eq!(
        abort.status.code(),
        Some(0),
        "aborting an expired update says so and succeeds"
    );
    assert!(
        stdout(&abort).contains("Aborted (nothing changed)"),
        "{}",
        stdout(&abort)
    );
}

#[test]
fn bad_ids_are_refused_with_the_reason() {
    let sandbox = Sandbox::new();
    let server = KvServer::start(&sandbox, "v1", "1.0");
    let other = KvServer::start(&sandbox, "v1", "1.0");
    let socket = server.hosted.socket();
    let socket = socket.to_str().unwrap();

    // Not an id at all: a usage error, before any program is asked.
    for bad in ["nonsense", "12-zz-1", "12-ab", "x-ab-1"] {
        let out = sandbox.run(&["commit", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(stderr(&out).contains("is not an update id"), "{}", stderr(&out));
    }
    let (_, prepared) = prepare(&sandbox, &server, "60s");
    let id = prepared["id"].as_str().unwrap().to_string();
    let (pid, instance, _) = {
        let parts: Vec<&str> = id.split('-').collect();
        (parts[0].to_string(), parts[1].to_string(), parts[2].to_string())
    };

    // Another program's id, sent to this one.
    let other_id = format!("{}-{instance}-1", other.hosted.pid());
    let out = sandbox.run(&["commit", "--socket", socket, &other_id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        unwrapped(&stderr(&out)).contains(&format!("belongs to another program (pid {})", other.hosted.pid())),
        "{}",
        stderr(&out)
    );
    // This pid, another run of the program (a pid reused after a restart).
    let out = sandbox.run(&["abort", "--socket", socket, &format!("{pid}-1234abcd-1")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        unwrapped(&stderr(&out)).contains("is gone: the program restarted since it was prepared"),
        "{}",
        stderr(&out)
    );
    // This run, a number never issued.
    let out = sandbox.run(&["commit", &format!("{pid}-{instance}-99")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        unwrapped(&stderr(&out)).contains("was prepared in this program"),
        "{}",
        stderr(&out)
    );
    // Nothing of that touched the prepared update.
    assert_eq!(status(&server.hosted.socket())["prepared"]["id"], id.as_str());

    // The program restarts: its id is gone, and the refusal says so.
    drop(server);
    let out = sandbox.run(&["commit", &id]);
    assert_eq!(out.status.code(), Some(1));
    let said = unwrapped(&stderr(&out));
    assert!(said.contains(&format!("the update {id} is gone")), "{said}");
    assert!(said.contains("restarted"), "{said}");
    assert!(
        said.contains(&format!("(pid {})", other.hosted.pid())),
        "names what runs now: {said}"
    );
}

#[test]
fn prepare_reports_spec_errors_with_their_place_and_refusals_as_reports() {
    let sandbox = Sandbox::new();
    let server = KvServer::start(&sandbox, "v1", "1.0");
    let socket = server.hosted.socket();
    let socket = socket.to_str().unwrap();
    let bad = sandbox.write(
        "bad.toml",
        "[update]\nname = \"x\"\nto = \"2.0\"\n\n[[reload]]\nmodule = \"kvserver.store\"\ntimeout = 3\n",
    );
    let out = sandbox.run(&["prepare", "--socket", socket, bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("bad.toml:7:1"), "{}", stderr(&out));
    let missing = sandbox.write(
        "missing.toml",
        "[update]\nname = \"x\"\nto = \"2.0\"\n\n[[reload]]\nmodule = \"kvserver.storage\"\n",
    );
    let out = sandbox.run(&["prepare", "--json", "--socket", socket, missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["outcome"], "refused");
    assert!(report["problem"]["message"]
        .as_str()
        .unwrap()
        .contains("kvserver.storage"));
    assert!(status(&server.hosted.socket()).get("prepared").is_none());
    let lease = sandbox.run(&["prepare", "--lease", "soon", "--socket", socket, &spec()]);
    assert_eq!(lease.status.code(), Some(2));
    assert!(stderr(&lease).contains("is not a duration"), "{}", stderr(&lease));
}

#[test]
fn a_program_that_exits_while_prepared_exits_cleanly_and_its_id_is_gone() {
    let sandbox = Sandbox::new();
    let server = KvServer::start(&sandbox, "v1", "1.0");
    let (code, prepared) = prepare(&sandbox, &server, "10m");
    assert_eq!(code, 0, "{}", sandbox.transcript());
    let id = prepared["id"].as_str().unwrap().to_string();
    let pid = server.hosted.pid();
    let before = server.hosted.stderr();
    assert!(
        before.contains(&format!("prepared update `v1-to-v2` ({id})")),
        "{before}"
    );
    // SIGTERM: the server's own shutdown, then pyreload's exit hook, which
    // gives up the prepared update rather than wait for its ten-minute
    // lease (shut_down_cleanly allows 60 s).
    server.shut_down_cleanly();
    let out = sandbox.run(&["commit", &id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        unwrapped(&stderr(&out)).contains(&format!("pid {pid}, which prepared it, no longer runs")),
        "{}",
        stderr(&out)
    );
}

#[test]
fn commit_at_a_moment_waits_for_it_and_refuses_one_far_away() {
    let sandbox = Sandbox::new();
    let server = KvServer::start(&sandbox, "v1", "1.0");
    let (_, prepared) = prepare(&sandbox, &server, "60s");
    let id = prepared["id"].as_str().unwrap().to_string();
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    let far = format!("{:.3}", now() + 7200.0);
    let out = sandbox.run(&["commit", "--at", &far, &id]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("more than an hour away"), "{}", stderr(&out));
    assert_eq!(server.ask("VERSION"), "VERSION 1.0", "nothing was sent");
    let at = now() + 0.3;
    let out = sandbox.run(&["commit", "--json", "--at", &format!("{at:.6}"), &id]);
    assert_eq!(out.status.code(), Some(0), "{}", sandbox.transcript());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["released_at"].as_f64().unwrap() >= at, "{report:#}");
    assert_eq!(server.ask("VERSION"), "VERSION 2.0");
}
