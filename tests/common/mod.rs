//! Shared test harness: a sandbox directory, a program hosted under
//! `pyreload run`, and clients for it.
//!
//! Everything is real: the `pyreload` binary, an embedded CPython, Unix
//! sockets and TCP on 127.0.0.1. When a test fails, the harness prints the
//! commands it ran, the program's stdout/stderr and the last `pyreload`
//! output, so the failure can be understood from the log alone.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub mod ansible;
pub mod pypi;
pub mod tree;
pub mod web;

pub const BIN: &str = env!("CARGO_BIN_EXE_pyreload");

/// The interpreter pyreload was built for (PYO3_PYTHON): what a test
/// compares with, compiles bytecode with or makes a virtualenv from, so the
/// suite holds for each CPython it is built for.
pub const BUILD_PYTHON: &str = env!("PYRELOAD_BUILD_PYTHON");

/// A fresh virtualenv (no pip) of the build interpreter at `path`.
pub fn make_venv(path: &Path) {
    make_venv_with(BUILD_PYTHON, path)
}

/// A fresh virtualenv (no pip) of `python` at `path`.
pub fn make_venv_with(python: &str, path: &Path) {
    let made = Command::new(python)
        .args(["-m", "venv", "--without-pip"])
        .arg(path)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
}

/// The repository root, for `case-study/` and `specs/`.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh directory with its own control-socket directory, so tests never
/// see each other's programs.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    log: Mutex<Vec<String>>,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox {
            dir: tempfile::Builder::new().prefix("pyreload-test-").tempdir().unwrap(),
            log: Mutex::new(Vec::new()),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn runtime_dir(&self) -> PathBuf {
        self.path().join("run")
    }

    /// Writes `text` to `relative` inside the sandbox, creating directories.
    pub fn write(&self, relative: &str, text: &str) -> PathBuf {
        let path = self.path().join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        path
    }

    /// A `pyreload` command with this sandbox's runtime directory.
    pub fn pyreload(&self) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.env("PYRELOAD_RUNTIME_DIR", self.runtime_dir())
            .env_remove("VIRTUAL_ENV")
            .env("NO_COLOR", "1");
        cmd
    }

    /// Runs `pyreload ARGS` to completion and remembers its output for
    /// failure dumps.
    pub fn run(&self, args: &[&str]) -> Output {
        let output = self.pyreload().args(args).current_dir(repo()).output().unwrap();
        self.log.lock().unwrap().push(format!(
            "$ pyreload {}\n[exit {:?}]\n--- stdout\n{}--- stderr\n{}",
            args.join(" "),
            output.status.code(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
        output
    }

    /// `pyreload apply --socket S --json SPEC`, parsed.
    pub fn apply_json(&self, host: &Hosted, spec: &Path) -> (i32, serde_json::Value) {
        let out = self.run(&[
            "apply",
            "--socket",
            host.socket().to_str().unwrap(),
            "--json",
            spec.to_str().unwrap(),
        ]);
        let json = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("apply printed no JSON ({e}):\n{}", self.transcript()));
        (out.status.code().unwrap_or(-1), json)
    }

    /// `pyreload apply --json --socket S SPEC`, started in the background
    /// with its report piped, for tests that act while the update runs.
    pub fn spawn_apply_json(&self, socket: &Path, spec: &Path) -> Child {
        self.pyreload()
            .args([
                "apply",
                "--json",
                "--socket",
                socket.to_str().unwrap(),
                spec.to_str().unwrap(),
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// `pyreload watch DIR --socket S`, returned once it says it is
    /// watching: a spec written after that is seen. The receiver gets the
    /// rest of its stderr, line by line.
    pub fn watch(&self, dir: &Path, socket: &Path) -> (Child, std::sync::mpsc::Receiver<String>) {
        let mut watcher = self
            .pyreload()
            .args(["watch", dir.to_str().unwrap(), "--socket", socket.to_str().unwrap()])
            .current_dir(repo())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = watcher.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let _ = tx.send(line.unwrap_or_default());
            }
        });
        let ready = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the watcher never said it was watching");
        assert!(
            ready.starts_with(&format!("pyreload: watching {} for update specs", dir.display())),
            "{ready}"
        );
        (watcher, rx)
    }

    /// `pyreload new --from case-study/FROM --to case-study/TO --output OUT`
    /// (paths relative to the repository).
    pub fn draft(&self, from: &str, to: &str, output: &Path) -> Output {
        let from = repo().join(from).display().to_string();
        let to = repo().join(to).display().to_string();
        self.run(&[
            "new",
            "--from",
            &from,
            "--to",
            &to,
            "--output",
            output.to_str().unwrap(),
        ])
    }

    pub fn transcript(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "==== pyreload commands run by the failed test ====\n{}",
                self.transcript()
            );
        }
    }
}

