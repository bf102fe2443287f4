//! One job's life on one machine: initialize → wait → copy in → run → copy out, then the
//! output file, the dead list and the callback. Tango's `worker.py`, step for step, with
//! the same trace lines, final messages, counters and output-file header.
//!
//! Every step is bounded: `initialize_vm`, `wait_vm`, `copy_in` and `copy_out` by their
//! `timeouts.*`; `run_job` by the host-side guard every backend keeps (the job's timeout
//! plus `timeouts.kill_margin_secs`, [`RunSpec::kill_after`]) plus [`RUN_GRACE`]. No step can
//! keep a job live for ever.
//!
//! Which failure takes which path, and why:
//!
//! | what happened | path | final message / trace |
//! |---|---|---|
//! | `run_job` status 0 | done, machine returned | `Success: Autodriver returned normally` |
//! | status 1 | done, machine returned | `Error: Autodriver usage error (status=1)` |
//! | status 2 (autodriver's timeout) | done, machine returned | `Error: Job timed out after N seconds` |
//! | status 3 (OS error in the machine) | done, machine destroyed and replaced | `Error: OS error while running job on VM` |
//! | other status | done, machine returned | `Error: Unknown autodriver error (status=N)` |
//! | run killed from the host, or our bound on `run_job` ran out | done, machine destroyed and replaced | `Error: Job timed out after N seconds` |
//! | `copy_in` I/O error on this host (an input file missing or unreadable) | done, the job is not run, machine returned | `Error: Copy in to VM failed (status=-1)` |
//! | `copy_out` I/O error on this host (the output cannot be written) | done, machine returned | `Success: Autodriver returned normallyError: Copy out from VM failed (status=-1)` (sic, Tango's concatenation) |
//! | any other error or timeout of `initialize_vm`, `wait_vm`, `copy_in`, `run_job`, `copy_out` (the machine or its backend failed) | retry: `Job NAME:ID failed: <err>`, machine destroyed and replaced, job back at the **front** of the queue with `retries + 1`, up to `jobs.retries`; then give up | `Internal error: waitVM timeout after N secs` or `Internal error: <step> failed: <err>` |
//! | `copy_out` fails after a run that was killed or hit an OS error | done (a retry would run a runaway or damaging job again) | the run's message |
//! | the backend cannot do a step at all (`Unsupported`) | give up at once (a retry cannot help) | `Internal error: <step> failed: <err>` |
//! | our lease on the job was lost (we were taken for dead) | abandon: no output, no callback; the manager that holds it now finishes it | — |
//!
//! Tango retried only a `waitVM` timeout and let every other machine failure escape as an
//! exception, which left the job live and unassigned for ever with no callback; here every
//! machine failure is retried the same bounded way. Giving up writes Tango's header:
//! `Internal error: Unable to complete job after N tries. Pleae resubmit` (sic; N is
//! `jobs.retries`, as in Tango) and `Job status: waitVM=… copyIn=… runJob=… copyOut=…`.
//!
//! A job that brings its own cloud credentials (`accessKeyId`/`accessKey`) runs on a backend
//! acting with them (`Vmms::with_credentials`): a one-off machine in the job's account, made
//! and destroyed through that backend, never through the pools. A backend without accounts
//! refuses, and the job is given up at once (docs/backends.md).
//!
//! The output file (Tango's format) is its header lines, stamped in local time like Tango's,
//! then the autodriver's output, so the job's own last line stays last. `labs.rs` writes it
//! (a temporary file in the output directory renamed onto the output path, so a poll never
//! sees half a file).
//!
//! A worker stands alone: it gets a [`Context`] (the store, the backend, the pools, the
//! callbacks, this manager's owner id), never the manager itself.
//!
//! Order at the end, for exactly-once under crashes: (1) fenced write of the job (is it
//! still ours? retried while the store cannot answer, never assumed), (2) output file written and renamed, (3) `store.finish` (fenced), with the
//! callback marked pending by this manager in the same write, (4) callback in its own task,
//! (5) callback outcome recorded on the dead job. A crash before (3) leaves the job live
//! under our lease: it is requeued when the lease runs out and runs again, overwriting the
//! output file with a complete new one. A crash after (3) leaves a pending callback that
//! the manager that reaps us sends (see `manager.rs`). A callback that was on the wire when
//! we died may be delivered twice; Autolab ignores the second (its `dave` key is spent).

