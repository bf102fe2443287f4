//! `/build`: an image tarball (`docker save` format) loaded on every engine and tagged
//! `<name>:latest`, without changing what any other name means.

use std::path::Path;
use std::time::Duration;

use bollard::query_parameters::{ImportImageOptions, RemoveImageOptions, TagImageOptions};
use futures::StreamExt;

use super::engine::{CONTROL_TIMEOUT, Engine};
use super::error::{DockerError, call};
use super::{DockerVmms, image};
use crate::vmms::VmmsError;

impl DockerVmms {
    /// `/build`: loads a `docker save` tarball on every engine and tags it `<name>:latest`.
    pub(super) async fn build(&self, name: &str, tarball: &Path) -> Result<(), VmmsError> {
        check_image_name(name)?;
        let path = tarball.to_path_buf();
        let saved = tokio::task::spawn_blocking(move || image::read_saved_image(&path))
            .await
            .map_err(|e| VmmsError::Io(e.to_string()))?
            .map_err(|e| VmmsError::Backend(format!("image build failed: {e}")))?;
        let bound = Duration::from_secs(self.docker.image_build_timeout.max(1));
        let mut loaded = 0;
        let mut errors = Vec::new();
        for engine in self.engines.all() {
            let load = self.load_image(engine, name, tarball, &saved);
            match tokio::time::timeout(bound, load).await {
                Ok(Ok(())) => loaded += 1,
                Ok(Err(e)) => errors.push(e.to_string()),
                Err(_) => errors.push(format!(
                    "Docker engine {}: loading the image took more than {} s",
                    engine.url,
                    bound.as_secs()
                )),
            }
        }
        if !errors.is_empty() {
            return Err(VmmsError::Backend(format!(
                "image build failed on {} of {} engines: {}",
                errors.len(),
                loaded + errors.len(),
                errors.join("; ")
            )));
        }
        tracing::info!(image = %format!("{name}:latest"), id = %saved.id, "image loaded");
        Ok(())
    }

    /// `docker load` of one tarball on one engine, then the tag `<name>:latest`. The tags the
    /// tarball carries are undone: a tag that did not exist before is removed, and one that
    /// named another image names that image again, so loading never changes what any other
    /// name means.
    async fn load_image(
        &self,
        engine: &Engine,
        name: &str,
        tarball: &Path,
        saved: &image::SavedImage,
    ) -> Result<(), DockerError> {
        let target = format!("{name}:latest");
        let before = tags_before(engine, saved, &target).await?;
        import(engine, tarball).await?;
        call(
            engine,
            "inspect the loaded image",
            Some(CONTROL_TIMEOUT),
            engine.client.inspect_image(&saved.id),
        )
        .await?;
        tag(engine, &saved.id, name, "latest", "tag the image").await?;
        for (tag, previous) in before {
            if let Err(e) = undo_tag(engine, &saved.id, &tag, previous).await {
                tracing::warn!(engine = %engine.url, tag = %tag, "could not undo the tarball's tag: {e}");
            }
        }
        Ok(())
    }
}

/// What each tag the tarball carries (other than `target`) names on the engine now.
async fn tags_before(
    engine: &Engine,
    saved: &image::SavedImage,
    target: &str,
) -> Result<Vec<(String, Option<String>)>, DockerError> {
    let mut before = Vec::new();
    for tag in saved.repo_tags.iter().filter(|t| *t != target) {
        let previous = match call(
            engine,
            "inspect image",
            Some(CONTROL_TIMEOUT),
            engine.client.inspect_image(tag),
        )
        .await
        {
            Ok(info) => info.id,
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e),
        };
        before.push((tag.clone(), previous));
    }
    Ok(before)
}

/// `docker load` of the tarball, streamed from its file.
async fn import(engine: &Engine, tarball: &Path) -> Result<(), DockerError> {
    let file = tokio::fs::File::open(tarball)
        .await
        .map_err(|e| DockerError::Config {
            engine: engine.url.clone(),
            message: format!("cannot open the image tarball: {e}"),
        })?;
    let body = bollard::body_try_stream(tokio_util::io::ReaderStream::new(file));
    let mut progress = Box::pin(engine.client.import_image(
        ImportImageOptions {
            quiet: true,
            ..Default::default()
        },
        body,
        None,
    ));
    while let Some(item) = progress.next().await {
        if let Err(e) = item {
            let e = DockerError::from_engine(&engine.url, e).doing("load the image");
            if e.is_unreachable() {
                engine.mark_down(&e.to_string());
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Tags image `id` as `repo:version`.
async fn tag(
    engine: &Engine,
    id: &str,
    repo: &str,
    version: &str,
    what: &str,
) -> Result<(), DockerError> {
    call(
        engine,
        what,
        Some(CONTROL_TIMEOUT),
        engine.client.tag_image(
            id,
            Some(TagImageOptions {
                repo: Some(repo.to_string()),
                tag: Some(version.to_string()),
            }),
        ),
    )
    .await
}

/// Gives `tag` back its meaning from before the load: the image it named (`previous`), or
/// none (the tag goes).
async fn undo_tag(
    engine: &Engine,
    loaded: &str,
    tag_name: &str,
    previous: Option<String>,
) -> Result<(), DockerError> {
    match previous {
        Some(old) if old == loaded => Ok(()),
        Some(old) => {
            let (repo, version) = image::split_reference(tag_name);
            tag(
                engine,
                &old,
                repo,
                version.unwrap_or("latest"),
                "restore a tag",
            )
            .await
        }
        None => call(
            engine,
            "remove a tag the tarball added",
            Some(CONTROL_TIMEOUT),
            engine.client.remove_image(
                tag_name,
                Some(RemoveImageOptions {
                    noprune: true,
                    ..Default::default()
                }),
                None,
            ),
        )
        .await
        .map(|_| ()),
    }
}

/// A Docker repository name, as Autolab checks it: lowercase letters and digits, with
/// `_`, `.`, `-` and `/` between them.
fn check_image_name(name: &str) -> Result<(), VmmsError> {
    let separator = |c: char| matches!(c, '_' | '.' | '-' | '/');
    let ok = !name.is_empty()
        && name.len() <= 255
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || separator(c))
        && !name.starts_with(separator)
        && !name.ends_with(separator)
        && !name.contains("//");
    if ok {
        Ok(())
    } else {
        Err(VmmsError::Backend(format!(
            "image build failed: {name:?} is not a valid image name (lowercase letters, \
             digits, and _ . - / between them)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_are_checked_like_autolab_does() {
        for good in ["gcc", "course/gcc", "my_image.v2", "a-b"] {
            assert!(check_image_name(good).is_ok(), "{good}");
        }
        for bad in ["", "GCC", "gcc:12", "../x", "/x", "x/", "a//b", "a b"] {
            assert!(check_image_name(bad).is_err(), "{bad}");
        }
    }
}
