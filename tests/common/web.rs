//! Real web servers under `pyreload run`: gunicorn and uvicorn serving the
//! notes service of `case-study/web/`, the load driver
//! (`case-study/web/load.py`) that tells which code version answered, and
//! the process-tree view of them (worker pids, SIGKILL and replacement).
//!
//! Everything a test waits for is something the server says or the kernel
//! shows, never a sleep:
//!
//! | what                    | how it is known                                            |
//! |-------------------------|------------------------------------------------------------|
//! | the port                | gunicorn `Listening at: http://127.0.0.1:PORT`, uvicorn `Uvicorn running on http://127.0.0.1:PORT` (both bind port 0) |
//! | a worker can serve      | gunicorn: `notes: worker PID ready` (the example's `post_worker_init`); uvicorn: `[PID] Application startup complete.` (the example's `uvicorn-log.json`) |
//! | the worker pids         | `/proc/<master>/task/*/children`, filtered to workers      |
//! | a replacement after kill| a ready line for a pid that is a child and was not before  |
//! | a version took effect   | the driver's `mark` then `wait N P` (answers after the mark) |
//!
//! Each server runs in a process group of its own, killed whole (SIGKILL)
//! when the [`WebServer`] is dropped, so no worker outlives a failed test.
//! Servers bind 127.0.0.1 only.
//!
//! The app is deployed as a copy of `case-study/web/v1` in the sandbox, and
//! updated in place as a user would: [`WebServer::swap_logic`] copies a
//! version's `notes/logic.py` over the live one, then a spec without
//! `source` (`specs/web-*.toml`) reloads it.

use super::pypi::web_venv;
use super::{repo, stderr, wait_until, Sandbox, BUILD_PYTHON};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Duration;

/// How long a test waits for a server to say something (start, a worker
/// ready): far more than any of it takes on a loaded machine; only a wedged
/// server reaches it.
pub const SERVER_TIMEOUT: Duration = Duration::from_secs(120);

/// gunicorn's worker class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerClass {
    /// `sync`: one request at a time, `Connection: close` on every response.
    Sync,
    /// `-k gthread --threads N`: keep-alive, N threads per worker.
    Gthread { threads: usize },
}

/// A gunicorn command line for the notes service.
#[derive(Debug, Clone)]
pub struct Gunicorn {
    pub workers: usize,
    pub class: WorkerClass,
    pub preload: bool,
    /// More gunicorn flags (`--max-requests 50`, ...).
    pub extra: Vec<String>,
}

impl Gunicorn {
    pub fn new(workers: usize, class: WorkerClass, preload: bool) -> Gunicorn {
        Gunicorn {
            workers,
            class,
            preload,
            extra: Vec::new(),
        }
    }

    /// The arguments after `pyreload run --name web --version 1.0`.
    pub fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = ["-m", "gunicorn", "-c", "gunicorn.conf.py", "-b", "127.0.0.1:0", "-w"]
            .map(String::from)
            .to_vec();
        args.push(self.workers.to_string());
        if let WorkerClass::Gthread { threads } = self.class {
            args.extend(["-k".into(), "gthread".into(), "--threads".into(), threads.to_string()]);
        }
        if self.preload {
            args.push("--preload".into());
        }
        args.extend(self.extra.iter().cloned());
        args.push("notes.wsgi:app".into());
        args
    }
}

/// Which server a [`WebServer`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Gunicorn,
    Uvicorn,
}

/// A web server under `pyreload run`, in its own process group.
pub struct WebServer {
    child: Child,
    pub flavor: Flavor,
    pub port: u16,
    /// The number of workers it was started with.
    pub workers: usize,
    /// The deployed copy of the app (its cwd): what [`WebServer::swap_logic`] edits.
    pub app_dir: PathBuf,
    runtime_dir: PathBuf,
    stderr_path: PathBuf,
    stdout_path: PathBuf,
    command: String,
}

/// Copies `case-study/web/v1` into the sandbox (as `web-N`), as a deploy
/// would: the server runs from there and updates edit that copy, never the
/// repository.
pub fn deploy_web_app(sandbox: &Sandbox) -> PathBuf {
    let dir = sandbox.path().join(format!("web-{}", super::unique()));
    copy_tree(&repo().join("case-study/web/v1"), &dir);
    dir
}

