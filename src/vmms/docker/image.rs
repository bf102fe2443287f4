//! Image names as Tango matches them, and what an uploaded image tarball holds.
//!
//! Tango's `getImages` listed each image by its repository name with the registry and
//! namespace cut off and no tag (`registry.example.edu/course/gcc:12` → `gcc`); jobs name
//! images that way. We list those short names and the full references too, and when a job
//! names an image by its short name we find the full reference it stands for.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;

use serde::Deserialize;

/// `repo:tag` split at the tag's colon (a colon before the last `/` is a registry port).
pub fn split_reference(reference: &str) -> (&str, Option<&str>) {
    let last_slash = reference.rfind('/').map(|i| i + 1).unwrap_or(0);
    match reference[last_slash..].rfind(':') {
        Some(colon) => {
            let at = last_slash + colon;
            (&reference[..at], Some(&reference[at + 1..]))
        }
        None => (reference, None),
    }
}

/// Tango's short name: the repository without registry, namespace or tag.
pub fn short_name(reference: &str) -> &str {
    let (repo, _) = split_reference(reference);
    repo.rsplit('/').next().unwrap_or(repo)
}

/// The names jobs may use for images with these tags: each tag's short name, its repository
/// and the full `repo:tag`. Untagged images (`<none>:<none>`) have no name.
pub fn names_of<'a>(repo_tags: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for tag in repo_tags {
        if tag.is_empty() || tag.starts_with("<none>") {
            continue;
        }
        let (repo, _) = split_reference(tag);
        names.insert(short_name(tag).to_string());
        names.insert(repo.to_string());
        names.insert(tag.to_string());
    }
    names
}

/// Picks the tag a job's image name stands for among an engine's tags: an exact reference
/// first, then `name:latest`, then a repository or short name match, preferring `latest`.
pub fn resolve<'a>(wanted: &str, repo_tags: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let tags: Vec<&str> = repo_tags
        .into_iter()
        .filter(|t| !t.is_empty() && !t.starts_with("<none>"))
        .collect();
    if let Some(t) = tags.iter().find(|t| **t == wanted) {
        return Some(t.to_string());
    }
    let latest = format!("{wanted}:latest");
    if let Some(t) = tags.iter().find(|t| **t == latest) {
        return Some(t.to_string());
    }
    let mut matches: Vec<&str> = tags
        .iter()
        .copied()
        .filter(|t| split_reference(t).0 == wanted || short_name(t) == wanted)
        .collect();
    // Deterministic: `latest` first, then by name.
    matches.sort_by_key(|t| (split_reference(t).1 != Some("latest"), t.to_string()));
    matches.first().map(|t| t.to_string())
}

/// A container name from a Tango instance name: Docker allows `[a-zA-Z0-9][a-zA-Z0-9_.-]*`,
/// so anything else (an image's `/` or `:`) becomes `_`.
pub fn container_name(instance: &str) -> String {
    let mut name: String = instance
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        name.insert(0, 'x');
    }
    name
}

/// What an image tarball (`docker save` format) holds, from its `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedImage {
    /// The image id (`sha256:...`), from the name of its config file.
    pub id: String,
    /// The tags the tarball would give it when loaded.
    pub repo_tags: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ManifestEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
}

/// Why an image tarball was refused before it reached the engine.
#[derive(Debug, thiserror::Error)]
pub enum TarballError {
    #[error("cannot read the image tarball: {0}")]
    Read(String),
    #[error("not a `docker save` tarball: it has no manifest.json")]
    NoManifest,
    #[error("not a `docker save` tarball: manifest.json is not what docker writes ({0})")]
    BadManifest(String),
    #[error("the tarball holds {0} images; exactly one is needed")]
    ImageCount(usize),
}

