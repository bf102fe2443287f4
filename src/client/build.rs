//! Images: `build` loads a `docker save` tarball as an image (localDocker only).

use std::path::PathBuf;

use clap::Args;

use super::{Client, Conn, Result, read_file};

#[derive(Args)]
pub struct BuildArgs {
    #[command(flatten)]
    pub conn: Conn,
    /// The image's name (tagged `NAME:latest`).
    pub image: String,
    /// The tarball, as `docker save` writes it.
    pub tarball: PathBuf,
}

pub async fn build(args: BuildArgs) -> Result<()> {
    let client = Client::new(&args.conn)?;
    let bytes = read_file(&args.tarball)?;
    let v = client
        .post(
            &client.url("build", &[]),
            &[
                ("imageName", args.image.as_str()),
                ("content-type", "application/octet-stream"),
            ],
            bytes,
        )
        .await?;
    client.print(&v, |v| {
        outln!("{}: {}", args.image, super::status_message(v))
    });
    Ok(())
}
