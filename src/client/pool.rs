//! Pools: `pool`, `prealloc`.

use clap::Args;
use serde_json::{Map, Value, json};

use super::{Client, Conn, Result};

#[derive(Args)]
pub struct PoolArgs {
    #[command(flatten)]
    pub conn: Conn,
    /// One image's pool (default: every pool).
    pub image: Option<String>,
}

#[derive(Args)]
pub struct PreallocArgs {
    #[command(flatten)]
    pub conn: Conn,
    pub image: String,
    /// How many machines to keep.
    pub num: u32,
    /// CPUs per machine (sent only with --memory, as the server uses them only together).
    #[arg(long, requires = "memory")]
    pub cores: Option<f64>,
    /// MiB of memory per machine.
    #[arg(long, requires = "cores")]
    pub memory: Option<u64>,
    /// The VMMS name (sent for tango-cli compatibility; the server uses its own).
    #[arg(long)]
    pub vmms: Option<String>,
}

pub async fn pool(args: PoolArgs) -> Result<()> {
    let client = Client::new(&args.conn)?;
    let url = match &args.image {
        Some(image) => client.url("pool", &[image]),
        None => client.url("pool", &[]),
    };
    let v = client.get(&url).await?;
    client.print(&v, |v| {
        let pools = v["pools"].as_object().cloned().unwrap_or_default();
        if pools.is_empty() {
            outln!("no pools");
        }
        for (name, pool) in pools {
            let count = |k: &str| pool[k].as_array().map_or(0, Vec::len);
            outln!(
                "{name}: {} machines, {} free  (total {} free {})",
                count("total"),
                count("free"),
                pool["total"],
                pool["free"]
            );
        }
    });
    Ok(())
}

pub async fn prealloc(args: PreallocArgs) -> Result<()> {
    let client = Client::new(&args.conn)?;
    let mut body = Map::new();
    if let Some(vmms) = &args.vmms {
        body.insert("vmms".into(), json!(vmms));
    }
    if let (Some(cores), Some(memory)) = (args.cores, args.memory) {
        body.insert("cores".into(), json!(cores));
        body.insert("memory".into(), json!(memory));
    }
    let body = if body.is_empty() {
        String::new()
    } else {
        Value::Object(body).to_string()
    };
    let v = client
        .post(
            &client.url("prealloc", &[&args.image, &args.num.to_string()]),
            &[],
            body,
        )
        .await?;
    client.print(&v, |v| {
        outln!("{}: {}", args.image, super::status_message(v))
    });
    Ok(())
}
