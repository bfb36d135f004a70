//! A commit's tree written out as files, for the tools that render it (kustomize, helm): every
//! blob within the content limits, symbolic links only where they point inside the tree, and
//! submodules left out.

use std::path::{Component, Path, PathBuf};

use git2::Repository;

use super::GitError;
use crate::plan::ContentLimits;

/// The names directly inside the folder `path` of commit `sha` (files and folders alike), for
/// telling what the folder holds; `PathNotFound` when it is not a folder.
pub fn names_at_blocking(mirror: &Path, sha: &str, path: &str) -> Result<Vec<String>, GitError> {
    let repo = open(mirror)?;
    let tree = folder(&repo, mirror, sha, path)?;
    Ok(tree
        .iter()
        .filter_map(|e| e.name().map(str::to_owned))
        .collect())
}

/// Writes every file of commit `sha` under `dest` (which must exist and be empty), leaving out
/// those `skip` takes (paths from the repository root). Sizes are checked against `limits` from
/// the objects' headers before any blob is read: a file over `max_file_bytes` or a tree over
/// `max_revision_bytes` fails the checkout. Returns the paths written.
pub fn checkout_blocking(
    mirror: &Path,
    sha: &str,
    dest: &Path,
    limits: &ContentLimits,
    skip: impl Fn(&str) -> bool,
) -> Result<Vec<String>, GitError> {
    let repo = open(mirror)?;
    let tree = folder(&repo, mirror, sha, "")?;
    let cache = |e: git2::Error| GitError::Cache {
        path: mirror.to_owned(),
        source: e,
    };
    let io = |what: &str, e: std::io::Error| {
        cache(git2::Error::from_str(&format!(
            "writing the checkout: {what}: {e}"
        )))
    };

    let mut blobs = Vec::new();
    let mut links = Vec::new();
    let mut bad_name = false;
    tree.walk(git2::TreeWalkMode::PreOrder, |dir, entry| {
        let Some(name) = entry.name() else {
            bad_name = true;
            return git2::TreeWalkResult::Abort;
        };
        let full = format!("{dir}{name}");
        if entry.kind() == Some(git2::ObjectType::Tree) {
            // A folder left out takes everything under it along.
            return if skip(&format!("{full}/")) {
                git2::TreeWalkResult::Skip
            } else {
                git2::TreeWalkResult::Ok
            };
        }
        if entry.kind() != Some(git2::ObjectType::Blob) || skip(&full) {
            return git2::TreeWalkResult::Ok;
        }
        if entry.filemode() == 0o120_000 {
            links.push((full, entry.id()));
        } else {
            blobs.push((full, entry.id(), entry.filemode() == 0o100_755));
        }
        git2::TreeWalkResult::Ok
    })
    .map_err(|e| {
        if bad_name {
            cache(git2::Error::from_str("a file name is not UTF-8"))
        } else {
            cache(e)
        }
    })?;

    super::mirror::within_limits(
        &repo,
        mirror,
        blobs.iter().map(|(f, id, _)| (f.as_str(), *id)),
        limits,
    )?;

    let mut written = Vec::with_capacity(blobs.len());
    for (file, id, executable) in blobs {
        let blob = repo.find_blob(id).map_err(cache)?;
        let target = dest.join(&file);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io(&file, e))?;
        }
        std::fs::write(&target, blob.content()).map_err(|e| io(&file, e))?;
        if executable {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| io(&file, e))?;
        }
        written.push(file);
    }
    for (file, id) in links {
        let blob = repo.find_blob(id).map_err(cache)?;
        let Ok(link) = std::str::from_utf8(blob.content()) else {
            return Err(link_outside(&file, "a target that is not UTF-8"));
        };
        if !link_stays_inside(&file, link) {
            return Err(link_outside(&file, link));
        }
        let target = dest.join(&file);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io(&file, e))?;
        }
        std::os::unix::fs::symlink(link, &target).map_err(|e| io(&file, e))?;
        written.push(file);
    }
    Ok(written)
}

fn link_outside(file: &str, link: &str) -> GitError {
    GitError::LinkOutside {
        file: file.to_owned(),
        target: link.to_owned(),
    }
}

/// Whether a symbolic link at `file` (from the repository root) to `link` stays inside the
/// repository, judged from the names alone: relative, and never climbing above the root. Links
/// to links are checked each on its own, so a chain cannot leave either.
pub fn link_stays_inside(file: &str, link: &str) -> bool {
    let link = Path::new(link);
    if link.is_absolute() {
        return false;
    }
    let mut depth: usize = Path::new(file)
        .parent()
        .map(|p| p.components().count())
        .unwrap_or(0);
    for part in link.components() {
        match part {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

fn open(mirror: &Path) -> Result<Repository, GitError> {
    Repository::open_bare(mirror).map_err(|source| GitError::Cache {
        path: mirror.to_owned(),
        source,
    })
}

fn folder<'r>(
    repo: &'r Repository,
    mirror: &Path,
    sha: &str,
    path: &str,
) -> Result<git2::Tree<'r>, GitError> {
    let cache = |source| GitError::Cache {
        path: PathBuf::from(mirror),
        source,
    };
    let oid = git2::Oid::from_str(sha).map_err(cache)?;
    let root = repo
        .find_commit(oid)
        .and_then(|c| c.tree())
        .map_err(cache)?;
    let path = path.trim_matches('/');
    if path.is_empty() {
        return Ok(root);
    }
    let not_found = || GitError::PathNotFound {
        path: path.to_owned(),
        sha: sha.to_owned(),
    };
    let entry = root.get_path(Path::new(path)).map_err(|_| not_found())?;
    if entry.kind() != Some(git2::ObjectType::Tree) {
        return Err(not_found());
    }
    repo.find_tree(entry.id()).map_err(cache)
}

#[cfg(test)]
mod tests {
    use super::link_stays_inside;

    #[test]
    fn links_may_point_anywhere_inside_the_repository_and_nowhere_else() {
        assert!(link_stays_inside("a/b/link", "c.yaml"));
        assert!(link_stays_inside("a/b/link", "../../top.yaml"));
        assert!(link_stays_inside("link", "./a/./b"));
        assert!(!link_stays_inside("a/link", "../../outside"));
        assert!(!link_stays_inside("link", "../x"));
        assert!(!link_stays_inside("a/link", "/etc/passwd"));
        assert!(link_stays_inside("a/link", "b/../../c"));
        assert!(!link_stays_inside("a/link", "b/../../../c"));
    }
}
