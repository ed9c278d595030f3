//! The root's side of a tree-wide update: the rounds of [`super`], over
//! one connection per member.
//!
//! Every member's connection has a reader thread that forwards its
//! replies to one channel, so the coordinator hears from all of them at
//! once and a slow member never hides a fast one's answer. The
//! coordinator never enters Python: it runs while the root's own threads
//! may be stopped by the root's member session.

use std::collections::BTreeMap;
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::members::{self, Member};
use crate::control::protocol::{read_frame, write_frame, Request, PROTOCOL_VERSION};
use crate::diagnostic::Problem;
use crate::engine::member::{decide, release_decision, Decision};
use crate::engine::progress::ClientGone;
use crate::process::bell::{self, Bell};
use crate::process::fds::Tracked;
use crate::process::member_wire::{CommitInstants, MemberReply, Mode, RollbackOrder, Step};
use crate::process::state::ProcessState;
use crate::process::wire::{MemberProgress, TreeProgress};
use crate::report::{MemberOutcome, MemberReport, ModuleReport, Outcome, Report};
use crate::spec::{self, SpecSource, TreeCommit};

/// How long a member has to resolve the spec.
const PREPARE_STEP: Duration = Duration::from_secs(60);
/// Beyond the spec's `timeout_ms`, for the members' waits and stages.
const STAGE_GRACE: Duration = Duration::from_secs(3);
/// How long a child forked just before its parent committed has to bind
/// its control socket (its fork hook does a few system calls).
const BORN_WAIT: Duration = Duration::from_millis(500);

/// One tree-wide update at a time per tree; members refuse a second one
/// anyway, but this says so before any is asked.
static BUSY: Mutex<()> = Mutex::new(());

/// The update running now, as `Request::Progress` answers it.
static PROGRESS: Mutex<Option<TreeProgress>> = Mutex::new(None);

