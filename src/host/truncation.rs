//! Tango's rule for an output that is too long, as its C autodriver applied it.
//!
//! Under `-o max_output` (Tango's `osize`), Tango keeps the first `max_output / 2` bytes and
//! the last `max_output / 2` bytes of an output longer than `max_output`, with [`ELISION`]
//! between them (integer division, so an odd `max_output` keeps one byte less). The tail is
//! kept because Autolab reads the score from the output's last line.
//!
//! The autodriver cuts make's output this way as it arrives; the `local` backend cuts the
//! output file it copies out of a machine with [`copy_head_tail`].

use std::io::{self, Read, Seek, SeekFrom, Write};

/// What replaces the middle of an output that is too long (Tango's exact bytes).
pub const ELISION: &[u8] = b"\n...[excess bytes elided]...\n";

/// Which bytes of an output of `total` bytes are kept under the limit `max_output` (0: no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// All of it.
    Whole { len: u64 },
    /// Bytes `0..half`, then [`ELISION`], then bytes `total - half..total`.
    HeadTail { half: u64, tail_start: u64 },
}

impl Plan {
    pub fn new(total: u64, max_output: u64) -> Plan {
        if max_output > 0 && total > max_output {
            let half = max_output / 2;
            Plan::HeadTail {
                half,
                tail_start: total - half,
            }
        } else {
            Plan::Whole { len: total }
        }
    }

    /// Bytes the kept output takes, [`ELISION`] included.
    pub fn kept_len(&self) -> u64 {
        match *self {
            Plan::Whole { len } => len,
            Plan::HeadTail { half, .. } => 2 * half + ELISION.len() as u64,
        }
    }

    pub fn is_truncated(&self) -> bool {
        matches!(self, Plan::HeadTail { .. })
    }
}

/// Copies the kept part of `src` (of `total` bytes, read from its start) to `dst`: all of it,
/// or head, [`ELISION`] and tail. Streams through a small buffer. Used by backends that copy
/// an output file out of a machine with a cap.
pub fn copy_head_tail<R: Read + Seek, W: Write>(
    src: &mut R,
    total: u64,
    max_output: u64,
    dst: &mut W,
) -> io::Result<Plan> {
    let plan = Plan::new(total, max_output);
    match plan {
        Plan::Whole { len } => {
            src.seek(SeekFrom::Start(0))?;
            copy_exactly(src, len, dst)?;
        }
        Plan::HeadTail { half, tail_start } => {
            src.seek(SeekFrom::Start(0))?;
            copy_exactly(src, half, dst)?;
            dst.write_all(ELISION)?;
            src.seek(SeekFrom::Start(tail_start))?;
            copy_exactly(src, half, dst)?;
        }
    }
    Ok(plan)
}

/// Copies `len` bytes, or fewer if `src` ends first (a file that shrank is not an error).
fn copy_exactly<R: Read, W: Write>(src: &mut R, len: u64, dst: &mut W) -> io::Result<u64> {
    io::copy(&mut src.take(len), dst)
}

/// What Tango's C `dump_output` prints for an output `data` under `max_output`: the
/// reference the tests hold every cutter to.
#[cfg(test)]
pub(crate) fn tango_reference(data: &[u8], max_output: u64) -> Vec<u8> {
    let size = data.len() as u64;
    if max_output > 0 && size > max_output {
        let part = (max_output / 2) as usize;
        let mut out = data[..part].to_vec();
        out.extend_from_slice(b"\n...[excess bytes elided]...\n");
        out.extend_from_slice(&data[data.len() - part..]);
        out
    } else {
        data.to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn copy_head_tail_matches_tango() {
        let data: Vec<u8> = (0..5000).map(|i| (i % 200) as u8).collect();
        for max_output in [0u64, 1, 100, 4999, 5000, 5001] {
            let mut out = Vec::new();
            copy_head_tail(
                &mut Cursor::new(&data),
                data.len() as u64,
                max_output,
                &mut out,
            )
            .unwrap();
            assert_eq!(
                out,
                tango_reference(&data, max_output),
                "max_output {max_output}"
            );
        }
    }
}
