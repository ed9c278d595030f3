//! Prepared updates: the first phase of a commit across hosts.
//!
//! `pyreload prepare` runs an update up to the commit and leaves it
//! **prepared**; `pyreload commit ID` finishes it and `pyreload abort ID`
//! drops it. An orchestrator (Ansible, see `deploy/`) prepares on every
//! host, then commits everywhere only if every host prepared.
//!
//! | step     | the program                                  | on failure / end         |
//! |----------|----------------------------------------------|--------------------------|
//! | prepare  | runs; sources compiled, names resolved        | refused                  |
//! | wait     | runs; safe point reached once                 | refused                  |
//! | stage    | runs the old version; new bodies staged       | refused                  |
//! | held     | runs the old version; the update gate held    | lease ends: aborted      |
//! | commit   | as `apply`: wait, stop, merge, check          | refused / rolled back    |
//!
//! The held update lives in a thread of its own (`pyreload-prepared`),
//! not in the control connection that asked for it: it outlives that
//! connection, and waits for a command with the GIL released, so the
//! program runs at full speed meanwhile. Threads at the spec's update
//! point are not held while prepared (they are again once the commit
//! waits). Holding the update gate is what makes other applies busy.
//!
//! An id is `<pid>-<instance>-<n>`: the instance is the time this run of
//! the program started, in microseconds, in hex, so an id from another
//! program, or from before a restart that reused the pid, is told apart
//! and the refusal says which. The fate of past ids (committed, aborted,
//! expired, ...) is kept, the newest [`FATES_KEPT`], so that `commit` and
//! `abort` are idempotent and refusals give reasons.

use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use pyo3::prelude::*;

use super::progress::Progress;
use super::session::Session;
use super::{ms, report_for, Stop};
use crate::diagnostic::Problem;
use crate::process::per_process::PerProcess;
use crate::process::state::{unix_seconds, GateError, ProcessState};
use crate::process::update_point::points;
use crate::process::wire::{Phase, PreparedFate, PreparedInfo};
use crate::report::{Outcome, Report};
use crate::spec::{self, SpecSource};

/// How many past ids keep their fate.
pub const FATES_KEPT: usize = 100;
/// The longest lease a prepare may ask for.
pub const MAX_LEASE: Duration = Duration::from_secs(24 * 3600);
/// How often the held update looks whether the program began to exit.
const EXIT_SLICE: Duration = Duration::from_millis(50);
/// How long `commit` or `abort` waits for an update that is already
/// committing (asked twice at once) to end.
const ENDING_WAIT: Duration = Duration::from_secs(300);

/// What `prepare` answers.
pub enum Prepared {
    /// Held, under this id, with the report so far.
    Held(PreparedInfo, Box<Report>),
    /// Refused or cancelled before it was held: nothing changed.
    Refused(Box<Report>),
}

/// What `commit` and `abort` answer.
pub enum Answer {
    /// The commit's report (also for a commit asked again).
    Report(Box<Report>),
    /// What became of the update.
    Fate(PreparedFate),
}

/// What `commit` or `abort` asks of the held update, with where to answer.
pub(crate) enum Command {
    Commit(Sender<Answer>),
    Abort(Sender<Answer>),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Holding {
    /// Waiting for a command or the end of the lease.
    Open,
    /// A command was taken, or the lease ended: its fate is being decided.
    Ending,
}

struct Held {
    info: PreparedInfo,
    holding: Holding,
    tx: Sender<Command>,
}

struct Past {
    fate: PreparedFate,
    report: Option<Report>,
}

#[derive(Default)]
struct Registry {
    issued: u64,
    held: Option<Held>,
    past: Vec<Past>,
}

/// Per process: a forked child starts with no prepared update (the held
/// thread stayed in its parent).
static REGISTRY: PerProcess<Mutex<Registry>> = PerProcess::new(|| Mutex::new(Registry::default()));

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.get().lock().unwrap_or_else(|p| p.into_inner())
}

