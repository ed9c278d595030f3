//! No mixed versions: an invariant that spans two modules holds across
//! hundreds of updates under load, and the test that says so catches a
//! non-atomic apply.
//!
//! `codec_a.encode` and `codec_b.decode` change their wire format together
//! (v1: `v1|k=v|...`, v2: `v2;k:v;...`). Four worker threads keep checking
//! `codec_b.decode(codec_a.encode(x)) == x`. The spec names `step`, the
//! function that spans both calls, as inactive: a worker must not be
//! between the two calls when the update commits.

mod common;

use std::time::Duration;

use common::{Hosted, Launch, Sandbox, PROBE_LOOP};

const UPDATES: usize = 200;

const PROGRAM: &str = r#"
import sys, threading, time
import codec_a, codec_b

STATS = {"ok": 0, "mixed": 0}
LOCK = threading.Lock()

def step(i):
    record = {"id": str(i), "name": "n%d" % i}
    return codec_b.decode(codec_a.encode(record)) == record

def worker():
    i = 0
    while True:
        i += 1
        try:
            ok = step(i)
        except ValueError:
            ok = False
        with LOCK:
            STATS["ok" if ok else "mixed"] += 1
        time.sleep(0.0002)

for n in range(4):
    threading.Thread(target=worker, name=f"worker-{n}", daemon=True).start()

def steps():
    with LOCK:
        return STATS["ok"] + STATS["mixed"]

def pyreload_fault_gap():
    """Called by the split-commit fault between two modules: returns once a
    worker has begun and finished a whole step in the gap. Four workers
    have at most four steps under way when it starts, so the fifth step
    counted from then on began in the gap."""
    start = steps()
    while steps() < start + 5:
        time.sleep(0.0005)
"#;

const A_V1: &str = "TAG = 'v1'\n\ndef encode(record):\n    return TAG + '|' + '|'.join(f'{k}={v}' for k, v in sorted(record.items()))\n";
const B_V1: &str = "TAG = 'v1'\n\ndef decode(text):\n    tag, _, body = text.partition('|')\n    if tag != TAG:\n        raise ValueError(f'decoder {TAG} got {tag}')\n    return dict(item.split('=', 1) for item in body.split('|'))\n";

fn v2(v1: &str) -> String {
    v1.replace("'v1'", "'v2'")
        .replace("'|'", "';'")
        .replace("'='", "':'")
        .replace("k}={v", "k}:{v")
}

fn spec(from: &str, to: &str, dir: &str) -> String {
    format!(
        "[update]\nname = \"codec-{to}\"\nfrom = \"{from}\"\nto = \"{to}\"\n\n\
         [[reload]]\nmodule = \"codec_a\"\nsource = \"{dir}/codec_a.py\"\n\n\
         [[reload]]\nmodule = \"codec_b\"\nsource = \"{dir}/codec_b.py\"\n\n\
         [safe_point]\ninactive = [\"__main__.step\"]\ntimeout_ms = 5000\n"
    )
}

/// Starts the program (with `fault` in its environment, if any) and
/// applies up to `UPDATES` updates back and forth, stopping early once
/// `stop_when_mixed` and a mixed state was seen. Returns (updates applied,
/// ok checks, mixed checks).
fn run(fault: Option<&str>, stop_when_mixed: bool) -> (usize, u64, u64) {
    let sandbox = Sandbox::new();
    sandbox.write("codec_a.py", A_V1);
    sandbox.write("codec_b.py", B_V1);
    sandbox.write("v1/codec_a.py", A_V1);
    sandbox.write("v1/codec_b.py", B_V1);
    sandbox.write("v2/codec_a.py", &v2(A_V1));
    sandbox.write("v2/codec_b.py", &v2(B_V1));
    let up = sandbox.write("up.toml", &spec("1", "2", "v2"));
    let down = sandbox.write("down.toml", &spec("2", "1", "v1"));
    sandbox.write("main.py", &format!("{PROGRAM}{PROBE_LOOP}"));
    let mut p = Hosted::start(
        &sandbox,
        Launch {
            args: ["--version", "1", "main.py"].map(String::from).to_vec(),
            cwd: sandbox.path().to_path_buf(),
            interactive: true,
            env: fault
                .map(|f| vec![("PYRELOAD_FAULT", f.to_string())])
                .unwrap_or_default(),
        },
    );
    p.expect_line("ready");
    assert_eq!(p.ask("codec_b.decode(codec_a.encode({'x': '1'}))"), "{'x': '1'}");
    let socket = p.socket();
    let mut applied = 0;
    for n in 0..UPDATES {
        let spec = if n % 2 == 0 { &up } else { &down };
        let steps_before: u64 = p.ask("steps()").parse().unwrap();
        let out = sandbox.run(&["apply", "--socket", socket.to_str().unwrap(), spec.to_str().unwrap()]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "update {n} failed:\n{}",
            common::stderr(&out)
        );
        applied += 1;
        // The workers go on checking between one update and the next.
        common::eventually(Duration::from_secs(60), || {
            let now: u64 = p.ask("steps()").parse().unwrap();
            match now > steps_before + 4 {
                true => Ok(()),
                false => Err(format!("the workers made no progress after update {n}")),
            }
        });
        if stop_when_mixed && p.ask("STATS['mixed']") != "0" {
            break;
        }
    }
    let stats = p.ask("(STATS['ok'], STATS['mixed'])");
    let (ok, mixed) = stats.trim_matches(|c| c == '(' || c == ')').split_once(", ").unwrap();
    (applied, ok.parse().unwrap(), mixed.parse().unwrap())
}

#[test]
fn two_hundred_updates_under_load_never_show_a_mixed_state() {
    let (applied, ok, mixed) = run(None, false);
    eprintln!("atomic apply: {applied} updates, {ok} round trips checked, {mixed} mixed");
    assert_eq!(applied, UPDATES);
    assert_eq!(mixed, 0, "a worker saw codec_a and codec_b at different versions");
    assert!(ok > UPDATES as u64, "the workers barely ran ({ok} checks)");
}

#[test]
fn the_same_test_catches_a_non_atomic_apply() {
    let (applied, ok, mixed) = run(Some("split-commit"), true);
    eprintln!("split-commit apply: mixed state seen after {applied} updates ({ok} ok, {mixed} mixed)");
    // The fault lets a worker run a whole step between the two modules, so
    // the very first update is caught.
    assert!(
        mixed > 0 && applied == 1,
        "the test did not detect a deliberately non-atomic apply at once ({applied} updates, {mixed} mixed)"
    );
}
