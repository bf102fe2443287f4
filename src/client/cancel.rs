//! `cancel`: stop a job, queued or running (`POST /cancel/KEY/ID/`, an extension).

use clap::Args;

use super::{Client, Conn, Result};

#[derive(Args)]
pub struct CancelArgs {
    #[command(flatten)]
    pub conn: Conn,
    pub job_id: u64,
}

pub async fn cancel(args: CancelArgs) -> Result<()> {
    let client = Client::new(&args.conn)?;
    let id = args.job_id.to_string();
    let v = client
        .post(&client.url("cancel", &[&id]), &[], Vec::new())
        .await?;
    client.print(&v, |v| {
        let was = v["was"].as_str().unwrap_or("live");
        println!("job {id} ({was}): cancel requested; a manager ends it");
    });
    Ok(())
}
