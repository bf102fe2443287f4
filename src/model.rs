//! The nouns Tango passes around: a job, its input files, the machine it runs on, its trace.
//!
//! These are stored as JSON (never a language-specific pickle) in field names of our own;
//! [`JobView`] is the separate, exact shape `/jobs` answers with (docs/rest-api.md, `GET /jobs`),
//! so what we store can grow without changing the wire, and secrets never reach it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Job ids come from one atomic counter in the store: unique, increasing, never reused.
pub type JobId = u64;

/// One file of a job: where it is on this host, and its name inside the machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputFile {
    /// Path on this host (under the courselab directory).
    pub local_file: String,
    /// File name inside the machine's grading directory.
    pub dest_file: String,
}

/// A machine (container or VM) as Tango describes it (`TangoMachine`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Machine {
    /// The pool this machine belongs to: the image name without its extension.
    pub name: String,
    /// The image (Docker image, AMI name, disk image) it is made from.
    pub image: String,
    /// The VMMS that makes it, as Tango names it (`localDocker`, `ec2SSH`, ...).
    pub vmms: String,
    /// CPUs; absent means the backend's default.
    pub cores: Option<f64>,
    /// Memory in MiB; absent means the backend's default.
    pub memory: Option<u64>,
    /// Tango's `disk`, `network` and `resume`: always null in Tango's own VMMSes; kept so
    /// `/jobs` has the same keys.
    pub disk: Option<String>,
    pub network: Option<String>,
    pub resume: Option<bool>,
    /// The machine's number: 1000 and up for pool machines (`/pool` lists these), or the
    /// job's id for a one-off machine. Absent until the machine is chosen.
    pub id: Option<u64>,
    /// The backend's handle for it: a container id, an EC2 instance id, ...
    pub instance: Option<String>,
    /// Where it is reached: an SSH host, or the Docker engine it lives on.
    pub host: Option<String>,
    /// The manager that made it; a machine whose owner is gone is a leftover to clean up.
    pub owner: Option<String>,
}

impl Machine {
    /// The pool name Tango derives from an image: the image minus its extension
    /// (`os.path.splitext`), so `rhel.img` pools as `rhel`.
    pub fn pool_name(image: &str) -> String {
        // splitext ignores leading dots and looks only at the last path component.
        let last = image.rsplit('/').next().unwrap_or(image);
        let stem_len = last.trim_start_matches('.').len();
        let leading = last.len() - stem_len;
        match last[leading..].rfind('.') {
            Some(dot) => {
                let cut = image.len() - last.len() + leading + dot;
                image[..cut].to_string()
            }
            None => image.to_string(),
        }
    }
}

/// When each phase of a job happened, as Unix seconds. Extra fields in `/jobs`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Timings {
    pub added: Option<f64>,
    pub dispatched: Option<f64>,
    pub machine_ready: Option<f64>,
    pub copied_in: Option<f64>,
    pub ran: Option<f64>,
    pub copied_out: Option<f64>,
    pub finished: Option<f64>,
    pub called_back: Option<f64>,
}

/// What became of a job's callback.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CallbackState {
    /// The callback reached the server: any HTTP answer counts, as in Tango, except the
    /// gateway errors 502, 503 and 504, which say Autolab itself never saw the request.
    pub delivered: bool,
    /// Attempts made so far.
    pub attempts: u32,
    /// The HTTP status of the answer that ended delivery.
    pub status: Option<u16>,
    /// The last error, when the last attempt failed.
    pub error: Option<String>,
    /// The manager delivering it now; `None` once delivery has ended (delivered or given
    /// up). A callback whose sender died is taken over by the manager that reaps the sender,
    /// so a crash between finishing a job and notifying Autolab loses no callback.
    pub sender: Option<String>,
}

impl CallbackState {
    /// Delivery still under way (by `sender`).
    pub fn pending(&self) -> bool {
        self.sender.is_some() && !self.delivered
    }
}

/// A callback that used up its attempts (`callback.attempts`) without reaching the server:
/// kept in the store instead of only logged, so the grade can still reach Autolab, by a
/// replay (`tango callbacks --replay`) or on its own once a callback to the same host
/// succeeds again (see `crate::callback`). One per job.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FailedCallback {
    /// The job whose output it carries; names the record.
    pub job_id: JobId,
    /// `jobName`, for a person reading the list.
    pub job_name: String,
    /// The job's courselab directory name (`crate::store::lab_of`).
    pub courselab: String,
    /// Where it goes: the job's `callback_url`.
    pub url: String,
    /// The output file, left in its courselab: a replay reads it again and sends the
    /// body the first attempt sent.
    pub output_file: String,
    /// When the first delivery gave up (Unix seconds).
    pub first_failed: f64,
    /// When the last attempt (first delivery or a replay) failed.
    pub last_failed: f64,
    /// Attempts so far, first delivery and replays together.
    pub attempts: u32,
    /// What the last attempt ran into.
    pub last_error: String,
    /// The process replaying it now (its claim's lease runs); `None` while it waits.
    pub replaying: Option<String>,
}

