//! What an update did, or why it did not: the last stage of
//! spec → plan → engine → report. The host builds it; the client prints it
//! as text or JSON. Both come from the same struct, so they cannot disagree.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::diagnostic::Problem;

/// How an update ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The update is in effect.
    Committed,
    /// `pyreload check`: everything was validated and nothing was changed.
    Checked,
    /// Stopped before anything changed (bad spec for this program, source
    /// that does not compile, wrong version, safe point not reached, ...).
    Refused,
    /// Something failed after the program had started to change; every
    /// change was undone.
    RolledBack,
    /// Given up before the commit, with nothing changed, because the client
    /// that asked went away or the program began to exit.
    Cancelled,
}

impl Outcome {
    /// The process exit status `pyreload apply` reports for this outcome.
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Committed | Outcome::Checked => 0,
            Outcome::Refused | Outcome::RolledBack | Outcome::Cancelled => 1,
        }
    }

    /// How `status` and the program's log say it: "applied", "refused", ...
    pub fn verb(self) -> &'static str {
        match self {
            Outcome::Committed => "applied",
            Outcome::Checked => "checked",
            Outcome::Refused => "refused",
            Outcome::RolledBack => "rolled back",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// Names of functions or classes, sorted, grouped by what happened to them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changes {
    pub changed: Vec<String>,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Present in both versions with the same code (ignoring line numbers).
    pub unchanged: usize,
}

impl Changes {
    pub fn sort(&mut self) {
        self.changed.sort();
        self.added.sort();
        self.removed.sort();
    }
}

/// What happened to a module's other globals (see README, "What a reload keeps").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Globals {
    /// Data that kept its running value.
    pub kept: Vec<String>,
    /// Plain constants that took the new source's value.
    pub updated: Vec<String>,
    /// Listed in `reset`: took the new source's value.
    pub reset: Vec<String>,
    /// Converted by a `[[transform]]`.
    pub transformed: Vec<String>,
    /// New in this version.
    pub added: Vec<String>,
    /// Removed because the new source no longer defines them.
    pub removed: Vec<String>,
}

impl Globals {
    pub fn sort(&mut self) {
        for v in [
            &mut self.kept,
            &mut self.updated,
            &mut self.reset,
            &mut self.added,
            &mut self.removed,
        ] {
            v.sort();
        }
    }
}

/// The effect of an update on one module.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleReport {
    pub module: String,
    pub source: String,
    pub functions: Changes,
    pub classes: Changes,
    pub globals: Globals,
    /// Names in other modules that followed the update, as `module.NAME`:
    /// references re-pointed at a replacement object, copies made with
    /// `from m import NAME` re-pointed at the new value, and names a
    /// `from m import *` gained (`module.NAME (new, import *)`).
    pub rebound: Vec<String>,
    /// `pyreload check`: the copies of this module's names found in other
    /// modules (`from m import NAME [as ALIAS]`, `from m import *`), which
    /// follow the update as README's "What a reload keeps" says.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub copies: Vec<String>,
}

/// Time spent in each phase, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// Reading and compiling sources, resolving names. Nothing stopped.
    pub prepare_ms: f64,
    /// Waiting for the safe point.
    pub wait_ms: f64,
    /// Running the new module bodies into staging namespaces. The program
    /// keeps running on the old version meanwhile.
    pub stage_ms: f64,
    /// Stopping every other thread (part of the pause).
    pub stop_ms: f64,
    /// The safe-point check in the stopped world (part of the pause): the
    /// threads' stacks, and generators made since staging looked through.
    #[serde(default)]
    pub safe_point_ms: f64,
    /// Part of `safe_point_ms`: threads the stopped world found inside a
    /// function the update replaces, let run on alone (the rest still
    /// stopped) until they left it or a short budget ran out.
    #[serde(default, skip_serializing_if = "is_zero_ms")]
    pub run_alone_ms: f64,
    /// Merging the staged modules into the live ones, under one GIL hold.
    pub commit_ms: f64,
    /// Evaluating `[check] after`.
    pub check_ms: f64,
    /// After the pause, with the program running: giving functions whose
    /// code only moved lines their new lines.
    #[serde(default)]
    pub moved_code_ms: f64,
    /// Undoing the commit, when it failed.
    pub rollback_ms: f64,
    /// Letting every other thread go again (part of the pause).
    pub resume_ms: f64,
    /// Time every other thread was stopped for the commit: the final
    /// safe-point check, the merge, `[check] after` and any rollback.
    pub pause_ms: f64,
    /// From receiving the request to finishing the report.
    pub total_ms: f64,
}