/// This run of the program, as ids name it.
fn instance(state: &ProcessState) -> String {
    let micros = state
        .started_at
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    format!("{micros:x}")
}

/// An id's parts: pid, instance, number. None if it is no id.
pub fn parse_id(id: &str) -> Option<(u32, &str, u64)> {
    let mut parts = id.split('-');
    let pid = parts.next()?.parse().ok()?;
    let instance = parts
        .next()
        .filter(|i| !i.is_empty() && i.chars().all(|c| c.is_ascii_hexdigit()))?;
    let n = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((pid, instance, n))
}

/// What `status` shows: the update held now, if any.
pub fn info() -> Option<PreparedInfo> {
    let registry = registry();
    registry.held.as_ref().map(|h| {
        let mut info = h.info.clone();
        info.lease_left_s = (info.expires_at - unix_seconds(SystemTime::now())).max(0.0);
        info
    })
}

/// The refusal when the update gate is held by a prepared update.
pub fn busy_problem() -> Option<Problem> {
    info().map(|p| {
        Problem::new(format!(
            "the update `{}` ({}) is prepared in this program and holds it until it is committed or aborted, or \
             its lease ends in {:.0} s; nothing was changed",
            p.update, p.id, p.lease_left_s
        ))
        .with_help(format!("`pyreload commit {0}` or `pyreload abort {0}` ends it", p.id))
    })
}

/// Runs the spec up to the commit in a thread of its own, and answers once
/// it is held (or refused). `lease` bounds how long it waits for `commit`.
pub fn prepare(
    state: &'static ProcessState,
    spec_path: &str,
    spec_text: &str,
    lease: Duration,
) -> Result<Prepared, Problem> {
    let source = SpecSource {
        path: spec_path.to_string(),
        text: spec_text.to_string(),
    };
    let spec = precheck(&source, lease)?;
    spawn_holder(move |ready| hold(state, source, spec, lease, ready))
}

/// Runs `hold` in a thread of its own (`pyreload-prepared`), which holds
/// the prepared update, and returns what it first answers: prepared, or
/// refused.
pub fn spawn_holder(
    hold: impl FnOnce(Sender<Result<Prepared, Problem>>) + Send + 'static,
) -> Result<Prepared, Problem> {
    let (ready_tx, ready_rx) = channel();
    std::thread::Builder::new()
        .name("pyreload-prepared".into())
        .spawn(move || hold(ready_tx))
        .map_err(|e| Problem::new(format!("could not start the thread that holds a prepared update: {e}")))?;
    ready_rx
        .recv()
        .unwrap_or_else(|_| Err(Problem::new("the prepared update's thread ended before it answered")))
}

/// The held update's thread: prepare, wait, stage, hold; then commit or
/// abort as told, or abort when the lease ends.
fn hold(
    state: &'static ProcessState,
    source: SpecSource,
    spec: spec::Spec,
    lease: Duration,
    ready: Sender<Result<Prepared, Problem>>,
) {
    let gate = match state.begin_update() {
        Ok(gate) => gate,
        Err(e) => {
            let problem = match e {
                GateError::Busy => busy_problem().unwrap_or_else(|| {
                    Problem::new("another update is in progress in this program; nothing was changed")
                        .with_help("wait for it to finish and try again; `pyreload status` shows the history")
                }),
                GateError::Exiting => Problem::new("the program is exiting; nothing was changed"),
            };
            let _ = ready.send(Err(problem));
            return;
        }
    };
    let started = Instant::now();
    let mut report = report_for(state, &spec);
    let progress = Progress::begin(state, &report.update, None);
    let mut held_for = Duration::ZERO;
    let ended = Python::attach(|py| {
        let Some(session) = staged(py, state, &progress, &source, &spec, &mut report) else {
            report.timings.total_ms = ms(started);
            state.record_attempt(&report);
            let _ = ready.send(Ok(Prepared::Refused(Box::new(report.clone()))));
            return None;
        };
        let mut session = session;
        session.let_points_go();
        let (info, rx) = register(state, &report.update, &source.path, lease);
        report.outcome = Outcome::Checked;
        report.prepared_id = Some(info.id.clone());
        progress.enter(Phase::Prepared);
        let _ = ready.send(Ok(Prepared::Held(info.clone(), Box::new(report.clone()))));
        let held_at = Instant::now();
        let command = py.detach(move || next_command(state, &rx, held_at + lease));
        // The update's total is its own work, prepare and commit, without
        // the time it was held.
        held_for = held_at.elapsed();
        Some(finish(state, &progress, session, command, &info, lease, &mut report))
    });
    report.timings.total_ms = ms(started) - held_for.as_secs_f64() * 1000.0;
    drop(progress);
    drop(gate);
    let Some((fate, reply)) = ended else { return };
    state.record_attempt(&report);
    conclude(fate, &report, reply);
}