use std::sync::Arc;
use std::time::Duration;

use chrono::Local;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::callback::Callbacks;
use crate::config::Config;
use crate::labs;
use crate::metrics::Metrics;
use crate::model::{CallbackState, Counter, Job, Machine, ctime, unix_now};
use crate::preallocator::Preallocator;
use crate::store::{JobStore, StoreError, persist};
use crate::vmms::{RUN_GRACE, RunOutcome, RunSpec, Vmms, VmmsError, run, within};

/// What a worker works with: the services of its manager, and nothing of the manager itself.
pub struct Context {
    pub config: Arc<Config>,
    pub store: Arc<dyn JobStore>,
    /// The configured backend (a job with its own credentials gets one acting with them).
    pub vmms: Arc<dyn Vmms>,
    /// Where machines come from and go back to.
    pub prealloc: Arc<Preallocator>,
    pub callbacks: Arc<Callbacks>,
    pub metrics: Arc<Metrics>,
    /// This manager's owner id: the owner of the jobs it runs and the machines it makes.
    pub owner: String,
    /// Cancelled when the manager stops hard: a write being retried gives up.
    pub kill: CancellationToken,
}

/// How a job gets its machine.
pub enum Assignment {
    /// A free machine from a pool (`Assigned job NAME:ID existing VM ...`).
    Pooled(Box<Machine>),
    /// A machine made for this job alone, numbered with its id (`... new VM ...`).
    Fresh,
}

/// Runs a dispatched job to its end (see the module doc).
pub async fn run(ctx: Arc<Context>, job: Job, assignment: Assignment) {
    let span = crate::logging::job_span(&job);
    async move {
        let mut worker = Worker::new(ctx, job);
        let ending = match worker.steps(assignment).await {
            Ok(finished) => finished,
            Err(ending) => ending,
        };
        worker.end(ending).await;
    }
    .instrument(span)
    .await
}

/// Charges a job that never got a machine (making one for its pool failed) with the
/// failure: retried or given up exactly like a machine failure in a step.
pub async fn run_failed(ctx: Arc<Context>, job: Job, error: String) {
    let span = crate::logging::job_span(&job);
    let mut worker = Worker::new(ctx, job);
    worker
        .end(Ending::MachineFailed {
            error: format!("Internal error: {error}"),
            retry: true,
        })
        .instrument(span)
        .await;
}

/// After a worker task panicked (a bug): the job is given up with an internal error and
/// its machine destroyed, rather than left live and assigned for ever as in Tango.
pub async fn recover_from_panic(ctx: Arc<Context>, id: u64) {
    let Some((mut worker, span)) = Worker::for_held_job(ctx, id).await else {
        return;
    };
    worker
        .end(Ending::MachineFailed {
            error: "Internal error: the worker failed unexpectedly".into(),
            retry: false,
        })
        .instrument(span)
        .await;
}

/// Ends a job asked to be cancelled (`store::request_cancel`) that this manager holds: its
/// worker, if it had one, has been stopped; its machine, if it had one, is destroyed; the
/// job ends with the trace line and the output file `Cancelled`, and its callback is sent,
/// so that Autolab shows the submission as ended.
pub async fn cancel(ctx: Arc<Context>, id: u64) {
    let Some((mut worker, span)) = Worker::for_held_job(ctx, id).await else {
        return;
    };
    worker
        .end(Ending::Finished {
            message: CANCELLED.into(),
            output: None,
            reusable: false,
        })
        .instrument(span)
        .await;
}

/// The final message (trace line and output file) of a cancelled job.
pub const CANCELLED: &str = "Cancelled";

/// The exit status of each step, as Tango's `Job status:` line prints them (`None` for a
/// step not reached).
#[derive(Debug, Default, Clone, Copy)]
struct Statuses {
    wait_vm: Option<i32>,
    copy_in: Option<i32>,
    run_job: Option<i32>,
    copy_out: Option<i32>,
}

