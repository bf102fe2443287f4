//! Images: the backend's image list as addJob and prealloc check it, and `build`, which
//! loads a new one.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;

use super::ApiState;
use super::request::{Params, content_length, header_text, refuse};
use super::status::{self, ApiError, Nothing};
use crate::labs::LabsError;
use crate::vmms::Vmms;

/// How long a fetched image list is trusted. Listing images can cost a Docker or EC2 call;
/// addJob must stay fast.
const FRESH_FOR: Duration = Duration::from_secs(2);

/// A name missing from a list at least this old makes us ask the backend again (an image
/// built a moment ago), but no more often than this however many jobs name unknown images.
const RECHECK_MISS_AFTER: Duration = Duration::from_millis(250);

/// The longest the backend may take to list its images before addJob gives up.
const LIST_TIMEOUT: Duration = Duration::from_secs(10);

/// The backend's images, fetched at most every [`FRESH_FOR`].
pub(crate) struct ImageCache {
    /// One fetch at a time: callers that find the list stale wait for the first one's answer.
    cached: tokio::sync::Mutex<Option<(Instant, Arc<Vec<String>>)>>,
}

impl ImageCache {
    pub fn new() -> ImageCache {
        ImageCache {
            cached: tokio::sync::Mutex::new(None),
        }
    }

    /// Whether `image` is one the backend offers.
    pub async fn contains(&self, vmms: &dyn Vmms, image: &str) -> Result<bool, ApiError> {
        let mut cached = self.cached.lock().await;
        if let Some((at, images)) = cached.as_ref() {
            let age = at.elapsed();
            if age < FRESH_FOR && (images.iter().any(|i| i == image) || age < RECHECK_MISS_AFTER) {
                return Ok(images.iter().any(|i| i == image));
            }
        }
        let images = match tokio::time::timeout(LIST_TIMEOUT, vmms.get_images()).await {
            Ok(Ok(images)) => Arc::new(images),
            Ok(Err(e)) => {
                return Err(ApiError::Vmms {
                    context: format!("Cannot list the images of the {} backend", vmms.name()),
                    source: e,
                });
            }
            Err(_) => {
                return Err(ApiError::Failed(format!(
                    "Cannot list the images of the {} backend: no answer within {} seconds",
                    vmms.name(),
                    LIST_TIMEOUT.as_secs()
                )));
            }
        };
        let found = images.iter().any(|i| i == image);
        *cached = Some((Instant::now(), images));
        Ok(found)
    }

    /// Forgets the list (after a build added an image).
    pub async fn invalidate(&self) {
        *self.cached.lock().await = None;
    }
}

/// `POST /build/KEY/` with header `imageName` and an image tarball (`docker save`) as body.
pub async fn build(
    State(api): State<Arc<ApiState>>,
    Params(key): Params<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let checked = (|| {
        api.keys.check(&key)?;
        // An image serves every course: only the keys of `server.build_keys` may replace one.
        if let Some(builders) = &api.build_keys
            && builders.check(&key).is_err()
        {
            return Err(ApiError::Failed(format!(
                "{}: this key may not build images (server.build_keys)",
                status::IMAGE_BUILD_FAILED
            )));
        }
        let Some(name) = header_text(&headers, "imagename")? else {
            return Err(ApiError::Request(
                "Missing imageName header: it names the image to build".into(),
            ));
        };
        if !is_image_name(&name) {
            return Err(ApiError::Request(format!(
                "Invalid imageName {name:?}: use lowercase letters and digits, single or double \
                 underscores between them, and at most one '/' (as Autolab requires)"
            )));
        }
        Ok(name)
    })();
    let name = match checked {
        Ok(name) => name,
        Err(e) => return Err(refuse(body, e)),
    };
    let limit = api.labs.max_input_file_size();
    if content_length(&headers).is_some_and(|length| length > limit) {
        return Err(LabsError::TooLarge { limit }.into());
    }
    let tarball = api.labs.receive(body.into_data_stream()).await?;
    let secs = api.app.config.docker.image_build_timeout;
    let built = tokio::time::timeout(
        Duration::from_secs(secs),
        api.app.vmms.build_image(&name, &tarball.path),
    )
    .await;
    drop(tarball);
    match built {
        Ok(Ok(())) => {
            api.images.invalidate().await;
            tracing::info!(image = %name, "image built");
            Ok(status::ok(status::IMAGE_BUILT, Nothing {}))
        }
        Ok(Err(e)) => {
            tracing::warn!(image = %name, error = %e, "image build failed");
            Err(ApiError::Failed(format!(
                "{}: {e}",
                status::IMAGE_BUILD_FAILED
            )))
        }
        Err(_) => Err(ApiError::Failed(format!(
            "{}: not done within {secs} seconds (docker.image_build_timeout)",
            status::IMAGE_BUILD_FAILED
        ))),
    }
}

