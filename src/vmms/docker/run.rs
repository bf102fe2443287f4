//! A job's run: the container's main process, started with its standard streams attached.
//!
//! The container was created with [`RUN_SCRIPT`] as its entrypoint and its standard input
//! open for one attach. The run attaches, starts the container, and writes to its standard
//! input: our static autodriver (the script copies it to [`AUTODRIVER`], on a small tmpfs),
//! then, once the script says it has it, one line with the job's limits and a tar archive of
//! the job's inputs, which the autodriver's `--stdin-inputs` unpacks into the grading
//! directory. The autodriver's standard output is the job's output; when it ends, the
//! container has exited and the engine's `wait` gives its status. One create, attach, start
//! and wait per job, as `docker run` makes, and no exec.

use std::time::Duration;

use bollard::container::{AttachContainerResults, LogOutput};
use bollard::errors::Error as BollardError;
use bollard::query_parameters::{AttachContainerOptions, WaitContainerOptions};
use bytes::Bytes;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use super::archive::ArchiveStream;
use super::engine::{CONTROL_TIMEOUT, Engine};
use super::error::{DockerError, call};
use super::{AUTODRIVER, DockerVmms, JOB_DIR, JobUser, OUTPUT_LOG};
use crate::model::Machine;
use crate::vmms::RunSpec;

/// The container's main process before the autodriver: the autodriver's bytes from standard
/// input into its path, then [`READY_MARK`] on standard error; then one line of the job's
/// limit options (`-u N -f N -t N -o N`, [`RunSpec::autodriver_limits`]) read from standard
/// input, and the autodriver started with them, its standard input left at the inputs
/// archive. The line is split into words by the shell: it holds only options and numbers.
/// The archive and the line are sent only once the mark is seen: `head -c` of GNU coreutils
/// reads exactly its count from a pipe, but busybox's reads through stdio and may take bytes
/// past it; with nothing more in the pipe, any `head` stops at the count (and `read` takes
/// one byte at a time from a pipe, so it never takes more than its line). `$1` is the
/// autodriver's size and `$2` its path; the autodriver's fixed arguments follow. A failure
/// here exits 126, as the engine does for a command it cannot start, so it is never taken
/// for the autodriver's own status. Needs `sh`, `head` and `chmod` in the image (`/tango`
/// and the tmpfs at `/tango/bin` are made by the engine, root's).
pub const RUN_SCRIPT: &str = "head -c \"$1\" > \"$2\" \
&& chmod 0755 /tango \"$2\" && echo tango-autodriver-in >&2 || exit 126
read -r limits || exit 126
shift
exec \"$@\" $limits";

/// What [`RUN_SCRIPT`] prints on standard error once the autodriver is in place.
const READY_MARK: &[u8] = b"tango-autodriver-in\n";

/// What one run is given.
pub(super) struct RunPlan {
    /// Sent first on its standard input.
    pub autodriver: Bytes,
    /// Sent once the autodriver is in place: the limits line, then the inputs archive.
    pub inputs: ArchiveStream,
    /// Most bytes of standard output kept.
    pub output_cap: u64,
    /// How long after the inputs are sent the run may take before its container is killed.
    pub guard: Duration,
    /// How long sending the autodriver and the inputs may take.
    pub send_limit: Duration,
}

/// How the run ended.
pub(super) enum RunEnd {
    /// The container exited with this code; what it printed on standard output (cut to the
    /// cap), how much that was, and the tail of its standard error.
    Exited {
        code: i64,
        stdout: Vec<u8>,
        stdout_size: u64,
        said: String,
    },
    /// The host-side guard ran out before it ended.
    GuardFired,
}

/// Why the run failed.
pub(super) enum RunFailure {
    Engine(DockerError),
    /// An input file on this host could not be read while it was being sent.
    Input(std::io::Error),
}

impl DockerVmms {
    /// The autodriver's fixed arguments: whom the job runs as, where its inputs and partial
    /// output go. The limits come on the run's standard input ([`limits_line`]).
    pub fn autodriver_args(&self, vm: &Machine) -> Vec<String> {
        let mut args: Vec<String> = Vec::new();
        match self.job_user(vm) {
            JobUser::Id { uid, gid } => {
                args.extend([
                    "--uid".into(),
                    uid.to_string(),
                    "--gid".into(),
                    gid.to_string(),
                ]);
            }
            JobUser::Named(name) => args.extend(["--user".into(), name]),
        }
        // No --output: the output is the autodriver's standard output, which the run reads.
        args.extend([
            "--stdin-inputs".into(),
            "--output-log".into(),
            OUTPUT_LOG.into(),
            JOB_DIR.into(),
        ]);
        args
    }

    /// A machine's main process: [`RUN_SCRIPT`], given the autodriver's size, its path and
    /// its fixed arguments.
    pub fn run_command(&self, vm: &Machine) -> Vec<String> {
        let mut cmd: Vec<String> = vec![
            "/bin/sh".into(),
            "-c".into(),
            RUN_SCRIPT.into(),
            // `$0` of the script, for its error messages.
            "tango-run".into(),
            self.autodriver.len().to_string(),
            AUTODRIVER.into(),
        ];
        cmd.extend(self.autodriver_args(vm));
        cmd
    }