/// Reads the manifest of an image tarball (blocking; run it off the async threads). Seeks
/// over the layers, so a large tarball costs one pass over its headers.
pub fn read_saved_image(path: &Path) -> Result<SavedImage, TarballError> {
    let file = std::fs::File::open(path).map_err(|e| TarballError::Read(e.to_string()))?;
    let mut archive = tar::Archive::new(file);
    let entries = archive
        .entries_with_seek()
        .map_err(|e| TarballError::Read(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| TarballError::Read(e.to_string()))?;
        let is_manifest = entry
            .path()
            .map(|p| p.as_os_str() == "manifest.json" || p.as_os_str() == "./manifest.json")
            .unwrap_or(false);
        if !is_manifest {
            continue;
        }
        if entry.size() > 16 << 20 {
            return Err(TarballError::BadManifest("it is implausibly large".into()));
        }
        let mut text = Vec::new();
        entry
            .read_to_end(&mut text)
            .map_err(|e| TarballError::Read(e.to_string()))?;
        let manifest: Vec<ManifestEntry> =
            serde_json::from_slice(&text).map_err(|e| TarballError::BadManifest(e.to_string()))?;
        if manifest.len() != 1 {
            return Err(TarballError::ImageCount(manifest.len()));
        }
        let entry = &manifest[0];
        // `<hex>.json` (docker before 25) or `blobs/sha256/<hex>` (OCI layout).
        let file = entry.config.rsplit('/').next().unwrap_or(&entry.config);
        let hex = file.strip_suffix(".json").unwrap_or(file);
        if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(TarballError::BadManifest(format!(
                "config {:?} does not name an image id",
                entry.config
            )));
        }
        return Ok(SavedImage {
            id: format!("sha256:{hex}"),
            repo_tags: entry.repo_tags.clone().unwrap_or_default(),
        });
    }
    Err(TarballError::NoManifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_at_the_tag_not_the_port() {
        assert_eq!(split_reference("gcc"), ("gcc", None));
        assert_eq!(split_reference("gcc:12"), ("gcc", Some("12")));
        assert_eq!(
            split_reference("reg.example.edu:5000/course/gcc"),
            ("reg.example.edu:5000/course/gcc", None)
        );
        assert_eq!(
            split_reference("reg.example.edu:5000/course/gcc:12"),
            ("reg.example.edu:5000/course/gcc", Some("12"))
        );
        assert_eq!(short_name("reg.example.edu:5000/course/gcc:12"), "gcc");
        assert_eq!(short_name("autograding_image:latest"), "autograding_image");
    }

    #[test]
    fn names_are_short_repo_and_full() {
        let names = names_of(["course/gcc:12", "<none>:<none>", "ubuntu:latest"]);
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        assert_eq!(
            names,
            vec![
                "course/gcc",
                "course/gcc:12",
                "gcc",
                "ubuntu",
                "ubuntu:latest"
            ]
        );
    }

    #[test]
    fn short_names_resolve_to_a_tag_preferring_latest() {
        let tags = ["course/gcc:12", "course/gcc:latest", "other/python:3"];
        assert_eq!(resolve("gcc", tags).as_deref(), Some("course/gcc:latest"));
        assert_eq!(
            resolve("course/gcc:12", tags).as_deref(),
            Some("course/gcc:12")
        );
        assert_eq!(resolve("python", tags).as_deref(), Some("other/python:3"));
        assert_eq!(
            resolve("other/python", tags).as_deref(),
            Some("other/python:3")
        );
        assert_eq!(resolve("java", tags), None);
        assert_eq!(
            resolve("ubuntu", ["ubuntu:latest", "x/ubuntu:1"]).as_deref(),
            Some("ubuntu:latest")
        );
    }

    #[test]
    fn container_names_are_what_docker_accepts() {
        assert_eq!(
            container_name("local-1001-autograding_image"),
            "local-1001-autograding_image"
        );
        assert_eq!(
            container_name("local-5-course/gcc:12"),
            "local-5-course_gcc_12"
        );
        assert_eq!(container_name("_x"), "x_x");
    }

    fn tarball_with(manifest: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut builder = tar::Builder::new(file.reopen().unwrap());
        let layer = vec![1u8; 5000];
        let mut h = tar::Header::new_gnu();
        h.set_size(layer.len() as u64);
        h.set_mode(0o644);
        builder
            .append_data(&mut h, "abc/layer.tar", &layer[..])
            .unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(manifest.len() as u64);
        h.set_mode(0o644);
        builder
            .append_data(&mut h, "manifest.json", manifest.as_bytes())
            .unwrap();
        builder.finish().unwrap();
        file
    }

    #[test]
    fn the_manifest_names_one_image() {
        let hex = "a".repeat(64);
        let t = tarball_with(&format!(
            r#"[{{"Config":"{hex}.json","RepoTags":["x:latest"],"Layers":["abc/layer.tar"]}}]"#
        ));
        let saved = read_saved_image(t.path()).unwrap();
        assert_eq!(saved.id, format!("sha256:{hex}"));
        assert_eq!(saved.repo_tags, vec!["x:latest".to_string()]);

        let t = tarball_with(&format!(
            r#"[{{"Config":"blobs/sha256/{hex}","RepoTags":null,"Layers":[]}}]"#
        ));
        assert_eq!(
            read_saved_image(t.path()).unwrap().repo_tags,
            Vec::<String>::new()
        );

        let t = tarball_with(&format!(
            r#"[{{"Config":"{hex}.json","RepoTags":[]}},{{"Config":"{hex}.json","RepoTags":[]}}]"#
        ));
        assert!(matches!(
            read_saved_image(t.path()),
            Err(TarballError::ImageCount(2))
        ));
        let t = tarball_with("not json");
        assert!(matches!(
            read_saved_image(t.path()),
            Err(TarballError::BadManifest(_))
        ));
    }

    #[test]
    fn a_tarball_without_manifest_is_refused() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), b"definitely not a tar archive").unwrap();
        assert!(read_saved_image(file.path()).is_err());
    }
}