/// A grading job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct Job {
    pub id: JobId,
    /// `jobName` from Autolab.
    pub name: String,
    pub vm: Machine,
    pub input: Vec<InputFile>,
    /// Where the output file goes on this host.
    pub output_file: String,
    /// Autolab's `callback_url`, echoed verbatim in `/jobs` as `notifyURL`.
    pub notify_url: Option<String>,
    /// Seconds the job may run.
    pub timeout: u64,
    /// Bytes of output kept: the request's `max_kb` in bytes, at most
    /// `limits.max_output_file_size` (stored under Tango's name).
    #[serde(rename = "max_output_file_size")]
    pub max_output: u64,
    /// True once a manager has dispatched it to a machine.
    pub assigned: bool,
    /// How often it was retried after a machine error.
    pub retries: u32,
    /// `"<ctime>|<message>"` lines, oldest first.
    pub trace: Vec<String>,
    /// Run without network (only `lo`).
    pub disable_network: bool,
    /// Legacy per-job EC2 credentials; never shown by `/jobs`.
    pub access_key_id: Option<String>,
    pub access_key: Option<String>,
    /// The manager that holds the job's lease while it is claimed or running.
    pub owner: Option<String>,
    pub timings: Timings,
    /// Absent until the job ends with a callback URL.
    pub callback: Option<CallbackState>,
}

impl Job {
    /// `NAME:ID`, as every Tango trace line spells a job.
    pub fn label(&self) -> String {
        format!("{}:{}", self.name, self.id)
    }

    /// Appends a trace line stamped now (UTC, like Autolab reads them).
    pub fn trace(&mut self, message: impl AsRef<str>) {
        self.trace_at(Utc::now(), message);
    }

    /// Appends a trace line with a given time.
    pub fn trace_at(&mut self, at: DateTime<Utc>, message: impl AsRef<str>) {
        self.trace_stamped(&ctime(at), message);
    }

    /// Appends a trace line with a time already spelled by [`ctime`].
    pub fn trace_stamped(&mut self, stamp: &str, message: impl AsRef<str>) {
        self.trace.push(format!("{stamp}|{}", message.as_ref()));
    }

    /// The `/jobs` shape of this job.
    pub fn view(&self) -> JobView<'_> {
        JobView {
            retries: self.retries,
            output_file: &self.output_file,
            name: &self.name,
            notify_url: self.notify_url.as_deref(),
            max_output_file_size: self.max_output,
            assigned: self.assigned,
            timeout: self.timeout,
            id: self.id,
            trace: &self.trace,
            vm: MachineView::of(&self.vm),
            input: self
                .input
                .iter()
                .map(|f| InputFileView {
                    dest_file: &f.dest_file,
                    local_file: &f.local_file,
                })
                .collect(),
            disable_network: self.disable_network,
            timings: &self.timings,
            callback: self.callback.as_ref().map(|c| CallbackView {
                delivered: c.delivered,
                attempts: c.attempts,
                status: c.status,
                error: c.error.as_deref(),
            }),
        }
    }
}

/// A job exactly as Python Tango's `/jobs` printed it (same keys, same order, same types),
/// followed by our extra fields. Credentials and lease owners are left out.
#[derive(Debug, Serialize)]
pub struct JobView<'a> {
    pub retries: u32,
    #[serde(rename = "outputFile")]
    pub output_file: &'a str,
    pub name: &'a str,
    #[serde(rename = "notifyURL")]
    pub notify_url: Option<&'a str>,
    #[serde(rename = "maxOutputFileSize")]
    pub max_output_file_size: u64,
    pub assigned: bool,
    pub timeout: u64,
    pub id: JobId,
    pub trace: &'a [String],
    pub vm: MachineView<'a>,
    pub input: Vec<InputFileView<'a>>,
    // Ours, after Tango's.
    pub disable_network: bool,
    pub timings: &'a Timings,
    pub callback: Option<CallbackView<'a>>,
}

/// `callback` in `/jobs`: what became of the callback, without the sending manager's id.
#[derive(Debug, Serialize)]
pub struct CallbackView<'a> {
    pub delivered: bool,
    pub attempts: u32,
    pub status: Option<u16>,
    pub error: Option<&'a str>,
}