impl std::fmt::Display for Statuses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |v: Option<i32>| v.map_or_else(|| "None".to_string(), |n| n.to_string());
        write!(
            f,
            "waitVM={} copyIn={} runJob={} copyOut={}",
            show(self.wait_vm),
            show(self.copy_in),
            show(self.run_job),
            show(self.copy_out)
        )
    }
}

/// How the steps ended.
enum Ending {
    /// The job ran to a Tango final message. `output`: the autodriver's output, if copied
    /// out. `reusable`: the machine may serve another job.
    Finished {
        message: String,
        output: Option<tempfile::TempPath>,
        reusable: bool,
    },
    /// The machine or its backend failed: retried (if `retry` and tries remain) or given up.
    MachineFailed { error: String, retry: bool },
    /// Another manager holds the job now.
    Abandoned,
    /// The job as stored names files outside its courselab (the store was edited): it ends
    /// here, no file is read or written, and the trace says why.
    Refused { reason: String },
}

/// What the run step hands to copy-out: its final message, whether the machine may serve
/// another job, and its status.
struct Ran {
    message: String,
    reusable: bool,
    status: i32,
}

struct Worker {
    ctx: Arc<Context>,
    job: Job,
    /// The machine, once it is ours (released exactly once, in `end`).
    vm: Option<Machine>,
    /// Header lines of the output file, `Autograder [<ctime>]: ...`.
    header: Vec<String>,
    statuses: Statuses,
    /// The backend acting with the job's own credentials (`accessKeyId`/`accessKey`), once
    /// made: its one-off machine lives in the job's account, so it is made and destroyed
    /// through this, never through the pools.
    own_backend: Option<Arc<dyn Vmms>>,
}

impl Worker {
    /// A worker for a job this manager holds whose own worker is gone (stopped or
    /// panicked), with the machine the job recorded, to end it: `None` when the job is no
    /// longer live or no longer ours.
    async fn for_held_job(ctx: Arc<Context>, id: u64) -> Option<(Worker, tracing::Span)> {
        let job = match ctx.store.live_job(id).await {
            Ok(Some(job)) if job.owner.as_deref() == Some(&ctx.owner) => job,
            _ => return None,
        };
        let span = crate::logging::job_span(&job);
        let mut worker = Worker::new(ctx, job);
        // A machine made with the job's own credentials is destroyed through them.
        if let Err(e) = worker.backend() {
            tracing::warn!(job = id, error = %e, "cannot act with the job's own credentials");
        }
        if worker.job.vm.instance.is_some() {
            worker.vm = Some(worker.job.vm.clone());
        }
        Some((worker, span))
    }

    fn new(ctx: Arc<Context>, job: Job) -> Worker {
        let mut worker = Worker {
            ctx,
            job,
            vm: None,
            header: Vec::new(),
            statuses: Statuses::default(),
            own_backend: None,
        };
        worker.header(&format!("Received job {}", worker.job.label()));
        worker
    }

    fn header(&mut self, message: &str) {
        self.header
            .push(format!("Autograder [{}]: {message}\n", ctime(Local::now())));
    }

    fn trace(&mut self, message: String) {
        tracing::info!(job = self.job.id, "{message}");
        self.job.trace(message);
    }

    /// Writes the job back (fenced). False when the job is no longer ours.
    async fn save(&mut self) -> bool {
        match self.ctx.store.update_live(&self.job).await {
            Ok(()) => true,
            Err(StoreError::LeaseLost(_)) => {
                tracing::warn!(
                    job = self.job.id,
                    "lease lost: another manager holds the job now"
                );
                false
            }
            Err(e) => {
                // Progress only; the final write retries.
                tracing::warn!(job = self.job.id, error = %e, "cannot record job progress");
                true
            }
        }
    }

    /// [`Worker::save`], as a step's early end when the job is no longer ours.
    async fn saved(&mut self) -> Result<(), Ending> {
        if self.save().await {
            Ok(())
        } else {
            Err(Ending::Abandoned)
        }
    }

    async fn count(&self, counter: Counter) {
        if let Err(e) = self.ctx.store.incr(counter, 1).await {
            tracing::warn!(counter = counter.name(), error = %e, "cannot count");
        }
    }

