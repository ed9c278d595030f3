//! One update in one process, as steps a driver calls in order.
//!
//! A single process drives the steps itself ([`run_alone`]). A process tree
//! drives them from its root (see `crate::tree`): every member prepares and
//! stages, and only once all have staged does each commit, on its own, as
//! a single process does. The steps, and what the program sees after each:
//!
//! | step                 | the program                                   | a failure   |
//! |----------------------|-----------------------------------------------|-------------|
//! | [`Session::prepare`] | runs the old version                          | refused     |
//! | [`Session::wait`]    | runs; checks between sleeps                   | refused     |
//! | [`Session::stage`]   | runs the old version, consistently            | refused     |
//! | [`Session::commit`]  | stopped at the safe point, merged, let go     | rolled back |
//! | [`Session::finish`]  | runs the new version; lazy sweeps, bookkeeping | warnings    |
//!
//! Inside `commit`, the world is stopped only for the merge and its
//! checks, and waits on nothing but this process: a blocked safe point
//! lets the world go at once and tries again.

use std::time::Instant;

use pyo3::prelude::*;
use pyo3::types::PyList;

use super::progress::Progress;
use super::rollback::CommittedStack;
use super::safepoint::{self, Blockers, Pacer};
use super::support::Support;
use super::watchdog::Deadline;
use super::world::StoppedWorld;
use super::{commit_limit, interrupted, ms, prepare, rollback, stage, transform, Done, Stop};
use crate::diagnostic::Problem;
use crate::plan::Plan;
use crate::process::sched::{BoostWatch, GilBoost, Raised};
use crate::process::state::ProcessState;
use crate::process::update_point::{points, PointRequest};
use crate::process::wire::Phase;
use crate::report::{ModuleReport, Outcome, Report, SafePointSummary};
use crate::spec::{self, SpecSource};

/// An update resolved against this process, and what it has staged so far.
pub struct Session<'py> {
    py: Python<'py>,
    pub support: Support<'py>,
    pub plan: Plan,
    pacer: Pacer,
    /// Held from the wait to the end: threads that reach the update point
    /// stay there until the update has committed or given up.
    point: Option<PointRequest<'static>>,
    staged: Option<stage::Staged>,
    samples: Vec<Option<Py<PyList>>>,
    /// How many forks this process had made when it committed.
    pub forks_at_commit: u64,
    /// How many more times the commit may let blocking threads run on
    /// alone without their leaving: a thread that stays in a replaced
    /// function (a loop) would otherwise cost a longer pause at every look.
    run_alone_left: u8,
    /// Where threads let run on alone run at real-time priority 1
    /// meanwhile, the watch that bounds it: for a tree member whose own
    /// thread waits above them (see
    /// `crate::process::sched::BellPriority::may_boost`).
    pub boost_alone: Option<BoostWatch>,
}

/// How many times a commit lets blocking threads run on alone without
/// their leaving the replaced functions before it stops trying.
const RUN_ALONE_TRIES: u8 = 2;

/// How long those threads run between two looks, at most: a look comes
/// sooner once every one of them is back in a caller.
const RUN_ALONE_STEP: std::time::Duration = std::time::Duration::from_micros(100);

/// Every other thread stopped, with the safe point holding.
struct Frozen<'py> {
    world: StoppedWorld<'py>,
    deadline: Option<Deadline<'py>>,
    stopped_at: Instant,
}

/// A merge made with every other thread still stopped: nothing but this
/// thread has run the new version yet.
pub struct Held<'py> {
    frozen: Frozen<'py>,
    done: Done,
}

/// What a [`Session::freeze`] found.
enum Freeze<'py> {
    Frozen(Frozen<'py>),
    /// The safe point did not hold with the world stopped; the world runs
    /// again.
    Blocked(Blockers),
}