/// Registers a prepared update under a new id, logs it, and returns
/// where its commands arrive. The lease runs from now.
pub(crate) fn register(
    state: &ProcessState,
    update: &str,
    spec_path: &str,
    lease: Duration,
) -> (PreparedInfo, Receiver<Command>) {
    let (tx, rx) = channel();
    let now = SystemTime::now();
    let mut registry = registry();
    registry.issued += 1;
    let info = PreparedInfo {
        id: format!("{}-{}-{}", state.pid, instance(state), registry.issued),
        update: update.to_string(),
        spec: spec_path.to_string(),
        prepared_at: unix_seconds(now),
        expires_at: unix_seconds(now + lease),
        lease_left_s: lease.as_secs_f64(),
    };
    registry.held = Some(Held {
        info: info.clone(),
        holding: Holding::Open,
        tx,
    });
    drop(registry);
    crate::process::log(format!(
        "pyreload: prepared update `{}` ({}); it aborts by itself unless committed within {} ms",
        info.update,
        info.id,
        lease.as_millis()
    ));
    (info, rx)
}

/// Once a held update is over (its report recorded, the update gate let
/// go): logs its fate, keeps it for later commands, and answers the
/// command that ended it.
pub(crate) fn conclude(fate: PreparedFate, report: &Report, reply: Option<Sender<Answer>>) {
    crate::process::log(format!(
        "pyreload: prepared update `{}` ({}): {}",
        fate.update, fate.id, fate.why
    ));
    let keep = matches!(fate.state.as_str(), "committed" | "rolled_back" | "refused").then(|| report.clone());
    let answer = answer_of(&fate, keep.as_ref(), false);
    {
        let mut registry = registry();
        registry.held = None;
        registry.past.push(Past {
            fate: fate.clone(),
            report: keep,
        });
        let extra = registry.past.len().saturating_sub(FATES_KEPT);
        registry.past.drain(..extra);
    }
    if let Some(reply) = reply {
        let _ = reply.send(answer);
    }
}

/// A fate, decided now.
pub(crate) fn fate(info: &PreparedInfo, state: &str, why: String) -> PreparedFate {
    PreparedFate {
        id: info.id.clone(),
        update: info.update.clone(),
        state: state.into(),
        at: unix_seconds(SystemTime::now()),
        why,
    }
}

/// The fate of a commit that was tried, from its report's outcome.
pub(crate) fn committed_fate(info: &PreparedInfo, outcome: Outcome) -> PreparedFate {
    match outcome {
        Outcome::Committed => fate(info, "committed", "committed by `pyreload commit`".into()),
        Outcome::RolledBack => fate(
            info,
            "rolled_back",
            "`pyreload commit` failed in the commit and was rolled back; nothing changed".into(),
        ),
        _ => fate(
            info,
            "refused",
            "`pyreload commit` was refused before the commit; nothing changed".into(),
        ),
    }
}

/// Why a held update ended without a commit.
pub(crate) fn expired_why(lease: Duration) -> String {
    format!(
        "expired: nobody committed it within its lease of {}, so it was aborted by itself; nothing was changed",
        describe(lease)
    )
}

pub(crate) const EXITING_WHY: &str =
    "the program began to exit while the update was prepared; it was aborted, nothing was changed";
