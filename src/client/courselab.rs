//! Courselabs: `open`, `upload`, `poll`.

use std::path::PathBuf;

use clap::Args;
use serde_json::{Value, json};

use super::{Client, ClientError, Conn, Result, read_file};

#[derive(Args)]
pub struct OpenArgs {
    #[command(flatten)]
    pub conn: Conn,
    /// The courselab (Autolab: `<course>-<assessment>`).
    pub courselab: String,
}

#[derive(Args)]
pub struct UploadArgs {
    #[command(flatten)]
    pub conn: Conn,
    pub courselab: String,
    /// Files to upload, each under its own file name.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Upload the (single) file under this name instead.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
}

#[derive(Args)]
pub struct PollArgs {
    #[command(flatten)]
    pub conn: Conn,
    pub courselab: String,
    /// The job's output file name (addJob's `output_file`).
    pub output_file: String,
    /// Write the output here instead of standard output.
    #[arg(long, short = 'o')]
    pub out: Option<PathBuf>,
}

pub async fn open(args: OpenArgs) -> Result<()> {
    let client = Client::new(&args.conn)?;
    let v = client.get(&client.url("open", &[&args.courselab])).await?;
    client.print(&v, |v| {
        outln!("{}: {}", args.courselab, super::status_message(v));
        if let Some(files) = v["files"].as_object() {
            for (name, md5) in files {
                outln!("  {}  {name}", md5.as_str().unwrap_or("?"));
            }
        }
    });
    Ok(())
}

pub async fn upload(args: UploadArgs) -> Result<()> {
    if args.name.is_some() && args.files.len() != 1 {
        return Err(ClientError::Usage("--name needs exactly one file".into()));
    }
    let client = Client::new(&args.conn)?;
    let url = client.url("upload", &[&args.courselab]);
    let mut answers = Vec::new();
    for path in &args.files {
        let name = match &args.name {
            Some(name) => name.clone(),
            None => file_name(path)?,
        };
        let v = upload_one(&client, &url, &name, read_file(path)?).await?;
        if !client.json {
            outln!("{name}: {}", super::status_message(&v));
        }
        answers.push(json!({"file": name, "answer": v}));
    }
    if client.json {
        outln!("{}", super::pretty(&Value::Array(answers)));
    }
    Ok(())
}

/// One upload, as Autolab sends it: the name in a `filename` header, the bytes as the body.
pub async fn upload_one(client: &Client, url: &str, name: &str, bytes: Vec<u8>) -> Result<Value> {
    client
        .post(
            url,
            &[
                ("filename", name),
                ("content-type", "application/octet-stream"),
            ],
            bytes,
        )
        .await
}

pub async fn poll(args: PollArgs) -> Result<()> {
    let client = Client::new(&args.conn)?;
    let url = client.url("poll", &[&args.courselab, &args.output_file]);
    match client.get_raw(&url).await? {
        Ok(bytes) => {
            if client.json {
                let v = json!({
                    "statusId": 0,
                    "statusMsg": "Output file found",
                    "output": String::from_utf8_lossy(&bytes),
                });
                outln!("{}", super::pretty(&v));
            } else if let Some(out) = &args.out {
                std::fs::write(out, &bytes).map_err(|error| ClientError::File {
                    path: out.display().to_string(),
                    error,
                })?;
            } else {
                super::output::bytes(&bytes);
            }
            Ok(())
        }
        Err(v) => {
            // "Output file not found" is statusId -1 (Tango's), or 0 with poll_not_ready_ok:
            // either way there is no output, which is a failure for a script.
            let v = client.check(v)?;
            Err(ClientError::Server {
                message: super::status_message(&v),
                body: v,
                json: client.json,
            })
        }
    }
}

pub fn file_name(path: &std::path::Path) -> Result<String> {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| ClientError::Usage(format!("{}: not a file name", path.display())))
}