impl<'py> Session<'py> {
    /// Resolves `spec` against the program: reads and compiles every new
    /// source and resolves every name. Fills in what the report can say
    /// before anything runs.
    pub fn prepare(
        py: Python<'py>,
        state: &ProcessState,
        source: &SpecSource,
        spec: &spec::Spec,
        report: &mut Report,
    ) -> Result<Session<'py>, Problem> {
        let support = Support::load(py).map_err(|e| Problem::new(format!("could not load pyreload's helpers: {e}")))?;
        let t = Instant::now();
        let plan = prepare::prepare(py, &support, state, source, spec);
        report.timings.prepare_ms = ms(t);
        let plan = plan?;
        report.modules = plan
            .modules
            .iter()
            .map(|m| ModuleReport {
                module: m.name.clone(),
                source: m.source.clone(),
                ..ModuleReport::default()
            })
            .collect();
        report.safe_point = SafePointSummary {
            inactive: plan.inactive.clone(),
            condition: plan.condition.as_ref().map(|c| c.text.clone()),
            update_point: plan.update_point.clone(),
        };
        let pacer = Pacer::new(Instant::now() + plan.timeout);
        Ok(Session {
            py,
            support,
            plan,
            pacer,
            point: None,
            staged: None,
            samples: Vec::new(),
            forks_at_commit: 0,
            run_alone_left: RUN_ALONE_TRIES,
            boost_alone: None,
        })
    }

    /// Waits, with the program running, until the safe point looks
    /// reachable. The spec's `timeout_ms` counts from here, and covers
    /// every later attempt to freeze.
    pub fn wait(&mut self, progress: &Progress<'_>, report: &mut Report) -> Result<(), Stop> {
        let py = self.py;
        progress.enter(Phase::Wait);
        self.pacer = Pacer::new(Instant::now() + self.plan.timeout);
        if self.point.is_none() {
            self.point = self.plan.update_point.as_deref().map(|name| points().request(name));
        }
        let t = Instant::now();
        let waited = {
            // A condition that never returns is cut off soon after the
            // wait's deadline. (The grace lets a check that is merely slow
            // finish.)
            let deadline = Deadline::arm(py, self.pacer.deadline() + super::WAIT_GRACE);
            super::wait(
                py,
                &self.support,
                &self.plan,
                progress,
                &mut self.pacer,
                &mut report.safe_point_checks,
            )
            .map_err(|stop| match stop {
                Stop::Refused(problem) => Stop::Refused(interrupted(
                    problem,
                    &deadline,
                    &format!(
                        "the safe-point wait's timeout_ms ({} ms)",
                        self.plan.timeout.as_millis()
                    ),
                )),
                abandoned => abandoned,
            })
        };
        report.timings.wait_ms += ms(t);
        waited
    }

    /// Runs the new module bodies into staging modules, with the program
    /// running the old version. `commit_timeout_ms` bounds them.
    pub fn stage(&mut self, progress: &Progress<'_>, report: &mut Report) -> Result<(), Problem> {
        let py = self.py;
        progress.enter(Phase::Stage);
        let deadline = Deadline::arm(py, Instant::now() + self.plan.commit_timeout);
        let t = Instant::now();
        let staged = stage::stage(py, &self.support, &self.plan);
        report.timings.stage_ms = ms(t);
        let staged = match staged {
            Ok(staged) => staged,
            Err(problem) => {
                let problem = interrupted(problem, &deadline, &commit_limit(self.plan.commit_timeout));
                drop(deadline);
                let _ = stage::withdraw(py, &self.support, &self.plan);
                return Err(problem);
            }
        };
        let samples = transform::lazy_samples(py, &self.support, &self.plan)
            .map_err(|problem| interrupted(problem, &deadline, &commit_limit(self.plan.commit_timeout)));
        drop(deadline);
        let (staged, samples) = match (stage::withdraw(py, &self.support, &self.plan), samples) {
            (Ok(imported), Ok(samples)) => (stage::Staged { imported, ..staged }, samples),
            (Err(problem), _) | (_, Err(problem)) => return Err(problem),
        };
        if !staged.imported.is_empty() {
            report.warnings.push(format!(
                "the new code imported modules the program had not: {}",
                staged.imported.join(", ")
            ));
        }
        self.staged = Some(staged);
        self.samples = samples;
        Ok(())
    }

    /// Stops every other thread and decides the safe point again: staging
    /// let the program run. `Blocked` lets the world go at once.
    fn freeze(&mut self, progress: &Progress<'_>, report: &mut Report) -> Result<Freeze<'py>, Problem> {
        let py = self.py;
        progress.enter(Phase::Commit);
        let stopped_at = Instant::now();
        let deadline = Deadline::arm(py, stopped_at + self.plan.commit_timeout);
        let world = StoppedWorld::stop(py);
        report.timings.stop_ms = ms(stopped_at);
        let world = world.map_err(|e| self.support.problem(py, "could not stop the program's threads", &e))?;
        report.safe_point_checks += 1;
        report.stopped_threads = world.threads;
        let mut world = world;
        let checked_at = Instant::now();
        let blockers = safepoint::check(py, &self.support, &self.plan, &points().waiting())
            .and_then(|first| self.run_blockers_alone(&mut world, first, report))
            .map_err(|problem| interrupted(problem, &deadline, &commit_limit(self.plan.commit_timeout)));
        report.timings.safe_point_ms = ms(checked_at);
        match blockers {
            Ok(b) if b.clear() => Ok(Freeze::Frozen(Frozen {
                world,
                deadline: Some(deadline),
                stopped_at,
            })),
            Ok(b) => {
                drop(world);
                drop(deadline);
                progress.enter(Phase::Wait);
                Ok(Freeze::Blocked(b))
            }
            Err(problem) => Err(problem),
        }
    }

    /// With the world stopped and the safe point held back only by threads
    /// inside functions the update replaces: lets those threads run on
    /// alone, every other thread still parked, and looks again every few
    /// microseconds, for up to `[safe_point] run_alone_us` (part of the pause;
    /// used rarely, since it needs a thread inside a replaced function at
    /// the moment the world stopped). A request thread in a
    /// replaced function usually leaves it within microseconds once it has
    /// a core and the GIL to itself; letting the whole program go instead
    /// and looking again a millisecond or more later (the [`Pacer`]) is
    /// what made a busy member of a tree commit late. Whatever else blocks
    /// (a suspended generator, a false condition, no thread at the update
    /// point) does not go away by running these threads, so then the first
    /// look stands.
    fn run_blockers_alone(
        &mut self,
        world: &mut StoppedWorld<'py>,
        first: Blockers,
        report: &mut Report,
    ) -> Result<Blockers, Problem> {
        let threads_only = |b: &Blockers| b.suspended.is_empty() && !b.condition_false && !b.no_thread_at_point;
        if first.clear() || !threads_only(&first) {
            return Ok(first);
        }
        if self.run_alone_left == 0 || self.plan.run_alone.is_zero() {
            return Ok(first);
        }
        self.run_alone_left -= 1;
        let mut idents: Vec<u64> = first.threads.iter().map(|t| t.ident).collect();
        idents.sort_unstable();
        idents.dedup();
        let started = Instant::now();
        let could_not = |e: PyErr| {
            self.support
                .problem(self.py, "could not let the blocking threads run on", &e)
        };
        let code_ids = self.plan.inactive_code_ids.bind(self.py).as_any();
        // Held while they run: the addresses below stay theirs.
        let callers = idents
            .iter()
            .map(|&ident| self.support.callers_of(ident, code_ids).map(|codes| (ident, codes)))
            .collect::<PyResult<Vec<_>>>()
            .map_err(could_not)?;
        let alone: Vec<(u64, usize, Vec<usize>)> = callers
            .iter()
            .map(|(ident, (_, frame, codes))| {
                let frame = if frame.is_none() { 0 } else { frame.as_ptr() as usize };
                (*ident, frame, codes.iter().map(|c| c.as_ptr() as usize).collect())
            })
            .collect();
        let boost = self.boost_alone.as_ref().map(|_| {
            let tids: Vec<i32> = callers.iter().map(|(_, (tid, _, _))| *tid).filter(|&t| t > 0).collect();
            GilBoost::of(&tids)
        });
        if !world.let_run(&alone).map_err(could_not)? {
            return Ok(first);
        }
        let raised = boost.as_ref().zip(self.boost_alone.as_ref()).map(|(b, w)| b.raise(w));
        let mut blockers = first;
        let looked = loop {
            self.py
                .detach(|| super::world::wait_for_alone_to_return(RUN_ALONE_STEP));
            report.safe_point_checks += 1;
            match safepoint::check(self.py, &self.support, &self.plan, &points().waiting()) {
                Ok(b) => {
                    let same = threads_only(&b) && b.threads.iter().all(|t| idents.contains(&t.ident));
                    blockers = b;
                    let stuck = world.all_returned();
                    if blockers.clear() || !same || stuck || started.elapsed() >= self.plan.run_alone {
                        if blockers.clear() {
                            self.run_alone_left += 1;
                        }
                        break Ok(());
                    }
                }
                Err(problem) => break Err(problem),
            }
        };
        if raised.is_some_and(Raised::end) {
            report.gil_boost_capped += 1;
        }
        let stopped = world.stop_again();
        report.timings.run_alone_ms += ms(started);
        stopped.map_err(|e| {
            self.support
                .problem(self.py, "could not stop the blocking threads again", &e)
        })?;
        looked.map(|()| blockers)
    }

    /// Stops holding threads at the spec's update point: for an update
    /// held prepared (see [`super::prepared`]), whose program must go on
    /// serving until the commit. The next [`Session::wait`] asks again.
    pub fn let_points_go(&mut self) {
        self.point = None;
    }

    /// Gives the commit's attempts a whole `timeout_ms` from now: a tree
    /// member is told to commit only once every member has staged (or a
    /// prepared update has been held), which may be most of its wait's
    /// budget later.
    pub fn rearm_timeout(&mut self) {
        self.pacer = Pacer::new(Instant::now() + self.plan.timeout);
        self.run_alone_left = RUN_ALONE_TRIES;
    }

    /// After a blocked freeze: waits for the next attempt. False once the
    /// spec's `timeout_ms` has passed.
    fn next_attempt(&mut self) -> bool {
        self.pacer.next(self.py)
    }

    /// When the spec's `timeout_ms` runs out.
    pub fn deadline(&self) -> Instant {
        self.pacer.deadline()
    }

    /// The refusal once the safe point never held.
    fn timed_out_problem(&self, blockers: &Blockers) -> Problem {
        safepoint::timed_out(&self.plan, blockers)
    }

    /// Inside the stopped world: merge, transform, follow copies and check.
    /// On any failure everything is rolled back here and `None` returned,
    /// with the report saying why.
    fn merge(&self, frozen: &mut Frozen<'py>, report: &mut Report) -> Option<Done> {
        let staged = self.staged.as_ref().expect("staged before the merge");
        let deadline = frozen.deadline.take().expect("one merge per freeze");
        super::commit(
            self.py,
            &self.support,
            &self.plan,
            staged,
            &self.samples,
            deadline,
            report,
        )
    }

    /// Records the new version as the one that runs (sources for `diff`,
    /// the version for `status`). The merge is final from here.
    fn publish(&self, state: &ProcessState, done: &mut Done) {
        let loaded = self
            .plan
            .modules
            .iter()
            .map(|m| {
                (
                    m.name.clone(),
                    Some(crate::process::state::UpdateSource::now(
                        m.source.clone(),
                        m.text.clone(),
                    )),
                )
            })
            .collect();
        done.previous_sources = state.swap_sources(loaded);
        state.set_version(Some(self.plan.to.clone()));
    }

    /// Lets every other thread go again.
    fn release(&self, frozen: Frozen<'py>, report: &mut Report) {
        let t = Instant::now();
        drop(frozen.deadline);
        drop(frozen.world);
        report.timings.resume_ms = ms(t);
        report.timings.pause_ms = ms(frozen.stopped_at);
    }

    /// The commit: freezes at the safe point (trying again until the spec's
    /// `timeout_ms`), merges, and lets the world go, whether the merge held
    /// (`Some`) or was rolled back (`None`, the report says why). `blocked`
    /// hears what blocked each attempt, and may give up.
    pub fn commit(
        &mut self,
        state: &ProcessState,
        progress: &Progress<'_>,
        report: &mut Report,
        blocked: impl FnMut(&Session<'py>, &Blockers) -> Result<(), Stop>,
    ) -> Result<Option<Done>, Stop> {
        Ok(self
            .stop_and_merge(progress, report, blocked)?
            .map(|held| self.let_go(state, held, report)))
    }

    /// The commit up to the release: freezes at the safe point (trying
    /// again until the spec's `timeout_ms`) and merges. A merge that held
    /// is returned with the world still stopped, for [`Session::let_go`]
    /// or [`Session::undo`]; one that failed was rolled back and the world
    /// let go: `None` (the report says why).
    pub fn stop_and_merge(
        &mut self,
        progress: &Progress<'_>,
        report: &mut Report,
        mut blocked: impl FnMut(&Session<'py>, &Blockers) -> Result<(), Stop>,
    ) -> Result<Option<Held<'py>>, Stop> {
        loop {
            let mut frozen = match self.freeze(progress, report) {
                Ok(Freeze::Frozen(frozen)) => frozen,
                Ok(Freeze::Blocked(blockers)) => {
                    blocked(self, &blockers)?;
                    if !self.next_attempt() {
                        return Err(Stop::Refused(self.timed_out_problem(&blockers)));
                    }
                    continue;
                }
                Err(problem) => return Err(Stop::Refused(problem)),
            };
            return Ok(match self.merge(&mut frozen, report) {
                Some(done) => Some(Held { frozen, done }),
                None => {
                    self.release(frozen, report);
                    None
                }
            });
        }
    }

    /// Makes a held merge the program's version and lets the world go.
    pub fn let_go(&mut self, state: &ProcessState, held: Held<'py>, report: &mut Report) -> Done {
        let Held { frozen, mut done } = held;
        self.publish(state, &mut done);
        // Read while nothing else runs: a fork after this is of the new
        // version.
        self.forks_at_commit = crate::process::tree::forks();
        self.release(frozen, report);
        done
    }

    /// Undoes a held merge before any other thread ran it, and lets the
    /// world go: the program never saw the new version.
    pub fn undo(&self, held: Held<'py>, report: &mut Report, problem: Problem) {
        let Held { frozen, done } = held;
        done.undo(self.py, &self.support, report, problem);
        self.release(frozen, report);
    }

    /// With the world running again: keeps the update for `pyreload
    /// rollback`, watches what it made garbage, and finishes lazy
    /// migrations.
    pub fn finish(&self, state: &ProcessState, progress: &Progress<'_>, done: Done, report: &mut Report) {
        let py = self.py;
        let staged = self.staged.as_ref().expect("staged before the merge");
        let Done {
            mut merged,
            lazies,
            mut journal,
            previous_sources,
        } = done;
        // Before the update is kept for rollback, so that one undoes these too.
        let t = Instant::now();
        match journal.give_moved_code(py, merged.take_moved()) {
            Ok(given) => report.moved_after_pause = given,
            Err(e) => report.warnings.push(format!(
                "some functions whose code only moved keep their old line numbers: {e}"
            )),
        }
        report.timings.moved_code_ms = ms(t);
        state.push_committed(rollback::Committed::from_plan(
            report.update.clone(),
            report.from.clone(),
            &self.plan,
            journal,
            previous_sources,
        ));
        super::track_garbage(py, &self.plan, staged, &merged, &report.update);
        report.modules = merged.finish(py, &self.support);
        progress.enter(Phase::Sweep);
        super::finish_lazy(py, state, &self.plan, lazies, report);
    }
}

/// Drives every step in this process alone: what `pyreload apply` does for
/// a program without members.
pub fn run_alone(
    py: Python<'_>,
    state: &ProcessState,
    progress: &Progress<'_>,
    source: &SpecSource,
    spec: &spec::Spec,
    dry_run: bool,
    report: &mut Report,
) {
    let mut session = match Session::prepare(py, state, source, spec, report) {
        Ok(session) => session,
        Err(problem) => return report.problem = Some(problem),
    };
    if dry_run {
        return session.check_now(report);
    }
    if super::fault::split_commit_requested() {
        match super::fault::split_commit(py, &session.support, &session.plan) {
            Ok(()) => {
                report.outcome = Outcome::Committed;
                state.set_version(Some(session.plan.to.clone()));
            }
            Err(problem) => report.problem = Some(problem),
        }
        return;
    }
    if let Some(problem) = progress.abandoned() {
        return report.cancel(problem);
    }
    match session.wait(progress, report) {
        Ok(()) => {}
        Err(Stop::Refused(problem)) => return report.problem = Some(problem),
        Err(Stop::Abandoned(problem)) => return report.cancel(problem),
    }
    if let Err(problem) = session.stage(progress, report) {
        return report.problem = Some(problem);
    }
    if let Some(problem) = progress.abandoned() {
        return report.cancel(problem);
    }
    let keep_trying = |_: &Session<'_>, _: &Blockers| progress.abandoned().map_or(Ok(()), |p| Err(Stop::Abandoned(p)));
    match session.commit(state, progress, report, keep_trying) {
        Ok(Some(done)) => session.finish(state, progress, done, report),
        Ok(None) => {}
        Err(Stop::Refused(problem)) => report.problem = Some(problem),
        Err(Stop::Abandoned(problem)) => report.cancel(problem),
    }
}

impl Session<'_> {
    /// For `check`: what would block the safe point now, and what the
    /// update would do, without running any new code.
    pub fn check_now(&self, report: &mut Report) {
        match safepoint::check(self.py, &self.support, &self.plan, &[]) {
            Ok(b) => report.warnings.extend(super::describe_blockers_now(&b, &self.plan)),
            Err(problem) => return report.problem = Some(problem),
        }
        if let Err(problem) = super::predict(self.py, &self.support, &self.plan, report) {
            return report.problem = Some(problem);
        }
        report.outcome = Outcome::Checked;
    }
}