    /// The five steps, each ending the job early (`Err`) or handing on to the next.
    async fn steps(&mut self, assignment: Assignment) -> Result<Ending, Ending> {
        let vmms = self.backend().map_err(|e| Ending::MachineFailed {
            // A retry would be refused the same way.
            error: format!("Internal error: initializeVM failed: {e}"),
            retry: false,
        })?;
        let vm = self.initialize(&vmms, assignment).await?;
        if let Err(reason) = labs::check_stored_paths(&self.ctx.config.server, &self.job) {
            return Err(Ending::Refused { reason });
        }
        self.wait(&vmms, &vm).await?;
        self.copy_in(&vmms, &vm).await?;
        let ran = self.run(&vmms, &vm).await?;
        self.copy_out(&vmms, &vm, ran).await
    }

    /// initializeVM: a pool's machine, or one made for this job alone.
    async fn initialize(
        &mut self,
        vmms: &Arc<dyn Vmms>,
        assignment: Assignment,
    ) -> Result<Machine, Ending> {
        let label = self.job.label();
        let vm = match assignment {
            Assignment::Pooled(vm) => {
                let vm = *vm;
                let message = format!(
                    "Assigned job {label} existing VM {}",
                    vmms.instance_name(&vm)
                );
                self.job.vm = vm.clone();
                self.vm = Some(vm.clone());
                self.trace(message);
                vm
            }
            Assignment::Fresh => {
                let mut vm = self.job.vm.clone();
                vm.id = Some(self.job.id);
                vm.owner = Some(self.ctx.owner.clone());
                vm.instance = None;
                vm.host = None;
                if vm.vmms.is_empty() {
                    vm.vmms = vmms.name().to_string();
                }
                let message = format!("Assigned job {label} new VM {}", vmms.instance_name(&vm));
                self.job.vm = vm.clone();
                self.vm = Some(vm.clone());
                self.trace(message);
                self.saved().await?;
                let made = self.ctx.prealloc.make_one_off(vmms, &mut vm).await;
                // Even a failed initialize may have made something to destroy.
                self.vm = Some(vm.clone());
                self.job.vm = vm.clone();
                made.map_err(|e| machine_failed("initializeVM", e))?;
                vm
            }
        };
        Ok(vm)
    }

    /// waitVM: the machine can take the job.
    async fn wait(&mut self, vmms: &Arc<dyn Vmms>, vm: &Machine) -> Result<(), Ending> {
        let label = self.job.label();
        let instance = vmms.instance_name(vm);
        self.trace(format!("Job {label} waiting for VM {instance}"));
        self.saved().await?;
        let wait_secs = self.ctx.config.timeouts.wait_vm;
        let wait = secs(wait_secs);
        match within(wait, "waitVM", vmms.wait_vm(vm, wait)).await {
            Ok(()) => self.statuses.wait_vm = Some(0),
            Err(e) => {
                self.statuses.wait_vm = Some(-1);
                if matches!(e, VmmsError::Timeout { .. }) {
                    self.count(Counter::WaitvmTimeouts).await;
                    return Err(Ending::MachineFailed {
                        error: format!("Internal error: waitVM timeout after {wait_secs} secs"),
                        retry: true,
                    });
                }
                return Err(machine_failed("waitVM", e));
            }
        }
        self.job.timings.machine_ready = Some(unix_now());
        self.trace(format!("VM {instance} ready for job {label}"));
        self.saved().await
    }

    /// copyIn: the job's files into the machine. A file that cannot be read on this host
    /// ends the job (a retry elsewhere would fail the same way).
    async fn copy_in(&mut self, vmms: &Arc<dyn Vmms>, vm: &Machine) -> Result<(), Ending> {
        let label = self.job.label();
        let limit = secs(self.ctx.config.timeouts.copy_in);
        let copied = within(limit, "copyIn", vmms.copy_in(vm, &self.job.input)).await;
        let status = if copied.is_ok() { 0 } else { -1 };
        self.statuses.copy_in = Some(status);
        if let Err(e) = copied {
            self.count(Counter::CopyinErrors).await;
            if let VmmsError::Io(detail) = &e {
                tracing::warn!(job = self.job.id, %detail, "cannot copy the input in");
                self.trace(format!("Input copied for job {label} [status={status}]"));
                return Err(Ending::Finished {
                    message: format!("Error: Copy in to VM failed (status={status})"),
                    output: None,
                    reusable: true,
                });
            }
            return Err(machine_failed("copyIn", e));
        }
        self.job.timings.copied_in = Some(unix_now());
        self.trace(format!("Input copied for job {label} [status=0]"));
        self.saved().await
    }