/// Copies a directory tree (files and directories only), skipping
/// `__pycache__`.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == "__pycache__" {
            continue;
        }
        let (src, dst) = (entry.path(), to.join(&name));
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

impl WebServer {
    /// `pyreload run --name web --version 1.0 -m gunicorn ...` in a fresh
    /// deploy of the notes app, returned once every worker is ready.
    pub fn gunicorn(sandbox: &Sandbox, opts: &Gunicorn) -> WebServer {
        let app_dir = deploy_web_app(sandbox);
        let server = WebServer::launch(sandbox, Flavor::Gunicorn, "web", opts.workers, &opts.args(), app_dir);
        server.wait_for_workers(opts.workers);
        server
    }

    /// `pyreload run --name web-asgi --version 1.0 -m uvicorn --workers N
    /// notes.asgi:app` in a fresh deploy, returned once every worker is ready.
    pub fn uvicorn(sandbox: &Sandbox, workers: usize) -> WebServer {
        let app_dir = deploy_web_app(sandbox);
        let args: Vec<String> = [
            "-m",
            "uvicorn",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--log-config",
            "uvicorn-log.json",
            "--no-access-log",
            "--workers",
            &workers.to_string(),
            "notes.asgi:app",
        ]
        .map(String::from)
        .to_vec();
        let server = WebServer::launch(sandbox, Flavor::Uvicorn, "web-asgi", workers, &args, app_dir);
        server.wait_for_workers(workers);
        server
    }

