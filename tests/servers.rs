//! Real servers under `pyreload run`: gunicorn 27 (sync and gthread, with
//! and without `--preload`) and `uvicorn --workers 2` serving the notes
//! service of `case-study/web/`, and a `multiprocessing.Pool` program
//! (`case-study/pool/`), all from pinned PyPI packages in a venv cached
//! under target/ (tests/common/pypi.rs).
//!
//! Two kinds of test:
//!
//! - **Today**: each server runs under pyreload and serves 16 concurrent
//!   clients with no failure; `pyreload status` sees it; a worker killed
//!   with SIGKILL is replaced and the replacement serves. The pool computes.
//! - **Acceptance of process-tree updates (#15)**: 20 updates back and forth under load with every worker
//!   on the new version once `apply` returns; a spec that one worker refuses
//!   changes no member; a replacement worker is born new; pool workers run
//!   the new function. They read the tree fields of the JSON through
//!   tests/common/tree.rs only.
//!
//! Every wait is for something the server says or the kernel shows (see
//! tests/common/web.rs); none of the verdicts depends on timing.

mod common;

use common::tree::{self, COMMITTED, EXITED, UNAFFECTED};
use common::web::{self, apply_json_at, assert_clean, Gunicorn, Load, LoadDriver, WebServer, WorkerClass};
use common::{repo, Hosted, Launch, Sandbox};
use std::collections::BTreeSet;
use std::time::Duration;

/// 16 clients: 12 on keep-alive connections, 4 on a new connection per
/// request (so that every worker of a keep-alive server gets requests).
fn load() -> Load {
    Load::mixed(16)
}

// ---------------------------------------------------------------- today

/// A server that is up: `pyreload status` sees the program, 16 clients get
/// only 1.0 answers from every worker and no failure, and a SIGKILLed
/// worker is replaced by one that serves with fresh state.
fn serves_under_pyreload(sandbox: &Sandbox, server: &WebServer, name: &str, keep_alive: bool) {
    let status = web::status_json_cli(sandbox, &server.socket());
    assert_eq!(status["name"], name, "{status:#}");
    assert_eq!(status["pid"], server.pid(), "{status:#}");
    assert_eq!(status["version"], "1.0", "{status:#}");

    let workers = server.wait_for_workers(server.workers);
    let mut load = LoadDriver::start(sandbox, server.port, &load());
    load.wait(50 * server.workers, server.workers);
    let summary = load.stop();
    assert_clean(&summary, &server.logs());
    let by_pid: BTreeSet<u32> = summary["by_pid"]
        .as_object()
        .unwrap()
        .keys()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(
        by_pid, workers,
        "answers came from these pids, not the workers: {summary:#}"
    );
    assert_eq!(
        summary["by_version"],
        serde_json::json!({"1.0": summary["responses"]}),
        "{summary:#}"
    );
    if keep_alive {
        assert_eq!(
            summary["reconnects"], 0,
            "the server closed keep-alive connections: {summary:#}"
        );
    } else {
        // gunicorn's sync worker closes the connection after every
        // response; the clients reconnect, and that is no failure.
        assert_eq!(summary["connections"], summary["requests"], "{summary:#}");
        assert!(summary["reconnects"].as_u64() > Some(0), "{summary:#}");
    }

    let victim = *workers.iter().next().unwrap();
    let replacement = server.kill_worker(victim);
    let answer = server.answer_from(replacement);
    assert_eq!(answer["version"], "1.0", "{answer}");
    // A new process: its own hit count for this client starts again.
    assert_eq!(answer["hits"], 1, "{answer}");
    assert_eq!(server.worker_pids().len(), server.workers);
}

#[test]
fn gunicorn_sync_serves_under_pyreload() {
    let sandbox = Sandbox::new();
    let server = WebServer::gunicorn(&sandbox, &Gunicorn::new(4, WorkerClass::Sync, false));
    serves_under_pyreload(&sandbox, &server, "web", false);
}