/// The tail of a probe program: prints `ready`, then answers each Python
/// expression read on stdin with its repr (or `raised Type: message`),
/// evaluated in the program's `__main__`.
pub const PROBE_LOOP: &str = r#"
print("ready", flush=True)
for line in sys.stdin:
    try:
        result = repr(eval(line, globals()))
    except Exception as e:
        result = f"raised {type(e).__name__}: {e}"
    print(result, flush=True)
"#;

/// Starts `script` (already written in the sandbox) under `pyreload run`
/// with pipes, and waits for its `ready`.
pub fn probe(sandbox: &Sandbox, args: &[&str]) -> Hosted {
    probe_with_env(sandbox, args, vec![])
}

/// Like [`probe`], with more environment variables for the program (such
/// as a test-only `PYRELOAD_FAULT`).
pub fn probe_with_env(sandbox: &Sandbox, args: &[&str], env: Vec<(&str, String)>) -> Hosted {
    let mut p = Hosted::start(
        sandbox,
        Launch {
            args: args.iter().map(|a| a.to_string()).collect(),
            cwd: sandbox.path().to_path_buf(),
            interactive: true,
            env,
        },
    );
    p.expect_line("ready");
    p
}

/// How long a test waits for one line from an interactive program before
/// it fails: far more than any answer takes, loaded or not; only a wedged
/// program reaches it, and then the test fails instead of hanging.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

/// Holds an update at the start of a phase, with the test-only
/// `PYRELOAD_FAULT=hold:DIR` knob (src/engine/fault.rs): while the file
/// `DIR/<phase>` exists, an update that enters `<phase>` waits there.
pub struct PhaseHold {
    dir: PathBuf,
}

impl PhaseHold {
    pub fn new(sandbox: &Sandbox) -> PhaseHold {
        let dir = sandbox.path().join(format!("holds-{}", unique()));
        std::fs::create_dir_all(&dir).unwrap();
        PhaseHold { dir }
    }

    /// The environment variable that gives the program this knob.
    pub fn env(&self) -> (&'static str, String) {
        ("PYRELOAD_FAULT", format!("hold:{}", self.dir.display()))
    }

    /// From now on, updates that enter `phase` wait there.
    pub fn arm(&self, phase: &str) {
        std::fs::write(self.dir.join(phase), "").unwrap();
    }

    /// Lets updates held in (or reaching) `phase` go on.
    pub fn release(&self, phase: &str) {
        let _ = std::fs::remove_file(self.dir.join(phase));
    }

    /// Waits until the program's update is in `phase`: when the phase is
    /// armed, the update is then held there.
    pub fn wait_for(&self, socket: &Path, phase: &str) {
        wait_for_phase(socket, phase);
    }
}

