//! A bare repository on disk and a work clone of it, changed with the real `git` CLI.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use tempfile::TempDir;

use super::{GitRemote, init_bare, run_git};

/// A repository the tests own: `<root>/<name>.git` (bare, what servers serve) and a work tree whose
/// `origin` is that bare repository. Commits land in the work tree; [`Upstream::push`] publishes them.
#[derive(Debug)]
pub struct Upstream {
    name: String,
    bare: PathBuf,
    work: TempDir,
    branch: String,
    /// The root folder, when this upstream made its own.
    _root: Option<TempDir>,
}

impl Upstream {
    /// A new empty repository in a temporary folder of its own (good for `file://` and SSH).
    pub fn new(name: &str) -> Result<Self> {
        let root = tempfile::Builder::new().prefix("tether-git-").tempdir()?;
        let mut upstream = Self::create(root.path(), name)?;
        upstream._root = Some(root);
        Ok(upstream)
    }

    /// A new empty repository at `<root>/<name>.git`, e.g. in an [`HttpsGitServer`](super::HttpsGitServer)'s
    /// project root. Fails if it already exists.
    pub fn create(root: &Path, name: &str) -> Result<Self> {
        if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
            bail!("repository name {name:?}: use a plain name such as \"app\"");
        }
        let bare = root.join(format!("{name}.git"));
        if bare.exists() {
            bail!("{} already exists", bare.display());
        }
        init_bare(&bare)?;
        let work = tempfile::Builder::new()
            .prefix(&format!("tether-work-{name}-"))
            .tempdir()?;
        run_git(
            Some(work.path()),
            &["-c", "init.defaultBranch=main", "init", "--quiet"],
            &[],
        )?;
        let bare_str = bare.to_str().context("repository path is not UTF-8")?;
        run_git(
            Some(work.path()),
            &["remote", "add", "origin", bare_str],
            &[],
        )?;
        Ok(Self {
            name: name.to_string(),
            bare,
            work,
            branch: "main".to_string(),
            _root: None,
        })
    }

    /// The name, without `.git`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bare repository (what servers serve, where hooks live).
    pub fn bare_path(&self) -> &Path {
        &self.bare
    }

    /// The work tree the helpers commit in.
    pub fn work_path(&self) -> &Path {
        self.work.path()
    }

    /// The branch the work tree is on (`main` at first).
    pub fn branch(&self) -> &str {
        &self.branch
    }

    /// `file:///abs/path/<name>.git`.
    pub fn file_url(&self) -> String {
        format!("file://{}", self.bare.display())
    }

    /// The bare repository as a `file://` remote.
    pub fn file_remote(&self) -> GitRemote {
        GitRemote::new(self.file_url())
    }

    /// Writes `contents` to `path` (relative to the work tree), creating folders as needed.
    pub fn write(&self, path: &str, contents: &str) -> Result<()> {
        let file = self.work_file(path)?;
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&file, contents).with_context(|| format!("writing {}", file.display()))
    }

    /// Deletes `path` (a file or a folder) from the work tree.
    pub fn remove(&self, path: &str) -> Result<()> {
        let file = self.work_file(path)?;
        if file.is_dir() {
            std::fs::remove_dir_all(&file)
        } else {
            std::fs::remove_file(&file)
        }
        .with_context(|| format!("removing {}", file.display()))
    }

    /// Stages every change in the work tree and commits it; returns the new commit's id.
    pub fn commit(&self, message: &str) -> Result<String> {
        run_git(Some(self.work_path()), &["add", "--all"], &[])?;
        run_git(
            Some(self.work_path()),
            &["commit", "--quiet", "--allow-empty", "-m", message],
            &[],
        )?;
        self.head()
    }

    /// Writes one file and commits it; returns the new commit's id.
    pub fn commit_file(&self, path: &str, contents: &str, message: &str) -> Result<String> {
        self.write(path, contents)?;
        self.commit(message)
    }

    /// A lightweight tag on HEAD (moved if it exists).
    pub fn tag(&self, name: &str) -> Result<()> {
        run_git(Some(self.work_path()), &["tag", "--force", name], &[])?;
        Ok(())
    }

    /// An annotated tag on HEAD (moved if it exists); returns the tag object's id (not the commit's).
    pub fn annotated_tag(&self, name: &str, message: &str) -> Result<String> {
        run_git(
            Some(self.work_path()),
            &["tag", "--force", "--annotate", "-m", message, name],
            &[],
        )?;
        self.rev_parse(&format!("refs/tags/{name}"))
    }

    /// Switches the work tree to `branch`, creating it at HEAD if it does not exist.
    pub fn checkout(&mut self, branch: &str) -> Result<()> {
        let exists = run_git(
            Some(self.work_path()),
            &[
                "rev-parse",
                "--verify",
                "--quiet",
                &format!("refs/heads/{branch}"),
            ],
            &[],
        )
        .is_ok();
        let args: &[&str] = if exists {
            &["checkout", "--quiet", branch]
        } else {
            &["checkout", "--quiet", "-b", branch]
        };
        run_git(Some(self.work_path()), args, &[])?;
        self.branch = branch.to_string();
        Ok(())
    }

    /// `git rev-parse HEAD` in the work tree.
    pub fn head(&self) -> Result<String> {
        self.rev_parse("HEAD")
    }

    /// `git rev-parse <rev>` in the work tree.
    pub fn rev_parse(&self, rev: &str) -> Result<String> {
        run_git(Some(self.work_path()), &["rev-parse", rev], &[])
    }

    /// Publishes the current branch and every tag to the bare repository on disk (hooks run).
    pub fn push(&self) -> Result<()> {
        self.push_to(&self.file_remote())
    }

    /// Publishes the current branch and every tag through `remote` with the real `git push`, e.g. over
    /// HTTPS with basic auth or over SSH. Tags are pushed with force, so a moved tag moves there too.
    pub fn push_to(&self, remote: &GitRemote) -> Result<()> {
        self.push_branch(remote, "")
    }

    /// Force-pushes the current branch (for history rewrites) and every tag through `remote`.
    pub fn force_push_to(&self, remote: &GitRemote) -> Result<()> {
        self.push_branch(remote, "+")
    }

    fn push_branch(&self, remote: &GitRemote, force: &str) -> Result<()> {
        let branch = format!("{force}HEAD:refs/heads/{}", self.branch);
        run_git(
            Some(self.work_path()),
            &[
                "push",
                "--quiet",
                remote.url(),
                &branch,
                "+refs/tags/*:refs/tags/*",
            ],
            remote.env(),
        )?;
        Ok(())
    }

    /// Runs any `git` command in the work tree and returns its stdout.
    pub fn git(&self, args: &[&str]) -> Result<String> {
        run_git(Some(self.work_path()), args, &[])
    }

    /// Installs an executable hook (`post-receive`, `pre-receive`, ...) in the bare repository. `script`
    /// is the whole file, starting with its `#!` line. It runs on every push, whatever the transport.
    pub fn install_hook(&self, hook: &str, script: &str) -> Result<PathBuf> {
        let path = self.bare.join("hooks").join(hook);
        std::fs::write(&path, script).with_context(|| format!("writing {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        Ok(path)
    }

    /// Installs a `post-receive` hook; see [`Upstream::install_hook`].
    pub fn install_post_receive_hook(&self, script: &str) -> Result<PathBuf> {
        self.install_hook("post-receive", script)
    }

    fn work_file(&self, path: &str) -> Result<PathBuf> {
        let rel = Path::new(path);
        if rel.is_absolute()
            || rel
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            bail!("{path:?}: give a path inside the work tree, such as \"deploy/app.yaml\"");
        }
        Ok(self.work.path().join(rel))
    }
}