    /// runJob: the autodriver under the job's limits, bounded by the host-side guard.
    async fn run(&mut self, vmms: &Arc<dyn Vmms>, vm: &Machine) -> Result<Ran, Ending> {
        let label = self.job.label();
        let spec = RunSpec::for_job(&self.job, &self.ctx.config);
        let timeout = spec.timeout;
        let mut bound = spec.kill_after + RUN_GRACE;
        if vmms.run_sends_inputs() {
            // The copy happens inside the run, under its own bound.
            bound += secs(self.ctx.config.timeouts.copy_in);
        }
        let outcome = match within(bound, "runJob", vmms.run_job(vm, &spec)).await {
            Ok(outcome) => outcome,
            // Our bound, or the backend's guard reporting its kill as an error.
            Err(VmmsError::Timeout { .. }) => RunOutcome::Killed,
            Err(e) => {
                self.statuses.run_job = Some(-1);
                self.count(Counter::RunjobErrors).await;
                return Err(machine_failed("runJob", e));
            }
        };
        let status = outcome.status();
        self.statuses.run_job = Some(status);
        if status != 0 {
            self.count(Counter::RunjobErrors).await;
        }
        if outcome == RunOutcome::Killed {
            self.count(Counter::RunjobTimeouts).await;
        }
        self.job.timings.ran = Some(unix_now());
        self.trace(format!("Job {label} executed [status={status}]"));
        self.saved().await?;
        let (message, reusable) = match outcome {
            RunOutcome::Exited(0) => ("Success: Autodriver returned normally".to_string(), true),
            RunOutcome::Exited(1) => ("Error: Autodriver usage error (status=1)".into(), true),
            RunOutcome::Exited(2) => (
                format!("Error: Job timed out after {timeout} seconds"),
                true,
            ),
            // The job may have damaged the machine: never reuse it, never retry the job.
            RunOutcome::Exited(3) => ("Error: OS error while running job on VM".into(), false),
            RunOutcome::Exited(n) => (
                format!("Error: Unknown autodriver error (status={n})"),
                true,
            ),
            RunOutcome::Killed => (
                format!("Error: Job timed out after {timeout} seconds"),
                false,
            ),
        };
        Ok(Ran {
            message,
            reusable,
            status,
        })
    }

    /// copyOut: the autodriver's output to a temporary file beside the output file. A
    /// failure of the machine is retried unless the run was killed or hit an OS error (a
    /// retry would run a runaway or damaging job again).
    async fn copy_out(
        &mut self,
        vmms: &Arc<dyn Vmms>,
        vm: &Machine,
        ran: Ran,
    ) -> Result<Ending, Ending> {
        let label = self.job.label();
        let Ran {
            mut message,
            reusable,
            status,
        } = ran;
        let limit = secs(self.ctx.config.timeouts.copy_out);
        let copied = match labs::output_temp(&self.job.output_file) {
            Ok(temp) => within(
                limit,
                "copyOut",
                vmms.copy_out(vm, &temp, self.job.max_output),
            )
            .await
            .map(|()| temp),
            Err(e) => Err(VmmsError::Io(format!(
                "cannot create a temporary file: {e}"
            ))),
        };
        let copy_out_status = if copied.is_ok() { 0 } else { -1 };
        self.statuses.copy_out = Some(copy_out_status);
        let output = match copied {
            Ok(temp) => Some(temp),
            Err(e) => {
                self.count(Counter::CopyoutErrors).await;
                let host_side = matches!(e, VmmsError::Io(_));
                if !host_side && reusable {
                    return Err(machine_failed("copyOut", e));
                }
                tracing::warn!(job = self.job.id, error = %e, "cannot copy the output out");
                if status == 0 {
                    message.push_str(&format!(
                        "Error: Copy out from VM failed (status={copy_out_status})"
                    ));
                }
                None
            }
        };
        self.job.timings.copied_out = Some(unix_now());
        self.trace(format!(
            "Output copied for job {label} [status={copy_out_status}]"
        ));
        Ok(Ending::Finished {
            message,
            output,
            reusable,
        })
    }