pub(crate) const ABORTED_WHY: &str = "aborted by `pyreload abort`; nothing was changed";

/// Checks a prepare request before anything is held: the spec parses, the
/// lease is in range, and no update is prepared already.
pub(crate) fn precheck(source: &SpecSource, lease: Duration) -> Result<spec::Spec, Problem> {
    let spec = spec::parse(source).map_err(|mut problems| problems.remove(0))?;
    if lease.is_zero() || lease > MAX_LEASE {
        return Err(Problem::new(format!(
            "a lease of {} ms is out of range; nothing was changed",
            lease.as_millis()
        ))
        .with_help("give a lease between 1 ms and 24 h, e.g. `--lease 60s`"));
    }
    if let Some(problem) = busy_problem() {
        return Err(problem);
    }
    Ok(spec)
}

/// Prepare, wait and stage, as `apply` does them; None (with the report
/// saying why) if the update cannot be prepared.
fn staged<'py>(
    py: Python<'py>,
    state: &ProcessState,
    progress: &Progress<'_>,
    source: &SpecSource,
    spec: &spec::Spec,
    report: &mut Report,
) -> Option<Session<'py>> {
    let mut session = match Session::prepare(py, state, source, spec, report) {
        Ok(session) => session,
        Err(problem) => {
            report.problem = Some(problem);
            return None;
        }
    };
    match session.wait(progress, report) {
        Ok(()) => {}
        Err(Stop::Refused(problem)) => {
            report.problem = Some(problem);
            return None;
        }
        Err(Stop::Abandoned(problem)) => {
            report.cancel(problem);
            return None;
        }
    }
    if let Err(problem) = session.stage(progress, report) {
        report.problem = Some(problem);
        return None;
    }
    // What would hold the commit back now: the program runs on meanwhile,
    // so the commit waits for its safe point again.
    match super::safepoint::check(py, &session.support, &session.plan, &points().waiting()) {
        Ok(blockers) => report.warnings.extend(
            super::describe_blockers_now(&blockers, &session.plan)
                .into_iter()
                .map(|w| w.replace("apply would wait", "commit would wait")),
        ),
        Err(problem) => report.warnings.push(format!(
            "the safe point could not be checked after staging: {}",
            problem.message
        )),
    }
    Some(session)
}

/// Why the held update stops waiting.
pub(crate) enum Next {
    Told(Command),
    Expired,
    Exiting,
}