/// What one `[[transform]]` converted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TransformReport {
    /// The class or global, as a dotted path.
    pub target: String,
    /// `class` or `global`.
    pub kind: String,
    /// Instances converted (1 for a global).
    pub instances: usize,
    /// Finding the instances: one walk of the collector's objects.
    pub find_ms: f64,
    /// Running `defaults` and the transformer on them.
    pub convert_ms: f64,
    /// `mode = "lazy"` only: what happened after the commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lazy: Option<LazyReport>,
}

/// How a lazy migration went, once the update had committed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LazyReport {
    /// The sample converted in the commit, to prove the transformer works.
    pub converted_in_commit: usize,
    /// Instances the program converted by using them.
    pub converted_on_use: usize,
    /// Instances pyreload converted afterwards, in batches, while the
    /// program ran.
    pub converted_by_sweep: usize,
    /// Transformer errors; each such instance kept its old state.
    pub failures: Vec<String>,
    /// The sweep, from the end of the pause to the hooks' removal.
    pub sweep_ms: f64,
    /// Of `sweep_ms`, the walk that found the instances and marked those to
    /// convert (the eager transform's `find_ms`, plus the marks).
    #[serde(default)]
    pub sweep_find_ms: f64,
}

/// What the safe point required.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SafePointSummary {
    /// Functions that had to be inactive (dotted paths).
    pub inactive: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_point: Option<String>,
}

/// The whole account of one update attempt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub update: String,
    pub program: String,
    pub pid: u32,
    pub from: Option<String>,
    pub to: String,
    pub outcome: Outcome,
    pub modules: Vec<ModuleReport>,
    pub timings: Timings,
    /// How many times the safe point was checked before it held.
    pub safe_point_checks: u32,
    /// How many other threads the commit stopped.
    pub stopped_threads: usize,
    pub safe_point: SafePointSummary,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transforms: Vec<TransformReport>,
    /// Why the update was refused or rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<Problem>,
    /// Non-fatal observations (e.g. a new module imported while staging).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// A program with worker processes: what the update did in each
    /// member of its tree, the root first. Empty for a single process.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberReport>,
    /// A tree: the spread between the first and the last member letting
    /// its world go, when two members could answer with different
    /// versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skew_ms: Option<f64>,
    /// A tree's update: how its members committed (`[tree] commit`), so
    /// that the skew can be read for what it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree_commit: Option<crate::spec::TreeCommit>,
    /// An update committed by `pyreload commit`: its id, and when (wall
    /// clock, seconds since the Unix epoch) the program ran the new
    /// version, so that an orchestrator can compare hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepared_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_at: Option<f64>,
    /// Whether the commit used the merge's pairing made while staging
    /// (with the program running), or had to pair again in the pause
    /// because the program changed what it read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge_ahead: Option<MergeAhead>,
    /// A tree member: the scheduling its pyreload thread had for the
    /// commit's bell (`[tree] realtime`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bell: Option<crate::process::sched::Turn>,
    /// Functions whose code only moved lines, given their new lines after
    /// the pause (`timings.moved_code_ms`).
    #[serde(default)]
    pub moved_after_pause: usize,
    /// A tree member: how many times the program's threads, raised to
    /// real-time priority until pyreload's thread had the GIL, were put
    /// back at the cap (20 ms) first, because a thread held the GIL in a
    /// long call (`crate::process::sched::BOOST_CAP`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gil_boost_capped: u32,
}

