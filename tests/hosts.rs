//! Many hosts: the playbook that ships in deploy/ drives `pyreload
//! prepare`, `commit`, `abort` and `rollback` on three hosts, with real
//! `ansible-playbook` (ansible-core from PyPI, see common/ansible.rs).
//!
//! Each host is an inventory entry with `ansible_connection=local` and a
//! directory of its own: its code (`app/releases/1.0`, a copy of
//! case-study/v1, where its server runs), its runtime directory (so its
//! control socket is its own, as on a real host) and its log. Failures on
//! one host come from that host's own spec. Nothing waits on time: the
//! killed-orchestrator test holds the playbook after prepare on a file,
//! and waits for states.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{ansible, eventually, repo, status, wait_until, Hosted, KvLoad, KvServer, Launch, Sandbox};

/// At most two playbooks at a time: each runs three servers, their
/// clients and Ansible's workers, on a 2-core machine.
fn serial() -> Permit {
    take(1)
}

/// The playbook whose commit skew is measured runs alone: with another
/// playbook beside it on two cores, Ansible can take longer than the
/// commit delay to start every host's commit, and the figure would be
/// Ansible's.
fn alone() -> Permit {
    take(2)
}

fn take(slots: usize) -> Permit {
    let mut running = SLOTS.0.lock().unwrap_or_else(|p| p.into_inner());
    while *running + slots > 2 {
        running = SLOTS.1.wait(running).unwrap_or_else(|p| p.into_inner());
    }
    *running += slots;
    Permit(slots)
}

static SLOTS: (std::sync::Mutex<usize>, std::sync::Condvar) = (std::sync::Mutex::new(0), std::sync::Condvar::new());

struct Permit(usize);

impl Drop for Permit {
    fn drop(&mut self) {
        *SLOTS.0.lock().unwrap_or_else(|p| p.into_inner()) -= self.0;
        SLOTS.1.notify_all();
    }
}

/// Clients on one host, each on its own connection, writing keys of its
/// own and reading each back, with a pause between rounds: steady traffic
/// that leaves the machine's two cores to the servers and Ansible.
fn load(port: u16, clients: usize) -> KvLoad {
    KvLoad::paced(port, clients, Duration::from_secs(3600), Duration::from_millis(5))
}

/// Waits until `load`'s clients have made `more` rounds from now.
fn more_rounds(load: &KvLoad, more: usize) {
    load.wait_for_rounds(load.rounds(), more);
}

/// Stops the clients: how many requests they made, and every failure.
fn finish(load: KvLoad) -> (usize, Vec<String>) {
    let tallies = load.finish();
    (
        tallies.iter().map(|t| t.requests).sum(),
        tallies.into_iter().flat_map(|t| t.failures).collect(),
    )
}

/// One host: its directory, and the case-study server 1.0 running there.
struct Host {
    name: String,
    sandbox: Sandbox,
    server: KvServer,
}

impl Host {
    fn start(name: &str) -> Host {
        let sandbox = Sandbox::new();
        let code = sandbox.path().join("app/releases/1.0");
        copy_tree(&repo().join("case-study/v1"), &code);
        let port_file = sandbox.path().join("port");
        let hosted = Hosted::start(
            &sandbox,
            Launch {
                args: [
                    "--name",
                    "kvserver",
                    "--version",
                    "1.0",
                    "-m",
                    "kvserver",
                    "--port",
                    "0",
                    "--port-file",
                    port_file.to_str().unwrap(),
                ]
                .iter()
                .map(|a| a.to_string())
                .collect(),
                cwd: code,
                interactive: false,
                env: vec![],
            },
        );
        wait_until(
            Duration::from_secs(60),
            || port_file.exists() && hosted.socket().exists(),
            || format!("kvserver never wrote its port\n{}", hosted.logs()),
        );
        let port = std::fs::read_to_string(&port_file).unwrap().trim().parse().unwrap();
        Host {
            name: name.to_string(),
            sandbox,
            server: KvServer { hosted, port },
        }
    }

    fn status(&self) -> serde_json::Value {
        status(&self.server.hosted.socket())
    }

    fn version(&self) -> String {
        self.status()["version"].as_str().unwrap_or_default().to_string()
    }