    /// The backend this job runs on: the configured one, or for a job that brings its own
    /// cloud credentials (Tango's `accessKeyId`/`accessKey`) one acting with them, so its
    /// machine (and, on EC2, a fresh key pair) is made in the job's account.
    fn backend(&mut self) -> Result<Arc<dyn Vmms>, VmmsError> {
        match (&self.job.access_key_id, &self.job.access_key) {
            (Some(id), Some(key)) if !key.is_empty() => {
                let backend = self.ctx.vmms.with_credentials(id, key)?;
                self.own_backend = Some(backend.clone());
                Ok(backend)
            }
            _ => Ok(self.ctx.vmms.clone()),
        }
    }

    /// Gives the machine back after the job: to the pools, or for a machine made with the
    /// job's own credentials, destroyed through that backend (with its key pair).
    async fn release(&self, vm: Machine, reusable: bool) {
        let Some(backend) = &self.own_backend else {
            self.ctx.prealloc.release(vm, reusable).await;
            return;
        };
        let config = &self.ctx.config;
        let limit = Duration::from_secs_f64(config.vmms.destroy_secs.max(1.0))
            + secs(config.timeouts.initialize_vm);
        if let Err(e) = within(limit, "safeDestroyVM", backend.safe_destroy_vm(&vm)).await {
            tracing::error!(job = self.job.id, vm = %backend.instance_name(&vm), error = %e,
                "cannot destroy the machine made with the job's own credentials");
        }
    }

    async fn end(&mut self, ending: Ending) {
        match ending {
            Ending::Abandoned => {
                if let Some(vm) = self.vm.take() {
                    // Its state is unknown (another manager may run the job elsewhere).
                    self.release(vm, false).await;
                }
            }
            Ending::Finished {
                message,
                output,
                reusable,
            } => {
                let cap = run::output_cap(self.job.max_output);
                let autodriver_output = match &output {
                    Some(path) => match labs::read_capped(path, cap).await {
                        Ok(bytes) => bytes,
                        Err(e) => {
                            tracing::warn!(job = self.job.id, error = %e, "cannot read the output");
                            Vec::new()
                        }
                    },
                    None => Vec::new(),
                };
                drop(output);
                self.header(&message);
                self.header("Here is the output from the autograder:\n---");
                self.complete(message, Some(autodriver_output)).await;
                // The machine is handed back once the output is out: destroying a
                // single-use container takes longer than the rest of a short job, and the
                // output need not wait for it.
                if let Some(vm) = self.vm.take() {
                    self.release(vm, reusable).await;
                }
            }
            Ending::MachineFailed { error, retry } => self.machine_ended(error, retry).await,
            Ending::Refused { reason } => {
                tracing::error!(job = self.job.id, %reason, "job refused: its stored paths were tampered with");
                if let Some(vm) = self.vm.take() {
                    // Nothing ran on it.
                    self.release(vm, true).await;
                }
                // No callback either: its output would be read from the same path.
                self.job.notify_url = None;
                self.complete(format!("Job refused: {reason}"), None).await;
            }
        }
    }

    /// After a machine failure: the machine goes, and the job is retried or given up.
    async fn machine_ended(&mut self, error: String, retry: bool) {
        let label = self.job.label();
        self.trace(format!("Job {label} failed: {error}"));
        if let Some(vm) = self.vm.take() {
            self.release(vm, false).await;
        }
        let retries = self.ctx.config.jobs.retries;
        if retry && self.job.retries < retries {
            self.retry().await;
            return;
        }
        if retry {
            self.header(&format!(
                "Internal error: Unable to complete job after {retries} tries. Pleae resubmit"
            ));
        } else {
            self.header(&error);
        }
        let statuses = self.statuses;
        self.header(&format!("Job status: {statuses}"));
        self.header("Here is the output from the autograder:\n---");
        self.complete(error, Some(Vec::new())).await;
    }

    /// Back to the front of the queue for another try on a fresh machine.
    async fn retry(&mut self) {
        self.job.retries += 1;
        self.job.assigned = false;
        self.count(Counter::JobRetries).await;
        let job = self.job.clone();
        let store = self.ctx.store.clone();
        let done = persist(&self.ctx.kill, "requeue", || {
            let store = store.clone();
            let job = job.clone();
            async move { store.requeue(&job).await }
        })
        .await;
        if done {
            tracing::info!(
                job = self.job.id,
                retries = self.job.retries,
                "job requeued"
            );
        }
    }

