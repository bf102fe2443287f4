//! The autodriver's command line: Tango's four limits and directory, and our additions.

use std::path::PathBuf;

use clap::Parser;

/// Runs `make` in DIRECTORY as the grading user, under limits, and prints its output
/// after a status line. Exit status: 0 the job finished (whatever make returned), 1 usage
/// error, 2 timed out, 3 OS error. A limit of 0 means none.
#[derive(Debug, Clone, Parser)]
#[command(name = "autodriver", version)]
pub struct Options {
    /// Most processes the grading user may have (RLIMIT_NPROC).
    #[arg(short = 'u', long = "nproc", value_name = "NPROC", default_value = "0", value_parser = parse_c_uint)]
    pub nproc: u64,
    /// Largest file the job may write, in bytes (RLIMIT_FSIZE).
    #[arg(short = 'f', long = "fsize", value_name = "BYTES", default_value = "0", value_parser = parse_c_uint)]
    pub fsize: u64,
    /// Wall-clock seconds the job may run before it is killed (exit 2).
    #[arg(short = 't', long = "timeout", value_name = "SECS", default_value = "0", value_parser = parse_c_uint)]
    pub timeout: u64,
    /// Bytes of output kept: the first and last halves of a longer output.
    #[arg(short = 'o', long = "osize", value_name = "BYTES", default_value = "0", value_parser = parse_c_uint)]
    pub max_output: u64,
    /// CPU seconds the whole job may use before it is killed (exit 2).
    #[arg(short = 'c', long = "cpu", value_name = "SECS", default_value = "0", value_parser = parse_c_uint)]
    pub cpu: u64,
    /// Address space of each process of the job, in bytes (RLIMIT_AS).
    #[arg(short = 'a', long = "address-space", value_name = "BYTES", default_value = "0", value_parser = parse_c_uint)]
    pub address_space: u64,
    /// After this many milliseconds the job yields the CPU to younger jobs: its session's
    /// scheduling group, its processes and this autodriver are reniced to 10. Short jobs
    /// beside long or hostile ones stay quicker; a job alone runs as fast. 0: never.
    #[arg(long = "demote-after", value_name = "MS", default_value = "100", value_parser = parse_c_uint)]
    pub demote_after: u64,
    /// The grading user, looked up in /etc/passwd [default: autograde].
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// Run the job as this numeric uid (need not exist in /etc/passwd); with --gid.
    #[arg(long, value_name = "UID", requires = "gid")]
    pub uid: Option<u32>,
    /// Run the job as this numeric gid; with --uid.
    #[arg(long, value_name = "GID", requires = "uid")]
    pub gid: Option<u32>,
    /// Write the output here instead of to standard output.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Where make's output goes while it runs [default: output.log].
    #[arg(long = "output-log", value_name = "FILE")]
    pub output_log: Option<PathBuf>,
    /// Write a JSON report of how the job ended and what it used here.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Read the job's files as a tar archive from standard input and unpack them into
    /// DIRECTORY (created when missing) before the job starts. Only regular files and
    /// directories inside DIRECTORY are accepted; reading stops at the archive's end.
    #[arg(long = "stdin-inputs")]
    pub stdin_inputs: bool,
    /// The grading directory: its Makefile's first target is run.
    #[arg(value_name = "DIRECTORY")]
    pub directory: PathBuf,
}

/// Parses a number as C's `strtoul(s, _, 0)` does for Tango's options: decimal, `0x` hex or
/// leading-zero octal, nothing else.
pub fn parse_c_uint(s: &str) -> Result<u64, String> {
    let parsed = if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(hex, 16)
    } else if s.len() > 1 && s.starts_with('0') {
        u64::from_str_radix(&s[1..], 8)
    } else {
        s.parse::<u64>()
    };
    parsed.map_err(|_| format!("must be a nonnegative integer, not {s:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_strtoul() {
        assert_eq!(parse_c_uint("100"), Ok(100));
        assert_eq!(parse_c_uint("0"), Ok(0));
        assert_eq!(parse_c_uint("0x10"), Ok(16));
        assert_eq!(parse_c_uint("010"), Ok(8));
        assert!(parse_c_uint("-1").is_err());
        assert!(parse_c_uint("10k").is_err());
        assert!(parse_c_uint("").is_err());
    }

    #[test]
    fn tangos_command_line() {
        let o = Options::try_parse_from([
            "autodriver",
            "-u",
            "100",
            "-f",
            "104857600",
            "-t",
            "20",
            "-o",
            "1024000",
            "autolab",
        ])
        .unwrap();
        assert_eq!(
            (o.nproc, o.fsize, o.timeout, o.max_output),
            (100, 104857600, 20, 1024000)
        );
        assert_eq!(o.directory, PathBuf::from("autolab"));
        assert_eq!((o.cpu, o.address_space), (0, 0));
        assert_eq!(o.demote_after, 100);
        assert!(!o.stdin_inputs);
    }

    #[test]
    fn uid_needs_gid() {
        assert!(Options::try_parse_from(["autodriver", "--uid", "5", "d"]).is_err());
        let o = Options::try_parse_from(["autodriver", "--uid", "5", "--gid", "6", "d"]).unwrap();
        assert_eq!((o.uid, o.gid), (Some(5), Some(6)));
    }

    #[test]
    fn directory_is_required_and_single() {
        assert!(Options::try_parse_from(["autodriver"]).is_err());
        assert!(Options::try_parse_from(["autodriver", "a", "b"]).is_err());
    }
}