/// Waits (GIL released) for a command, the end of the lease, or the
/// program's exit.
pub(crate) fn next_command(state: &ProcessState, rx: &Receiver<Command>, until: Instant) -> Next {
    loop {
        let now = Instant::now();
        if state.exit_requested() {
            mark_ending();
            return Next::Exiting;
        }
        if now >= until {
            // Commands sent from here on find the update ending, and wait
            // for its fate (expired).
            mark_ending();
            return Next::Expired;
        }
        match rx.recv_timeout((until - now).min(EXIT_SLICE)) {
            Ok(command) => {
                mark_ending();
                return Next::Told(command);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Next::Expired,
        }
    }
}

fn mark_ending() {
    if let Some(held) = registry().held.as_mut() {
        held.holding = Holding::Ending;
    }
}

/// Ends the held update as `command` says; returns its fate and whom to
/// tell.
#[allow(clippy::too_many_arguments)]
fn finish(
    state: &ProcessState,
    progress: &Progress<'_>,
    mut session: Session<'_>,
    command: Next,
    info: &PreparedInfo,
    lease: Duration,
    report: &mut Report,
) -> (PreparedFate, Option<Sender<Answer>>) {
    let (done, reply) = match command {
        Next::Told(Command::Commit(reply)) => {
            commit(state, progress, &mut session, report);
            (committed_fate(info, report.outcome), Some(reply))
        }
        Next::Told(Command::Abort(reply)) => {
            report.cancel(Problem::new(ABORTED_WHY));
            (fate(info, "aborted", ABORTED_WHY.into()), Some(reply))
        }
        Next::Expired => {
            let why = expired_why(lease);
            report.cancel(Problem::new(why.clone()));
            (fate(info, "expired", why), None)
        }
        Next::Exiting => {
            report.cancel(Problem::new(EXITING_WHY));
            (fate(info, "cancelled", EXITING_WHY.into()), None)
        }
    };
    report.prepared_id = Some(info.id.clone());
    drop(session);
    (done, reply)
}

/// The commit of a staged session: what `session::run_alone` does after
/// the stage, with the safe point waited for again (the program ran on
/// while the update was held).
fn commit(state: &ProcessState, progress: &Progress<'_>, session: &mut Session<'_>, report: &mut Report) {
    report.outcome = Outcome::Refused;
    report.warnings.retain(|w| !w.contains("commit would wait"));
    match session.wait(progress, report) {
        Ok(()) => {}
        Err(Stop::Refused(problem)) => return report.problem = Some(problem),
        Err(Stop::Abandoned(problem)) => return report.cancel(problem),
    }
    if let Some(problem) = progress.abandoned() {
        return report.cancel(problem);
    }
    let keep_trying = |_: &Session<'_>, _: &_| progress.abandoned().map_or(Ok(()), |p| Err(Stop::Abandoned(p)));
    match session.commit(state, progress, report, keep_trying) {
        Ok(Some(done)) => {
            report.released_at = Some(unix_seconds(SystemTime::now()));
            session.finish(state, progress, done, report);
        }
        Ok(None) => {}
        Err(Stop::Refused(problem)) => report.problem = Some(problem),
        Err(Stop::Abandoned(problem)) => report.cancel(problem),
    }
}

/// `pyreload commit ID`.
pub fn commit_id(state: &ProcessState, id: &str) -> Result<Answer, Problem> {
    command(state, id, true)
}

/// `pyreload abort ID`.
pub fn abort_id(state: &ProcessState, id: &str) -> Result<Answer, Problem> {
    command(state, id, false)
}

fn command(state: &ProcessState, id: &str, commit: bool) -> Result<Answer, Problem> {
    let asked = Instant::now();
    loop {
        let (tx, rx) = channel();
        {
            let registry = registry();
            if let Some(past) = registry.past.iter().rev().find(|p| p.fate.id == id) {
                return answer_of(&past.fate, past.report.as_ref(), true).into_result(commit);
            }
            match &registry.held {
                Some(held) if held.info.id == id && held.holding == Holding::Open => {
                    let sent = held.tx.send(if commit {
                        Command::Commit(tx)
                    } else {
                        Command::Abort(tx)
                    });
                    drop(registry);
                    if sent.is_ok() {
                        if let Ok(answer) = rx.recv() {
                            return answer.into_result(commit);
                        }
                    }
                    // The lease ended as the command went: its fate says.
                    continue;
                }
                Some(held) if held.info.id == id => {}
                _ => return Err(unknown(state, id, &registry)),
            }
        }
        if asked.elapsed() > ENDING_WAIT {
            return Err(Problem::new(format!(
                "the update {id} is still being ended by an earlier command after {} s",
                ENDING_WAIT.as_secs()
            ))
            .with_help("`pyreload status` shows what it is doing"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

impl Answer {
    /// Commit and abort refuse what they cannot do; the rest is an answer.
    fn into_result(self, commit: bool) -> Result<Answer, Problem> {
        match self {
            Answer::Fate(fate) => refusal(&fate, commit).map_or(Ok(Answer::Fate(fate)), Err),
            report => {
                if let (false, Answer::Report(r)) = (commit, &report) {
                    if r.outcome == Outcome::Committed {
                        return Err(Problem::new(format!(
                            "the update `{}` ({}) was committed{}; abort cannot undo a committed update",
                            r.update,
                            r.prepared_id.as_deref().unwrap_or(""),
                            r.released_at.map(|t| format!(" at {}", clock(t))).unwrap_or_default()
                        ))
                        .with_help("`pyreload rollback` undoes the last committed update"));
                    }
                }
                Ok(report)
            }
        }
    }
}

/// The answer for an update whose fate is known. `again`: the command
/// came after the fate was decided (a command asked twice).
fn answer_of(fate: &PreparedFate, report: Option<&Report>, again: bool) -> Answer {
    match report {
        Some(report) => {
            let mut report = report.clone();
            if again {
                report.warnings.push(format!(
                    "this update was {} at {} already; this is the report of that commit",
                    if fate.state == "committed" {
                        "committed"
                    } else {
                        "ended"
                    },
                    clock(fate.at)
                ));
            }
            Answer::Report(Box::new(report))
        }
        None => Answer::Fate(fate.clone()),
    }
}

/// Why `commit` (or `abort`) cannot do what it was asked for an update
/// whose fate is `fate`; None when the answer is the fate itself.
fn refusal(fate: &PreparedFate, commit: bool) -> Option<Problem> {
    let what = format!("the prepared update `{}` ({})", fate.update, fate.id);
    match (commit, fate.state.as_str()) {
        (true, "aborted") => Some(
            Problem::new(format!(
                "{what} was aborted at {} by `pyreload abort`; nothing was committed",
                clock(fate.at)
            ))
            .with_help("prepare it again with `pyreload prepare SPEC`, then commit the new id"),
        ),
        (true, "expired") => Some(
            Problem::new(format!("{what} {} (at {})", fate.why, clock(fate.at))).with_help(
                "prepare it again with `pyreload prepare SPEC`; give the orchestrator more time with `--lease`",
            ),
        ),
        (true, "cancelled") => Some(Problem::new(format!("{what}: {}", fate.why))),
        _ => None,
    }
}

/// Why this program knows no update `id`.
fn unknown(state: &ProcessState, id: &str, registry: &Registry) -> Problem {
    let Some((pid, token, n)) = parse_id(id) else {
        return Problem::new(format!("`{id}` is not an update id; nothing was changed"))
            .with_help("ids look like `4242-63f1a2b3c4d5e-1`, as `pyreload prepare` prints them");
    };
    if pid != state.pid {
        return Problem::new(format!(
            "the update {id} belongs to another program (pid {pid}); this is `{}` (pid {}), nothing was changed",
            state.name, state.pid
        ))
        .with_help(format!(
            "commit it where it was prepared: `pyreload commit {id}` without --socket finds pid {pid}"
        ));
    }
    if token != instance(state) {
        return Problem::new(format!(
            "the update {id} is gone: the program restarted since it was prepared (pid {pid} now runs another \
             instance of `{}`, started at {}), and a restarted program does not know it; nothing was changed",
            state.name,
            clock(unix_seconds(state.started_at))
        ))
        .with_help("prepare the update again on the running program");
    }
    let what = if n > registry.issued {
        format!("no update {id} was prepared in this program")
    } else {
        format!("the update {id} is forgotten: the program keeps the fate of the newest {FATES_KEPT} prepared updates")
    };
    Problem::new(format!("{what}; nothing was changed"))
        .with_help("`pyreload status` shows the prepared update, if any")
}

/// A Unix time as `HH:MM:SS UTC`.
pub fn clock(t: f64) -> String {
    let secs = t as u64 % 86_400;
    format!("{:02}:{:02}:{:02} UTC", secs / 3600, secs / 60 % 60, secs % 60)
}

/// A duration as a user wrote it: `60 s`, `250 ms`.
pub fn describe(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse() {
        assert_eq!(parse_id("4242-63f1a2b3c4d5e-1"), Some((4242, "63f1a2b3c4d5e", 1)));
        assert_eq!(parse_id("4242-63f1-1-2"), None);
        assert_eq!(parse_id("x-63f1-1"), None);
        assert_eq!(parse_id("4242--1"), None);
        assert_eq!(parse_id("4242-zz-1"), None);
        assert_eq!(parse_id(""), None);
    }

    #[test]
    fn clock_is_utc_time_of_day() {
        assert_eq!(clock(86_400.0 * 3.0 + 3661.5), "01:01:01 UTC");
    }
}