/// How far the tree-wide update running now has got. Never waits: in a
/// forked member the lock may have been copied held by its parent's
/// coordinator, and a member has no tree-wide update of its own.
pub fn progress() -> Option<TreeProgress> {
    match PROGRESS.try_lock() {
        Ok(p) => p.clone(),
        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner().clone(),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

/// Applies the spec to the program's whole tree when it has members, or
/// to this process alone when it has none (or is itself a member, asked
/// directly). `check` (`dry_run`) asks every member too.
pub fn apply(
    state: &ProcessState,
    spec_path: &str,
    spec_text: &str,
    dry_run: bool,
    client_gone: Option<ClientGone<'_>>,
) -> Result<Report, Problem> {
    let Some(others) = tree_members(state, !dry_run) else {
        return crate::engine::apply(state, spec_path, spec_text, dry_run, client_gone);
    };
    let source = SpecSource {
        path: spec_path.to_string(),
        text: spec_text.to_string(),
    };
    let spec = spec::parse(&source).map_err(|mut problems| problems.remove(0))?;
    let mode = if dry_run { Mode::Check } else { Mode::Update };
    let report = run_job(
        state,
        Job::of_spec(mode, spec_path, spec_text, &spec),
        others,
        client_gone,
        None,
    )?;
    remember(&spec, &report);
    Ok(report)
}

/// `pyreload prepare` on a tree: the rounds of [`apply`] up to the stage,
/// then `hold` (members are told they may be held `hold_for` longer than
/// usual), then, if it says so, the commit and the rest as `apply` does
/// them. The coordinator needs no client: `pyreload prepare` has its answer
/// from `hold`, and commits and aborts arrive there.
pub fn apply_held(
    state: &ProcessState,
    spec_path: &str,
    spec_text: &str,
    hold_for: Duration,
    hold: Hold<'_>,
) -> Result<Report, Problem> {
    let source = SpecSource {
        path: spec_path.to_string(),
        text: spec_text.to_string(),
    };
    let spec = spec::parse(&source).map_err(|mut problems| problems.remove(0))?;
    let others = tree_members(state, true).unwrap_or_default();
    let job = Job::of_spec(Mode::Update, spec_path, spec_text, &spec);
    let report = run_job(state, job, others, None, Some((hold, hold_for)))?;
    remember(&spec, &report);
    Ok(report)
}

/// Keeps a committed tree-wide update for a tree-wide rollback.
fn remember(spec: &spec::Spec, report: &Report) {
    if report.outcome == Outcome::Committed {
        let modules = spec.reload.iter().map(|r| r.module.get_ref().clone()).collect();
        push_tree_update(TreeUpdate {
            name: report.update.clone(),
            from: report.from.clone(),
            modules,
        });
    }
}

/// Whether this process is the root of a tree with live members now.
pub fn has_members(state: &ProcessState) -> bool {
    state.identity.is_root() && !members::others(state).is_empty()
}

/// Undoes the tree's last update in every member that took part, all at
/// their own safe points (or, with `dry_run`, asks each whether it could).
/// A program without members rolls back alone.
pub fn rollback(
    state: &ProcessState,
    dry_run: bool,
    timeout: Duration,
    client_gone: Option<ClientGone<'_>>,
) -> Result<Report, Problem> {
    let Some(others) = tree_members(state, !dry_run) else {
        return crate::engine::rollback::rollback(state, dry_run, timeout, client_gone);
    };
    let Some(last) = last_tree_update() else {
        return Err(Problem::new(
            "this program has worker processes, and none of its updates was applied to its whole tree, so none can \
             be rolled back tree-wide; rolling back the master alone would leave its workers on the new version, so \
             nothing was changed",
        )
        .with_help(
            "put the old files back and apply the reverse spec (as specs/web-v2-to-v1.toml does): it reaches every \
             worker, all or none",
        ));
    };
    let job = Job {
        mode: Mode::Rollback(RollbackOrder {
            update: last.name.clone(),
            modules: last.modules.clone(),
            to: last.from.clone(),
            timeout_ms: timeout.as_millis() as u64,
            dry_run,
        }),
        spec_path: "",
        spec_text: "",
        spec: None,
        update: format!("{}{}", crate::process::state::ROLLBACK_PREFIX, last.name),
        to: last.from.clone().unwrap_or_else(|| "(none)".into()),
        timeout,
        commit_timeout: timeout,
    };
    let report = run_job(state, job, others, client_gone, None)?;
    if report.outcome == Outcome::Committed {
        pop_tree_update();
    }
    Ok(report)
}

/// The other members when this process is the root of a tree, or `None`
/// for a program that runs alone.
fn tree_members(state: &ProcessState, changes: bool) -> Option<Vec<Member>> {
    if !state.identity.is_root() {
        return None;
    }
    let others = members::others(state);
    // A root that has had members stays a tree even with none right now,
    // as gunicorn's master is while it replaces every worker: a worker it
    // forks before it commits runs the old version, and only the tree
    // looks for such children.
    let forks = changes && crate::process::tree::has_had_members(&state.identity.tree_dir());
    if others.is_empty() && !forks {
        return None;
    }
    // Workers being born now (a supervisor replacing them) are asked too,
    // and the children being born of every member: a member looks for
    // children after its commit only when it forked since it was invited.
    let mut waited = false;
    let parents: Vec<u32> = std::iter::once(state.pid).chain(others.iter().map(|m| m.pid)).collect();
    for parent in parents {
        for child in members::being_born(state, parent) {
            waited |= wait_for_birth(state, parent, child).unwrap_or(false);
        }
    }
    Some(if waited { members::others(state) } else { others })
}

/// Runs one job over the tree, one at a time.
fn run_job<'a>(
    state: &'a ProcessState,
    job: Job<'a>,
    others: Vec<Member>,
    client_gone: Option<ClientGone<'a>>,
    hold: Option<(Hold<'a>, Duration)>,
) -> Result<Report, Problem> {
    let _busy = BUSY.try_lock().map_err(|_| {
        crate::engine::prepared::busy_problem().unwrap_or_else(|| {
            Problem::new("another update is in progress in this program's tree; nothing was changed")
                .with_help("wait for it to finish and try again; `pyreload status` shows the history")
        })
    })?;
    let started = Instant::now();
    let changes = job.changes();
    let mut tree = Tree::new(state, job, client_gone);
    if let Some((hold, hold_for)) = hold {
        tree.hold = Some(hold);
        tree.hold_for = hold_for;
    }
    let root = members::this(state);
    let mut report = tree.run(root, others);
    report.timings.total_ms = started.elapsed().as_secs_f64() * 1000.0;
    // The root records its own part when it has one; a root with no part
    // (gunicorn's master without --preload) records the tree's.
    let root_took_part = report
        .members
        .iter()
        .any(|m| m.pid == state.pid && m.outcome != MemberOutcome::Unaffected);
    if changes && !root_took_part {
        state.record_attempt(&report);
    }
    tree.forget_old_decisions();
    Ok(report)
}

/// What a tree-wide rollback needs of an update applied to the tree.
#[derive(Clone)]
struct TreeUpdate {
    name: String,
    from: Option<String>,
    modules: Vec<String>,
}

/// The tree's committed updates, newest last (the root's alone: no member
/// coordinates a tree).
static TREE_UPDATES: Mutex<Vec<TreeUpdate>> = Mutex::new(Vec::new());

/// As many as a process keeps for `pyreload rollback` by default.
const TREE_UPDATES_KEPT: usize = 16;

fn push_tree_update(update: TreeUpdate) {
    let mut updates = TREE_UPDATES.lock().unwrap_or_else(|p| p.into_inner());
    updates.push(update);
    if updates.len() > TREE_UPDATES_KEPT {
        updates.remove(0);
    }
}

fn last_tree_update() -> Option<TreeUpdate> {
    TREE_UPDATES.lock().unwrap_or_else(|p| p.into_inner()).last().cloned()
}

fn pop_tree_update() {
    TREE_UPDATES.lock().unwrap_or_else(|p| p.into_inner()).pop();
}

impl<'a> Job<'a> {
    /// False for `check` and `rollback --check`: the members only say
    /// what they would do.
    fn changes(&self) -> bool {
        match &self.mode {
            Mode::Check => false,
            Mode::Rollback(order) => !order.dry_run,
            Mode::Update => true,
        }
    }

    fn of_spec(mode: Mode, spec_path: &'a str, spec_text: &'a str, spec: &'a spec::Spec) -> Job<'a> {
        Job {
            mode,
            spec_path,
            spec_text,
            spec: Some(spec),
            update: spec.update.name.get_ref().clone(),
            to: spec.update.to.get_ref().clone(),
            timeout: Duration::from_millis(spec.safe_point.timeout_ms()),
            commit_timeout: Duration::from_millis(spec.safe_point.commit_timeout_ms()),
        }
    }
}

/// What the hold of a prepared tree-wide update decided.
pub enum Held {
    /// Commit, as `apply` goes on after the stage round.
    Commit,
    /// Stop: every member aborts, nothing changed.
    Abort(Problem),
}

/// Called once every member has staged, with what the tree did so far;
/// returns when the update is to go on, or not. It must not enter Python
/// (the root's own member waits, staged, in another thread).
pub type Hold<'a> = &'a mut dyn FnMut(Report) -> Held;

/// What the tree does, round by round: apply a spec, check one, or roll
/// the last update back.
struct Job<'a> {
    mode: Mode,
    spec_path: &'a str,
    spec_text: &'a str,
    /// The spec of an update or a check (a rollback has none).
    spec: Option<&'a spec::Spec>,
    /// The report's name and target version.
    update: String,
    to: String,
    /// Each member's wait for its safe point, and its commit's bound.
    timeout: Duration,
    commit_timeout: Duration,
}

/// Waits up to [`BORN_WAIT`] for a child being born to bind its control
/// socket: true once it has, false if it exited or exec'd meanwhile.
fn wait_for_birth(state: &ProcessState, parent: u32, child: u32) -> Result<bool, Problem> {
    let socket = crate::process::tree::member_socket_path(&state.identity.tree_dir(), child);
    let until = Instant::now() + BORN_WAIT;
    loop {
        if socket.exists() {
            return Ok(true);
        }
        if !members::alive(child) || !members::runs_this_program(child) || members::threads(child) > 1 {
            return Ok(false);
        }
        if Instant::now() >= until {
            return Err(Problem::new(format!(
                "pid {child}, forked by member pid {parent}, has no control socket after {} ms, so it cannot be \
                 updated and would keep the old version; nothing was changed",
                BORN_WAIT.as_millis()
            ))
            .with_help("its stderr says why it could not become a member; apply again once it has"));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Where a member stands in the conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stand {
    Invited,
    Prepared,
    Staged,
    /// Told to commit; not heard from since.
    Committing,
    /// Committed; told whether it stands once every member has said.
    Committed,
    /// `together`: stopped at its safe point with its merge made, waiting
    /// for the release.
    Merged,
    /// Its part is over: `outcome` says how.
    Done,
}

struct Peer {
    member: Member,
    /// Registered, so a worker forked meanwhile does not keep it open.
    writer: Option<Tracked<UnixStream>>,
    stand: Stand,
    modules: Vec<String>,
    from: Option<String>,
    outcome: Option<MemberOutcome>,
    report: Option<Report>,
    problem: Option<Problem>,
    /// When it did its part of the commit (its `Released` said).
    at: Option<CommitInstants>,
    waiting_for: Vec<String>,
    /// It forked since it was invited (its `Released` said so).
    forked: bool,
}

/// What a member said, or that it could not say anything.
enum Heard {
    Reply(MemberReply),
    /// Its connection closed or broke.
    Gone(String),
}

struct Tree<'a> {
    state: &'a ProcessState,
    job: Job<'a>,
    client_gone: Option<ClientGone<'a>>,
    decision: std::path::PathBuf,
    peers: Vec<Peer>,
    tx: Sender<(usize, Heard)>,
    rx: Receiver<(usize, Heard)>,
    /// The reason the whole update stops, once there is one.
    problem: Option<Problem>,
    /// What tells every staged member to commit at once.
    bell: Result<Bell, String>,
    /// `[tree] commit = "together"`: what tells every merged member to let
    /// go (or undo, as the release decision says).
    release: Option<Result<Bell, String>>,
    /// The round shown now.
    round: &'static str,
    /// `pyreload prepare`: where the staged tree is held (see
    /// [`apply_held`]), and for how long at most.
    hold: Option<Hold<'a>>,
    hold_for: Duration,
    /// When the commit rang (the members' clock: `CLOCK_MONOTONIC`), for
    /// each member's `after_bell_ms`.
    rung_at_ns: Option<u64>,
    /// The update stops because a member's own commit failed (`each`):
    /// [`Tree::revert`] then says how the members that had committed
    /// ended.
    commit_failed: bool,
}

impl<'a> Tree<'a> {
    fn new(state: &'a ProcessState, job: Job<'a>, client_gone: Option<ClientGone<'a>>) -> Tree<'a> {
        let (tx, rx) = channel();
        let update_id = format!("{}-{}", state.pid, crate::process::member_wire::monotonic_ns());
        let dir = state.identity.tree_dir();
        let _ = std::fs::create_dir_all(&dir);
        let decision = dir.join(format!("decision-{update_id}"));
        let make = |step| {
            Bell::create(bell::path_for(&decision, step))
                .map_err(|e| format!("could not make the tree's bell in {}: {e}", dir.display()))
        };
        let bell = make(bell::COMMIT);
        let together = job.mode == Mode::Update && job.spec.is_some_and(|s| s.tree.commit() == TreeCommit::Together);
        let release = together.then(|| make(bell::RELEASE));
        Tree {
            release,
            rung_at_ns: None,
            commit_failed: false,
            hold: None,
            hold_for: Duration::ZERO,
            round: "prepare",
            bell,
            state,
            job,
            client_gone,
            decision,
            peers: Vec::new(),
            tx,
            rx,
            problem: None,
        }
    }

    /// Publishes where every member stands, for `Request::Progress`.
    fn show(&mut self, round: &'static str) {
        self.round = round;
        let members = self
            .peers
            .iter()
            .map(|p| MemberProgress {
                pid: p.member.pid,
                role: p.member.role.clone(),
                stand: match p.stand {
                    Stand::Invited => "preparing".into(),
                    Stand::Prepared => "waiting for its safe point".into(),
                    Stand::Staged => "staged".into(),
                    Stand::Committing => "committing".into(),
                    Stand::Committed => "committed".into(),
                    Stand::Merged => "stopped, merged, waiting for the others".into(),
                    Stand::Done => p.outcome.map_or("done", MemberOutcome::verb).into(),
                },
                waiting_for: p.waiting_for.clone(),
            })
            .collect();
        *PROGRESS.lock().unwrap_or_else(|p| p.into_inner()) = Some(TreeProgress {
            update: self.job.update.clone(),
            round: round.into(),
            members,
        });
    }

    fn run(&mut self, root: Member, others: Vec<Member>) -> Report {
        if let Err(why) = self
            .bell
            .as_ref()
            .and(self.release.as_ref().map_or(Ok(&()), |r| r.as_ref().map(|_| &())))
        {
            self.problem = Some(Problem::new(format!("{why}; nothing was changed")));
            return self.report();
        }
        self.invite(root);
        for m in others {
            self.invite(m);
        }
        let wait_deadline = Instant::now() + self.wait_timeout() + STAGE_GRACE;
        self.show("prepare");
        if self.prepare_round() && self.job.changes() && self.stage_round(wait_deadline) {
            if let Some(wait_deadline) = self.hold_staged(wait_deadline) {
                self.commit_round(wait_deadline);
            }
        }
        self.abort_the_rest();
        *PROGRESS.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let moved_on = self.peers.iter().any(|p| p.outcome == Some(MemberOutcome::Committed));
        for i in 0..self.peers.len() {
            if self.peers[i].outcome == Some(MemberOutcome::Unaffected) {
                self.send(i, if moved_on { Step::Keep } else { Step::Abort });
                self.peers[i].writer = None;
            }
        }
        self.report()
    }

    /// `pyreload prepare`: every member has staged; holds the tree there
    /// until the hold says. The commit's deadline then counts from the
    /// commit. None when the update stops here.
    fn hold_staged(&mut self, deadline: Instant) -> Option<Instant> {
        if self.hold.is_none() {
            return Some(deadline);
        }
        let so_far = self.staged_report();
        self.show("prepared");
        let hold = self.hold.as_mut().expect("a hold, checked above");
        match hold(so_far) {
            Held::Commit => Some(Instant::now() + self.wait_timeout() + STAGE_GRACE),
            Held::Abort(problem) => {
                self.problem = Some(problem);
                None
            }
        }
    }

    /// The tree's report before anything is said in it.
    fn blank_report(&self) -> Report {
        Report::begin(
            self.job.update.clone(),
            self.state.name.clone(),
            self.state.pid,
            self.peers
                .first()
                .and_then(|p| p.from.clone())
                .or_else(|| self.state.version()),
            self.job.to.clone(),
        )
    }

    /// What a staged tree can say before its commit.
    fn staged_report(&self) -> Report {
        let mut report = self.blank_report();
        report.outcome = Outcome::Checked;
        for peer in self.peers.iter().filter(|p| p.stand == Stand::Staged) {
            for m in &peer.modules {
                if !report.modules.iter().any(|r| &r.module == m) {
                    report.modules.push(ModuleReport {
                        module: m.clone(),
                        ..ModuleReport::default()
                    });
                }
            }
        }
        let staged: Vec<String> = self
            .peers
            .iter()
            .filter(|p| p.stand == Stand::Staged)
            .map(|p| format!("pid {} ({})", p.member.pid, p.member.role))
            .collect();
        report
            .warnings
            .push(format!("staged in {} member(s): {}", staged.len(), staged.join(", ")));
        report
    }

    fn wait_timeout(&self) -> Duration {
        self.job.timeout
    }

    fn commit_timeout(&self) -> Duration {
        self.job.commit_timeout
    }

    /// Opens a conversation with one member.
    fn invite(&mut self, member: Member) -> usize {
        self.invite_as(member, false)
    }

    /// Invites a child found after its parent committed: if it runs the
    /// new version already, it was forked after that commit, and is born
    /// new.
    fn invite_late(&mut self, member: Member) -> usize {
        self.invite_as(member, true)
    }

    fn invite_as(&mut self, member: Member, born_late: bool) -> usize {
        let index = self.peers.len();
        let mut peer = Peer {
            member,
            writer: None,
            stand: Stand::Invited,
            modules: Vec::new(),
            from: None,
            outcome: None,
            report: None,
            problem: None,
            at: None,
            waiting_for: Vec::new(),
            forked: false,
        };
        let request = Request::Member {
            protocol: PROTOCOL_VERSION,
            spec_path: self.job.spec_path.to_string(),
            spec_text: self.job.spec_text.to_string(),
            decision: self.decision.display().to_string(),
            mode: self.job.mode.clone(),
            born_late,
            hold_ms: self.hold_for.as_millis() as u64,
        };
        let opened = UnixStream::connect(&peer.member.socket).and_then(|stream| {
            let stream = Tracked::new(stream);
            stream.socket.set_write_timeout(Some(Duration::from_secs(5)))?;
            write_frame(&mut &stream.socket, &request)?;
            let reader = Tracked::new(stream.socket.try_clone()?);
            Ok((stream, reader))
        });
        match opened {
            Ok((writer, reader)) => {
                peer.writer = Some(writer);
                let tx = self.tx.clone();
                let spawned = std::thread::Builder::new()
                    .name("pyreload-tree".into())
                    .spawn(move || loop {
                        match read_frame::<MemberReply>(&mut &reader.socket) {
                            Ok(reply) => {
                                if tx.send((index, Heard::Reply(reply))).is_err() {
                                    return;
                                }
                            }
                            Err(e) => {
                                let _ = tx.send((index, Heard::Gone(e.to_string())));
                                return;
                            }
                        }
                    });
                if let Err(e) = spawned {
                    peer.writer = None;
                    let _ = self
                        .tx
                        .send((index, Heard::Gone(format!("could not start a reader: {e}"))));
                }
            }
            Err(e) => {
                let _ = self.tx.send((index, Heard::Gone(e.to_string())));
            }
        }
        self.peers.push(peer);
        index
    }

    /// The members that still take part.
    fn at(&self, stand: Stand) -> Vec<usize> {
        (0..self.peers.len())
            .filter(|&i| self.peers[i].stand == stand)
            .collect()
    }

    fn send(&mut self, i: usize, step: Step) {
        let sent = match self.peers[i].writer.as_mut() {
            Some(w) => write_frame(&mut &w.socket, &step).is_ok(),
            None => false,
        };
        if !sent {
            // The reader will hear the connection close, if it has not.
            self.peers[i].writer = None;
        }
    }

    /// Gives `who` (every member staged) the commit at once with the
    /// bell, or, should it fail, one message each.
    fn ring(&mut self, who: &[usize]) {
        self.rung_at_ns = Some(crate::process::member_wire::monotonic_ns());
        let rung = self.bell.as_ref().is_ok_and(|b| b.ring().is_ok());
        if !rung {
            for &i in who {
                self.send(i, Step::Commit);
            }
        }
    }

    /// Waits until each of `who` has answered (or is gone), up to
    /// `deadline`. `Waiting` notes are kept for progress and do not count
    /// as answers. Returns the answers in member order; a member that did
    /// not answer in time is missing.
    fn collect(&mut self, who: &[usize], deadline: Instant, cancellable: bool) -> BTreeMap<usize, Heard> {
        self.collect_while(who, deadline, cancellable, |_| true)
    }

    /// [`Tree::collect`], but stops early at the first answer `good`
    /// rejects (a `together` round stops holding the others at once).
    fn collect_while(
        &mut self,
        who: &[usize],
        deadline: Instant,
        cancellable: bool,
        good: impl Fn(&Heard) -> bool,
    ) -> BTreeMap<usize, Heard> {
        let mut heard = BTreeMap::new();
        while heard.len() < who.len() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            if cancellable && self.problem.is_none() && self.client_gone.is_some_and(|gone| gone()) {
                self.problem = Some(Problem::new(
                    "the client that asked for the update went away (was `pyreload apply` interrupted?); the update was cancelled before the commit and nothing was changed",
                ));
                break;
            }
            let slice = (deadline - now).min(Duration::from_millis(50));
            match self.rx.recv_timeout(slice) {
                Ok((i, Heard::Reply(MemberReply::Waiting { why }))) => {
                    self.peers[i].waiting_for = why;
                    self.show(self.round);
                }
                Ok((i, answer)) if who.contains(&i) && !heard.contains_key(&i) => {
                    let go_on = good(&answer);
                    heard.insert(i, answer);
                    if !go_on {
                        break;
                    }
                }
                // A late answer to an earlier step, or a member no longer
                // asked: its reader closing is all that can come now.
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        heard
    }

    /// Ends a member's part.
    fn finish(&mut self, i: usize, outcome: MemberOutcome, report: Option<Report>, problem: Option<Problem>) {
        let peer = &mut self.peers[i];
        peer.stand = Stand::Done;
        peer.outcome = Some(outcome);
        if let Some(r) = &report {
            if peer.from.is_none() {
                peer.from = r.from.clone();
            }
        }
        peer.problem = problem.or_else(|| report.as_ref().and_then(|r| r.problem.clone()));
        peer.report = report;
        peer.writer = None;
    }

    /// Whether member `i` has exited or is exiting: gone from /proc, or
    /// its socket gone (an exiting member removes it first; an exec'd one
    /// no longer listens).
    fn exited(&self, i: usize) -> bool {
        !members::alive(self.peers[i].member.pid) || !self.peers[i].member.socket.exists()
    }

    /// A member that went silent: exited (not a failure) or broken.
    fn lost(&mut self, i: usize, why: String) -> bool {
        let pid = self.peers[i].member.pid;
        if self.exited(i) {
            self.finish(i, MemberOutcome::Exited, None, None);
            false
        } else {
            let problem = Problem::new(format!("member pid {pid} stopped answering: {why}"));
            self.finish(i, MemberOutcome::Unknown, None, Some(problem));
            true
        }
    }

    /// A member's answer before the commit that is not the one hoped for:
    /// it exited (no failure), refused or gave up (the update stops, and
    /// this member is named), or said something out of turn.
    fn refused_before_commit(&mut self, i: usize, heard: &Heard, hoped: &str) {
        match heard {
            Heard::Reply(MemberReply::Exiting) => self.finish(i, MemberOutcome::Exited, None, None),
            Heard::Reply(
                MemberReply::Refused { report } | MemberReply::Aborted { report } | MemberReply::RolledBack { report },
            ) => {
                let report = (**report).clone();
                self.blame(i, report.problem.clone());
                let outcome = if report.outcome == Outcome::Cancelled {
                    MemberOutcome::Cancelled
                } else {
                    MemberOutcome::Refused
                };
                self.finish(i, outcome, Some(report), None);
            }
            Heard::Reply(MemberReply::Error { problem }) => {
                self.blame(i, Some(problem.clone()));
                self.finish(i, MemberOutcome::Refused, None, Some(problem.clone()));
            }
            Heard::Gone(why) => {
                if self.lost(i, why.clone()) {
                    let problem = self.peers[i].problem.clone();
                    self.blame(i, problem);
                }
            }
            Heard::Reply(other) => {
                let problem = Problem::new(format!("member said {other:?} when it should have {hoped}"));
                self.blame(i, Some(problem.clone()));
                self.finish(i, MemberOutcome::Unknown, None, Some(problem));
            }
        }
    }

    /// Every member resolves its part. Refused everywhere if one refuses,
    /// or if a module of the spec is loaded by no member.
    fn prepare_round(&mut self) -> bool {
        let who = self.at(Stand::Invited);
        let heard = self.collect(&who, Instant::now() + PREPARE_STEP, true);
        for &i in &who {
            match heard.get(&i) {
                Some(Heard::Reply(MemberReply::Prepared { modules, version })) => {
                    let peer = &mut self.peers[i];
                    peer.from = version.clone();
                    if modules.is_empty() {
                        // Told at the end whether the tree moved on.
                        peer.stand = Stand::Done;
                        peer.outcome = Some(MemberOutcome::Unaffected);
                    } else {
                        peer.modules = modules.clone();
                        peer.stand = Stand::Prepared;
                    }
                }
                Some(Heard::Reply(MemberReply::Checked { modules, report })) => {
                    let report = (**report).clone();
                    self.peers[i].modules = modules.clone();
                    self.peers[i].from = report.from.clone();
                    if let Some(problem) = &report.problem {
                        self.blame(i, Some(problem.clone()));
                        self.finish(i, MemberOutcome::Refused, Some(report), None);
                    } else {
                        self.finish(i, MemberOutcome::Checked, Some(report), None);
                    }
                }
                Some(other) => self.refused_before_commit(i, other, "prepared"),
                None => {
                    let problem = Problem::new("did not prepare in time");
                    self.blame(i, Some(problem.clone()));
                    self.finish(i, MemberOutcome::Unknown, None, Some(problem));
                }
            }
        }
        if self.problem.is_some() {
            return false;
        }
        self.check_coverage()
    }

    /// Every module the spec reloads is loaded by some member, and a module
    /// whose new source is not on disk (`source =`) is loaded by every
    /// member: one that lacks it could import, or fork a worker that
    /// imports, the old file later.
    fn check_coverage(&mut self) -> bool {
        let asked: Vec<String> = self
            .peers
            .iter()
            .map(|p| format!("{} ({})", p.member.pid, p.member.role))
            .collect();
        let Some(spec) = self.job.spec else { return true };
        for reload in &spec.reload {
            let module = reload.module.get_ref();
            let loading: Vec<u32> = self
                .peers
                .iter()
                .filter(|p| p.modules.iter().any(|m| m == module))
                .map(|p| p.member.pid)
                .collect();
            if loading.is_empty() && !reload.new {
                self.problem = Some(
                    Problem::new(format!(
                        "module `{module}` is not loaded in any process of the program's tree; nothing was changed"
                    ))
                    .with_help(format!(
                        "the members asked were: {}; check the module's name, or start the workers before updating",
                        asked.join(", ")
                    )),
                );
                return false;
            }
            if reload.source.is_some() && !reload.new {
                let lacking: Vec<String> = self
                    .peers
                    .iter()
                    .filter(|p| !p.modules.iter().any(|m| m == module))
                    .map(|p| format!("pid {} ({})", p.member.pid, p.member.role))
                    .collect();
                if !lacking.is_empty() {
                    self.problem = Some(
                        Problem::new(format!(
                            "`{module}` takes its new source from `source =`, but {} of the program's tree do not load it: \
                             they, or workers they fork later, would import the old file from disk; nothing was changed",
                            lacking.join(", ")
                        ))
                        .with_help(
                            "put the new files in place and leave out `source` (an in-place update), or start the server \
                             so that its master loads the app (gunicorn --preload)",
                        ),
                    );
                    return false;
                }
            }
        }
        true
    }

    /// Names the member that stopped the update.
    fn blame(&mut self, i: usize, problem: Option<Problem>) {
        if self.problem.is_some() {
            return;
        }
        let peer = &self.peers[i];
        let mut problem = problem.unwrap_or_else(|| Problem::new("refused"));
        problem.message = format!(
            "member pid {} ({}) refused: {}",
            peer.member.pid, peer.member.role, problem.message
        );
        self.problem = Some(problem);
    }

    /// Every member with a part waits for its safe point and stages.
    fn stage_round(&mut self, deadline: Instant) -> bool {
        let who = self.at(Stand::Prepared);
        for &i in &who {
            self.send(i, Step::Continue);
        }
        self.show("stage");
        self.hear_staged(&who, deadline);
        self.problem.is_none() && !self.at(Stand::Staged).is_empty()
    }

    fn hear_staged(&mut self, who: &[usize], deadline: Instant) {
        let heard = self.collect(who, deadline, true);
        for &i in who {
            match heard.get(&i) {
                Some(Heard::Reply(MemberReply::Staged)) => {
                    self.peers[i].stand = Stand::Staged;
                    self.peers[i].waiting_for.clear();
                }
                Some(other) => self.refused_before_commit(i, other, "staged"),
                None if self.problem.is_some() => {}
                None => {
                    let waiting = &self.peers[i].waiting_for;
                    let problem = Problem::new(format!(
                        "the safe point was not reached within timeout_ms ({} ms){}",
                        self.wait_timeout().as_millis(),
                        if waiting.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", waiting.join("; "))
                        }
                    ));
                    self.blame(i, Some(problem.clone()));
                    self.peers[i].problem = Some(problem);
                }
            }
        }
    }

    /// Every member is staged: decide "commit", ring it, and hear every
    /// member commit at its own safe point. Children forked meanwhile by a
    /// member that had not committed yet run the old version: they join and
    /// commit too. If any member fails its commit, the ones that committed
    /// are rolled back.
    fn commit_round(&mut self, deadline: Instant) {
        // Members forked since the last listing (a respawned worker) take
        // part, or they would run the old version.
        if !self.join_newcomers(deadline) {
            return;
        }
        let who = self.at(Stand::Staged);
        if who.is_empty() {
            return;
        }
        if decide(&self.decision, Decision::Commit) == Decision::Abort {
            self.problem = Some(Problem::new(
                "a member stopped waiting for the commit and decided to abort; nothing was changed",
            ));
            return;
        }
        self.show("commit");
        self.ring(&who);
        if self.release.is_some() {
            self.commit_together(&who);
        } else {
            self.hear_commits(&who);
        }
        // At most a few more rounds for children born old: a supervisor
        // that forks faster than members commit is bounded by the
        // deadline.
        while self.problem.is_none() {
            let joined = match self.children_left_out() {
                Ok(joined) => joined,
                Err(problem) => {
                    self.problem = Some(problem);
                    break;
                }
            };
            if joined.is_empty() || !self.join(&joined, deadline) {
                break;
            }
            let who: Vec<usize> = joined
                .into_iter()
                .filter(|&i| self.peers[i].stand == Stand::Staged)
                .collect();
            // The bell has rung already, for good: they commit once staged.
            if self.bell.is_err() {
                for &i in &who {
                    self.send(i, Step::Commit);
                }
            }
            self.hear_commits(&who);
        }
        let committed = self.at(Stand::Committed);
        // A rollback cannot be undone in turn: the members that rolled back
        // stay so, and the report names the one that did not.
        let rollback = matches!(self.job.mode, Mode::Rollback(_));
        if self.problem.is_none() || rollback {
            for &i in &committed {
                self.send(i, Step::Keep);
                self.finish_committed(i);
            }
        } else {
            self.revert(&committed);
        }
    }

    /// Waits for each of `who` to say how its commit went. A member waits
    /// for its safe point first (bounded by the spec's `timeout_ms`), then
    /// commits within `commit_timeout_ms`.
    fn hear_commits(&mut self, who: &[usize]) {
        for &i in who {
            self.peers[i].stand = Stand::Committing;
        }
        let until = Instant::now() + self.wait_timeout() + self.commit_timeout() + STAGE_GRACE;
        let heard = self.collect(who, until, false);
        for &i in who {
            match heard.get(&i) {
                Some(Heard::Reply(MemberReply::Released { report, at, forked })) => {
                    let peer = &mut self.peers[i];
                    peer.stand = Stand::Committed;
                    peer.at = Some(*at);
                    peer.forked = *forked;
                    peer.report = Some((**report).clone());
                }
                Some(other) => self.commit_went_wrong(i, other),
                // Gone quietly (exited), or silent: then it may yet commit,
                // and is told beforehand to undo that if the tree fails.
                None if self.exited(i) => self.finish(i, MemberOutcome::Exited, None, None),
                None => {
                    let problem = Problem::new("did not answer the commit in time");
                    self.blame_commit(i, Some(problem.clone()));
                    self.send(i, Step::Revert);
                    self.finish(i, MemberOutcome::Unknown, None, Some(problem));
                }
            }
        }
    }

    /// A member's answer to the commit other than the one hoped for (its
    /// release, or its merge): the member's outcome, and the failure it
    /// caused, unless it only exited.
    fn commit_went_wrong(&mut self, i: usize, heard: &Heard) {
        match heard {
            Heard::Reply(MemberReply::Exiting) => self.finish(i, MemberOutcome::Exited, None, None),
            Heard::Reply(MemberReply::RolledBack { report }) => {
                let report = (**report).clone();
                self.blame_commit(i, report.problem.clone());
                self.finish(i, MemberOutcome::RolledBack, Some(report), None);
            }
            Heard::Reply(MemberReply::Refused { report } | MemberReply::Aborted { report }) => {
                let report = (**report).clone();
                self.blame_commit(i, report.problem.clone());
                self.finish(i, MemberOutcome::Refused, Some(report), None);
            }
            Heard::Gone(why) => {
                if self.lost(i, why.clone()) {
                    let problem = self.peers[i].problem.clone();
                    self.blame_commit(i, problem);
                }
            }
            Heard::Reply(other) => {
                let problem = Problem::new(format!("answered the commit with {other:?}"));
                self.blame_commit(i, Some(problem.clone()));
                self.finish(i, MemberOutcome::Unknown, None, Some(problem));
            }
        }
    }

    /// `[tree] commit = "together"`, once the commit has rung: every one of
    /// `who` stops at its safe point and merges, and waits, stopped. When
    /// all have (within `hold_ms` of the ring), one ring of the release
    /// bell lets them go on the new version together; otherwise it tells
    /// them to undo their merges, and no member ever ran the new version.
    /// The release decision settles a race with a member that gave up
    /// waiting: the first decision holds.
    fn commit_together(&mut self, who: &[usize]) {
        for &i in who {
            self.peers[i].stand = Stand::Committing;
        }
        let hold = self.job.spec.map(|s| s.tree.hold()).unwrap_or_default();
        let merged_or_gone = |h: &Heard| {
            matches!(
                h,
                Heard::Reply(MemberReply::Merged | MemberReply::Exiting) | Heard::Gone(_)
            )
        };
        let heard = self.collect_while(who, Instant::now() + hold, false, merged_or_gone);
        let mut merged = Vec::new();
        for &i in who {
            match heard.get(&i) {
                Some(Heard::Reply(MemberReply::Merged)) => {
                    self.peers[i].stand = Stand::Merged;
                    merged.push(i);
                }
                Some(other) => self.commit_went_wrong(i, other),
                None => {}
            }
        }
        // Still trying (blamed only when nobody failed first): each hears
        // the release bell and gives up.
        for &i in who.iter().filter(|i| !heard.contains_key(i)) {
            self.blame_commit(
                i,
                Some(Problem::new(format!(
                    "did not stop at its safe point and merge within the tree's hold_ms ({} ms)",
                    hold.as_millis()
                ))),
            );
        }
        let want = if self.problem.is_none() {
            Decision::Commit
        } else {
            Decision::Abort
        };
        let word = decide(&release_decision(&self.decision), want);
        if word == Decision::Commit {
            // Only now: the bell means "commit" to whoever hears it.
            let rung = matches!(&self.release, Some(Ok(bell)) if bell.ring().is_ok());
            if !rung {
                for &i in &merged {
                    self.send(i, Step::Commit);
                }
            }
            return self.hear_commits(&merged);
        }
        if self.problem.is_none() {
            self.problem = Some(Problem::new(
                "a member stopped with its merge did not hear the tree's word within hold_ms and decided to abort; every member undid its merge",
            ));
        }
        for &i in &merged {
            self.send(i, Step::Abort);
        }
        // Everyone still in the round undoes, or gives up: hear them out.
        let left: Vec<usize> = who
            .iter()
            .copied()
            .filter(|&i| self.peers[i].stand != Stand::Done)
            .collect();
        let until = Instant::now() + self.wait_timeout() + self.commit_timeout() + STAGE_GRACE;
        let mut heard = self.collect(&left, until, false);
        // A member that merged as the tree decided says so first, and is
        // told in turn.
        let late: Vec<usize> = left
            .iter()
            .copied()
            .filter(|i| !merged.contains(i) && matches!(heard.get(i), Some(Heard::Reply(MemberReply::Merged))))
            .collect();
        for &i in &late {
            self.send(i, Step::Abort);
        }
        heard.extend(self.collect(&late, until, false));
        for &i in &left {
            match heard.get(&i) {
                Some(Heard::Reply(MemberReply::Undone { report })) => {
                    let report = (**report).clone();
                    self.finish(i, MemberOutcome::RolledBack, Some(report), None);
                }
                Some(Heard::Reply(MemberReply::RolledBack { report })) => {
                    let report = (**report).clone();
                    self.finish(i, MemberOutcome::RolledBack, Some(report), None);
                }
                Some(Heard::Reply(MemberReply::Refused { report } | MemberReply::Aborted { report })) => {
                    let report = (**report).clone();
                    self.finish(i, MemberOutcome::Refused, Some(report), None);
                }
                Some(Heard::Reply(MemberReply::Exiting)) => self.finish(i, MemberOutcome::Exited, None, None),
                Some(Heard::Gone(why)) => {
                    let why = why.clone();
                    self.lost(i, why);
                }
                _ => {
                    let problem =
                        Problem::new("did not say whether it undid its merge in time; it may run the new version");
                    self.finish(i, MemberOutcome::Unknown, None, Some(problem));
                }
            }
        }
    }

    /// A committed member's part is over: its commit stands.
    fn finish_committed(&mut self, i: usize) {
        let report = self.peers[i].report.take();
        self.finish(i, MemberOutcome::Committed, report, None);
    }

    /// Another member failed its commit: rolls back the ones that
    /// committed, each at its own safe point, and hears how it went.
    fn revert(&mut self, committed: &[usize]) {
        for &i in committed {
            self.send(i, Step::Revert);
        }
        let until = Instant::now() + self.wait_timeout() + self.commit_timeout() + STAGE_GRACE;
        let heard = self.collect(committed, until, false);
        for &i in committed {
            match heard.get(&i) {
                Some(Heard::Reply(MemberReply::Undone { report })) => {
                    let report = (**report).clone();
                    let outcome = if report.outcome == Outcome::RolledBack {
                        MemberOutcome::RolledBack
                    } else {
                        // Its rollback failed: it still runs the new version.
                        MemberOutcome::Committed
                    };
                    self.finish(i, outcome, Some(report), None);
                }
                Some(Heard::Gone(why)) => {
                    let why = why.clone();
                    self.lost(i, why);
                }
                _ => {
                    let report = self.peers[i].report.take();
                    let problem = Problem::new(
                        "did not say whether it rolled its commit back in time; it may still run the new version",
                    );
                    self.finish(i, MemberOutcome::Unknown, report, Some(problem));
                }
            }
        }
        let kept: Vec<String> = committed
            .iter()
            .filter(|&&i| {
                matches!(
                    self.peers[i].outcome,
                    Some(MemberOutcome::Committed | MemberOutcome::Unknown)
                )
            })
            .map(|&i| format!("pid {}", self.peers[i].member.pid))
            .collect();
        if let Some(problem) = self.problem.as_mut().filter(|_| self.commit_failed) {
            problem.message.push_str(&if committed.is_empty() {
                "; no other member had committed".to_string()
            } else if kept.is_empty() {
                "; every member that had committed was rolled back".to_string()
            } else {
                format!(
                    "; the members that had committed were rolled back except {}, which may still run the new \
                     version (see the members below)",
                    kept.join(", ")
                )
            });
        }
    }

    /// Children of the members that forked since they were invited, that
    /// take no part yet: forked before their parent committed, they run
    /// the old version. A child being born (its socket not bound yet) is
    /// waited for up to [`BORN_WAIT`]; still without a socket then, it is
    /// an error, as it would keep the old version unseen. Invites them and
    /// returns their places.
    fn children_left_out(&mut self) -> Result<Vec<usize>, Problem> {
        let known: Vec<u32> = self.peers.iter().map(|p| p.member.pid).collect();
        let tree_dir = self.state.identity.tree_dir();
        let mut found = Vec::new();
        let parents: Vec<u32> = self
            .peers
            .iter()
            .filter(|p| p.forked && p.stand == Stand::Committed)
            .map(|p| p.member.pid)
            .collect();
        for parent in parents {
            for child in members::children(parent) {
                if known.contains(&child) || !members::alive(child) || !members::runs_this_program(child) {
                    continue;
                }
                let bound = crate::process::tree::member_socket_path(&tree_dir, child).exists()
                    || (members::threads(child) == 1 && wait_for_birth(self.state, parent, child)?);
                // Otherwise it has been a member and is exiting.
                if bound {
                    found.push(child);
                }
            }
        }
        let newcomers: Vec<Member> = members::others(self.state)
            .into_iter()
            .filter(|m| found.contains(&m.pid))
            .collect();
        Ok(newcomers.into_iter().map(|m| self.invite_late(m)).collect())
    }

    /// Live members not yet asked (their sockets appeared since).
    fn newcomers(&self) -> Vec<Member> {
        members::others(self.state)
            .into_iter()
            .filter(|m| !self.peers.iter().any(|p| p.member.pid == m.pid))
            .collect()
    }

    /// Brings newcomers to the stand of the others: prepared and staged.
    fn join_newcomers(&mut self, deadline: Instant) -> bool {
        let newcomers = self.newcomers();
        if newcomers.is_empty() {
            return true;
        }
        let joined: Vec<usize> = newcomers.into_iter().map(|m| self.invite(m)).collect();
        self.join(&joined, deadline)
    }

    /// Prepares and stages members invited late.
    fn join(&mut self, joined: &[usize], deadline: Instant) -> bool {
        if !self.prepare_round() {
            return false;
        }
        let who: Vec<usize> = joined
            .iter()
            .copied()
            .filter(|&i| self.peers[i].stand == Stand::Prepared)
            .collect();
        for &i in &who {
            self.send(i, Step::Continue);
        }
        self.hear_staged(&who, deadline);
        self.problem.is_none()
    }

    fn blame_commit(&mut self, i: usize, problem: Option<Problem>) {
        if self.problem.is_some() {
            return;
        }
        let peer = &self.peers[i];
        let mut problem = problem.unwrap_or_else(|| Problem::new("failed"));
        problem.message = if matches!(self.job.mode, Mode::Rollback(_)) {
            format!(
                "the rollback failed in member pid {} ({}): {}; the members that rolled back run {} again, and the \
                 others still run the version they had (see the members below)",
                peer.member.pid, peer.member.role, problem.message, self.job.to
            )
        } else if self.release.is_some() {
            format!(
                "the commit failed in member pid {} ({}): {}; every member undid its merge before running the new version",
                peer.member.pid, peer.member.role, problem.message
            )
        } else {
            // `revert` adds how the members that had committed ended.
            self.commit_failed = true;
            format!(
                "the commit failed in member pid {} ({}): {}",
                peer.member.pid, peer.member.role, problem.message
            )
        };
        self.problem = Some(problem);
    }

    /// Tells every member still in the conversation to give up, and hears
    /// them out.
    fn abort_the_rest(&mut self) {
        let who: Vec<usize> = (0..self.peers.len())
            .filter(|&i| matches!(self.peers[i].stand, Stand::Invited | Stand::Prepared | Stand::Staged))
            .collect();
        for &i in &who {
            self.send(i, Step::Abort);
        }
        let heard = self.collect(&who, Instant::now() + STAGE_GRACE, false);
        for &i in &who {
            match heard.get(&i) {
                Some(Heard::Reply(
                    MemberReply::Aborted { report }
                    | MemberReply::Refused { report }
                    | MemberReply::RolledBack { report },
                )) => {
                    let report = (**report).clone();
                    let outcome = match report.outcome {
                        Outcome::Refused => MemberOutcome::Refused,
                        _ => MemberOutcome::Cancelled,
                    };
                    self.finish(i, outcome, Some(report), None);
                }
                Some(Heard::Reply(MemberReply::Prepared { version, .. })) => {
                    self.peers[i].from = version.clone();
                    self.finish(i, MemberOutcome::Cancelled, None, None);
                }
                Some(Heard::Reply(MemberReply::Exiting)) => self.finish(i, MemberOutcome::Exited, None, None),
                Some(Heard::Gone(why)) => {
                    let why = why.clone();
                    if self.lost(i, why) {
                        self.peers[i].outcome = Some(MemberOutcome::Cancelled);
                    }
                }
                _ => {
                    let problem = self.peers[i].problem.clone();
                    self.finish(i, MemberOutcome::Cancelled, None, problem);
                }
            }
        }
    }

    /// The tree's report: the members', summed up.
    fn report(&mut self) -> Report {
        let mut report = self.blank_report();
        let committed = self.peers.iter().any(|p| p.outcome == Some(MemberOutcome::Committed));
        let rolled_back = self.peers.iter().any(|p| p.outcome == Some(MemberOutcome::RolledBack));
        let checked = self.peers.iter().any(|p| p.outcome == Some(MemberOutcome::Checked));
        if self.problem.is_none() && !committed && !rolled_back && !checked {
            let exited = self.peers.iter().any(|p| p.outcome == Some(MemberOutcome::Exited));
            self.problem = Some(if exited {
                Problem::new(
                    "every member that loads the spec's modules exited during the update (a worker retired by its \
                     supervisor); nothing was changed",
                )
                .with_help("apply again: the workers that replace them are members")
            } else {
                Problem::new("no member of the program's tree took part in the update; nothing was changed")
            });
        }
        report.outcome = match (&self.problem, committed, rolled_back) {
            (None, _, _) if checked || !self.job.changes() => Outcome::Checked,
            (None, true, _) => Outcome::Committed,
            (Some(_), _, true) => Outcome::RolledBack,
            (Some(p), _, _) if p.message.contains("went away") => Outcome::Cancelled,
            _ => Outcome::Refused,
        };
        report.problem = self.problem.clone();
        let mut modules: BTreeMap<String, ModuleReport> = BTreeMap::new();
        let mut order = Vec::new();
        for peer in &self.peers {
            let Some(r) = &peer.report else { continue };
            for m in &r.modules {
                if !modules.contains_key(&m.module) {
                    order.push(m.module.clone());
                    modules.insert(m.module.clone(), m.clone());
                }
            }
            let t = &mut report.timings;
            t.prepare_ms = t.prepare_ms.max(r.timings.prepare_ms);
            t.wait_ms = t.wait_ms.max(r.timings.wait_ms);
            t.stage_ms = t.stage_ms.max(r.timings.stage_ms);
            t.stop_ms = t.stop_ms.max(r.timings.stop_ms);
            t.safe_point_ms = t.safe_point_ms.max(r.timings.safe_point_ms);
            t.run_alone_ms = t.run_alone_ms.max(r.timings.run_alone_ms);
            t.commit_ms = t.commit_ms.max(r.timings.commit_ms);
            t.check_ms = t.check_ms.max(r.timings.check_ms);
            t.moved_code_ms = t.moved_code_ms.max(r.timings.moved_code_ms);
            t.rollback_ms = t.rollback_ms.max(r.timings.rollback_ms);
            t.resume_ms = t.resume_ms.max(r.timings.resume_ms);
            t.pause_ms = t.pause_ms.max(r.timings.pause_ms);
            report.safe_point_checks = report.safe_point_checks.max(r.safe_point_checks);
            report.stopped_threads += r.stopped_threads;
            if report.safe_point.inactive.is_empty() && report.safe_point.condition.is_none() {
                report.safe_point = r.safe_point.clone();
            }
            if report.transforms.is_empty() {
                report.transforms = r.transforms.clone();
            }
            for w in &r.warnings {
                let w = format!("pid {}: {w}", peer.member.pid);
                if !report.warnings.contains(&w) {
                    report.warnings.push(w);
                }
            }
        }
        report.modules = order.into_iter().filter_map(|m| modules.remove(&m)).collect();
        let released: Vec<u64> = self
            .peers
            .iter()
            .filter_map(|p| p.at.map(|at| at.released_ns))
            .collect();
        if let (Some(first), Some(last)) = (released.iter().min(), released.iter().max()) {
            report.skew_ms = Some((last - first) as f64 / 1e6);
        }
        if self.job.mode == Mode::Update {
            report.tree_commit = self.job.spec.map(|s| s.tree.commit());
        }
        // A member's instant as the time since the commit's bell, in ms.
        let after_bell = |at: Option<u64>| {
            at.zip(self.rung_at_ns)
                .map(|(at, rung)| at.saturating_sub(rung) as f64 / 1e6)
        };
        report.members = self
            .peers
            .iter()
            .map(|p| {
                let outcome = p.outcome.unwrap_or(MemberOutcome::Unknown);
                MemberReport {
                    pid: p.member.pid,
                    ppid: p.member.ppid,
                    role: p.member.role.clone(),
                    from: p.from.clone(),
                    to: match outcome {
                        MemberOutcome::Committed => Some(self.job.to.clone()),
                        // A member that loads none of the modules follows
                        // the tree's version.
                        MemberOutcome::Unaffected if committed => Some(self.job.to.clone()),
                        MemberOutcome::Exited => None,
                        _ => p.from.clone(),
                    },
                    outcome,
                    modules: p.modules.clone(),
                    pause_ms: p.report.as_ref().map_or(0.0, |r| r.timings.pause_ms),
                    after_bell_ms: after_bell(p.at.map(|at| at.released_ns)),
                    woke_after_bell_ms: after_bell(p.at.and_then(|at| at.woke_ns)),
                    gil_after_bell_ms: after_bell(p.at.and_then(|at| at.gil_ns)),
                    safe_point_checks: p.report.as_ref().map_or(0, |r| r.safe_point_checks),
                    bell: p.report.as_ref().and_then(|r| r.bell),
                    gil_boost_capped: p.report.as_ref().map_or(0, |r| r.gil_boost_capped),
                    problem: p.problem.clone(),
                }
            })
            .collect();
        report
    }

    /// Decision files of updates long over: a member that was hung that
    /// long has been killed by its supervisor, or has read it.
    fn forget_old_decisions(&self) {
        let Some(dir) = self.decision.parent() else { return };
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > Duration::from_secs(600));
            let is_decision = entry.file_name().to_str().is_some_and(|n| n.starts_with("decision-"));
            if old && is_decision {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}
