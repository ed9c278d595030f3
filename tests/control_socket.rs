//! The control socket under hostile input: other users, malformed,
//! truncated, oversized and out-of-order messages, clients that stall or
//! vanish, and random frames. None of it may hurt the program, change it,
//! or keep other clients from being served.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{repo, status, stderr, KvServer, Rng, Sandbox, BIN};

/// Frames as the protocol has them: a 4-byte big-endian length, then JSON.
fn frame(body: &[u8]) -> Vec<u8> {
    [&(body.len() as u32).to_be_bytes()[..], body].concat()
}

/// What came back on a connection: a frame, or the connection closed.
#[derive(Debug)]
enum Reply {
    Frame(serde_json::Value),
    Closed,
}

/// Writes `bytes` (then, if `close_write`, ends the client's side) and
/// reads what the program answers.
fn send(socket: &Path, bytes: &[u8], close_write: bool) -> Reply {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    // The program may close before reading everything: a failed write is
    // an answer too.
    let _ = s.write_all(bytes);
    if close_write {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    read_reply(&mut s)
}

fn read_reply(s: &mut UnixStream) -> Reply {
    let mut len = [0u8; 4];
    match s.read_exact(&mut len) {
        Ok(()) => {}
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
            ) =>
        {
            return Reply::Closed
        }
        Err(e) => panic!("no answer and no close: {e}"),
    }
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    Reply::Frame(serde_json::from_slice(&body).unwrap())
}

fn error_message(reply: &Reply) -> String {
    match reply {
        Reply::Frame(v) if v["type"] == "error" => v["message"].as_str().unwrap().to_string(),
        other => panic!("expected an error reply, got {other:?}"),
    }
}

/// The server answers, has not changed, and recorded no update attempt.
fn assert_unharmed(server: &KvServer, socket: &Path) {
    assert_eq!(server.ask("PING"), "PONG");
    assert_eq!(server.ask("VERSION"), "VERSION 1.0");
    let s = status(socket);
    assert_eq!(s["version"], "1.0", "{s:#}");
    assert_eq!(s["history"], serde_json::json!([]), "{s:#}");
}

/// The case-study server, giving each client `ms` for its request.
fn impatient_server(sandbox: &Sandbox, ms: u64) -> KvServer {
    KvServer::launch(
        sandbox,
        "v1",
        "1.0",
        &[],
        &[],
        vec![("PYRELOAD_REQUEST_TIMEOUT_MS", ms.to_string())],
    )
}

