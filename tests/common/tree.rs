//! The process-tree fields of pyreload's JSON (#15), read in one place.
//!
//! The feature is not in yet: these are the shapes the acceptance tests
//! expect, kept here so a rename is a one-line change.
//!
//! - `pyreload status --json` gains `members`: one entry per process of the
//!   program, each `{pid, ppid, role, version}`.
//! - `pyreload apply --json` gains `members`: one entry per process the
//!   update touched, each `{pid, role, from, to, outcome, pause_ms}`.

use serde_json::Value;

/// One process of a program, as `status --json` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub pid: u32,
    pub ppid: u32,
    pub role: String,
    pub version: String,
}

/// One process's part in an update, as `apply --json` reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberOutcome {
    pub pid: u32,
    pub role: String,
    pub from: String,
    pub to: String,
    pub outcome: String,
    pub pause_ms: f64,
}

/// The outcome a member reports when the update took effect there (the
/// report's own `outcome` word).
pub const COMMITTED: &str = "committed";
/// A member that loads none of the spec's modules (a master without
/// `--preload`): nothing to update there, and it follows the tree's version.
pub const UNAFFECTED: &str = "unaffected";
/// A member that exited while the update ran (a worker retired by
/// `--max-requests`): no failure.
pub const EXITED: &str = "exited";

fn text(v: &Value) -> String {
    v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())
}

fn pid(v: &Value) -> u32 {
    v.as_u64().unwrap_or_else(|| panic!("not a pid: {v}")) as u32
}

/// `status["members"]`; panics, showing the status, if there is none.
pub fn status_members(status: &Value) -> Vec<Member> {
    let members = status["members"]
        .as_array()
        .unwrap_or_else(|| panic!("status has no members array: {status:#}"));
    members
        .iter()
        .map(|m| Member {
            pid: pid(&m["pid"]),
            ppid: pid(&m["ppid"]),
            role: text(&m["role"]),
            version: text(&m["version"]),
        })
        .collect()
}

/// `report["members"]`; panics, showing the report, if there is none.
pub fn report_members(report: &Value) -> Vec<MemberOutcome> {
    let members = report["members"]
        .as_array()
        .unwrap_or_else(|| panic!("apply report has no members array: {report:#}"));
    members
        .iter()
        .map(|m| MemberOutcome {
            pid: pid(&m["pid"]),
            role: text(&m["role"]),
            from: text(&m["from"]),
            to: text(&m["to"]),
            outcome: text(&m["outcome"]),
            pause_ms: m["pause_ms"].as_f64().unwrap_or(f64::NAN),
        })
        .collect()
}

/// The report's overall outcome word (`committed`, `refused`, ...).
pub fn outcome(report: &Value) -> String {
    text(&report["outcome"])
}