/// The part of the merge done ahead of the pause (engine/merge.rs, `pair_ahead`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MergeAhead {
    /// The pairing made while staging still held, and the commit used it.
    pub reused: bool,
    /// Reads of the live program it depended on that no longer held
    /// (globals or class attributes the program changed since).
    pub stale: usize,
    /// Time the pairing took while staging, outside the pause.
    pub computed_ms: f64,
    /// References to replaced objects found while staging (the rebind list).
    pub rebind_entries: usize,
    /// The merge's writes were also computed while staging, and the pause
    /// only checked them and made them.
    #[serde(default)]
    pub planned: bool,
    /// How many writes were planned while staging.
    #[serde(default)]
    pub planned_writes: usize,
    /// Writes were planned, but the program changed something they depend
    /// on since staging: the commit merged in the pause as without a plan.
    #[serde(default)]
    pub plan_stale: bool,
}

/// One member of a process tree, in a tree-wide update's report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberReport {
    pub pid: u32,
    /// Its parent's pid.
    pub ppid: u32,
    /// What the process is, from its command line (`gunicorn: worker [app]`).
    pub role: String,
    /// The version it ran before the update, and after.
    pub from: Option<String>,
    pub to: Option<String>,
    pub outcome: MemberOutcome,
    /// The spec's modules it has loaded, which the update reloaded there.
    pub modules: Vec<String>,
    /// How long its threads were stopped, in ms (0: never stopped).
    pub pause_ms: f64,
    /// How long after the commit's bell rang it let its threads go on
    /// the new version, in ms: the last member's figure is the tree's
    /// `skew_ms` at most, and says who the others waited for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_bell_ms: Option<f64>,
    /// Of that, when its pyreload thread ran again having heard the bell
    /// (the wait for a core), and when that thread held the GIL again
    /// (the wait for the program's thread to hand it over); the rest is
    /// stopping its threads, looking for the safe point and merging.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub woke_after_bell_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gil_after_bell_ms: Option<f64>,
    /// How many times it looked for its safe point in all, before staging
    /// and in the commit (its report's `safe_point_checks`): 2 when each
    /// held at the first look; more is a wait, before staging or after
    /// the bell (`after_bell_ms` says which).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub safe_point_checks: u32,
    /// The scheduling its pyreload thread had for the commit's bell:
    /// `realtime` where the process may ask for it (`[tree] realtime`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bell: Option<crate::process::sched::Turn>,
    /// Its report's `gil_boost_capped`: a thread there held the GIL in a
    /// long call after the bell, or while running on alone.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gil_boost_capped: u32,
    /// Why it refused or rolled back, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<Problem>,
}

/// What a tree-wide update did in one member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberOutcome {
    /// Runs the new version.
    Committed,
    /// Loads none of the spec's modules: nothing to update there.
    Unaffected,
    /// Refused before anything changed (the update stopped everywhere).
    Refused,
    /// Its commit failed, or another member's did, and it was undone.
    RolledBack,
    /// Gave up before the commit with nothing changed.
    Cancelled,
    /// Exited during the update: not a failure.
    Exited,
    /// Did not answer in time; see the problem.
    Unknown,
    /// `check` only: resolved its part; nothing changed.
    Checked,
}

impl MemberOutcome {
    /// How the report says it.
    pub fn verb(self) -> &'static str {
        match self {
            MemberOutcome::Committed => "applied",
            MemberOutcome::Unaffected => "unaffected (loads none of the spec's modules)",
            MemberOutcome::Refused => "refused",
            MemberOutcome::RolledBack => "rolled back",
            MemberOutcome::Cancelled => "cancelled",
            MemberOutcome::Exited => "exited during the update",
            MemberOutcome::Unknown => "did not answer",
            MemberOutcome::Checked => "checked",
        }
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_zero_ms(ms: &f64) -> bool {
    *ms == 0.0
}

impl Report {
    /// An attempt that has not done anything yet: refused until it commits.
    pub fn begin(update: String, program: String, pid: u32, from: Option<String>, to: String) -> Report {
        Report {
            update,
            program,
            pid,
            from,
            to,
            outcome: Outcome::Refused,
            modules: Vec::new(),
            timings: Timings::default(),
            safe_point_checks: 0,
            stopped_threads: 0,
            safe_point: SafePointSummary::default(),
            transforms: Vec::new(),
            problem: None,
            warnings: Vec::new(),
            members: Vec::new(),
            skew_ms: None,
            tree_commit: None,
            prepared_id: None,
            released_at: None,
            merge_ahead: None,
            bell: None,
            moved_after_pause: 0,
            gil_boost_capped: 0,
        }
    }