fn status_request() -> Vec<u8> {
    frame(br#"{"type":"status","protocol":1}"#)
}

#[test]
fn malformed_oversized_and_out_of_order_messages_get_an_error_and_change_nothing() {
    let sandbox = Sandbox::new();
    let server = KvServer::start(&sandbox, "v1", "1.0");
    let socket = server.hosted.socket();
    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let nested_field = format!(r#"{{"type":"status","protocol":1,"x":{nested}}}"#);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not JSON", frame(b"hello"), "bad request: malformed message"),
        (
            "a length past the limit",
            u32::MAX.to_be_bytes().to_vec(),
            "larger than the limit",
        ),
        (
            "a 9 MiB frame",
            [&(9u32 << 20).to_be_bytes()[..], &[b' '; 1024][..]].concat(),
            "larger than the limit of 8388608 bytes",
        ),
        (
            "an unknown request",
            frame(br#"{"type":"nope","protocol":1}"#),
            "unknown variant",
        ),
        (
            "a request missing fields",
            frame(br#"{"type":"apply","protocol":1}"#),
            "missing field",
        ),
        (
            "an unknown field",
            frame(br#"{"type":"status","protocol":1,"x":1}"#),
            "unknown field",
        ),
        (
            "a reply sent as a request",
            frame(br#"{"type":"report","update":"x","outcome":"committed"}"#),
            "unknown variant `report`",
        ),
        (
            "invalid UTF-8",
            frame(b"{\"type\":\"st\xffatus\",\"protocol\":1}"),
            "bad request",
        ),
        ("JSON nested 100,000 deep", frame(nested.as_bytes()), "bad request"),
        (
            "a field nested 100,000 deep",
            frame(nested_field.as_bytes()),
            "recursion limit exceeded",
        ),
        ("an empty frame", frame(b""), "bad request"),
        (
            "another protocol version",
            frame(br#"{"type":"status","protocol":99}"#),
            "protocol version 99 is not supported",
        ),
        (
            "a spec that is not TOML",
            frame(br#"{"type":"apply","protocol":1,"spec_path":"x.toml","spec_text":"[update","dry_run":false}"#),
            "invalid update spec",
        ),
    ];
    for (what, bytes, expected) in &cases {
        let message = error_message(&send(&socket, bytes, false));
        assert!(message.contains(expected), "{what}: {message}");
    }

    // A request followed by more: the first is answered, the rest ignored
    // and the connection closed; nothing from the rest is acted upon.
    let mut s = UnixStream::connect(&socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let apply = frame(
        br#"{"type":"apply","protocol":1,"spec_path":"/nowhere.toml","spec_text":"[update]\nname='x'\nto='2'\n[[reload]]\nmodule='kvserver.store'\n","dry_run":false}"#,
    );
    s.write_all(&[status_request(), apply, b"trailing junk".to_vec()].concat())
        .unwrap();
    match read_reply(&mut s) {
        Reply::Frame(v) => assert_eq!(v["type"], "status", "{v}"),
        Reply::Closed => panic!("the first request was not answered"),
    }
    assert!(
        matches!(read_reply(&mut s), Reply::Closed),
        "a second answer on one connection"
    );

    // Truncated messages, and clients that leave halfway: closed, no reply.
    for (what, bytes) in [
        ("half a length", vec![0u8, 0]),
        (
            "a length and part of the body",
            [&100u32.to_be_bytes()[..], b"{\"type\""].concat(),
        ),
        ("nothing at all", Vec::new()),
    ] {
        assert!(matches!(send(&socket, &bytes, true), Reply::Closed), "{what}");
    }
    assert_unharmed(&server, &socket);
}

/// Whether the program has answered (or closed) `s` yet, without waiting.
fn answered_yet(s: &mut UnixStream) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let mut fds = [PollFd::new(s.as_fd(), PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::ZERO).unwrap() > 0
}

#[test]
fn stalled_clients_never_keep_others_waiting_and_too_many_are_told_so() {
    let sandbox = Sandbox::new();
    // A deadline far beyond the test: the stalled clients stay stalled.
    let server = impatient_server(&sandbox, 60_000);
    let socket = server.hosted.socket();
    let mut stalled: Vec<UnixStream> = (0..3).map(|_| UnixStream::connect(&socket).unwrap()).collect();
    let mut half = UnixStream::connect(&socket).unwrap();
    half.write_all(&status_request()[..6]).unwrap();
    stalled.push(half);

    // Meanwhile the program serves other clients, updates included, while
    // the stalled ones still wait: a program serving one connection at a
    // time could not answer these before it had given up on those.
    let out = sandbox.run(&["status", "--socket", socket.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let spec = repo().join("specs/v1-to-v2.toml");
    let (code, report) = sandbox.apply_json(&server.hosted, &spec);
    assert_eq!(code, 0, "{report:#}");
    for s in &mut stalled {
        assert!(
            !answered_yet(s),
            "a stalled client was dealt with before the others were served"
        );
    }
    drop(stalled);

    // More stalled connections than the program serves at once: the extra
    // one is told so, and once they go the program answers again. Idle
    // connections are opened one at a time, each followed by a status
    // request. The program accepts in order, so the request is seen after
    // that connection: answered while there is room, refused once the idle
    // ones fill every place (a handler still finishing its last answer may
    // hold a place too, so the count is not assumed).
    let mut flood: Vec<UnixStream> = Vec::new();
    let refusal = loop {
        assert!(flood.len() <= 64, "64 idle connections and still no refusal");
        flood.push(UnixStream::connect(&socket).unwrap());
        match send(&socket, &status_request(), false) {
            Reply::Frame(v) if v["type"] == "status" => continue,
            reply => break error_message(&reply),
        }
    };
    assert!(refusal.contains("too many control connections"), "{refusal}");
    // Connections that just ended may not have given their place back yet.
    assert!(
        flood.len() >= 8,
        "refused with only {} other connections open",
        flood.len()
    );
    drop(flood);
    common::wait_until(
        Duration::from_secs(60),
        || matches!(send(&socket, &status_request(), false), Reply::Frame(ref v) if v["type"] == "status"),
        || "the program never answered again after the flood".into(),
    );
    assert_eq!(server.ask("VERSION"), "VERSION 2.0");

    // A client that shuts down its writing side after the request still
    // waits for the answer: its update is not taken for abandoned.
    let down = repo().join("bench/specs/v2-to-v1.toml");
    let request = serde_json::json!({
        "type": "apply", "protocol": 1, "dry_run": false,
        "spec_path": down.to_str().unwrap(),
        "spec_text": std::fs::read_to_string(&down).unwrap(),
    });
    match send(&socket, &frame(&serde_json::to_vec(&request).unwrap()), true) {
        Reply::Frame(v) => assert_eq!(v["outcome"], "committed", "{v:#}"),
        Reply::Closed => panic!("no answer to a half-closed client"),
    }
    assert_eq!(server.ask("VERSION"), "VERSION 1.0");
}

#[test]
fn stalled_and_trickling_clients_are_cut_off_at_the_request_deadline() {
    let sandbox = Sandbox::new();
    let server = impatient_server(&sandbox, 1500);
    let socket = server.hosted.socket();
    let mut stalled: Vec<UnixStream> = (0..3).map(|_| UnixStream::connect(&socket).unwrap()).collect();
    let mut half = UnixStream::connect(&socket).unwrap();
    half.write_all(&status_request()[..6]).unwrap();
    stalled.push(half);
    // A byte every 50 ms: never idle for long. The whole frame (4 + 256
    // bytes) takes 13 s or more to send; a deadline per read would let it
    // all through, the deadline for the whole request cuts it off first.
    const FRAME: usize = 4 + 256;
    let trickle = std::thread::spawn({
        let socket = socket.clone();
        move || {
            let mut s = UnixStream::connect(&socket).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            let mut bytes = vec![b'{'; FRAME];
            bytes[..4].copy_from_slice(&256u32.to_be_bytes());
            let mut sent = 0;
            for byte in bytes {
                if answered_yet(&mut s) || s.write_all(&[byte]).is_err() {
                    break;
                }
                sent += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            (read_reply(&mut s), sent)
        }
    });

    for s in &mut stalled {
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let message = error_message(&read_reply(s));
        assert!(
            message.contains("no complete request arrived within 1500 ms"),
            "{message}"
        );
    }
    let (reply, sent) = trickle.join().unwrap();
    assert!(
        error_message(&reply).contains("no complete request arrived within 1500 ms"),
        "{reply:?}"
    );
    assert!(
        sent < FRAME,
        "a trickling client sent its whole request ({sent} bytes) before it was cut off"
    );
    assert_unharmed(&server, &socket);
}

#[test]
fn random_frames_never_hurt_the_program() {
    let sandbox = Sandbox::new();
    let server = impatient_server(&sandbox, 300);
    let socket = server.hosted.socket();
    let mut rng = Rng::from_env_or_time("random_frames_never_hurt_the_program");
    let spec_text = std::fs::read_to_string(repo().join("specs/v1-to-v2.toml")).unwrap();
    let valid: Vec<Vec<u8>> = vec![
        br#"{"type":"status","protocol":1}"#.to_vec(),
        br#"{"type":"rollback","protocol":1,"dry_run":true,"timeout_ms":100}"#.to_vec(),
        serde_json::to_vec(&serde_json::json!({
            "type": "apply", "protocol": 1, "spec_path": "/x/specs/v1-to-v2.toml",
            "spec_text": spec_text, "dry_run": true
        }))
        .unwrap(),
    ];
    let (mut answered, mut closed) = (0, 0);
    for _ in 0..300 {
        let mut body = valid[rng.below(valid.len() as u64) as usize].clone();
        match rng.below(4) {
            // Flip, insert or delete bytes.
            0 | 1 => {
                for _ in 0..=rng.below(8) {
                    let i = rng.below(body.len() as u64) as usize;
                    match rng.below(3) {
                        0 => body[i] = rng.below(256) as u8,
                        1 => body.insert(i, rng.below(256) as u8),
                        _ => {
                            body.remove(i);
                        }
                    }
                }
            }
            // Cut short.
            2 => body.truncate(rng.below(body.len() as u64) as usize),
            // Noise.
            _ => body = (0..rng.below(64)).map(|_| rng.below(256) as u8).collect(),
        }
        let mut bytes = frame(&body);
        if rng.below(8) == 0 {
            // A length that does not match the body.
            let lie = rng.below(1 << 16) as u32;
            bytes[..4].copy_from_slice(&lie.to_be_bytes());
        }
        match send(&socket, &bytes, rng.below(2) == 0) {
            Reply::Frame(v) => {
                assert!(
                    ["error", "status", "report"].contains(&v["type"].as_str().unwrap()),
                    "{v}"
                );
                if v["type"] == "report" {
                    assert_ne!(v["outcome"], "committed", "a random frame changed the program: {v:#}");
                }
                answered += 1;
            }
            Reply::Closed => closed += 1,
        }
    }
    eprintln!("300 random frames: {answered} answered, {closed} closed");
    assert_unharmed(&server, &socket);
}

/// Runs `pyreload ARGS` as the unprivileged user `nobody`, optionally with
/// the capabilities to get past file permissions (so that only the
/// program's own peer check stands in the way).
fn as_nobody(sandbox: &Sandbox, past_file_modes: bool, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"]);
    if past_file_modes {
        cmd.args([
            "--inh-caps=+dac_override,+dac_read_search",
            "--ambient-caps=+dac_override,+dac_read_search",
        ]);
    }
    cmd.arg(BIN)
        .args(args)
        .env("PYRELOAD_RUNTIME_DIR", sandbox.runtime_dir())
        .env("NO_COLOR", "1")
        .current_dir("/")
        .output()
        .unwrap()
}

#[test]
#[cfg_attr(
    not(pyreload_tests_as_root),
    ignore = "needs root and setpriv to act as another user; build.rs found them missing"
)]
fn another_user_is_refused_and_the_refusal_is_logged() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "built as root (see build.rs) but run as another user: rebuild, or run as root"
    );
    let sandbox = Sandbox::new();
    // The other user must be able to load the binary's libpython: one under
    // root's home (pyenv's, say) is out of its reach.
    let probe = as_nobody(&sandbox, false, &["--version"]);
    if stderr(&probe).contains("error while loading shared libraries") {
        eprintln!(
            "SKIPPED: `nobody` cannot load this build's libpython: {}",
            stderr(&probe)
        );
        return;
    }
    let server = KvServer::start(&sandbox, "v1", "1.0");
    let socket = server.hosted.socket();
    let socket_arg = socket.to_str().unwrap();
    let spec = repo().join("specs/v1-to-v2.toml");
    let spec_copy = std::env::temp_dir().join(format!("pyreload-nobody-{}.toml", std::process::id()));
    std::fs::copy(&spec, &spec_copy).unwrap();
    let spec_arg = spec_copy.to_str().unwrap();

    // Held back by the file modes: the directory is 0700, the socket 0600.
    let out = as_nobody(&sandbox, false, &["status", "--socket", socket_arg]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("Permission denied"), "{}", stderr(&out));

    // Past the file modes, the program checks the peer's uid itself.
    for args in [
        vec!["status", "--socket", socket_arg],
        vec!["apply", "--socket", socket_arg, spec_arg],
        vec!["rollback", "--socket", socket_arg],
    ] {
        let out = as_nobody(&sandbox, true, &args);
        assert_ne!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("refused: peer uid 65534") && stderr(&out).contains("is not the program's uid 0"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    std::fs::remove_file(&spec_copy).unwrap();
    let log = server.hosted.stderr();
    assert!(
        log.contains("pyreload: refused a control connection: peer uid 65534"),
        "the refusal was not logged:\n{log}"
    );
    assert_unharmed(&server, &socket);
}
