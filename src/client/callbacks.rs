//! `callbacks`: the failed callbacks kept by the server, and sending them again
//! (`GET /callbacks/KEY/`, `POST /callbacks/KEY/replay/[ID/]`, extensions).

use clap::Args;
use serde_json::Value;

use super::{Client, ClientError, Conn, Result};

#[derive(Args)]
pub struct CallbacksArgs {
    #[command(flatten)]
    pub conn: Conn,
    /// Send a job's failed callback again (one attempt), or with --all every one.
    #[arg(long, value_name = "ID", num_args = 0..=1)]
    pub replay: Option<Option<u64>>,
    /// With --replay: every failed callback, each host's in turn.
    #[arg(long, requires = "replay")]
    pub all: bool,
}

pub async fn callbacks(args: CallbacksArgs) -> Result<()> {
    let client = Client::new(&args.conn)?;
    match (args.replay, args.all) {
        (None, _) => list(&client).await,
        (Some(None), true) => replay_all(&client).await,
        (Some(Some(id)), false) => replay_one(&client, id).await,
        (Some(Some(_)), true) => Err(ClientError::Usage(
            "--replay takes a job id or --all, not both".into(),
        )),
        (Some(None), false) => Err(ClientError::Usage(
            "--replay needs a job id, or --all for every failed callback".into(),
        )),
    }
}

async fn list(client: &Client) -> Result<()> {
    let v = client.get(&client.url("callbacks", &[])).await?;
    client.print(&v, |v| {
        let records = v["callbacks"].as_array().cloned().unwrap_or_default();
        if records.is_empty() {
            outln!("no failed callbacks");
            return;
        }
        outln!(
            "{:>6}  {:<24}  {:<16}  {:>8}  {:<10}  LAST ERROR",
            "JOB",
            "NAME",
            "COURSELAB",
            "ATTEMPTS",
            "STATE"
        );
        for r in records {
            let state = if r["replaying"].is_string() {
                "replaying"
            } else {
                "waiting"
            };
            outln!(
                "{:>6}  {:<24}  {:<16}  {:>8}  {:<10}  {}",
                r["jobId"].to_string(),
                r["jobName"].as_str().unwrap_or(""),
                r["courselab"].as_str().unwrap_or(""),
                r["attempts"].to_string(),
                state,
                r["lastError"].as_str().unwrap_or("")
            );
        }
    });
    Ok(())
}

async fn replay_all(client: &Client) -> Result<()> {
    let v = client
        .post(&client.url("callbacks", &["replay"]), &[], Vec::new())
        .await?;
    client.print(&v, |v| {
        for r in v["replays"].as_array().cloned().unwrap_or_default() {
            outln!("job {:>6}: {}", r["jobId"].to_string(), describe(&r));
        }
        outln!(
            "{} delivered, {} failed again",
            v["delivered"].as_u64().unwrap_or(0),
            v["failed"].as_u64().unwrap_or(0)
        );
    });
    // Some failed: the command failed, for scripts that retry.
    if v["failed"].as_u64().unwrap_or(0) > 0 {
        return Err(ClientError::Failed(
            "some callbacks failed again; they stay kept".into(),
        ));
    }
    Ok(())
}

async fn replay_one(client: &Client, id: u64) -> Result<()> {
    let id = id.to_string();
    let v = client
        .post(&client.url("callbacks", &["replay", &id]), &[], Vec::new())
        .await?;
    client.print(&v, |v| {
        outln!("job {id}: {}", describe(v));
    });
    Ok(())
}

/// One replay's outcome, in words.
fn describe(r: &Value) -> String {
    match r["outcome"].as_str().unwrap_or("") {
        "delivered" => format!("delivered (HTTP {})", r["status"]),
        "failed" => format!("failed again: {}", r["error"].as_str().unwrap_or("")),
        "busy" => "being sent by another process".into(),
        "skipped" => "not tried: its host just failed".into(),
        other => other.to_string(),
    }
}