    /// Ends the report as cancelled: nothing was changed.
    pub fn cancel(&mut self, problem: Problem) {
        self.outcome = Outcome::Cancelled;
        self.problem = Some(problem);
    }

    /// One line for the program's log.
    pub fn one_line(&self) -> String {
        let mut line = format!(
            "{} update `{}` ({} -> {})",
            self.outcome.verb(),
            self.update,
            self.from.as_deref().unwrap_or("?"),
            self.to
        );
        match (&self.problem, self.outcome) {
            (Some(problem), _) => {
                let _ = write!(line, ": {problem}");
            }
            (None, Outcome::Committed) => {
                let _ = write!(line, ", pause {:.2} ms", self.timings.pause_ms);
            }
            _ => {}
        }
        line
    }

    /// The human-readable report `pyreload apply` prints on stdout. The
    /// problem, if any, is rendered separately on stderr.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} `{}` on `{}` (pid {}): {} -> {}",
            match self.outcome {
                Outcome::Committed => "Applied",
                Outcome::Checked => "Checked (nothing changed)",
                Outcome::Refused => "Refused",
                Outcome::RolledBack => "Rolled back",
                Outcome::Cancelled => "Cancelled (nothing changed)",
            },
            self.update,
            self.program,
            self.pid,
            self.from.as_deref().unwrap_or("(none)"),
            self.to
        );
        for m in &self.modules {
            let _ = writeln!(out, "  module {}  ({})", m.module, m.source);
            write_changes(&mut out, "functions", &m.functions);
            write_changes(&mut out, "classes", &m.classes);
            let g = &m.globals;
            for (label, names) in [
                ("globals kept", &g.kept),
                ("constants updated", &g.updated),
                ("globals reset", &g.reset),
                ("globals transformed", &g.transformed),
                ("globals added", &g.added),
                ("globals removed", &g.removed),
                ("rebound", &m.rebound),
                ("copies that follow", &m.copies),
            ] {
                if !names.is_empty() {
                    let _ = writeln!(out, "    {label}: {}", names.join(", "));
                }
            }
        }
        for t in &self.transforms {
            match &t.lazy {
                None => {
                    let _ = writeln!(
                        out,
                        "  transform {} `{}`: {} converted (found in {:.2} ms, converted in {:.2} ms)",
                        t.kind, t.target, t.instances, t.find_ms, t.convert_ms
                    );
                }
                Some(l) => {
                    let _ = writeln!(
                        out,
                        "  transform {} `{}` (lazy): {} converted in the commit, {} on first use, {} by the sweep in {:.2} ms{}",
                        t.kind,
                        t.target,
                        l.converted_in_commit,
                        l.converted_on_use,
                        l.converted_by_sweep,
                        l.sweep_ms,
                        if l.failures.is_empty() { String::new() } else { format!(", {} failed", l.failures.len()) }
                    );
                }
            }
        }
        let sp = &self.safe_point;
        let mut required = Vec::new();
        if !sp.inactive.is_empty() {
            const SHOWN: usize = 6;
            let mut names = sp.inactive.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
            if sp.inactive.len() > SHOWN {
                names.push_str(&format!(" and {} more", sp.inactive.len() - SHOWN));
            }
            required.push(format!("inactive {names}"));
        }
        if let Some(c) = &sp.condition {
            required.push(format!("condition `{c}`"));
        }
        if let Some(p) = &sp.update_point {
            required.push(format!("update point `{p}`"));
        }
        if !required.is_empty() {
            let _ = writeln!(out, "  safe point: {}", required.join("; "));
        }
        // Only the phases this attempt reached: a refused or checked update
        // was never staged or paused, and saying "pause 0.000 ms" would
        // claim a commit that did not happen. A phase that ran has a
        // measured, non-zero time.
        let t = &self.timings;
        let mut phases = Vec::new();
        for (name, ms) in [("prepare", t.prepare_ms), ("wait", t.wait_ms)] {
            if ms > 0.0 {
                phases.push(format!("{name} {ms:.2} ms"));
            }
        }
        if t.wait_ms > 0.0 && self.safe_point_checks > 0 {
            let last = phases.len() - 1;
            phases[last].push_str(&format!(" ({} checks)", self.safe_point_checks));
        }
        for (name, ms) in [
            ("stage", t.stage_ms),
            ("commit", t.commit_ms),
            ("check", t.check_ms),
            ("rollback", t.rollback_ms),
            ("moved lines after the pause", t.moved_code_ms),
        ] {
            if ms > 0.0 {
                phases.push(format!("{name} {ms:.2} ms"));
            }
        }
        if !phases.is_empty() {
            let _ = writeln!(out, "  time: {}", phases.join(", "));
        }
        if t.pause_ms > 0.0 {
            let _ = writeln!(
                out,
                "  pause: {:.3} ms ({} other threads stopped)   total: {:.2} ms",
                t.pause_ms, self.stopped_threads, t.total_ms
            );
        } else {
            let _ = writeln!(
                out,
                "  pause: none, the program was not stopped   total: {:.2} ms",
                t.total_ms
            );
        }
        if !self.members.is_empty() {
            let _ = writeln!(
                out,
                "  members: {} ({} updated){}{}",
                self.members.len(),
                self.members
                    .iter()
                    .filter(|m| m.outcome == MemberOutcome::Committed)
                    .count(),
                match self.tree_commit {
                    Some(crate::spec::TreeCommit::Together) => ", committed together",
                    _ => "",
                },
                self.skew_ms
                    .map(|s| format!(", skew {s:.3} ms between the first and the last commit"))
                    .unwrap_or_default()
            );
            for m in &self.members {
                let versions = match (&m.from, &m.to) {
                    (from, Some(to)) if m.outcome == MemberOutcome::Committed => {
                        format!("{} -> {to}", from.as_deref().unwrap_or("(none)"))
                    }
                    (from, _) => from.clone().unwrap_or_else(|| "(none)".into()),
                };
                let pause = match (m.pause_ms > 0.0, m.bell) {
                    (true, Some(crate::process::sched::Turn::Realtime)) => {
                        format!(", pause {:.3} ms (real-time priority)", m.pause_ms)
                    }
                    (true, _) => format!(", pause {:.3} ms", m.pause_ms),
                    (false, _) => String::new(),
                };
                let _ = writeln!(
                    out,
                    "    pid {} ({}): {}, {versions}{pause}{}",
                    m.pid,
                    m.role,
                    m.outcome.verb(),
                    m.problem
                        .as_ref()
                        .map(|p| format!(": {}", p.message))
                        .unwrap_or_default()
                );
            }
        }
        for w in &self.warnings {
            let _ = writeln!(out, "  warning: {w}");
        }
        out
    }
}

fn write_changes(out: &mut String, what: &str, c: &Changes) {
    if c.changed.is_empty() && c.added.is_empty() && c.removed.is_empty() {
        if c.unchanged > 0 {
            let _ = writeln!(out, "    {what}: {} unchanged", c.unchanged);
        }
        return;
    }
    let mut parts = Vec::new();
    for (label, names) in [("changed", &c.changed), ("added", &c.added), ("removed", &c.removed)] {
        if !names.is_empty() {
            parts.push(format!("{label} {}", names.join(", ")));
        }
    }
    if c.unchanged > 0 {
        parts.push(format!("{} unchanged", c.unchanged));
    }
    let _ = writeln!(out, "    {what}: {}", parts.join("; "));
}
