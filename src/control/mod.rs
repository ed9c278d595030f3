//! The control channel between `pyreload apply/check/status` and a program
//! under `pyreload run`: a Unix socket in a private per-user directory,
//! carrying length-prefixed JSON messages.

pub mod client;
pub mod protocol;
pub use crate::process::runtime_dir;
pub mod server;