#[test]
fn gunicorn_sync_preload_serves_under_pyreload() {
    let sandbox = Sandbox::new();
    let server = WebServer::gunicorn(&sandbox, &Gunicorn::new(4, WorkerClass::Sync, true));
    serves_under_pyreload(&sandbox, &server, "web", false);
}

#[test]
fn gunicorn_gthread_serves_under_pyreload() {
    let sandbox = Sandbox::new();
    let server = WebServer::gunicorn(&sandbox, &Gunicorn::new(4, WorkerClass::Gthread { threads: 4 }, false));
    serves_under_pyreload(&sandbox, &server, "web", true);
}

#[test]
fn gunicorn_gthread_preload_serves_under_pyreload() {
    let sandbox = Sandbox::new();
    let server = WebServer::gunicorn(&sandbox, &Gunicorn::new(4, WorkerClass::Gthread { threads: 4 }, true));
    serves_under_pyreload(&sandbox, &server, "web", true);
}

#[test]
fn uvicorn_two_workers_serve_under_pyreload() {
    let sandbox = Sandbox::new();
    let server = WebServer::uvicorn(&sandbox, 2);
    serves_under_pyreload(&sandbox, &server, "web-asgi", true);
}

/// The pool program, deployed as a copy of `case-study/pool/v1`, started
/// with `pyreload run --name crunch --version 1.0 -m crunch --workers 4`.
fn start_pool(sandbox: &Sandbox) -> (Hosted, std::path::PathBuf) {
    let dir = sandbox.path().join("crunch");
    web::copy_tree(&repo().join("case-study/pool/v1"), &dir);
    let mut p = Hosted::start(
        sandbox,
        Launch {
            args: ["--name", "crunch", "--version", "1.0", "-m", "crunch", "--workers", "4"]
                .map(String::from)
                .to_vec(),
            cwd: dir.clone(),
            interactive: true,
            env: vec![],
        },
    );
    p.expect_line("crunch: 4 workers ready (version 1.0)");
    (p, dir)
}

fn ask_json(p: &mut Hosted, job: &str) -> serde_json::Value {
    let answer = p.ask(job);
    serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{job:?} -> {answer:?}: {e}\n{}", p.logs()))
}

/// The number of primes below `limit`, to check the pool's answers.
fn primes_below(limit: u64) -> u64 {
    (2..limit)
        .filter(|&n| (2..).take_while(|d| d * d <= n).all(|d| n % d != 0))
        .count() as u64
}

/// The pool's worker pids, as the pool knows them (`pids`).
fn pool_pids(p: &mut Hosted) -> BTreeSet<u32> {
    let answer = ask_json(p, "pids");
    let pids = answer["workers"].as_array().unwrap_or_else(|| panic!("{answer}"));
    pids.iter().map(|v| v.as_u64().unwrap() as u32).collect()
}

/// `census`: one answer from each of the pool's workers, by pid.
fn census(p: &mut Hosted) -> std::collections::BTreeMap<u32, serde_json::Value> {
    let answer = ask_json(p, "census");
    answer["workers"]
        .as_array()
        .unwrap_or_else(|| panic!("{answer}"))
        .iter()
        .map(|w| (w["pid"].as_u64().unwrap() as u32, w.clone()))
        .collect()
}

/// Checks `map 12`: every value right, every result from a pool worker
/// and computed by `version`.
fn check_map(p: &mut Hosted, workers: &BTreeSet<u32>, version: &str) {
    let answer = ask_json(p, "map 12");
    let results = answer["results"].as_array().unwrap_or_else(|| panic!("{answer}"));
    assert_eq!(results.len(), 12);
    for r in results {
        let n = r["n"].as_u64().unwrap();
        assert_eq!(r["value"], primes_below(1000 * (n + 1)), "{r}");
        assert_eq!(r["version"], version, "{r}");
        assert!(
            workers.contains(&(r["pid"].as_u64().unwrap() as u32)),
            "{r} not from {workers:?}"
        );
    }
}