    /// Starts `pyreload run --name NAME --version 1.0 ARGS` in `app_dir`
    /// with the web venv active, and waits for the port.
    pub fn launch(
        sandbox: &Sandbox,
        flavor: Flavor,
        name: &str,
        workers: usize,
        args: &[String],
        app_dir: PathBuf,
    ) -> WebServer {
        let venv = web_venv();
        let n = super::unique();
        let stderr_path = sandbox.path().join(format!("{name}-{n}.stderr"));
        let stdout_path = sandbox.path().join(format!("{name}-{n}.stdout"));
        let mut all: Vec<String> = ["run", "--name", name, "--version", "1.0"].map(String::from).to_vec();
        all.extend(args.iter().cloned());
        let mut cmd = sandbox.pyreload();
        cmd.args(&all)
            .current_dir(&app_dir)
            .env("VIRTUAL_ENV", &venv)
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    venv.join("bin").display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            // Log lines as they are written: the harness reads them.
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout_path).unwrap())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            // A group of its own, so Drop can kill the master and every
            // worker at once, even those the master can no longer reap.
            .process_group(0);
        let child = cmd.spawn().unwrap();
        let mut server = WebServer {
            child,
            flavor,
            port: 0,
            workers,
            app_dir,
            runtime_dir: sandbox.runtime_dir(),
            stderr_path,
            stdout_path,
            command: format!(
                "(cd DEPLOY && VIRTUAL_ENV={} pyreload {})",
                venv.display(),
                all.join(" ")
            ),
        };
        let marker = match flavor {
            Flavor::Gunicorn => "Listening at: http://127.0.0.1:",
            Flavor::Uvicorn => "Uvicorn running on http://127.0.0.1:",
        };
        let port = server.wait_for_log(|log| {
            log.lines().find_map(|l| {
                let rest = &l[l.find(marker)? + marker.len()..];
                rest.split(|c: char| !c.is_ascii_digit()).next()?.parse::<u16>().ok()
            })
        });
        server.port = port;
        server
    }

    /// The master: the `pyreload` process itself (it embeds the Python
    /// that runs gunicorn's arbiter or uvicorn's supervisor).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The master's control socket.
    pub fn socket(&self) -> PathBuf {
        let path = self.runtime_dir.join(format!("{}.sock", self.pid()));
        wait_until(
            SERVER_TIMEOUT,
            || path.exists(),
            || format!("control socket {} never appeared\n{}", path.display(), self.logs()),
        );
        path
    }

    /// The server's log so far (gunicorn and uvicorn log to stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn logs(&self) -> String {
        format!(
            "$ {}\n(deployed at {})\n--- server stdout\n{}--- server stderr\n{}",
            self.command,
            self.app_dir.display(),
            std::fs::read_to_string(&self.stdout_path).unwrap_or_default(),
            self.log()
        )
    }

    /// Polls the log until `found` finds what it looks for; fails if the
    /// server exits first or [`SERVER_TIMEOUT`] passes.
    pub fn wait_for_log<T>(&mut self, mut found: impl FnMut(&str) -> Option<T>) -> T {
        let deadline = std::time::Instant::now() + SERVER_TIMEOUT;
        loop {
            if let Some(value) = found(&self.log()) {
                return value;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "the server exited ({status}) before it said what the test waits for\n{}",
                    self.logs()
                );
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the server did not say what the test waits for in {SERVER_TIMEOUT:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Pids the server's log says are ready to serve (ever, dead or alive).
    pub fn ready_pids(&self) -> BTreeSet<u32> {
        let log = self.log();
        log.lines()
            .filter_map(|l| match self.flavor {
                Flavor::Gunicorn => {
                    let rest = &l[l.find("notes: worker ")? + "notes: worker ".len()..];
                    rest.strip_suffix(" ready (app loaded)")?.parse().ok()
                }
                Flavor::Uvicorn => {
                    let rest = l.strip_suffix("] Application startup complete.")?;
                    rest[rest.rfind('[')? + 1..].parse().ok()
                }
            })
            .collect()
    }

    /// The master's worker processes now: its children, without
    /// multiprocessing's resource tracker (uvicorn's spawn starts one).
    pub fn worker_pids(&self) -> BTreeSet<u32> {
        children(self.pid())
            .into_iter()
            .filter(|pid| match self.flavor {
                Flavor::Gunicorn => true,
                Flavor::Uvicorn => cmdline(*pid).contains("spawn_main"),
            })
            .collect()
    }

    /// Waits until the master has exactly `n` workers and each has said it
    /// is ready; returns their pids.
    pub fn wait_for_workers(&self, n: usize) -> BTreeSet<u32> {
        let mut workers = BTreeSet::new();
        wait_until(
            SERVER_TIMEOUT,
            || {
                workers = self.worker_pids();
                let ready = self.ready_pids();
                workers.len() == n && workers.iter().all(|p| ready.contains(p))
            },
            || {
                format!(
                    "the server never had {n} ready workers (workers {:?}, ready {:?})\n{}",
                    self.worker_pids(),
                    self.ready_pids(),
                    self.logs()
                )
            },
        );
        workers
    }

    /// SIGKILLs worker `pid`, waits until it is gone and the master has
    /// replaced it with a ready worker, and returns the replacement's pid.
    pub fn kill_worker(&self, pid: u32) -> u32 {
        let before = self.worker_pids();
        assert!(
            before.contains(&pid),
            "{pid} is not a worker of {}: {before:?}",
            self.pid()
        );
        // A worker that retired on its own (`--max-requests`) and was
        // reaped since `before` was listed is replaced all the same.
        match nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        ) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => panic!("kill -9 {pid}: {e}"),
        }
        let mut born = None;
        wait_until(
            SERVER_TIMEOUT,
            || {
                let now = self.worker_pids();
                let ready = self.ready_pids();
                born = now.iter().copied().find(|p| !before.contains(p) && ready.contains(p));
                // The configured count, not `before`'s: under
                // `--max-requests` a retiring worker may still have been
                // a child when `before` was listed.
                !now.contains(&pid) && born.is_some() && now.len() == self.workers
            },
            || {
                format!(
                    "worker {pid} was not replaced by a ready one (workers {:?}, ready {:?})\n{}",
                    self.worker_pids(),
                    self.ready_pids(),
                    self.logs()
                )
            },
        );
        born.unwrap()
    }

    /// Copies `case-study/web/VERSION_DIR/notes/logic.py` (`"v1"` or
    /// `"v2"`) over the deployed one: the in-place half of an update.
    pub fn swap_logic(&self, version_dir: &str) {
        let v1 = repo().join("case-study/web/v1/notes/logic.py");
        let v2 = repo().join("case-study/web/v2/notes/logic.py");
        // A worker born later imports logic.py through __pycache__, which
        // trusts a .pyc whose recorded mtime (in seconds) and size match the
        // file. Two swaps within one second are told apart by size only.
        assert_ne!(
            std::fs::metadata(&v1).unwrap().len(),
            std::fs::metadata(&v2).unwrap().len(),
            "v1 and v2 logic.py must differ in size (see WebServer::swap_logic)"
        );
        let from = repo().join("case-study/web").join(version_dir).join("notes/logic.py");
        std::fs::copy(from, self.app_dir.join("notes/logic.py")).unwrap();
    }

    /// One `GET path` on a fresh connection: the status and the JSON body.
    pub fn get(&self, path: &str) -> (u16, serde_json::Value) {
        http_get(self.port, path).unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", self.logs()))
    }

    /// Asks `GET /hit?client=probe` until worker `pid` answers, and returns
    /// that answer. Which worker accepts a connection is the kernel's
    /// choice, so this is a poll for a state the server reaches (bounded by
    /// [`SERVER_TIMEOUT`]), not a verdict on timing.
    pub fn answer_from(&self, pid: u32) -> serde_json::Value {
        super::eventually(SERVER_TIMEOUT, || {
            let (status, body) = http_get(self.port, "/hit?client=probe")?;
            if status == 200 && body["pid"] == pid {
                Ok(body)
            } else {
                Err(format!(
                    "worker {pid} never answered; last answer {status} {body}\n{}",
                    self.logs()
                ))
            }
        })
    }

    /// Asks until every pid in `pids` has answered once; returns the
    /// answers by pid.
    pub fn answers_from_all(&self, pids: &BTreeSet<u32>) -> std::collections::BTreeMap<u32, serde_json::Value> {
        let mut answers = std::collections::BTreeMap::new();
        super::eventually(SERVER_TIMEOUT, || {
            let (status, body) = http_get(self.port, "/hit?client=probe")?;
            if let Some(pid) = body["pid"]
                .as_u64()
                .map(|p| p as u32)
                .filter(|p| pids.contains(p) && status == 200)
            {
                answers.entry(pid).or_insert(body);
            }
            if answers.len() == pids.len() {
                Ok(())
            } else {
                Err(format!(
                    "answers from {:?} of {pids:?}\n{}",
                    answers.keys(),
                    self.logs()
                ))
            }
        });
        answers
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("==== web server ====\n{}", self.logs());
        }
        // The whole group: the master and every worker, replacements too.
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.pid() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.child.wait();
    }
}

