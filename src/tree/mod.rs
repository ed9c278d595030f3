//! Process trees: one update for a program and every worker it forked,
//! all or none.
//!
//! The coordinator runs in the root's control thread (not in `pyreload
//! apply`, so a killed client cannot leave half a tree committed). It
//! talks to every member, the root included, over the member protocol
//! (`control::member_wire`), in rounds:
//!
//! | round    | every member                               | a failure anywhere          |
//! |----------|--------------------------------------------|-----------------------------|
//! | prepare  | resolves its part of the spec              | refused everywhere          |
//! | stage    | waits for its safe point, stages           | refused everywhere          |
//! | freeze   | stops its threads, safe point again        | blocked: all thawed, retry  |
//! | commit   | merges and checks, still stopped           | undone everywhere           |
//! | decide   | (the coordinator records "commit")         | a silent member: "abort"    |
//! | release  | lets its threads go: the new version runs  | -                           |
//!
//! `pyreload prepare` ([`prepared`]) stops after the stage round and holds
//! the tree there, every member staged and serving the old version, until
//! `pyreload commit` (the freeze and the rounds after it) or `pyreload
//! abort` or the end of its lease (every member aborts).
//!
//! Nobody can observe the new version before the release round, so a
//! failure in any member's commit undoes members that nobody has seen
//! change. Members forked between rounds (a respawned worker) are found
//! when the members are listed again before the freeze, and take part.
//! A member that exits during the update is dropped, and not a failure.

pub mod coordinator;
pub mod members;
pub mod prepared;

pub use coordinator::{apply, has_members, progress};