#[test]
fn a_multiprocessing_fork_pool_computes_under_pyreload() {
    let sandbox = Sandbox::new();
    let (mut p, _) = start_pool(&sandbox);
    let pids = pool_pids(&mut p);
    assert_eq!(pids.len(), 4);
    // Forked by the hosted interpreter: children of the pyreload process.
    assert_eq!(web::children(p.pid()).intersection(&pids).count(), 4, "{pids:?}");
    let seen = census(&mut p);
    assert_eq!(seen.keys().copied().collect::<BTreeSet<_>>(), pids, "{seen:?}");
    assert!(seen.values().all(|w| w["version"] == "1.0"), "{seen:?}");
    check_map(&mut p, &pids, "1.0");
    let status = common::status(&p.socket());
    assert_eq!(status["name"], "crunch", "{status:#}");
    drop(p.stdin.take());
    assert!(p.wait(Duration::from_secs(120)).success(), "{}", p.logs());
}

/// The worked specs resolve against the running programs (`pyreload
/// check`, which changes nothing): the web one in a `--preload` master, the
/// only process that has `notes.logic` loaded before #15, and the pool one
/// in the pool's parent.
#[test]
fn the_worked_web_and_pool_specs_check_against_the_running_programs() {
    let sandbox = Sandbox::new();
    let server = WebServer::gunicorn(&sandbox, &Gunicorn::new(2, WorkerClass::Sync, true));
    server.swap_logic("v2");
    let socket = server.socket();
    for (spec, code) in [("web-v1-to-v2.toml", 0), ("web-v2-to-v1.toml", 1)] {
        let spec = repo().join("specs").join(spec);
        let out = sandbox.run(&["check", "--socket", socket.to_str().unwrap(), spec.to_str().unwrap()]);
        // v2-to-v1 is for a program at 2.0: refused on `from`, as it must be.
        assert_eq!(out.status.code(), Some(code), "{}", sandbox.transcript());
    }
    let (mut p, dir) = start_pool(&sandbox);
    std::fs::copy(
        repo().join("case-study/pool/v2/crunch/work.py"),
        dir.join("crunch/work.py"),
    )
    .unwrap();
    let spec = repo().join("specs/pool-v1-to-v2.toml");
    let out = sandbox.run(&[
        "check",
        "--socket",
        p.socket().to_str().unwrap(),
        spec.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", sandbox.transcript());
    let pids = pool_pids(&mut p);
    check_map(&mut p, &pids, "1.0");
}

// ------------------------------------------- acceptance of #15 (ignored)

/// The spec that takes `from` to the other version, and that version.
fn next_update(flavor: web::Flavor, from: &str) -> (&'static str, &'static str, std::path::PathBuf) {
    let (to, dir, name) = match from {
        "1.0" => ("2.0", "v2", "v1-to-v2"),
        _ => ("1.0", "v1", "v2-to-v1"),
    };
    let prefix = match flavor {
        web::Flavor::Gunicorn => "web",
        web::Flavor::Uvicorn => "web-asgi",
    };
    (to, dir, repo().join("specs").join(format!("{prefix}-{name}.toml")))
}

/// Applies the in-place update from `from` (file swap, then the spec) and
/// checks the report: committed in every worker, and in the master unless it
/// loads none of the spec's modules.
/// `churn` says workers come and go by themselves (`--max-requests`), so
/// the report's members are not compared with the live workers.
/// `together` adds `[tree] commit = "together"` to the worked spec.
fn update(sandbox: &Sandbox, server: &WebServer, from: &str, churn: bool, together: bool) -> &'static str {
    let (to, dir, spec) = next_update(server.flavor, from);
    let spec = if together {
        let name = format!("together-{}", spec.file_name().unwrap().to_string_lossy());
        let text = std::fs::read_to_string(&spec).unwrap() + "\n[tree]\ncommit = \"together\"\n";
        sandbox.write(&name, &text)
    } else {
        spec
    };
    let workers = server.worker_pids();
    server.swap_logic(dir);
    let (code, report) = apply_json_at(sandbox, &server.socket(), &spec);
    assert_eq!(code, 0, "{report:#}\n{}", server.logs());
    assert_eq!(tree::outcome(&report), COMMITTED, "{report:#}");
    // With churn every worker may be between lives at the moment of the
    // update (retired, its replacement not forked yet): then the master is
    // the whole tree, and the workers it forks next are born new. The
    // clients' stale count is what proves no worker kept the old version.
    if churn && report.get("members").is_none() {
        assert_eq!(report["pid"], server.pid(), "{report:#}");
        return to;
    }
    let mode = if together { "together" } else { "each" };
    assert_eq!(report["tree_commit"], mode, "{report:#}");
    let members = tree::report_members(&report);
    for m in &members {
        // With churn, a worker may retire (--max-requests) while the update
        // runs: it is listed, gone, and not committed. Every live one is.
        let retired = churn && (m.outcome == EXITED || !std::path::Path::new(&format!("/proc/{}", m.pid)).exists());
        // With churn, a worker the master forked after its own commit is
        // born on the new version and takes no part.
        let born_new = churn && m.outcome == UNAFFECTED && m.from == to && m.to == to;
        if born_new {
            continue;
        }
        if m.pid == server.pid() {
            // A master without --preload (and uvicorn's) loads no app
            // module: unaffected. With --preload it is updated like the
            // workers, and the workers it forks later are born new.
            assert!(m.outcome == COMMITTED || m.outcome == UNAFFECTED, "{m:?} in {report:#}");
        } else if !retired {
            assert_eq!(m.outcome, COMMITTED, "{m:?} in {report:#}");
            assert!(m.pause_ms > 0.0, "{m:?}");
        }
        if !retired {
            assert_eq!((m.from.as_str(), m.to.as_str()), (from, to), "{m:?}");
        }
    }
    let pids: BTreeSet<u32> = members.iter().map(|m| m.pid).collect();
    assert!(
        pids.contains(&server.pid()),
        "the master is not in the report: {report:#}"
    );
    if !churn {
        let mut expected = workers.clone();
        expected.insert(server.pid());
        assert_eq!(
            pids, expected,
            "the report's members are not the master and its workers: {report:#}"
        );
    }
    to
}

/// `status --json`: every member of the program at `version`, and (without
/// churn) the members are the master's live workers.
fn assert_tree_at(sandbox: &Sandbox, server: &WebServer, version: &str, churn: bool) {
    let status = web::status_json_cli(sandbox, &server.socket());
    // The root is the program `status` describes; `members` are the others.
    assert_eq!(status["pid"], server.pid(), "{status:#}");
    assert_eq!(status["version"], version, "{status:#}");
    let members = tree::status_members(&status);
    assert!(members.iter().all(|m| m.version == version), "{status:#}");
    assert!(members.iter().all(|m| m.pid != server.pid()), "{status:#}");
    if !churn {
        let workers: BTreeSet<u32> = members
            .iter()
            .filter(|m| m.pid != server.pid())
            .map(|m| m.pid)
            .collect();
        assert_eq!(workers, server.worker_pids(), "{status:#}");
        assert!(
            members
                .iter()
                .filter(|m| m.pid != server.pid())
                .all(|m| m.ppid == server.pid()),
            "{status:#}"
        );
    }
}

/// 20 updates back and forth under 16 clients: no request fails, no
/// worker loses its state, and once each `apply` returns every request is
/// answered by the new version, from every worker. Then one more update
/// (to 2.0, with no load) and a SIGKILLed worker: its replacement is born
/// on 2.0 and is a member at 2.0.
fn twenty_updates_under_load(sandbox: &Sandbox, server: &WebServer, churn: bool) {
    updates_under_load(sandbox, server, churn, false, 20);
}

/// [`twenty_updates_under_load`] with `count` updates (even), each
/// committed `together` or not.
fn updates_under_load(sandbox: &Sandbox, server: &WebServer, churn: bool, together: bool, count: usize) {
    let workers = server.workers;
    let mut load = LoadDriver::start(sandbox, server.port, &load());
    load.wait(20 * workers, workers);
    let mut version = "1.0";
    for i in 0..count {
        load.close();
        version = update(sandbox, server, version, churn, together);
        load.mark(version);
        let seen = load.wait(25 * workers, workers);
        eprintln!("update {}: at {version}, {seen}", i + 1);
    }
    assert_eq!(version, "1.0");
    let summary = load.stop();
    assert_clean(&summary, &server.logs());
    let marks = summary["marks"].as_array().unwrap();
    assert_eq!(marks.len(), count, "{summary:#}");
    assert_tree_at(sandbox, server, "1.0", churn);

    let version = update(sandbox, server, version, churn, together);
    assert_eq!(version, "2.0");
    let victim = *server.wait_for_workers(workers).iter().next().unwrap();
    let replacement = server.kill_worker(victim);
    let answer = server.answer_from(replacement);
    assert_eq!(
        answer["version"],
        "2.0",
        "the replacement was not born new: {answer}\n{}",
        server.logs()
    );
    if !churn {
        assert_tree_at(sandbox, server, "2.0", false);
    }
}

#[test]
fn gunicorn_sync_twenty_updates_under_load() {
    let sandbox = Sandbox::new();
    let server = WebServer::gunicorn(&sandbox, &Gunicorn::new(4, WorkerClass::Sync, false));
    twenty_updates_under_load(&sandbox, &server, false);
}

#[test]
fn gunicorn_sync_preload_twenty_updates_under_load() {
    let sandbox = Sandbox::new();
    let server = WebServer::gunicorn(&sandbox, &Gunicorn::new(4, WorkerClass::Sync, true));
    twenty_updates_under_load(&sandbox, &server, false);
}

#[test]
fn gunicorn_gthread_twenty_updates_under_load() {
    let sandbox = Sandbox::new();
    let server = WebServer::gunicorn(&sandbox, &Gunicorn::new(4, WorkerClass::Gthread { threads: 4 }, false));
    twenty_updates_under_load(&sandbox, &server, false);
}

#[test]
fn gunicorn_gthread_preload_twenty_updates_under_load() {
    let sandbox = Sandbox::new();
    let server = WebServer::gunicorn(&sandbox, &Gunicorn::new(4, WorkerClass::Gthread { threads: 4 }, true));
    twenty_updates_under_load(&sandbox, &server, false);
}

/// `[tree] commit = "together"` on a real server under load: every member
/// stops and merges, then all let go at once; the same guarantees as the
/// default (no failed request, no stale answer after `apply` returned, a
/// killed worker's replacement born new).
#[test]
fn gunicorn_gthread_preload_together_updates_under_load() {
    let sandbox = Sandbox::new();
    let server = WebServer::gunicorn(&sandbox, &Gunicorn::new(4, WorkerClass::Gthread { threads: 4 }, true));
    updates_under_load(&sandbox, &server, false, true, 10);
}

/// Workers retire after 50-60 requests and are re-forked all the time, so
/// some are born while an update is prepared, frozen or committed: each
/// must be born on the version the tree is at (no stale answer after a
/// mark).
#[test]
fn gunicorn_sync_preload_max_requests_workers_born_during_updates_are_new() {
    let sandbox = Sandbox::new();
    let mut opts = Gunicorn::new(4, WorkerClass::Sync, true);
    opts.extra = ["--max-requests", "50", "--max-requests-jitter", "10"]
        .map(String::from)
        .to_vec();
    let server = WebServer::gunicorn(&sandbox, &opts);
    twenty_updates_under_load(&sandbox, &server, true);
}

#[test]
fn uvicorn_two_workers_twenty_updates_under_load() {
    let sandbox = Sandbox::new();
    let server = WebServer::uvicorn(&sandbox, 2);
    twenty_updates_under_load(&sandbox, &server, false);
}

/// A spec whose safe-point condition is false in one worker only: the
/// update times out there, so it commits nowhere. No client ever sees
/// 2.0, and every member stays at 1.0.
#[test]
fn a_spec_one_worker_refuses_changes_no_member() {
    let sandbox = Sandbox::new();
    let server = WebServer::gunicorn(&sandbox, &Gunicorn::new(4, WorkerClass::Sync, true));
    let workers = server.wait_for_workers(4);
    let refuser = *workers.iter().nth(1).unwrap();
    let spec = std::fs::read_to_string(repo().join("specs/web-v1-to-v2.toml"))
        .unwrap()
        .replace(
            "timeout_ms = 5000",
            &format!("condition = \"__import__('os').getpid() != {refuser}\"\ntimeout_ms = 2000"),
        );
    assert!(spec.contains("condition ="), "specs/web-v1-to-v2.toml changed: {spec}");
    let spec = sandbox.write("refused-by-one.toml", &spec);

    let mut load = LoadDriver::start(&sandbox, server.port, &load());
    load.wait(80, 4);
    load.mark("1.0");
    server.swap_logic("v2");
    let (code, report) = apply_json_at(&sandbox, &server.socket(), &spec);
    assert_eq!(code, 1, "{report:#}\n{}", server.logs());
    assert_ne!(tree::outcome(&report), COMMITTED, "{report:#}");
    let members = tree::report_members(&report);
    let listed: BTreeSet<u32> = members.iter().map(|m| m.pid).collect();
    let mut tree_pids = workers.clone();
    tree_pids.insert(server.pid());
    assert_eq!(
        listed, tree_pids,
        "every member is listed, the refuser ({refuser}) too: {report:#}"
    );
    assert!(
        members.iter().all(|m| m.outcome != COMMITTED),
        "a member committed an update the tree refused: {report:#}"
    );
    load.wait(80, 4);
    let summary = load.stop();
    assert_clean(&summary, &server.logs());
    assert_eq!(
        summary["by_version"],
        serde_json::json!({"1.0": summary["responses"]}),
        "{summary:#}"
    );
    assert_tree_at(&sandbox, &server, "1.0", false);
    for (pid, answer) in server.answers_from_all(&workers) {
        assert_eq!(answer["version"], "1.0", "worker {pid}: {answer}");
    }
}

/// The pool's workers run the new `crunch.work.score` after the update:
/// the same four processes (not restarted), each with its task count kept.
#[test]
fn a_multiprocessing_pool_picks_up_a_changed_function() {
    let sandbox = Sandbox::new();
    let (mut p, dir) = start_pool(&sandbox);
    let before = census(&mut p);
    let pids: BTreeSet<u32> = before.keys().copied().collect();
    check_map(&mut p, &pids, "1.0");
    let before = census(&mut p);

    std::fs::copy(
        repo().join("case-study/pool/v2/crunch/work.py"),
        dir.join("crunch/work.py"),
    )
    .unwrap();
    let (code, report) = apply_json_at(&sandbox, &p.socket(), &repo().join("specs/pool-v1-to-v2.toml"));
    assert_eq!(code, 0, "{report:#}\n{}", p.logs());
    let members = tree::report_members(&report);
    let listed: BTreeSet<u32> = members.iter().map(|m| m.pid).collect();
    assert!(pids.is_subset(&listed) && listed.contains(&p.pid()), "{report:#}");
    assert!(members.iter().all(|m| m.outcome == COMMITTED), "{report:#}");
    assert!(members.iter().all(|m| m.pause_ms > 0.0), "{report:#}");

    let after = census(&mut p);
    assert_eq!(
        after.keys().copied().collect::<BTreeSet<_>>(),
        pids,
        "the workers were replaced: {after:?}"
    );
    for (pid, w) in &after {
        assert_eq!(w["version"], "2.0", "worker {pid}: {w}");
        assert_eq!(w["done"], before[pid]["done"], "worker {pid} lost its task count: {w}");
    }
    check_map(&mut p, &pids, "2.0");
}