/// The children of `pid`, from every one of its threads.
pub fn children(pid: u32) -> BTreeSet<u32> {
    let mut found = BTreeSet::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            found.extend(list.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    // An exited worker the master has not reaped yet (gunicorn takes up to
    // a few hundred ms) is listed too: it is no worker any more.
    found.retain(|&p| !zombie(p));
    found
}

/// Whether `pid` has exited and waits to be reaped.
fn zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// A process's command line, arguments joined by spaces ("" once it is gone).
pub fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
        .unwrap_or_default()
}

/// `GET path` on 127.0.0.1:port with `Connection: close`: the status and
/// the JSON body (Null when the body is not JSON).
pub fn http_get(port: u16, path: &str) -> Result<(u16, serde_json::Value), String> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("send: {e}"))?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP response: {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line: {head:?}"))?;
    Ok((status, serde_json::from_str(body).unwrap_or(serde_json::Value::Null)))
}

/// `pyreload apply --json --socket SOCKET SPEC`: the exit code and the
/// report.
pub fn apply_json_at(sandbox: &Sandbox, socket: &Path, spec: &Path) -> (i32, serde_json::Value) {
    let out = sandbox.run(&[
        "apply",
        "--json",
        "--socket",
        socket.to_str().unwrap(),
        spec.to_str().unwrap(),
    ]);
    let json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("apply printed no JSON ({e}):\n{}", sandbox.transcript()));
    (out.status.code().unwrap_or(-1), json)
}