/// `vm` in `/jobs`, in Python's key order.
#[derive(Debug, Serialize)]
pub struct MachineView<'a> {
    pub network: Option<&'a str>,
    pub resume: Option<bool>,
    pub image: &'a str,
    pub memory: Option<u64>,
    pub vmms: &'a str,
    #[serde(serialize_with = "number_like_python")]
    pub cores: Option<f64>,
    pub disk: Option<&'a str>,
    pub id: Option<u64>,
    pub name: &'a str,
}

impl<'a> MachineView<'a> {
    fn of(vm: &'a Machine) -> Self {
        MachineView {
            network: vm.network.as_deref(),
            resume: vm.resume,
            image: &vm.image,
            memory: vm.memory,
            vmms: &vm.vmms,
            cores: vm.cores,
            disk: vm.disk.as_deref(),
            id: vm.id,
            name: &vm.name,
        }
    }
}

/// `input[]` in `/jobs`.
#[derive(Debug, Serialize)]
pub struct InputFileView<'a> {
    #[serde(rename = "destFile")]
    pub dest_file: &'a str,
    #[serde(rename = "localFile")]
    pub local_file: &'a str,
}

/// Writes a whole number of cores as a JSON integer (`2`, as Python would), others as floats.
fn number_like_python<S: serde::Serializer>(value: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(v) if v.fract() == 0.0 && v.abs() < 9.0e15 => s.serialize_i64(*v as i64),
        Some(v) => s.serialize_f64(*v),
        None => s.serialize_none(),
    }
}

/// Python's `time.ctime()` layout: `Sun Nov  1 09:05:03 2026` (day padded with a space).
///
/// Spelled field by field: chrono's `format` reads its pattern again on each call, which
/// cost an addJob three times what the fields do.
pub fn ctime<Tz: chrono::TimeZone>(at: DateTime<Tz>) -> String {
    use chrono::{Datelike, Timelike};
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{} {} {:>2} {:02}:{:02}:{:02} {}",
        DAYS[at.weekday().num_days_from_monday() as usize],
        MONTHS[at.month0() as usize],
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.year()
    )
}

/// Now as Unix seconds, for [`Timings`].
pub fn unix_now() -> f64 {
    let now = Utc::now();
    now.timestamp() as f64 + f64::from(now.timestamp_subsec_micros()) / 1e6
}

/// The counters `/info` reports (Tango's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Counter {
    JobRequests,
    JobRetries,
    WaitvmTimeouts,
    RunjobTimeouts,
    CopyinErrors,
    RunjobErrors,
    CopyoutErrors,
}

impl Counter {
    pub const ALL: [Counter; 7] = [
        Counter::JobRequests,
        Counter::JobRetries,
        Counter::WaitvmTimeouts,
        Counter::RunjobTimeouts,
        Counter::CopyinErrors,
        Counter::RunjobErrors,
        Counter::CopyoutErrors,
    ];

    /// The key `/info` uses.
    pub fn name(self) -> &'static str {
        match self {
            Counter::JobRequests => "job_requests",
            Counter::JobRetries => "job_retries",
            Counter::WaitvmTimeouts => "waitvm_timeouts",
            Counter::RunjobTimeouts => "runjob_timeouts",
            Counter::CopyinErrors => "copyin_errors",
            Counter::RunjobErrors => "runjob_errors",
            Counter::CopyoutErrors => "copyout_errors",
        }
    }
}

/// The values of every [`Counter`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub job_requests: u64,
    pub job_retries: u64,
    pub waitvm_timeouts: u64,
    pub runjob_timeouts: u64,
    pub copyin_errors: u64,
    pub runjob_errors: u64,
    pub copyout_errors: u64,
}

impl Counters {
    pub fn get(&self, c: Counter) -> u64 {
        match c {
            Counter::JobRequests => self.job_requests,
            Counter::JobRetries => self.job_retries,
            Counter::WaitvmTimeouts => self.waitvm_timeouts,
            Counter::RunjobTimeouts => self.runjob_timeouts,
            Counter::CopyinErrors => self.copyin_errors,
            Counter::RunjobErrors => self.runjob_errors,
            Counter::CopyoutErrors => self.copyout_errors,
        }
    }

    pub fn slot(&mut self, c: Counter) -> &mut u64 {
        match c {
            Counter::JobRequests => &mut self.job_requests,
            Counter::JobRetries => &mut self.job_retries,
            Counter::WaitvmTimeouts => &mut self.waitvm_timeouts,
            Counter::RunjobTimeouts => &mut self.runjob_timeouts,
            Counter::CopyinErrors => &mut self.copyin_errors,
            Counter::RunjobErrors => &mut self.runjob_errors,
            Counter::CopyoutErrors => &mut self.copyout_errors,
        }
    }
}