/// Waits until `status` shows an update in `phase`.
pub fn wait_for_phase(socket: &Path, phase: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = status(socket);
        if now["in_progress"]["phase"] == phase {
            return;
        }
        assert!(Instant::now() < deadline, "the update never reached {phase}: {now:#}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A program running under `pyreload run`, killed when dropped.
pub struct Hosted {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    pub stdout: Option<BufReader<ChildStdout>>,
    stderr_path: PathBuf,
    stdout_path: Option<PathBuf>,
    command: String,
}

/// How to start a hosted program.
pub struct Launch<'a> {
    pub args: Vec<String>,
    pub cwd: PathBuf,
    /// Keep stdin/stdout as pipes for a conversation (the probe program);
    /// otherwise stdout goes to a log file.
    pub interactive: bool,
    pub env: Vec<(&'a str, String)>,
}

impl Hosted {
    pub fn start(sandbox: &Sandbox, launch: Launch<'_>) -> Hosted {
        let stderr_path = sandbox.path().join(format!("program-{}.stderr", unique()));
        let mut cmd = sandbox.pyreload();
        cmd.arg("run")
            .args(&launch.args)
            .current_dir(&launch.cwd)
            .stderr(std::fs::File::create(&stderr_path).unwrap());
        for (k, v) in &launch.env {
            cmd.env(k, v);
        }
        let mut stdout_path = None;
        if launch.interactive {
            cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        } else {
            let p = sandbox.path().join(format!("program-{}.stdout", unique()));
            cmd.stdin(Stdio::null()).stdout(std::fs::File::create(&p).unwrap());
            stdout_path = Some(p);
        }
        // A group of its own, so that dropping it ends the processes it
        // forked too (a tree's workers would outlive the test).
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().unwrap();
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().map(BufReader::new);
        Hosted {
            child,
            stdin,
            stdout,
            stderr_path,
            stdout_path,
            command: format!("pyreload run {}", launch.args.join(" ")),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The control socket, once the program has opened it.
    pub fn socket(&self) -> PathBuf {
        self.socket_in(&self.runtime_dir())
    }

    fn runtime_dir(&self) -> PathBuf {
        self.stderr_path.parent().unwrap().join("run")
    }

    fn socket_in(&self, dir: &Path) -> PathBuf {
        let path = dir.join(format!("{}.sock", self.pid()));
        wait_until(
            Duration::from_secs(60),
            || path.exists(),
            || format!("control socket {} never appeared\n{}", path.display(), self.logs()),
        );
        path
    }

    /// Sends one line to an interactive program and returns its one-line
    /// answer. Fails (does not hang) if none comes within [`ANSWER_TIMEOUT`].
    pub fn ask(&mut self, line: &str) -> String {
        let stdin = self.stdin.as_mut().expect("interactive program");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
        let answer = self.next_line(&format!("its answer to {line:?}"));
        assert!(
            !answer.is_empty(),
            "program closed stdout while asked {line:?}\n{}",
            self.logs()
        );
        answer.trim_end().to_string()
    }

    /// Like [`Hosted::ask`], for a value the test compares (a state before
    /// and after, say): fails if the expression raised, since two raises
    /// would compare equal.
    pub fn ask_value(&mut self, expression: &str) -> String {
        let answer = self.ask(expression);
        assert!(
            !answer.starts_with("raised "),
            "{expression:?} {answer}\n{}",
            self.logs()
        );
        answer
    }

    /// Reads lines from an interactive program until one equals `line`.
    pub fn expect_line(&mut self, line: &str) {
        let mut seen = Vec::new();
        loop {
            let l = self.next_line(&format!("{line:?}"));
            assert!(
                !l.is_empty(),
                "program ended before printing {line:?}; printed {seen:?}\n{}",
                self.logs()
            );
            if l.trim_end() == line {
                return;
            }
            seen.push(l);
        }
    }

    /// The next line of the program's stdout, with its newline ("" at the
    /// end of the output). A pipe has no read timeout, so this polls the
    /// pipe before each read, and reads only what is there.
    fn next_line(&mut self, waiting_for: &str) -> String {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        let mut line = Vec::new();
        loop {
            let reader = self.stdout.as_mut().expect("interactive program");
            let buffered = reader.buffer();
            if let Some(end) = buffered.iter().position(|&b| b == b'\n') {
                line.extend_from_slice(&buffered[..=end]);
                reader.consume(end + 1);
                return String::from_utf8_lossy(&line).into_owned();
            }
            line.extend_from_slice(buffered);
            let taken = buffered.len();
            reader.consume(taken);
            let left = deadline.saturating_duration_since(Instant::now());
            let mut fds = [PollFd::new(reader.get_ref().as_fd(), PollFlags::POLLIN)];
            let ready = poll(&mut fds, PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX)).unwrap_or(1);
            if ready == 0 {
                panic!(
                    "the program printed nothing for {waiting_for} in {ANSWER_TIMEOUT:?} (wedged?); partial line {:?}\n{}",
                    String::from_utf8_lossy(&line),
                    self.logs()
                );
            }
            // Readable (or closed): this read does not block.
            let reader = self.stdout.as_mut().unwrap();
            if reader.fill_buf().unwrap().is_empty() {
                return String::from_utf8_lossy(&line).into_owned();
            }
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn stdout_log(&self) -> String {
        self.stdout_path
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    pub fn logs(&self) -> String {
        format!(
            "$ {}\n--- program stdout\n{}--- program stderr\n{}",
            self.command,
            self.stdout_log(),
            self.stderr()
        )
    }

    /// Waits for the program to exit on its own.
    pub fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "program did not exit in {timeout:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), signal).unwrap();
    }
}

impl Drop for Hosted {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("==== hosted program ====\n{}", self.logs());
        }
        let group = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

/// Polls `cond` until it holds, or panics with `why()`.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool, why: impl FnOnce() -> String) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "{}", why());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Polls `probe` until it returns `Ok`, or panics with its last `Err`
/// once `timeout` has passed: for a state the program reaches on its own
/// time (never for a verdict on how fast it gets there).
pub fn eventually<T>(timeout: Duration, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match probe() {
            Ok(value) => return value,
            Err(why) => assert!(Instant::now() < deadline, "after {timeout:?}: {why}"),
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The case-study server at a version directory (`v1`, `v2`, ...), on a
/// free port.
pub struct KvServer {
    pub hosted: Hosted,
    pub port: u16,
}

impl KvServer {
    pub fn start(sandbox: &Sandbox, version_dir: &str, version: &str) -> KvServer {
        KvServer::start_with(sandbox, version_dir, version, &[])
    }

    /// Like [`KvServer::start`], with more arguments for the server (such
    /// as `--asyncio`).
    pub fn start_with(sandbox: &Sandbox, version_dir: &str, version: &str, extra: &[&str]) -> KvServer {
        KvServer::launch(sandbox, version_dir, version, &[], extra, vec![])
    }

    /// Like [`KvServer::start_with`], with options for `pyreload run`
    /// itself (`host_args`) and more environment variables.
    pub fn launch(
        sandbox: &Sandbox,
        version_dir: &str,
        version: &str,
        host_args: &[&str],
        extra: &[&str],
        env: Vec<(&str, String)>,
    ) -> KvServer {
        let port_file = sandbox.path().join(format!("port-{}", unique()));
        let hosted = Hosted::start(
            sandbox,
            Launch {
                args: host_args
                    .iter()
                    .chain(&[
                        "--name",
                        "kvserver",
                        "--version",
                        version,
                        "-m",
                        "kvserver",
                        "--port",
                        "0",
                        "--port-file",
                        port_file.to_str().unwrap(),
                    ])
                    .chain(extra)
                    .map(|a| a.to_string())
                    .collect(),
                cwd: repo().join("case-study").join(version_dir),
                interactive: false,
                env,
            },
        );
        wait_until(
            Duration::from_secs(60),
            || port_file.exists(),
            || format!("kvserver never wrote its port\n{}", hosted.logs()),
        );
        let port = std::fs::read_to_string(&port_file).unwrap().trim().parse().unwrap();
        KvServer { hosted, port }
    }

    pub fn client(&self) -> KvClient {
        KvClient::connect(self.port)
    }

    /// One request on a fresh connection.
    pub fn ask(&self, line: &str) -> String {
        self.client().ask(line)
    }

    /// Stops the server as an operator would, with SIGTERM, and checks that
    /// it exits with status 0, after its own cleanup, leaving no socket.
    pub fn shut_down_cleanly(self) {
        let socket = self.hosted.socket();
        self.hosted.signal(nix::sys::signal::Signal::SIGTERM);
        let mut hosted = self.hosted;
        let status = hosted.wait(Duration::from_secs(60));
        assert_eq!(status.code(), Some(0), "{}", hosted.logs());
        assert!(
            hosted.stdout_log().contains("kvserver: shut down cleanly"),
            "the program's own cleanup did not run\n{}",
            hosted.logs()
        );
        assert!(!socket.exists(), "socket left behind after a clean exit");
    }
}

/// A persistent connection speaking the kvserver line protocol.
pub struct KvClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl KvClient {
    pub fn connect(port: u16) -> KvClient {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        KvClient {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    pub fn try_ask(&mut self, line: &str) -> std::io::Result<String> {
        self.writer.write_all(format!("{line}\n").as_bytes())?;
        let mut reply = String::new();
        if self.reader.read_line(&mut reply)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "server closed the connection",
            ));
        }
        Ok(reply.trim_end().to_string())
    }

    pub fn ask(&mut self, line: &str) -> String {
        self.try_ask(line).unwrap()
    }

    /// Sends every request, then reads every reply: one round trip's
    /// latency for thousands of requests.
    pub fn pipeline(&mut self, requests: &[String]) -> Vec<String> {
        let mut batch = requests.join("\n");
        batch.push('\n');
        let writer = &mut self.writer;
        std::thread::scope(|s| {
            s.spawn(|| writer.write_all(batch.as_bytes()).unwrap());
            requests
                .iter()
                .map(|_| {
                    let mut reply = String::new();
                    self.reader.read_line(&mut reply).unwrap();
                    reply.trim_end().to_string()
                })
                .collect()
        })
    }
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// One request on a program's control socket, as raw JSON frames, with no
/// `pyreload` process in between: fast enough to poll an update's phase.
pub fn control(socket: &Path, request: &serde_json::Value) -> std::io::Result<serde_json::Value> {
    use std::io::Read;
    let mut stream = std::os::unix::net::UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let body = serde_json::to_vec(request).unwrap();
    stream.write_all(&(body.len() as u32).to_be_bytes())?;
    stream.write_all(&body)?;
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let mut reply = vec![0u8; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut reply)?;
    Ok(serde_json::from_slice(&reply).unwrap())
}

/// The program's status, as `pyreload status --json` shows it.
pub fn status(socket: &Path) -> serde_json::Value {
    control(socket, &serde_json::json!({"type": "status", "protocol": 1})).unwrap()
}

/// A small deterministic random number generator (xorshift64*), so a
/// failing run can be repeated: tests print the seed they used, and
/// `PYRELOAD_TEST_SEED` sets it.
pub struct Rng(u64);

impl Rng {
    pub fn from_env_or_time(test: &str) -> Rng {
        let seed = std::env::var("PYRELOAD_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("{test}: random seed {seed} (repeat with PYRELOAD_TEST_SEED={seed})");
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The resident set size of a process, in KiB, from /proc.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// What one load client saw.
#[derive(Debug, Default)]
pub struct ClientTally {
    pub requests: usize,
    pub failures: Vec<String>,
}

/// Closed-loop clients on the case-study server, each on its own
/// persistent connection, writing keys of its own and reading each back
/// (`SET` then `GET`) until stopped or `limit` has passed. Every reply is
/// checked; a broken connection ends that client.
pub struct KvLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    rounds: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<ClientTally>>,
}

impl KvLoad {
    pub fn start(port: u16, clients: usize, limit: Duration) -> KvLoad {
        KvLoad::paced(port, clients, limit, Duration::ZERO)
    }

    /// As [`KvLoad::start`], with `pause` between a client's rounds:
    /// steady traffic that leaves the cores to the servers.
    pub fn paced(port: u16, clients: usize, limit: Duration, pause: Duration) -> KvLoad {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let rounds = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let threads = (0..clients)
            .map(|id| {
                let (stop, rounds) = (stop.clone(), rounds.clone());
                std::thread::spawn(move || {
                    let mut client = KvClient::connect(port);
                    let mut tally = ClientTally::default();
                    let started = Instant::now();
                    let mut i = 0usize;
                    while !stop.load(Ordering::SeqCst) && started.elapsed() < limit {
                        i += 1;
                        let key = format!("load-{id}-{}", i % 32);
                        for (request, expected) in [
                            (format!("SET {key} {i}"), "OK".to_string()),
                            (format!("GET {key}"), format!("VALUE {i}")),
                        ] {
                            tally.requests += 1;
                            match client.try_ask(&request) {
                                Ok(reply) if reply == expected => {}
                                Ok(reply) => tally
                                    .failures
                                    .push(format!("{request:?} -> {reply:?}, expected {expected:?}")),
                                Err(e) => {
                                    tally.failures.push(format!("{request:?}: connection failed: {e}"));
                                    return tally;
                                }
                            }
                        }
                        rounds.fetch_add(1, Ordering::SeqCst);
                        if !pause.is_zero() {
                            std::thread::sleep(pause);
                        }
                    }
                    tally
                })
            })
            .collect();
        KvLoad { stop, rounds, threads }
    }

    /// SET-and-GET rounds completed so far, by all clients together.
    pub fn rounds(&self) -> usize {
        self.rounds.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until the clients have made `more` rounds beyond `from`.
    pub fn wait_for_rounds(&self, from: usize, more: usize) {
        wait_until(
            Duration::from_secs(30),
            || self.rounds() >= from + more,
            || format!("the clients stalled at {} rounds", self.rounds()),
        );
    }

    /// Stops the clients and returns what each saw.
    pub fn finish(self) -> Vec<ClientTally> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.threads.into_iter().map(|t| t.join().unwrap()).collect()
    }
}

/// Every failure the clients saw, for an assertion message.
pub fn failures(tallies: &[ClientTally]) -> Vec<&String> {
    tallies.iter().flat_map(|t| &t.failures).collect()
}

/// A diagnostic with miette's line wrapping undone (the breaks and the `│`
/// gutter), so a test can look for a whole sentence whatever its length.
pub fn unwrapped(text: &str) -> String {
    text.lines()
        .map(|l| l.trim_start().trim_start_matches('│').trim())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A probe expression (see [`PROBE_LOOP`]) that lists, joined by `|`, what
/// a refused update must leave as it was: every name in `sys.modules`
/// (`M name`, or `C name` for a built-in or extension module), every package attribute that holds its own submodule, as an
/// import sets it (`A package.child`), and every file in `linecache`
/// (`L file`). It imports nothing.
pub const MODULE_STATE: &str = concat!(
    r#""|".join([("C " if str(getattr(getattr(m, "__spec__", None), "origin", "")).endswith(("built-in", ".so")) else "M ") + n for n, m in list(sys.modules.items())]"#,
    r#" + ["A " + n + "." + a for n, m in list(sys.modules.items()) for a, v in list(getattr(m, "__dict__", {}).items())"#,
    r#" if type(v) is type(sys) and getattr(v, "__name__", None) == n + "." + a]"#,
    r#" + ["L " + f for f in list(getattr(sys.modules.get("linecache"), "cache", {}))])"#,
);

/// What [`MODULE_STATE`] read from a program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleState(pub std::collections::BTreeSet<String>);

impl ModuleState {
    pub fn contains(&self, entry: &str) -> bool {
        self.0.contains(entry)
    }

    /// Panics, naming what `what` added and what went missing, unless this
    /// state (after it) is `before`.
    pub fn assert_same(&self, before: &ModuleState, what: &str) {
        // `threading` is the one module pyreload's helpers leave loaded
        // once they import it (README: its list of threads must be the
        // program's); programs that never used threads may gain it.
        // Built-in and extension modules (`C`) stay once imported: CPython
        // cannot unload them (README, the staging rule).
        let added: Vec<&String> = self
            .0
            .difference(&before.0)
            .filter(|m| *m != "M threading" && !m.starts_with("C "))
            .collect();
        let missing: Vec<&String> = before.0.difference(&self.0).collect();
        assert!(
            added.is_empty() && missing.is_empty(),
            "{what} changed the program's modules (M: sys.modules, A: package attribute, L: linecache)\n  added: {added:?}\n  missing: {missing:?}"
        );
    }
}

impl Hosted {
    /// `sys.modules`, the package attributes that hold submodules, and the
    /// `linecache` files of a probe program (see [`MODULE_STATE`]).
    pub fn module_state(&mut self) -> ModuleState {
        let answer = self.ask(MODULE_STATE);
        let inner = answer
            .strip_prefix('\'')
            .and_then(|a| a.strip_suffix('\''))
            .filter(|a| !a.contains('\\'))
            .unwrap_or_else(|| panic!("the program's module state is not a plain string: {answer}"));
        ModuleState(inner.split('|').map(str::to_string).collect())
    }
}
