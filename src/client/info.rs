//! `info`: the server's uptime and counters.

use clap::Args;

use super::{Client, Conn, Result};

#[derive(Args)]
pub struct InfoArgs {
    #[command(flatten)]
    pub conn: Conn,
}

pub async fn info(args: InfoArgs) -> Result<()> {
    let client = Client::new(&args.conn)?;
    let v = client.get(&client.url("info", &[])).await?;
    client.print(&v, |v| {
        if let Some(info) = v["info"].as_object() {
            for (name, value) in info {
                outln!("{name:<16} {value}");
            }
        }
    });
    Ok(())
}