    /// Attaches to the container, starts it and feeds it, reads its output and waits for it
    /// to exit. Its standard input gets the autodriver, then, once the script says it has it,
    /// the limits line and the inputs archive, while its standard output (the job's output,
    /// kept up to `output_cap` bytes) and standard error (the tail of its diagnostics) are
    /// read at the same time, so neither side can block the other. The guard starts once the
    /// inputs are sent: sending a large handin is not the job's time.
    pub(super) async fn run_attached(
        &self,
        engine: &Engine,
        id: &str,
        plan: RunPlan,
    ) -> Result<RunEnd, RunFailure> {
        let RunPlan {
            autodriver,
            inputs,
            output_cap,
            guard,
            send_limit,
        } = plan;
        let AttachContainerResults {
            mut output, input, ..
        } = attach_and_start(engine, id).await?;
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let mut streams = Streams::new(output_cap, ready_tx);
        let feed = feed(input, autodriver, ready_rx, inputs);
        tokio::pin!(feed);
        let mut feeding = true;
        let mut input_failure = None;
        // First the sending's own bound, then, once everything is sent, the job's.
        let deadline = tokio::time::sleep(send_limit);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                fed = &mut feed, if feeding => {
                    feeding = false;
                    match fed {
                        Ok(()) => {}
                        Err(FeedError::Input(e)) => input_failure = Some(e),
                        // The run stopped reading (it failed, or ended early): its exit code
                        // and diagnostics tell why.
                        Err(FeedError::Write(e)) => {
                            tracing::debug!(container = id, "the run stopped reading its input: {e}");
                        }
                    }
                    deadline.as_mut().reset(tokio::time::Instant::now() + guard);
                }
                item = output.next() => match item {
                    Some(Ok(item)) => streams.take(item),
                    Some(Err(e)) => {
                        let e = DockerError::from_engine(&engine.url, e);
                        return Err(RunFailure::Engine(e.doing("follow the autodriver")));
                    }
                    // The stream ends when the container's process exits: no polling.
                    None => break,
                },
                () = &mut deadline => {
                    if feeding {
                        // Nothing of the job ran yet: a stalled copy, which a fresh machine
                        // may not have.
                        return Err(RunFailure::Engine(DockerError::Unreachable {
                            engine: engine.url.clone(),
                            message: format!(
                                "sending the inputs took more than {} s",
                                send_limit.as_secs()
                            ),
                        }));
                    }
                    return Ok(RunEnd::GuardFired);
                }
            }
        }
        if let Some(e) = input_failure {
            return Err(RunFailure::Input(e));
        }
        // The streams close as the process exits; the engine records its status a moment
        // later, which `wait` (not-running) returns as soon as it is there.
        let code = tokio::select! {
            waited = exit_code(engine, id) => waited.map_err(RunFailure::Engine)?,
            () = &mut deadline => return Ok(RunEnd::GuardFired),
        };
        Ok(streams.end(code))
    }
}

/// The container's attached streams, once it is started: attached first, so that nothing it
/// prints is missed.
async fn attach_and_start(engine: &Engine, id: &str) -> Result<AttachContainerResults, RunFailure> {
    let attached = call(
        engine,
        "attach to the container",
        Some(CONTROL_TIMEOUT),
        engine.client.attach_container(
            id,
            Some(AttachContainerOptions {
                stdin: true,
                stdout: true,
                stderr: true,
                stream: true,
                logs: false,
                detach_keys: None,
            }),
        ),
    )
    .await
    .map_err(RunFailure::Engine)?;
    call(
        engine,
        "start container",
        Some(CONTROL_TIMEOUT),
        engine.client.start_container(id, None),
    )
    .await
    .map_err(RunFailure::Engine)?;
    Ok(attached)
}

/// What the run prints, as it comes: standard output kept up to the cap (and counted past
/// it), standard error watched for [`READY_MARK`] and its tail kept.
struct Streams {
    stdout: Vec<u8>,
    stdout_size: u64,
    output_cap: u64,
    said: TailBuffer,
    /// Rung once the mark is seen; `None` after.
    ready: Option<tokio::sync::oneshot::Sender<()>>,
    /// Standard error until the mark is seen (it may come in pieces).
    before_ready: Vec<u8>,
}

impl Streams {
    fn new(output_cap: u64, ready: tokio::sync::oneshot::Sender<()>) -> Streams {
        Streams {
            stdout: Vec::new(),
            stdout_size: 0,
            output_cap,
            said: TailBuffer::new(8 * 1024),
            ready: Some(ready),
            before_ready: Vec::new(),
        }
    }

