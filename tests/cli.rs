//! The command line as a user meets it: help that teaches, discovery of
//! the program to talk to, and errors that say what to do.

mod common;

use std::time::Duration;

use common::{repo, stderr, stdout, Hosted, Launch, Sandbox};

#[test]
fn every_subcommand_has_help_with_an_example() {
    let sandbox = Sandbox::new();
    let out = sandbox.run(&["--help"]);
    assert!(out.status.success());
    for word in [
        "run",
        "apply",
        "check",
        "diff",
        "rollback",
        "status",
        "schema",
        "new",
        "watch",
        "prepare",
        "commit",
        "abort",
        "Exit status: 0 success, 1 update refused or rolled back, 2",
    ] {
        assert!(
            stdout(&out).contains(word),
            "top-level help lacks {word:?}:\n{}",
            stdout(&out)
        );
    }
    for (sub, example) in [
        (
            "run",
            "pyreload run --name kvserver --version 1.0 -m kvserver --port 7000",
        ),
        ("apply", "pyreload apply specs/v1-to-v2.toml"),
        ("check", "pyreload check specs/v1-to-v2.toml"),
        ("status", "pyreload status --pid 4242 --json"),
        ("rollback", "pyreload rollback --pid 4242 --check"),
        ("diff", "pyreload diff specs/v1-to-v2.toml"),
        ("schema", "#:schema ./spec.schema.json"),
        ("new", "pyreload new --from case-study/v1 --to case-study/v2"),
        ("watch", "pyreload watch deploy/"),
        ("prepare", "pyreload prepare --lease 5m --json specs/v1-to-v2.toml"),
        ("commit", "pyreload commit 4242-63f1a2b3c4d5e-1"),
        ("abort", "pyreload abort --json 4242-63f1a2b3c4d5e-1"),
    ] {
        let out = sandbox.run(&[sub, "--help"]);
        assert!(out.status.success(), "{sub} --help failed");
        assert!(
            stdout(&out).contains(example),
            "`{sub} --help` lacks the example {example:?}:\n{}",
            stdout(&out)
        );
    }
}

