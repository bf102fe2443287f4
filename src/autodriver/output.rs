//! The job's output: the status line, and make's stdout and stderr cut to the output limit
//! the way Tango's C autodriver cut it ([`crate::host::truncation`]).
//!
//! While the job runs, [`Capture`] takes the bytes from make's pipe: it writes the first
//! `max_output` of them to the log file (what `getPartialOutput` reads, as Tango's `output.log`)
//! and keeps the last `max_output / 2` in memory, so neither disk nor memory grows with the
//! job's output.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;

use crate::host::truncation::{ELISION, Plan};

/// The first line when make ended by itself: `N` is its exit status, or 128 + the signal
/// that killed it (as a shell reports it; Tango's C code printed 0 there).
pub fn exited_line(status: i32) -> String {
    format!("Autodriver: Job exited with status {status}\n")
}

/// The first line when the job was stopped at its time limit.
pub fn timed_out_line(secs: u64) -> String {
    format!("Autodriver: Job timed out after {secs} seconds\n")
}

/// The last `capacity` bytes of a stream.
#[derive(Debug)]
pub struct TailRing {
    buf: Vec<u8>,
    capacity: usize,
    /// Where the next byte goes once the buffer is full.
    next: usize,
}

impl TailRing {
    pub fn new(capacity: usize) -> TailRing {
        TailRing {
            buf: Vec::new(),
            capacity,
            next: 0,
        }
    }

    pub fn push(&mut self, mut bytes: &[u8]) {
        if self.capacity == 0 {
            return;
        }
        if bytes.len() >= self.capacity {
            bytes = &bytes[bytes.len() - self.capacity..];
            self.buf.clear();
            self.buf.extend_from_slice(bytes);
            self.next = 0;
            return;
        }
        let room = self.capacity - self.buf.len();
        if room > 0 {
            let now = room.min(bytes.len());
            self.buf.extend_from_slice(&bytes[..now]);
            bytes = &bytes[now..];
        }
        for &b in bytes {
            self.buf[self.next] = b;
            self.next = (self.next + 1) % self.capacity;
        }
    }

    /// The kept bytes, oldest first.
    pub fn contents(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.buf.len());
        out.extend_from_slice(&self.buf[self.next..]);
        out.extend_from_slice(&self.buf[..self.next]);
        out
    }
}

/// Make's output as it arrives: the log file (its first `max_output` bytes, or all of it without
/// a limit) and the tail in memory.
#[derive(Debug)]
pub struct Capture {
    max_output: u64,
    log: File,
    /// Bytes written to the log.
    logged: u64,
    /// Bytes the job wrote, whatever was kept.
    total: u64,
    tail: TailRing,
    /// The first error writing the log; the job goes on (its pipe must be drained) and the
    /// autodriver reports it at the end.
    log_error: Option<io::Error>,
}

