//! What running a job on a Linux system takes, whoever runs it there: the autodriver inside
//! a machine, or the `local` backend on the daemon's own host. Both kill every process of a
//! uid, remove the files a job left without following its links, and cut a long output
//! Tango's way; these helpers live here so that a backend never depends on the driver's
//! internals, nor the driver on a backend.
//!
//! - [`procs`]: the process table (`/proc`), and killing every process of a uid;
//! - [`files`]: handing a directory to the job's user, the driver's own files, and removing
//!   what a job left;
//! - [`truncation`]: Tango's head, elision and tail for an output that is too long.
//!
//! This module builds without the `daemon` feature, for the static autodriver: it may use
//! only std and libc.

pub mod files;
pub mod procs;
pub mod truncation;
