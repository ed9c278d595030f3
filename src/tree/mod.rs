//! Process trees: one update for a program and every worker it forked,
//! all or none.
//!
//! The coordinator runs in the root's control thread (not in `pyreload
//! apply`, so a killed client cannot leave half a tree committed). It
//! talks to every member, the root included, over the member protocol
//! (`control::member_wire`), in rounds:
//!
//! | round    | every member                                        | a failure anywhere              |
//! |----------|-----------------------------------------------------|---------------------------------|
//! | prepare  | resolves its part of the spec                       | refused everywhere              |
//! | stage    | waits for its safe point, stages                    | refused everywhere              |
//! | decide   | (the coordinator records "commit")                  | a member gave up: "abort"       |
//! | commit   | commits at its own safe point, with its own pause   | the committed ones rolled back  |
//! | keep     | (its commit stands)                                 | -                               |
//!
//! Each member's pause is its own, as short as a program's alone: no
//! member waits, stopped, for another. The commit goes to every staged
//! member at once (`process::bell`), so the commits land together; the
//! report's `skew_ms` is the spread between the first and the last.
//! Members forked between rounds (a respawned worker) are found when the
//! members are listed again before the commit, and a child forked by a
//! member before it committed is found after (the member says it forked)
//! and commits too. A member that exits during the update is dropped, and
//! not a failure.
//!
//! `pyreload prepare` ([`prepared`]) stops after the stage round and holds
//! the tree there, every member staged and serving the old version, until
//! `pyreload commit` (the commit round and after), `pyreload abort` or the
//! end of its lease (every member aborts).

pub mod coordinator;
pub mod members;
pub mod prepared;

pub use coordinator::{apply, has_members, progress, rollback};