    /// The outcomes in its history, oldest first (`applied`, `cancelled`...).
    fn outcomes(&self) -> Vec<(String, String)> {
        self.status()["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                (
                    h["name"].as_str().unwrap().to_string(),
                    h["outcome"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// `pyreload ARGS` as run on this host (its runtime directory).
    fn pyreload(&self, args: &[&str]) -> Output {
        self.sandbox.run(args)
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let name = entry.file_name();
        if name == "__pycache__" {
            continue;
        }
        let target = to.join(&name);
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Three hosts and the controller's directory.
struct Fleet {
    controller: Sandbox,
    hosts: Vec<Host>,
}

/// The spec the playbook ships, with `tweak` applied for one host.
fn spec(controller: &Sandbox, host: &str, tweak: impl Fn(String) -> String) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("deploy/kvserver-v1-to-v2.toml")).unwrap();
    // Each host's spec under the same file name, in a directory of its own.
    controller.write(&format!("specs/{host}/kvserver-v1-to-v2.toml"), &tweak(text))
}

impl Fleet {
    fn start() -> Fleet {
        // Made (or found) before the servers start, so their time is not
        // spent waiting for it.
        let _ = ansible::ansible_bin();
        Fleet {
            controller: Sandbox::new(),
            hosts: ["host1", "host2", "host3"].iter().map(|n| Host::start(n)).collect(),
        }
    }

    fn summary_path(&self) -> PathBuf {
        self.controller.path().join("summary.json")
    }

    /// The inventory: each host's directory, runtime directory and spec.
    fn inventory(&self, specs: &[PathBuf], extra: serde_json::Value) -> PathBuf {
        let hosts: serde_json::Map<String, serde_json::Value> = self
            .hosts
            .iter()
            .zip(specs)
            .map(|(h, spec)| {
                (
                    h.name.clone(),
                    serde_json::json!({
                        "ansible_connection": "local",
                        "pyreload_app_root": h.sandbox.path().join("app"),
                        "pyreload_env": {"PYRELOAD_RUNTIME_DIR": h.sandbox.runtime_dir()},
                        "pyreload_spec": spec,
                    }),
                )
            })
            .collect();
        let mut vars = serde_json::json!({
            "ansible_python_interpreter": ansible::ansible_bin().join("python"),
            "pyreload": common::BIN,
            "pyreload_code": repo().join("case-study/v2"),
            "pyreload_release": "2.0",
            "pyreload_summary": self.summary_path(),
        });
        for (k, v) in extra.as_object().unwrap() {
            vars[k] = v.clone();
        }
        let inventory = serde_json::json!({"all": {"hosts": hosts, "vars": vars}});
        self.controller
            .write("inventory.json", &serde_json::to_string_pretty(&inventory).unwrap())
    }

    fn playbook(&self, inventory: &Path) -> Command {
        let mut cmd = Command::new(ansible::ansible_bin().join("ansible-playbook"));
        let home = self.controller.path().join("ansible-home");
        cmd.arg("-i")
            .arg(inventory)
            .arg(repo().join("deploy/pyreload-update.yml"))
            .current_dir(self.controller.path())
            .env("LC_ALL", "C.UTF-8")
            .env("ANSIBLE_HOME", &home)
            .env("ANSIBLE_LOCAL_TEMP", home.join("tmp"))
            .env("ANSIBLE_REMOTE_TEMP", home.join("remote-tmp"))
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_PIPELINING", "1")
            .env_remove("PYRELOAD_RUNTIME_DIR")
            .env_remove("VIRTUAL_ENV");
        cmd
    }

    /// Runs the playbook to its end.
    fn play(&self, specs: &[PathBuf], extra: serde_json::Value) -> (Output, serde_json::Value) {
        let inventory = self.inventory(specs, extra);
        let out = self.playbook(&inventory).output().unwrap();
        let summary = std::fs::read_to_string(self.summary_path())
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(serde_json::Value::Null);
        (out, summary)
    }

    fn good_specs(&self) -> Vec<PathBuf> {
        self.hosts
            .iter()
            .map(|h| spec(&self.controller, &h.name, |t| t))
            .collect()
    }

    fn dump(&self, out: &Output) -> String {
        let mut text = format!(
            "--- ansible-playbook [exit {:?}]\n{}\n--- stderr\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for h in &self.hosts {
            text.push_str(&format!("\n==== {} ====\n{}", h.name, h.server.hosted.logs()));
        }
        text
    }
}

#[test]
fn the_playbook_updates_three_hosts_under_load() {
    let _alone = alone();
    let fleet = Fleet::start();
    let loads: Vec<KvLoad> = fleet.hosts.iter().map(|h| load(h.server.port, 2)).collect();
    for load in &loads {
        more_rounds(load, 20);
    }
    let (out, summary) = fleet.play(&fleet.good_specs(), serde_json::json!({}));
    assert!(out.status.success(), "{}", fleet.dump(&out));
    for load in &loads {
        more_rounds(load, 20);
    }
    let requests: usize = loads
        .into_iter()
        .map(|load| {
            let (requests, failures) = finish(load);
            assert!(failures.is_empty(), "failed requests: {failures:?}");
            requests
        })
        .sum();
    for h in &fleet.hosts {
        assert_eq!(h.version(), "2.0", "{}: {}", h.name, fleet.dump(&out));
        assert_eq!(h.server.ask("VERSION"), "VERSION 2.0");
        assert_eq!(h.server.ask("INCR visits"), "VALUE 1", "{}: the new command", h.name);
        assert_eq!(h.outcomes(), [("v1-to-v2".to_string(), "committed".to_string())]);
        assert_eq!(summary["hosts"][&h.name], "committed", "{summary:#}");
        // `current` points at the new release, for the next restart.
        let current = std::fs::read_link(h.sandbox.path().join("app/current")).unwrap();
        assert!(current.ends_with("releases/2.0"), "{}", current.display());
    }
    let skew = summary["commit_skew_ms"]
        .as_f64()
        .expect("the summary reports the commit skew");
    assert!(skew >= 0.0);
    eprintln!(
        "three hosts updated under load: {requests} requests, 0 failed; {skew:.1} ms between the first and the last host's commit"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("\"commit_skew_ms\""), "{stdout}");
}

#[test]
fn one_host_refusing_in_prepare_leaves_every_host_unchanged() {
    let _serial = serial();
    let fleet = Fleet::start();
    let mut specs = fleet.good_specs();
    // host2's spec names a module its program does not have.
    specs[1] = spec(&fleet.controller, "host2", |t| {
        t.replace("module = \"kvserver.store\"", "module = \"kvserver.storage\"")
    });
    let (out, summary) = fleet.play(&specs, serde_json::json!({}));
    assert!(!out.status.success(), "{}", fleet.dump(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("refused in prepare on host2; aborted everywhere, nothing changed"),
        "{}",
        fleet.dump(&out)
    );
    assert_eq!(
        summary["refused_in_prepare"],
        serde_json::json!(["host2"]),
        "{summary:#}"
    );
    assert!(
        summary["hosts"]["host2"].as_str().unwrap().contains("kvserver.storage"),
        "the reason names the module: {summary:#}"
    );
    for h in &fleet.hosts {
        assert_eq!(h.version(), "1.0", "{}", h.name);
        assert_eq!(h.server.ask("VERSION"), "VERSION 1.0");
        assert!(h.status().get("prepared").is_none(), "{}: still prepared", h.name);
        let outcome = if h.name == "host2" { "refused" } else { "cancelled" };
        assert_eq!(
            h.outcomes(),
            [("v1-to-v2".to_string(), outcome.to_string())],
            "{}",
            h.name
        );
        let current = std::fs::read_link(h.sandbox.path().join("app/current"));
        assert!(current.is_err(), "{}: `current` was switched", h.name);
    }
}

#[test]
fn one_host_failing_in_commit_is_rolled_back_everywhere() {
    let _serial = serial();
    let fleet = Fleet::start();
    for h in &fleet.hosts {
        for i in 0..50 {
            assert_eq!(h.server.ask(&format!("SET keep-{i} value-{i}")), "OK");
        }
    }
    let loads: Vec<KvLoad> = fleet.hosts.iter().map(|h| load(h.server.port, 1)).collect();
    let mut specs = fleet.good_specs();
    // host3's health check fails after its commit, there only.
    specs[2] = spec(&fleet.controller, "host3", |t| {
        t.replace(
            "after = \"kvserver.health.ok()\"",
            "after = \"kvserver.health.ok() and False\"",
        )
    });
    let (out, summary) = fleet.play(&specs, serde_json::json!({}));
    assert!(!out.status.success(), "{}", fleet.dump(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("the commit failed on host3; the hosts that had committed were rolled back"),
        "{}",
        fleet.dump(&out)
    );
    assert_eq!(summary["failed_in_commit"], serde_json::json!(["host3"]), "{summary:#}");
    for load in loads {
        let (_, failures) = finish(load);
        assert!(failures.is_empty(), "failed requests: {failures:?}");
    }
    for h in &fleet.hosts {
        assert_eq!(h.version(), "1.0", "{}: {}", h.name, fleet.dump(&out));
        assert_eq!(h.server.ask("VERSION"), "VERSION 1.0");
        for i in 0..50 {
            assert_eq!(
                h.server.ask(&format!("GET keep-{i}")),
                format!("VALUE value-{i}"),
                "{}",
                h.name
            );
        }
        let outcomes = h.outcomes();
        if h.name == "host3" {
            assert_eq!(outcomes, [("v1-to-v2".to_string(), "rolled_back".to_string())]);
        } else {
            assert_eq!(
                outcomes,
                [
                    ("v1-to-v2".to_string(), "committed".to_string()),
                    ("rollback of v1-to-v2".to_string(), "committed".to_string())
                ],
                "{}",
                h.name
            );
            assert_eq!(summary["hosts"][&h.name], "rolled back (a commit failed elsewhere)");
        }
    }
}

#[test]
fn a_killed_orchestrator_leaves_every_host_to_abort_by_its_lease() {
    let _serial = serial();
    let fleet = Fleet::start();
    let pause = fleet.controller.write("hold-after-prepare", "");
    let inventory = fleet.inventory(
        &fleet.good_specs(),
        serde_json::json!({"pyreload_pause_file": pause, "pyreload_lease": "5s"}),
    );
    let mut playbook = {
        use std::os::unix::process::CommandExt;
        let mut cmd = fleet.playbook(&inventory);
        // Its own process group, so that it and its workers are killed
        // together, and nothing else.
        cmd.process_group(0)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        cmd.spawn().unwrap()
    };
    // Every host prepared (each program logs it, with the id, before it
    // answers): the playbook now waits on the pause file, and cannot commit.
    let ids: Vec<String> = fleet
        .hosts
        .iter()
        .map(|h| {
            eventually(Duration::from_secs(120), || {
                let log = h.server.hosted.stderr();
                log.lines()
                    .find_map(|l| l.strip_prefix("pyreload: prepared update `v1-to-v2` ("))
                    .and_then(|rest| rest.split(')').next())
                    .map(str::to_string)
                    .ok_or_else(|| format!("{} has not prepared: {log}", h.name))
            })
        })
        .collect();
    let group = nix::unistd::Pid::from_raw(-(playbook.id() as i32));
    nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL).unwrap();
    let _ = playbook.wait();
    let _ = std::fs::remove_file(&pause);
    for (h, id) in fleet.hosts.iter().zip(&ids) {
        eventually(Duration::from_secs(60), || {
            let status = h.status();
            if status.get("prepared").is_some() || status["in_progress"].is_object() {
                return Err(format!("{} still holds the update: {status:#}", h.name));
            }
            Ok(())
        });
        assert_eq!(h.version(), "1.0");
        assert_eq!(h.server.ask("VERSION"), "VERSION 1.0");
        assert_eq!(h.outcomes(), [("v1-to-v2".to_string(), "cancelled".to_string())]);
        assert!(
            h.server.hosted.stderr().contains(&format!(
                "({id}): expired: nobody committed it within its lease of 5 s, so it was aborted by itself"
            )),
            "{}",
            h.server.hosted.logs()
        );
        let commit = h.pyreload(&["commit", id]);
        assert_eq!(commit.status.code(), Some(1));
        assert!(
            common::unwrapped(&common::stderr(&commit)).contains("expired"),
            "{}",
            common::stderr(&commit)
        );
    }
}