    fn take(&mut self, item: LogOutput) {
        if let LogOutput::StdOut { message } = item {
            self.stdout_size += message.len() as u64;
            let room = self.output_cap.saturating_sub(self.stdout.len() as u64) as usize;
            self.stdout
                .extend_from_slice(&message[..message.len().min(room)]);
            return;
        }
        let bytes = item.into_bytes();
        if self.ready.is_none() {
            self.said.push(&bytes);
            return;
        }
        self.before_ready.extend_from_slice(&bytes);
        if let Some(at) = find(&self.before_ready, READY_MARK) {
            if let Some(tx) = self.ready.take() {
                let _ = tx.send(());
            }
            // The mark is ours, not the autodriver's diagnostics.
            self.said.push(&self.before_ready[..at]);
            self.said.push(&self.before_ready[at + READY_MARK.len()..]);
            self.before_ready = Vec::new();
        }
    }

    fn end(mut self, code: i64) -> RunEnd {
        self.said.push(&self.before_ready);
        RunEnd::Exited {
            code,
            stdout: self.stdout,
            stdout_size: self.stdout_size,
            said: self.said.text(),
        }
    }
}

/// The exit code of a container that has exited or is exiting.
async fn exit_code(engine: &Engine, id: &str) -> Result<i64, DockerError> {
    let mut waits = engine.client.wait_container(
        id,
        Some(WaitContainerOptions {
            condition: "not-running".to_string(),
        }),
    );
    let first = tokio::time::timeout(CONTROL_TIMEOUT, waits.next()).await;
    let answer = match first {
        Err(_) => {
            let e = DockerError::Unreachable {
                engine: engine.url.clone(),
                message: format!(
                    "wait for the container: no answer within {} s",
                    CONTROL_TIMEOUT.as_secs()
                ),
            };
            engine.mark_down(&e.to_string());
            return Err(e);
        }
        Ok(None) => {
            return Err(DockerError::Refused {
                engine: engine.url.clone(),
                status: 500,
                message: "wait for the container: no answer".into(),
            });
        }
        Ok(Some(answer)) => answer,
    };
    match answer {
        Ok(response) => {
            engine.mark_up();
            Ok(response.status_code)
        }
        // bollard reports a non-zero status as an error of its own.
        Err(BollardError::DockerContainerWaitError { code, .. }) => {
            engine.mark_up();
            Ok(code)
        }
        Err(e) => Err(DockerError::from_engine(&engine.url, e).doing("wait for the container")),
    }
}

/// The line of limit options the run reads before it starts the autodriver.
pub(super) fn limits_line(spec: &RunSpec) -> Bytes {
    let mut line = spec.autodriver_limits().join(" ");
    line.push('\n');
    Bytes::from(line)
}

/// Why feeding the run's standard input stopped.
enum FeedError {
    /// Reading what was to be sent failed (an input file on this host).
    Input(std::io::Error),
    /// Writing to the container failed.
    Write(std::io::Error),
}

/// Writes `first` to the run's standard input, waits for `ready`, writes `stream`, then
/// closes the input, so the run sees end of file after the last byte. When reading the
/// stream fails, the input is closed all the same: the autodriver then finds its archive cut
/// short and says so, instead of waiting for ever.
async fn feed(
    mut input: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
    first: Bytes,
    ready: tokio::sync::oneshot::Receiver<()>,
    mut stream: ArchiveStream,
) -> Result<(), FeedError> {
    input.write_all(&first).await.map_err(FeedError::Write)?;
    input.flush().await.map_err(FeedError::Write)?;
    if ready.await.is_err() {
        // The run ended (or failed) before it took the autodriver: nothing more to send.
        let _ = input.shutdown().await;
        return Ok(());
    }
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) => input.write_all(&bytes).await.map_err(FeedError::Write)?,
            Err(e) => {
                let _ = input.shutdown().await;
                return Err(FeedError::Input(e));
            }
        }
    }
    input.shutdown().await.map_err(FeedError::Write)
}

/// Where `needle` first starts in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Keeps the last bytes of a stream.
struct TailBuffer {
    bytes: Vec<u8>,
    max: usize,
}

impl TailBuffer {
    fn new(max: usize) -> Self {
        TailBuffer {
            bytes: Vec::new(),
            max,
        }
    }

    fn push(&mut self, chunk: &[u8]) {
        self.bytes.extend_from_slice(chunk);
        if self.bytes.len() > self.max {
            let cut = self.bytes.len() - self.max;
            self.bytes.drain(..cut);
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).trim().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_buffer_keeps_the_end() {
        let mut t = TailBuffer::new(5);
        t.push(b"hello ");
        t.push(b"world");
        assert_eq!(t.text(), "world");
    }

    #[test]
    fn the_limits_line_is_what_the_run_script_reads() {
        let spec = RunSpec {
            job_id: 1,
            job_name: "j".into(),
            timeout: 7,
            max_output: 4321,
            ulimit_user_proc: 55,
            ulimit_file_size: 6789,
            disable_network: false,
            kill_after: Duration::from_secs(37),
        };
        assert_eq!(&limits_line(&spec)[..], b"-u 55 -f 6789 -t 7 -o 4321\n");
        assert!(RUN_SCRIPT.contains("read -r limits"));
    }
}