/// `pyreload status --json --socket SOCKET`, through the CLI.
pub fn status_json_cli(sandbox: &Sandbox, socket: &Path) -> serde_json::Value {
    let out = sandbox.run(&["status", "--json", "--socket", socket.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "pyreload status failed:\n{}",
        sandbox.transcript()
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("status printed no JSON ({e}):\n{}", stderr(&out)))
}

/// `case-study/web/load.py`: concurrent HTTP clients that record which
/// version answered; driven through its stdin commands.
pub struct LoadDriver {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr_path: PathBuf,
}

/// How many clients, and for how long at most.
#[derive(Debug, Clone)]
pub struct Load {
    pub clients: usize,
    /// How many of them use a new connection per request (load.py
    /// `--fresh-clients`). The others keep theirs open as long as the server
    /// does. On a keep-alive server only fresh clients are sure to reach
    /// every worker: a connection stays with the worker that accepted it.
    pub fresh_clients: usize,
    /// The clients stop by themselves after this (a test stops them first).
    pub limit: Duration,
}

impl Load {
    /// `clients` clients, a quarter of them fresh, for at most 15 minutes.
    pub fn mixed(clients: usize) -> Load {
        Load {
            clients,
            fresh_clients: clients / 4,
            limit: Duration::from_secs(900),
        }
    }
}

impl LoadDriver {
    /// Starts the clients on 127.0.0.1:port; returned once they are started.
    pub fn start(sandbox: &Sandbox, port: u16, load: &Load) -> LoadDriver {
        let stderr_path = sandbox.path().join(format!("load-{}.stderr", super::unique()));
        let clients = load.clients;
        let mut child = Command::new(BUILD_PYTHON)
            .arg(repo().join("case-study/web/load.py"))
            .args(["--port", &port.to_string(), "--clients", &clients.to_string()])
            .args(["--fresh-clients", &load.fresh_clients.to_string()])
            .args(["--duration", &load.limit.as_secs().to_string(), "--wait-timeout", "120"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if tx.send(line.unwrap_or_default()).is_err() {
                    break;
                }
            }
        });
        let mut driver = LoadDriver {
            stdin: child.stdin.take(),
            child,
            lines,
            stderr_path,
        };
        let started = driver.next();
        assert_eq!(started["started"], clients, "{started}");
        driver
    }

    fn next(&mut self) -> serde_json::Value {
        // `wait` answers within its own --wait-timeout (120 s); this is
        // only for a driver that died.
        let line = self.lines.recv_timeout(Duration::from_secs(300)).unwrap_or_else(|_| {
            panic!(
                "the load driver said nothing (died?)\n{}",
                std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
            )
        });
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("load driver printed {line:?}: {e}"))
    }

    fn command(&mut self, line: &str) -> serde_json::Value {
        let stdin = self.stdin.as_mut().expect("the driver is running");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
        self.next()
    }

    /// From now on, every request sent must be answered by `version`.
    pub fn mark(&mut self, version: &str) -> serde_json::Value {
        let answer = self.command(&format!("mark {version}"));
        assert_eq!(answer["mark"], version, "{answer}");
        answer
    }

    /// An update starts: requests sent from now on are judged by the next
    /// mark, not the last (while it runs, either version may answer).
    pub fn close(&mut self) {
        let answer = self.command("close");
        assert!(answer["closed"].is_number(), "{answer}");
    }

    /// Waits until `responses` answers from at least `pids` distinct
    /// workers arrived for requests sent after the last mark (or since
    /// the start). Panics with the summary so far if they do not.
    pub fn wait(&mut self, responses: usize, pids: usize) -> serde_json::Value {
        let answer = self.command(&format!("wait {responses} {pids}"));
        if answer["waited"] != true {
            let stats = self.stats();
            panic!("the clients did not get {responses} answers from {pids} workers: {answer}\nso far: {stats:#}");
        }
        answer
    }

    /// The summary so far (see load.py).
    pub fn stats(&mut self) -> serde_json::Value {
        self.command("stats")
    }

    /// Stops the clients; returns the final summary.
    pub fn stop(mut self) -> serde_json::Value {
        let summary = self.command("stop");
        let _ = self.child.wait();
        summary
    }
}

impl Drop for LoadDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Panics with the summary unless the clients saw no failure, no stale
/// version after a mark and no lost state.
pub fn assert_clean(summary: &serde_json::Value, logs: &str) {
    assert!(
        summary["failures"] == 0 && summary["stale"] == 0 && summary["lost_state"] == 0,
        "the clients saw failures, stale versions or lost state:\n{summary:#}\n{logs}"
    );
}
