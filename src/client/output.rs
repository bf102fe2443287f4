//! The client's standard output and error: what it prints ends quietly when the reader has
//! gone (`tango jobs | head -1`), as `cat` or `grep` do, instead of panicking the way
//! `println!` does on a closed pipe.

use std::io::Write;

/// Writes `args` and a newline to standard output; see [`bytes`] for a closed pipe.
pub fn line(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let written = out.write_fmt(args).and_then(|()| out.write_all(b"\n"));
    settle(written);
}

/// Writes `data` as is to standard output. When the reader has closed the pipe the command
/// has nothing left to say: the process ends at once with status 0 (what it printed was
/// read as far as the reader wanted). Any other write error ends it with status 74
/// (`EX_IOERR`), naming the error on standard error.
pub fn bytes(data: &[u8]) {
    let mut out = std::io::stdout().lock();
    settle(out.write_all(data).and_then(|()| out.flush()));
}

/// Writes `args` and a newline to standard output on the way out of a failed command: a
/// closed pipe is ignored, so the exit status still says the command failed.
pub fn last_line(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_fmt(args).and_then(|()| out.write_all(b"\n"));
}

/// Writes `args` and a newline to standard error; a closed standard error is ignored (there
/// is nowhere left to say anything).
pub fn error(args: std::fmt::Arguments<'_>) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_fmt(args).and_then(|()| err.write_all(b"\n"));
}

fn settle(written: std::io::Result<()>) {
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            error(format_args!("tango: standard output: {e}"));
            std::process::exit(74);
        }
    }
}

/// `println!` that ends the command quietly on a closed pipe.
macro_rules! outln {
    ($($arg:tt)*) => { $crate::client::output::line(format_args!($($arg)*)) };
}

/// `eprintln!` that ignores a closed standard error.
macro_rules! errln {
    ($($arg:tt)*) => { $crate::client::output::error(format_args!($($arg)*)) };
}