impl Capture {
    /// `log` must be empty and open for reading and writing.
    pub fn new(log: File, max_output: u64) -> Capture {
        let half = usize::try_from(max_output / 2).unwrap_or(usize::MAX);
        Capture {
            max_output,
            log,
            logged: 0,
            total: 0,
            tail: TailRing::new(half),
            log_error: None,
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.total += bytes.len() as u64;
        let to_log = if self.max_output == 0 {
            bytes.len()
        } else {
            let room = self.max_output.saturating_sub(self.logged);
            usize::try_from(room).map_or(bytes.len(), |room| room.min(bytes.len()))
        };
        if to_log > 0 && self.log_error.is_none() {
            match self.log.write_all(&bytes[..to_log]) {
                Ok(()) => self.logged += to_log as u64,
                Err(e) => self.log_error = Some(e),
            }
        }
        if self.max_output > 0 {
            self.tail.push(bytes);
        }
    }

    /// Bytes the job wrote.
    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn plan(&self) -> Plan {
        Plan::new(self.total, self.max_output)
    }

    /// Writes the kept output (without the status line) to `dst`.
    pub fn write_kept<W: Write>(&mut self, dst: &mut W) -> io::Result<Plan> {
        if let Some(e) = self.log_error.take() {
            return Err(io::Error::new(
                e.kind(),
                format!("Error writing the output log: {e}"),
            ));
        }
        let plan = self.plan();
        match plan {
            Plan::Whole { len } => self.copy_logged(0, len, dst)?,
            Plan::HeadTail { half, .. } => {
                self.copy_logged(0, half, dst)?;
                dst.write_all(ELISION)?;
                dst.write_all(&self.tail.contents())?;
            }
        }
        Ok(plan)
    }

    /// Copies log bytes `start..start + len` with positioned reads (the log's own offset is
    /// where the next write goes).
    fn copy_logged<W: Write>(&self, start: u64, len: u64, dst: &mut W) -> io::Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut at = start;
        let end = start + len.min(self.logged);
        while at < end {
            let want = usize::try_from(end - at).map_or(buf.len(), |n| n.min(buf.len()));
            let n = self.log.read_at(&mut buf[..want], at)?;
            if n == 0 {
                break;
            }
            dst.write_all(&buf[..n])?;
            at += n as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::truncation::tango_reference;

    fn captured(data: &[u8], max_output: u64, chunk: usize) -> (Vec<u8>, Plan) {
        let log = tempfile::tempfile().unwrap();
        let mut capture = Capture::new(log, max_output);
        for piece in data.chunks(chunk.max(1)) {
            capture.push(piece);
        }
        let mut out = Vec::new();
        let plan = capture.write_kept(&mut out).unwrap();
        (out, plan)
    }

    #[test]
    fn short_output_is_kept_whole() {
        let (out, plan) = captured(b"hello\n", 100, 3);
        assert_eq!(out, b"hello\n");
        assert_eq!(plan, Plan::Whole { len: 6 });
    }

    #[test]
    fn output_of_exactly_the_limit_is_not_cut() {
        let data = vec![b'x'; 64];
        let (out, plan) = captured(&data, 64, 7);
        assert_eq!(out, data);
        assert!(!plan.is_truncated());
    }

    #[test]
    fn long_output_keeps_both_halves_and_the_last_line() {
        let mut data = b"first line\n".to_vec();
        data.extend(std::iter::repeat_n(b'.', 10_000));
        data.extend_from_slice(b"\n{\"scores\": {\"x\": 1}}\n");
        let (out, plan) = captured(&data, 100, 4096);
        assert_eq!(out, tango_reference(&data, 100));
        assert_eq!(out.len(), 100 + ELISION.len());
        assert!(out.starts_with(b"first line\n"));
        assert!(out.ends_with(b"\n{\"scores\": {\"x\": 1}}\n"));
        assert_eq!(plan.kept_len(), out.len() as u64);
    }

    #[test]
    fn odd_limit_keeps_one_byte_less_like_tango() {
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let (out, _) = captured(&data, 11, 13);
        assert_eq!(out, tango_reference(&data, 11));
        assert_eq!(out.len(), 10 + ELISION.len());
    }

    #[test]
    fn limit_zero_keeps_everything() {
        let data = vec![b'y'; 200_000];
        let (out, plan) = captured(&data, 0, 999);
        assert_eq!(out, data);
        assert_eq!(plan, Plan::Whole { len: 200_000 });
    }

    #[test]
    fn matches_tango_for_many_sizes_and_chunkings() {
        for total in [0usize, 1, 2, 9, 10, 11, 50, 333] {
            let data: Vec<u8> = (0..total).map(|i| (i * 7 % 251) as u8).collect();
            for max_output in [0u64, 1, 2, 3, 10, 11, 100, 1000] {
                for chunk in [1usize, 2, 5, 64] {
                    let (out, _) = captured(&data, max_output, chunk);
                    assert_eq!(
                        out,
                        tango_reference(&data, max_output),
                        "total {total} max_output {max_output} chunk {chunk}"
                    );
                }
            }
        }
    }

    #[test]
    fn log_holds_only_the_first_osize_bytes() {
        let log = tempfile::tempfile().unwrap();
        let mut capture = Capture::new(log.try_clone().unwrap(), 10);
        capture.push(b"0123456789abcdef");
        assert_eq!(log.metadata().unwrap().len(), 10);
        assert_eq!(capture.total(), 16);
    }

    #[test]
    fn status_lines_are_tangos() {
        assert_eq!(exited_line(2), "Autodriver: Job exited with status 2\n");
        assert_eq!(
            timed_out_line(3),
            "Autodriver: Job timed out after 3 seconds\n"
        );
    }
}