/// One pool as `/pool` shows it: the ids of all its machines, and of the free ones.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolView {
    pub total: Vec<u64>,
    pub free: Vec<u64>,
}

/// What `/prealloc` asked for a pool: how many machines, and of what shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolTarget {
    /// The image machines of this pool are made from.
    pub image: String,
    /// The VMMS that makes them.
    pub vmms: String,
    /// How many machines each manager keeps.
    pub size: u32,
    pub cores: Option<f64>,
    pub memory: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn ctime_pads_the_day_with_a_space() {
        let t = Utc.with_ymd_and_hms(2026, 11, 1, 9, 5, 3).unwrap();
        assert_eq!(ctime(t), "Sun Nov  1 09:05:03 2026");
        let t = Utc.with_ymd_and_hms(2026, 11, 29, 13, 8, 20).unwrap();
        assert_eq!(ctime(t), "Sun Nov 29 13:08:20 2026");
    }

    #[test]
    fn ctime_spells_every_day_as_strftime_does() {
        // Every day of four years (a leap year among them), at a time that moves through
        // the hours, minutes and seconds.
        let start = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap();
        for day in 0..(4 * 366) {
            let t = start + chrono::Duration::seconds(day * 86_400 + day * 3_637 % 86_400);
            assert_eq!(ctime(t), t.format("%a %b %e %H:%M:%S %Y").to_string());
        }
    }

    #[test]
    fn pool_name_drops_the_extension_like_splitext() {
        assert_eq!(Machine::pool_name("autograding_image"), "autograding_image");
        assert_eq!(Machine::pool_name("rhel.img"), "rhel");
        assert_eq!(Machine::pool_name("a.b.c"), "a.b");
        assert_eq!(Machine::pool_name(".hidden"), ".hidden");
        assert_eq!(Machine::pool_name("dir.d/img"), "dir.d/img");
    }

    #[test]
    fn job_view_has_tangos_keys_in_tangos_order() {
        let mut job = Job {
            id: 5,
            name: "course1_hello_2_user@x.edu".into(),
            vm: Machine {
                name: "autograding_image".into(),
                image: "autograding_image".into(),
                vmms: "localDocker".into(),
                id: Some(1000),
                cores: Some(2.0),
                ..Machine::default()
            },
            input: vec![InputFile {
                local_file: "/srv/courselabs/x-course1-hello/hello.c".into(),
                dest_file: "hello.c".into(),
            }],
            output_file: "/srv/courselabs/x-course1-hello/output/o.txt".into(),
            notify_url: Some("http://a/b?dave=X&submission_id=9".into()),
            timeout: 180,
            max_output: 1_024_000,
            assigned: true,
            access_key: Some("SECRET".into()),
            access_key_id: Some("AKIA".into()),
            owner: Some("mgr".into()),
            ..Job::default()
        };
        let t = Utc.with_ymd_and_hms(2026, 11, 29, 13, 8, 49).unwrap();
        job.trace_at(t, format!("Added job {} to queue", job.label()));
        let text = serde_json::to_string(&job.view()).unwrap();
        let keys = [
            "\"retries\":0",
            "\"outputFile\":",
            "\"name\":",
            "\"notifyURL\":\"http://a/b?dave=X&submission_id=9\"",
            "\"maxOutputFileSize\":1024000",
            "\"assigned\":true",
            "\"timeout\":180",
            "\"id\":5",
            "\"trace\":[\"Sun Nov 29 13:08:49 2026|Added job course1_hello_2_user@x.edu:5 to queue\"]",
            "\"vm\":{\"network\":null,\"resume\":null,\"image\":\"autograding_image\",\"memory\":null,\"vmms\":\"localDocker\",\"cores\":2,\"disk\":null,\"id\":1000,\"name\":\"autograding_image\"}",
            "\"input\":[{\"destFile\":\"hello.c\",\"localFile\":",
        ];
        let mut at = 0;
        for key in keys {
            let found = text[at..]
                .find(key)
                .unwrap_or_else(|| panic!("{key} after {at} in {text}"));
            at += found + key.len();
        }
        assert!(!text.contains("SECRET"), "{text}");
        assert!(!text.contains("AKIA"), "{text}");
        assert!(!text.contains("\"owner\""), "{text}");
    }

    #[test]
    fn stored_form_round_trips() {
        let mut job = Job {
            id: 7,
            name: "n".into(),
            access_key: Some("k".into()),
            ..Job::default()
        };
        job.trace("Added job n:7 to queue");
        let text = serde_json::to_string(&job).unwrap();
        let back: Job = serde_json::from_str(&text).unwrap();
        assert_eq!(back, job);
    }
}