    /// Writes the output file and moves the job to the dead list with `final_message` as
    /// its last trace line, then starts the callback. See the module doc for the order.
    /// `autodriver_output`: `None` when no output file may be written (a refused job).
    async fn complete(&mut self, final_message: String, autodriver_output: Option<Vec<u8>>) {
        let mut content: Vec<u8> = self.header.concat().into_bytes();
        let write = autodriver_output.is_some();
        content.extend_from_slice(autodriver_output.as_deref().unwrap_or_default());
        drop(autodriver_output);

        // Still ours? Otherwise the output file is another manager's to write. Confirmed by
        // the store, not assumed while it cannot be reached: a manager cut off from Redis may
        // have lost the job to another, which runs it again and writes this file itself.
        let job = self.job.clone();
        let store = self.ctx.store.clone();
        let ours = persist(&self.ctx.kill, "confirm the lease", || {
            let store = store.clone();
            let job = job.clone();
            async move { store.update_live(&job).await }
        })
        .await;
        if !ours {
            tracing::warn!(
                job = self.job.id,
                "lease lost: another manager holds the job now"
            );
            return;
        }
        if write && let Err(e) = labs::write_output_file(&self.job.output_file, &content).await {
            tracing::error!(job = self.job.id, path = %self.job.output_file, error = %e,
                "cannot write the output file");
            // The job still ends, once, but no output file is in place (the temporary file
            // is gone, nothing truncated was renamed), and `poll` answers "Output file not
            // found". A full disk is the usual cause (docs/resilience.md).
            self.trace(format!(
                "Error: Cannot write the output file {}: {e}",
                self.job.output_file
            ));
        }

        let status_message = final_message.clone();
        self.trace(final_message);
        self.job.assigned = false;
        self.job.timings.finished = Some(unix_now());
        let notify = self
            .job
            .notify_url
            .as_deref()
            .is_some_and(|url| !url.is_empty());
        if notify {
            self.job.callback = Some(CallbackState {
                sender: Some(self.ctx.owner.clone()),
                ..CallbackState::default()
            });
        }
        let job = self.job.clone();
        let store = self.ctx.store.clone();
        let max_dead = self.ctx.config.jobs.max_dead;
        let finished = persist(&self.ctx.kill, "finish", || {
            let store = store.clone();
            let job = job.clone();
            async move { store.finish(&job, max_dead).await }
        })
        .await;
        if !finished {
            return;
        }
        self.ctx.metrics.job_finished(&self.job, &status_message);
        if self.ctx.config.log.timing {
            log_timings(&self.job);
        }
        if notify {
            self.ctx.callbacks.spawn(self.job.clone(), content);
        }
    }
}

/// A machine-level failure of `step`: retried, unless the backend cannot do the step at all.
fn machine_failed(step: &str, error: VmmsError) -> Ending {
    let retry = !matches!(error, VmmsError::Unsupported(_));
    let error = match error {
        VmmsError::Timeout { .. } => format!("Internal error: {error}"),
        other => format!("Internal error: {step} failed: {other}"),
    };
    Ending::MachineFailed { error, retry }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// `log.timing`: how long each phase of a job took (Tango's `LOG_TIMING`).
fn log_timings(job: &Job) {
    let t = &job.timings;
    let between = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => format!("{:.3}", b - a),
        _ => "-".into(),
    };
    tracing::info!(
        job = job.id,
        queued = %between(t.added, t.dispatched),
        machine = %between(t.dispatched, t.machine_ready),
        copy_in = %between(t.machine_ready, t.copied_in),
        run = %between(t.copied_in, t.ran),
        copy_out = %between(t.ran, t.copied_out),
        total = %between(t.added, t.finished),
        "job timing (seconds)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_print_like_python() {
        let s = Statuses {
            wait_vm: Some(-1),
            ..Statuses::default()
        };
        assert_eq!(
            s.to_string(),
            "waitVM=-1 copyIn=None runJob=None copyOut=None"
        );
    }
}
