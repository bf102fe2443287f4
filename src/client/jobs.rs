//! Jobs: `add-job`, `jobs`, `partial-output`.

use clap::Args;
use serde_json::{Value, json};

use super::{Client, ClientError, Conn, Result};

#[derive(Args)]
pub struct AddJobArgs {
    #[command(flatten)]
    pub conn: Conn,
    pub courselab: String,
    /// Uploaded files, each `NAME` or `NAME:DEST` (DEST: its name in the machine; exactly one
    /// must be `Makefile`).
    #[arg(required = true)]
    pub files: Vec<String>,
    /// The output file's name (poll it with this).
    #[arg(long)]
    pub output_file: String,
    #[command(flatten)]
    pub job: JobFields,
}

/// The fields of an addJob request besides its files.
#[derive(Args, Clone, Debug)]
pub struct JobFields {
    /// The image (pool) to run on.
    #[arg(long, default_value = "autograding_image")]
    pub image: String,
    /// Seconds the job may run (0: the server's default).
    #[arg(long, default_value_t = 0)]
    pub timeout: u64,
    /// URL the server POSTs the output to when the job ends.
    #[arg(long, default_value = "")]
    pub callback_url: String,
    /// The job's name (default: derived from the output file).
    #[arg(long)]
    pub job_name: Option<String>,
    /// Run without network.
    #[arg(long)]
    pub disable_network: bool,
    /// Largest output kept, in KiB (0: the server's default; tango-cli's --maxsize).
    #[arg(long, default_value_t = 0)]
    pub max_kb: u64,
    /// Per-job EC2 credentials (ec2SSH), as tango-cli's --accessKeyId.
    #[arg(
        long,
        env = "TANGO_ACCESS_KEY_ID",
        default_value = "",
        hide_default_value = true
    )]
    pub access_key_id: String,
    /// The secret of --access-key-id. Set TANGO_ACCESS_KEY rather than this flag: a command
    /// line is visible to every user of the machine (ps).
    #[arg(
        long,
        env = "TANGO_ACCESS_KEY",
        default_value = "",
        hide_default_value = true,
        hide_env_values = true
    )]
    pub access_key: String,
}

impl JobFields {
    /// The addJob body, in Autolab's field order; `max_kb` and the EC2 credentials only
    /// when given (as tango-cli.py sends them).
    pub fn body(&self, files: Vec<Value>, output_file: &str, job_name: &str) -> Value {
        let mut body = json!({
            "image": self.image,
            "files": files,
            "output_file": output_file,
            "timeout": self.timeout,
            "callback_url": self.callback_url,
            "jobName": job_name,
            "disable_network": self.disable_network,
        });
        if self.max_kb > 0 {
            body["max_kb"] = self.max_kb.into();
        }
        if !self.access_key.is_empty() {
            body["accessKeyId"] = self.access_key_id.clone().into();
            body["accessKey"] = self.access_key.clone().into();
        }
        body
    }
}

#[derive(Args)]
pub struct JobsArgs {
    #[command(flatten)]
    pub conn: Conn,
    /// Finished jobs instead of live ones.
    #[arg(long)]
    pub dead: bool,
}

#[derive(Args)]
pub struct PartialOutputArgs {
    #[command(flatten)]
    pub conn: Conn,
    pub job_id: u64,
}

/// `{"localFile", "destFile"}` for `NAME` or `NAME:DEST`.
pub fn file_spec(spec: &str) -> Result<Value> {
    let (local, dest) = match spec.split_once(':') {
        Some((l, d)) => (l, d),
        None => (spec, spec),
    };
    if local.is_empty() || dest.is_empty() {
        return Err(ClientError::Usage(format!(
            "file {spec:?}: expected NAME or NAME:DEST"
        )));
    }
    Ok(json!({"localFile": local, "destFile": dest}))
}

/// The job id of an addJob answer (a string in Tango, a number from some servers).
pub fn job_id(v: &Value) -> Result<u64> {
    match &v["jobId"] {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
    .ok_or_else(|| ClientError::Protocol(format!("addJob answered no jobId: {v}")))
}

pub async fn add_job(args: AddJobArgs) -> Result<()> {
    let client = Client::new(&args.conn)?;
    let files = args
        .files
        .iter()
        .map(|f| file_spec(f))
        .collect::<Result<Vec<_>>>()?;
    let output_file = args.output_file.clone();
    let job_name = args
        .job
        .job_name
        .clone()
        .unwrap_or_else(|| output_file.clone());
    let body = args.job.body(files, &output_file, &job_name);
    let v = client
        .post(
            &client.url("addJob", &[&args.courselab]),
            &[],
            body.to_string(),
        )
        .await?;
    let id = job_id(&v)?;
    client.print(&v, |_| outln!("job {id} added: {job_name}"));
    Ok(())
}

pub async fn jobs(args: JobsArgs) -> Result<()> {
    let client = Client::new(&args.conn)?;
    let which = if args.dead { "1" } else { "0" };
    let v = client.get(&client.url("jobs", &[which])).await?;
    client.print(&v, |v| {
        let jobs = v["jobs"].as_array().cloned().unwrap_or_default();
        if jobs.is_empty() {
            outln!("no {} jobs", if args.dead { "dead" } else { "live" });
            return;
        }
        outln!(
            "{:>6}  {:<8}  {:>7}  {:<32}  LAST TRACE",
            "ID",
            "STATE",
            "RETRIES",
            "NAME"
        );
        for job in jobs {
            let state = if args.dead {
                "dead"
            } else if job["assigned"] == true {
                "running"
            } else {
                "waiting"
            };
            let last = job["trace"]
                .as_array()
                .and_then(|t| t.last())
                .and_then(Value::as_str)
                .map(|l| l.split_once('|').map_or(l, |(_, m)| m))
                .unwrap_or("");
            outln!(
                "{:>6}  {:<8}  {:>7}  {:<32}  {last}",
                job["id"].to_string(),
                state,
                job["retries"].to_string(),
                job["name"].as_str().unwrap_or("")
            );
        }
    });
    Ok(())
}

pub async fn partial_output(args: PartialOutputArgs) -> Result<()> {
    let client = Client::new(&args.conn)?;
    let v = client
        .get(&client.url("getPartialOutput", &[&args.job_id.to_string()]))
        .await?;
    client.print(&v, |v| {
        super::output::bytes(v["output"].as_str().unwrap_or("").as_bytes())
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_specs() {
        assert_eq!(
            file_spec("autograde-Makefile:Makefile").ok(),
            Some(json!({"localFile": "autograde-Makefile", "destFile": "Makefile"}))
        );
        assert_eq!(
            file_spec("hello.c").ok(),
            Some(json!({"localFile": "hello.c", "destFile": "hello.c"}))
        );
        assert!(file_spec(":x").is_err());
    }
}
