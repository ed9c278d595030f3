//! Soak: updates and rollbacks, one after another, on the case-study
//! server under continuous load; then a clean shutdown.
//!
//! The quick version (60 updates) runs with the suite. The long one is
//! behind a flag, and its result goes into BENCHMARKS.md:
//!
//! ```text
//! PYRELOAD_SOAK_UPDATES=1000 cargo test --release --test soak -- --nocapture
//! ```
//!
//! It shows: no failed request, no lost key, memory that stops growing
//! (RSS growth after a warm-up under a stated bound), the staging modules
//! and staged classes of every update freed (tracked with weak references,
//! see `engine::retained`), and a program that still updates and shuts down
//! cleanly after it all, failed updates included.

mod common;

use std::time::{Duration, Instant};

use common::{repo, rss_kib, stderr, KvLoad, KvServer, Sandbox};

const KEYS: usize = 5_000;
const CLIENTS: usize = 8;
/// RSS may grow by at most this much between the end of the warm-up and
/// the end of the soak. Each update leaves a history entry (a few hundred
/// bytes, the last 1,000 kept), and the rollback stack keeps at most 16
/// updates' old code; nothing else should last.
const RSS_GROWTH_BOUND_KIB: u64 = 8 * 1024;

fn updates() -> usize {
    std::env::var("PYRELOAD_SOAK_UPDATES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(60)
}

#[test]
fn updates_and_rollbacks_under_load_lose_nothing_leak_nothing_and_shut_down_cleanly() {
    let updates = updates();
    let sandbox = Sandbox::new();
    let server = KvServer::start(&sandbox, "v1", "1.0");
    let socket = server.hosted.socket();
    let socket_arg = socket.to_str().unwrap().to_string();
    let mut c = server.client();
    let sets: Vec<String> = (0..KEYS).map(|k| format!("SET soak{k} value{k}")).collect();
    assert!(c.pipeline(&sets).iter().all(|r| r == "OK"));

    let load = KvLoad::start(server.port, CLIENTS, Duration::from_secs(900));

    // A spec whose check fails: rolled back every time it is tried.
    let failing = sandbox.write(
        "failing.toml",
        &std::fs::read_to_string(repo().join("specs/v1-to-v2.toml"))
            .unwrap()
            .replace("../case-study/", &format!("{}/case-study/", repo().display()))
            .replace("after = \"kvserver.health.ok()\"", "after = \"False\""),
    );
    let up = repo().join("specs/v1-to-v2.toml");
    let down = repo().join("bench/specs/v2-to-v1.toml");
    let warm_up = (updates / 10).max(10);
    let started = Instant::now();
    let mut rss_after_warm_up = 0;
    let (mut applied, mut rolled_back, mut failed_as_planned) = (0, 0, 0);
    for n in 0..updates {
        if n == warm_up {
            rss_after_warm_up = rss_kib(server.hosted.pid());
        }
        if n % 2 == 0 {
            if n % 20 == 0 {
                // Planned: committed, then rolled back by its check; not
                // refused in prepare or in the wait.
                let (code, report) = sandbox.apply_json(&server.hosted, &failing);
                assert_eq!(code, 1, "{report:#}");
                assert_eq!(report["outcome"], "rolled_back", "update {n}: {report:#}");
                assert!(
                    report["problem"]["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("`[check] after` was false after the commit")),
                    "update {n}: {report:#}"
                );
                failed_as_planned += 1;
            }
            let out = sandbox.run(&["apply", "--socket", &socket_arg, up.to_str().unwrap()]);
            assert_eq!(out.status.code(), Some(0), "update {n}: {}", stderr(&out));
            applied += 1;
        } else if n % 4 == 3 {
            // Back to 1.0 by a forward update: both updates stay on the
            // rollback stack.
            let out = sandbox.run(&["apply", "--socket", &socket_arg, down.to_str().unwrap()]);
            assert_eq!(out.status.code(), Some(0), "update {n}: {}", stderr(&out));
            applied += 1;
        } else {
            let out = sandbox.run(&["rollback", "--socket", &socket_arg]);
            assert_eq!(out.status.code(), Some(0), "rollback {n}: {}", stderr(&out));
            rolled_back += 1;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let rss_end = rss_kib(server.hosted.pid());

    // What the weak references say, after a full collection.
    let out = sandbox.run(&["status", "--socket", &socket_arg, "--collect", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let retained = &status["retained"];

    let tallies = load.finish();
    let failures = common::failures(&tallies);
    let served: usize = tallies.iter().map(|t| t.requests).sum();
    let gets: Vec<String> = (0..KEYS).map(|k| format!("GET soak{k}")).collect();
    let lost = c
        .pipeline(&gets)
        .iter()
        .enumerate()
        .filter(|(k, reply)| **reply != format!("VALUE value{k}"))
        .count();
    let pauses: Vec<f64> = status["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["outcome"] == "committed")
        .map(|h| h["pause_ms"].as_f64().unwrap())
        .collect();
    let summary = serde_json::json!({
        "updates": updates, "applied": applied, "rolled_back": rolled_back,
        "failed_as_planned": failed_as_planned, "seconds": seconds,
        "requests": served, "failed_requests": failures.len(), "keys": KEYS, "lost_keys": lost,
        "rss_kib_after_warm_up": rss_after_warm_up, "rss_kib_end": rss_end,
        "rss_growth_kib": rss_end as i64 - rss_after_warm_up as i64,
        "rss_growth_bound_kib": RSS_GROWTH_BOUND_KIB, "retained": retained,
        "pause_ms_p50": percentile(&pauses, 50.0), "pause_ms_p99": percentile(&pauses, 99.0),
    });
    eprintln!("SOAK {summary}");

    assert!(failures.is_empty(), "requests failed: {failures:#?}");
    assert!(served > 0, "no requests were served");
    assert_eq!(lost, 0, "keys lost");
    assert!(
        rss_end <= rss_after_warm_up + RSS_GROWTH_BOUND_KIB,
        "RSS grew from {rss_after_warm_up} KiB to {rss_end} KiB"
    );
    assert_eq!(retained["modules"], 0, "staging modules still alive: {retained:#}");
    assert_eq!(retained["classes"], 0, "staged classes still alive: {retained:#}");
    // Every committed apply staged kvserver.store and kvserver.protocol and
    // merged one class, Store; each was tracked, and each is gone.
    assert_eq!(retained["tracked"], 3 * applied, "{retained:#}");

    // After all that, one more update, then a clean shutdown.
    assert_eq!(
        server.ask("VERSION"),
        if updates % 2 == 1 { "VERSION 2.0" } else { "VERSION 1.0" }
    );
    if updates % 2 == 0 {
        let out = sandbox.run(&["apply", "--socket", &socket_arg, up.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
    assert_eq!(server.ask("INCR soak-counter"), "VALUE 1");
    server.shut_down_cleanly();
}

fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let k = (v.len() - 1) as f64 * p / 100.0;
    let (lo, hi) = (k.floor() as usize, k.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (k - lo as f64)
}

#[test]
fn only_the_newest_updates_stay_undoable_so_memory_stays_bounded() {
    let sandbox = Sandbox::new();
    let hosted = KvServer::launch(&sandbox, "v1", "1.0", &["--rollback-depth", "2"], &[], vec![]).hosted;
    let socket = hosted.socket();
    let socket = socket.to_str().unwrap();
    let up = repo().join("specs/v1-to-v2.toml");
    let down = repo().join("bench/specs/v2-to-v1.toml");
    for spec in [&up, &down, &up] {
        let out = sandbox.run(&["apply", "--socket", socket, spec.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
    assert!(
        hosted
            .stderr()
            .contains("pyreload: `v1-to-v2` can no longer be rolled back (--rollback-depth 2 keeps the newest)"),
        "{}",
        hosted.stderr()
    );
    for _ in 0..2 {
        let out = sandbox.run(&["rollback", "--socket", socket]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
    let out = sandbox.run(&["rollback", "--socket", socket]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("there is nothing more to roll back: the 1 oldest update(s) were let go"),
        "{}",
        stderr(&out)
    );
    let status = common::status(&hosted.socket());
    assert_eq!(status["version"], "2.0", "{status:#}");
}