/// Autolab's check on image names: `\A[a-z0-9](_{0,2}[a-z0-9])*(/[a-z0-9](_{0,2}[a-z0-9])*)?\z`.
fn is_image_name(name: &str) -> bool {
    const MAX_LEN: usize = 255;
    if name.len() > MAX_LEN {
        return false;
    }
    let mut parts = name.split('/');
    let first_ok = parts.next().is_some_and(is_image_part);
    let rest: Vec<&str> = parts.collect();
    first_ok && rest.len() <= 1 && rest.iter().all(|p| is_image_part(p))
}

/// `[a-z0-9](_{0,2}[a-z0-9])*`: lowercase letters and digits, joined by at most two
/// underscores, starting and ending with a letter or digit.
fn is_image_part(part: &str) -> bool {
    let bytes = part.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    let mut underscores = 0;
    for &b in bytes {
        if b == b'_' {
            underscores += 1;
            if underscores > 2 {
                return false;
            }
        } else if alnum(b) {
            underscores = 0;
        } else {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{InputFile, Machine};
    use crate::vmms::{RunOutcome, RunSpec, VmmsError};
    use std::path::Path;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A backend that only lists images, counting the calls.
    struct Lister {
        images: Mutex<Vec<String>>,
        calls: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl Vmms for Lister {
        fn name(&self) -> &str {
            "lister"
        }
        fn instance_name(&self, _vm: &Machine) -> String {
            String::new()
        }
        async fn initialize_vm(&self, _vm: &mut Machine) -> Result<(), VmmsError> {
            unreachable!()
        }
        async fn wait_vm(&self, _vm: &Machine, _max: Duration) -> Result<(), VmmsError> {
            unreachable!()
        }
        async fn copy_in(&self, _vm: &Machine, _inputs: &[InputFile]) -> Result<(), VmmsError> {
            unreachable!()
        }
        async fn run_job(&self, _vm: &Machine, _spec: &RunSpec) -> Result<RunOutcome, VmmsError> {
            unreachable!()
        }
        async fn copy_out(&self, _vm: &Machine, _dest: &Path, _max: u64) -> Result<(), VmmsError> {
            unreachable!()
        }
        async fn destroy_vm(&self, _vm: &Machine) -> Result<(), VmmsError> {
            unreachable!()
        }
        async fn get_vms(&self) -> Result<Vec<Machine>, VmmsError> {
            unreachable!()
        }
        async fn exists_vm(&self, _vm: &Machine) -> Result<bool, VmmsError> {
            unreachable!()
        }
        async fn get_images(&self) -> Result<Vec<String>, VmmsError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Ok(self.images.lock().unwrap().clone())
        }
        async fn get_partial_output(&self, _vm: &Machine, _max: u64) -> Result<Vec<u8>, VmmsError> {
            unreachable!()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_image_list_is_fetched_at_most_every_two_seconds() {
        let backend = Lister {
            images: Mutex::new(vec!["img".into()]),
            calls: AtomicUsize::new(0),
        };
        let cache = ImageCache::new();
        let calls = || backend.calls.load(Ordering::SeqCst);

        assert!(cache.contains(&backend, "img").await.unwrap());
        assert!(cache.contains(&backend, "img").await.unwrap());
        assert_eq!(calls(), 1, "a fresh list is reused");

        // Misses right after a fetch are answered from it, too.
        assert!(!cache.contains(&backend, "new").await.unwrap());
        assert_eq!(calls(), 1);

        // A miss on an older list asks again, and finds an image added meanwhile.
        backend.images.lock().unwrap().push("new".into());
        tokio::time::advance(RECHECK_MISS_AFTER).await;
        assert!(cache.contains(&backend, "new").await.unwrap());
        assert_eq!(calls(), 2);

        // A hit is trusted until the list is two seconds old.
        tokio::time::advance(FRESH_FOR - Duration::from_millis(1)).await;
        assert!(cache.contains(&backend, "img").await.unwrap());
        assert_eq!(calls(), 2);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(cache.contains(&backend, "img").await.unwrap());
        assert_eq!(calls(), 3);

        // After a build, the next check asks the backend.
        cache.invalidate().await;
        assert!(cache.contains(&backend, "img").await.unwrap());
        assert_eq!(calls(), 4);
    }

    #[test]
    fn image_names_follow_autolabs_rule() {
        for good in ["autograding_image", "a", "a__b", "ns/img", "img2", "0x"] {
            assert!(is_image_name(good), "{good}");
        }
        for bad in [
            "", "A", "a___b", "_a", "a_", "a/b/c", "/a", "a/", "a:latest", "a-b", "a.b", "../x",
        ] {
            assert!(!is_image_name(bad), "{bad}");
        }
    }
}
