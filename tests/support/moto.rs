//! moto's EC2 emulator on loopback, one per test, for the `ec2SSH` backend's tests.
//!
//! `moto_server` comes from PyPI (`pip install 'moto[server]'`; `scripts/test.sh` installs
//! it). Each [`Moto`] is a private server on a free port with moto's request recorder on, so
//! a test can check which credentials signed which call. Its instances are not real and its
//! addresses are not ours: tests never connect to them (the backend's SSH step goes to the
//! test sshd through `ec2.ssh_address = "bastion"`).

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// The region tests use.
pub const REGION: &str = "us-east-1";

pub struct Moto {
    /// `http://127.0.0.1:PORT`, for `ec2.endpoint_url`.
    pub endpoint: String,
    recording: PathBuf,
    _dir: tempfile::TempDir,
    child: Child,
}

impl Moto {
    pub fn start() -> Moto {
        let dir = tempfile::Builder::new()
            .prefix("tango-moto-")
            .tempdir()
            .expect("temp dir");
        let port = free_port();
        let recording = dir.path().join("recording.jsonl");
        let mut command = Command::new("moto_server");
        command
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("MOTO_ENABLE_RECORDING", "True")
            .env("MOTO_RECORDER_FILEPATH", &recording)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(fs::File::create(dir.path().join("moto.log")).unwrap())
            .stderr(fs::File::create(dir.path().join("moto.err")).unwrap());
        // Dies with the test thread that started it, even if the test is killed.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start moto_server ({e}): install it with `pip install 'moto[server]'` \
                 (scripts/test.sh does)"
            )
        });
        let mut moto = Moto {
            endpoint: format!("http://127.0.0.1:{port}"),
            recording,
            _dir: dir,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!(
                    "moto_server exited ({status}): {}",
                    fs::read_to_string(moto._dir.path().join("moto.err")).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not start on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        moto
    }

    /// An EC2 client on this moto with the given access key id.
    pub async fn client(&self, access_key_id: &str) -> aws_sdk_ec2::Client {
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(REGION))
            .endpoint_url(&self.endpoint)
            .credentials_provider(aws_sdk_ec2::config::Credentials::new(
                access_key_id,
                "test-secret",
                None,
                None,
                "test",
            ))
            .load()
            .await;
        aws_sdk_ec2::Client::new(&config)
    }

    /// The access key ids that signed each recorded call of `action` (e.g. `RunInstances`).
    pub fn signers_of(&self, action: &str) -> Vec<String> {
        let text = fs::read_to_string(&self.recording).unwrap_or_default();
        let mut signers = Vec::new();
        for line in text.lines() {
            let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let body = entry["body"].as_str().unwrap_or_default();
            let body = if entry["body_encoded"].as_bool() == Some(true) {
                decode_base64(body)
            } else {
                body.to_string()
            };
            if !body.split('&').any(|kv| kv == format!("Action={action}")) {
                continue;
            }
            let headers = &entry["headers"];
            let auth = headers["Authorization"]
                .as_str()
                .or_else(|| headers["authorization"].as_str())
                .unwrap_or_default();
            if let Some(rest) = auth.split("Credential=").nth(1) {
                signers.push(rest.split('/').next().unwrap_or_default().to_string());
            }
        }
        signers
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Standard base64 (moto records binary bodies so).
fn decode_base64(text: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::new();
    for c in text.bytes() {
        let Some(value) = ALPHABET.iter().position(|&a| a == c) else {
            continue;
        };
        bits = (bits << 6) | value as u32;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