#[test]
fn usage_errors_exit_2() {
    let sandbox = Sandbox::new();
    assert_eq!(sandbox.run(&["apply"]).status.code(), Some(2));
    assert_eq!(sandbox.run(&["frobnicate"]).status.code(), Some(2));
    let out = sandbox.run(&["apply", "no/such/spec.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("could not read the spec no/such/spec.toml"),
        "{}",
        stderr(&out)
    );
}

/// A program that idles until its stdin closes.
fn idle(sandbox: &Sandbox, name: &str, version: &str) -> Hosted {
    sandbox.write("idle.py", "import sys\nprint('ready', flush=True)\nsys.stdin.read()\n");
    let mut h = Hosted::start(
        sandbox,
        Launch {
            args: ["--name", name, "--version", version, "idle.py"]
                .map(String::from)
                .to_vec(),
            cwd: sandbox.path().to_path_buf(),
            interactive: true,
            env: vec![],
        },
    );
    h.expect_line("ready");
    h.socket();
    h
}

#[test]
fn status_finds_the_only_program_or_lists_the_candidates() {
    let sandbox = Sandbox::new();
    let out = sandbox.run(&["status"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no program is running under `pyreload run`"),
        "{}",
        stderr(&out)
    );

    let alpha = idle(&sandbox, "alpha", "3.1");
    let out = sandbox.run(&["status"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with(&format!("alpha (pid {})\n  version: 3.1\n", alpha.pid())),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains("history: no updates yet"));

    let beta = idle(&sandbox, "beta", "7");
    // `status` lists them both ...
    let out = sandbox.run(&["status"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("2 programs running"), "{text}");
    assert!(
        text.contains(&format!("alpha (pid {})\n  version: 3.1\n", alpha.pid()))
            && text.contains(&format!("beta (pid {})\n  version: 7\n", beta.pid())),
        "{text}"
    );
    // ... but an update must go to one program, and says which could be meant.
    let spec = sandbox.write(
        "any.toml",
        "[update]\nname = \"x\"\nto = \"2\"\n\n[[reload]]\nmodule = \"json\"\n",
    );
    let out = sandbox.run(&["check", spec.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("2 programs match; choose one with --pid or --socket"),
        "{err}"
    );
    assert!(
        err.contains(&format!("pid {} `alpha` version 3.1", alpha.pid()))
            && err.contains(&format!("pid {} `beta` version 7", beta.pid())),
        "{err}"
    );

    // Each selector picks the right one.
    let by_name = sandbox.run(&["status", "--name", "beta", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&by_name.stdout).unwrap();
    assert_eq!(json["pid"], beta.pid());
    let by_pid = sandbox.run(&["status", "--pid", &alpha.pid().to_string(), "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&by_pid.stdout).unwrap();
    assert_eq!(json["name"], "alpha");
    let socket = beta.socket();
    let by_socket = sandbox.run(&["status", "--socket", socket.to_str().unwrap(), "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&by_socket.stdout).unwrap();
    assert_eq!(json["name"], "beta");
    let out = sandbox.run(&["status", "--name", "gamma"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no running program is named `gamma`"),
        "{}",
        stderr(&out)
    );
    let out = sandbox.run(&["status", "--pid", "1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no program with pid 1 is running under `pyreload run`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn apply_without_a_flag_picks_the_program_the_spec_names() {
    let sandbox = Sandbox::new();
    let _other = idle(&sandbox, "other", "1.0");
    let server = common::KvServer::start(&sandbox, "v1", "1.0");
    // Two programs run, but the spec says `program = "kvserver"`.
    let out = sandbox.run(&["apply", repo().join("specs/v1-to-v2.toml").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with(&format!(
            "Applied `v1-to-v2` on `kvserver` (pid {}): 1.0 -> 2.0",
            server.hosted.pid()
        )),
        "{}",
        stdout(&out)
    );
    assert_eq!(server.ask("VERSION"), "VERSION 2.0");
}

#[test]
fn a_socket_left_by_a_dead_program_is_cleaned_up() {
    let sandbox = Sandbox::new();
    let dir = sandbox.runtime_dir();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    // pid_max is at most 2^22, so no process has this pid.
    let stale = dir.join("4194999.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let out = sandbox.run(&["status"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no program is running"), "{}", stderr(&out));
    assert!(!stale.exists(), "the stale socket was not removed");

    // A program killed outright leaves its socket; the next client finds
    // it dead and removes it.
    let mut killed = idle(&sandbox, "victim", "1");
    let socket = killed.socket();
    killed.signal(nix::sys::signal::Signal::SIGKILL);
    killed.wait(Duration::from_secs(60));
    assert!(socket.exists(), "SIGKILL runs no cleanup");
    let out = sandbox.run(&["status"]);
    assert!(stderr(&out).contains("no program is running"), "{}", stderr(&out));
    assert!(!socket.exists(), "the killed program's socket was not removed");

    // So does the next program to start, for sockets nobody asked about.
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let next = idle(&sandbox, "next", "1");
    next.socket();
    assert!(!stale.exists(), "a starting program left a stale socket in place");
}

#[test]
fn a_runtime_dir_others_can_enter_is_refused() {
    let sandbox = Sandbox::new();
    let dir = sandbox.runtime_dir();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    sandbox.write("x.py", "print('should not run')\n");
    let out = sandbox
        .pyreload()
        .args(["run", "x.py"])
        .current_dir(sandbox.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(stdout(&out), "");
    assert!(
        stderr(&out).contains("has mode 755; control sockets need a private directory"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("chmod 700"), "{}", stderr(&out));
}

#[test]
fn schema_prints_the_spec_schema_kept_in_docs_and_the_worked_specs_follow_it() {
    let sandbox = Sandbox::new();
    let out = sandbox.run(&["schema"]);
    assert!(out.status.success());
    let committed = std::fs::read_to_string(repo().join("docs/spec.schema.json")).unwrap();
    assert_eq!(
        stdout(&out),
        committed,
        "docs/spec.schema.json is stale: regenerate it with `pyreload schema > docs/spec.schema.json`"
    );
    let schema: serde_json::Value = serde_json::from_str(&committed).unwrap();
    assert_eq!(schema["additionalProperties"], false, "unknown keys are errors");
    // Every key the worked specs use is one the schema documents.
    let table_schema = |name: &str| -> serde_json::Value {
        let reference = schema["properties"][name].to_string();
        let def = ["Update", "Reload", "SafePoint", "Transform", "Check"]
            .into_iter()
            .find(|d| reference.contains(&format!("#/$defs/{d}")))
            .unwrap();
        schema["$defs"][def].clone()
    };
    for dir in ["specs", "bench/specs"] {
        for entry in std::fs::read_dir(repo().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(
                text.starts_with("#:schema "),
                "{} lacks the #:schema line for editors",
                path.display()
            );
            let spec: toml::Table = toml::from_str(&text).unwrap();
            for (table, value) in &spec {
                let def = table_schema(table);
                let tables: Vec<&toml::Table> = match value {
                    toml::Value::Table(t) => vec![t],
                    toml::Value::Array(items) => items.iter().filter_map(|i| i.as_table()).collect(),
                    _ => panic!("{table} is not a table"),
                };
                for t in tables {
                    for key in t.keys() {
                        assert!(
                            def["properties"].get(key).is_some(),
                            "{}: [{table}] {key} is not in the schema",
                            path.display()
                        );
                    }
                }
            }
        }
    }
}
