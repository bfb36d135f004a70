//! The render stage: what the folder at `spec.path` holds (plain manifests, a kustomization or a
//! chart), its files decrypted where SOPS encrypted them, and what kustomize or helm make of it.
//! Kustomize and helm run on a checkout of the revision in a private folder of their own, removed
//! when the render ends, whatever its outcome.

use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt as _;

use super::context::Context;
use super::error::Error;
use super::spec::ValidSpec;
use crate::crd::{GitRepository, RenderMode};
use crate::git::Resolved;
use crate::plan::ManifestFilter;
use crate::render::{self, RenderError, helm, kustomize, sops};

/// The manifests of a revision, as the plan reads them.
#[derive(Debug)]
pub(super) struct Manifests {
    /// `(name, content)`: files from the repository root, or a tool's output labelled by it.
    pub files: Vec<(String, Vec<u8>)>,
    /// Which files are manifests; `None` when all of them are (a tool's output).
    pub filter: Option<Arc<ManifestFilter>>,
}

/// The age keys of `spec.decryption` and the Secret they came from.
#[derive(Debug)]
pub(super) struct Keys {
    pub secret: String,
    pub keys: String,
}

/// Reads the revision's manifests, rendering and decrypting them as its spec asks.
pub(super) async fn manifests(
    obj: &GitRepository,
    spec: &ValidSpec,
    ctx: &Context,
    resolved: &Resolved,
    keys: Option<Keys>,
) -> Result<Manifests, Error> {
    let key = spec.repo.to_string();
    let sha = resolved.sha.clone();
    let timeout = spec.timeout;
    let mode = match obj.spec.render {
        Some(mode) => mode,
        None => render::detect(
            &ctx.mirrors
                .names_at(&key, sha.clone(), spec.path.clone(), timeout)
                .await?,
        ),
    };
    let limits = ctx.mirrors.limits();

    if mode == RenderMode::Plain {
        let filter = spec.filter.clone();
        let accept = Arc::clone(&filter);
        let mut files = ctx
            .mirrors
            .read_tree(&key, sha, spec.path.clone(), timeout, move |p| {
                accept.accepts(p)
            })
            .await?;
        let encrypted = files
            .iter()
            .any(|(path, data)| sops::encrypted_format(path, data).is_some());
        if encrypted {
            let scratch = ctx.tools.scratch()?;
            decrypt_all(&mut files, keys.as_ref(), ctx, scratch.path(), timeout).await?;
        }
        return Ok(Manifests {
            files,
            filter: Some(filter),
        });
    }

    // Bounded: each render holds a checkout on disk and a tool process in memory.
    let _slot = ctx
        .tools
        .slots
        .acquire()
        .await
        .map_err(|e| Error::Panicked(format!("the render slots: {e}")))?;
    let started = std::time::Instant::now();
    // Kustomize and helm: a checkout of the whole revision (bases and values files may live
    // anywhere in the repository), less what spec.ignore leaves out.
    let scratch = ctx.tools.scratch()?;
    let src = scratch.path().join("src");
    let ignore = Arc::clone(&spec.filter);
    let written = ctx
        .mirrors
        .checkout(&key, sha, src.clone(), timeout, move |p| ignore.ignores(p))
        .await?;
    decrypt_checkout(
        &src,
        &written,
        keys.as_ref(),
        ctx,
        scratch.path(),
        timeout,
        limits.max_file_bytes,
    )
    .await?;
    let home = scratch.path().join("home");
    let path = spec.path.as_str();
    let files = match mode {
        RenderMode::Kustomize => {
            let allow_remote = ctx.tools.allow_remote_bases;
            let root = src.clone();
            let start = path.to_owned();
            tokio::task::spawn_blocking(move || kustomize::check(&root, &start, allow_remote))
                .await
                .map_err(|e| Error::Panicked(format!("checking the kustomization: {e}")))??;
            let what = format!("kustomize build {}", display(path));
            let output = render::exec::run(render::exec::Invocation {
                program: ctx.tools.require("kustomize")?,
                args: kustomize::build_args(path),
                dir: &src,
                home: &home,
                env: vec![],
                stdin: None,
                timeout,
                max_stdout: limits.max_revision_bytes,
                network: allow_remote,
            })
            .await
            .map_err(|f| render::failure(what.clone(), f, scratch.path()))?;
            vec![(format!("{} (kustomize build)", display(path)), output)]
        }
        RenderMode::Helm => {
            let helm_spec = obj.spec.helm.as_ref();
            let release = helm::Release::of(
                helm_spec,
                &obj.name_any(),
                &obj.namespace().unwrap_or_default(),
                obj.spec.target_namespace.as_deref(),
            );
            let values = helm::values_files(
                path,
                helm_spec
                    .map(|h| h.values_files.as_slice())
                    .unwrap_or_default(),
            )?;
            let inline = match helm_spec.and_then(|h| h.values.as_ref()) {
                Some(values) => {
                    let file = scratch.path().join("values.json");
                    let json = serde_json::to_vec(values).unwrap_or_default();
                    std::fs::write(&file, json).map_err(|source| RenderError::Io {
                        path: file.clone(),
                        source,
                    })?;
                    Some(file)
                }
                None => None,
            };
            let version = ctx.kube_version().await;
            let what = format!("helm template {} {}", release.name, display(path));
            let output = render::exec::run(render::exec::Invocation {
                program: ctx.tools.require("helm")?,
                args: helm::template_args(
                    &release,
                    path,
                    &values,
                    inline.as_deref(),
                    version.as_deref(),
                ),
                dir: &src,
                home: &home,
                env: vec![
                    ("HELM_CACHE_HOME", home.join("cache").into()),
                    ("HELM_CONFIG_HOME", home.join("config").into()),
                    ("HELM_DATA_HOME", home.join("data").into()),
                    ("HELM_PLUGINS", home.join("plugins").into()),
                    ("KUBECONFIG", home.join("no-kubeconfig").into()),
                ],
                stdin: None,
                timeout,
                max_stdout: limits.max_revision_bytes,
                network: false,
            })
            .await
            .map_err(|f| render::failure(what.clone(), f, scratch.path()))?;
            helm::split_by_source(path, &output)
        }
        RenderMode::Plain => Vec::new(),
    };
    drop(scratch);
    ctx.metrics
        .render_duration
        .with_label_values(&[mode.as_str()])
        .observe(started.elapsed().as_secs_f64());
    Ok(Manifests {
        files,
        filter: None,
    })
}

fn display(path: &str) -> &str {
    if path.is_empty() { "." } else { path }
}

/// Replaces each SOPS-encrypted file among `files` by its plaintext.
async fn decrypt_all(
    files: &mut [(String, Vec<u8>)],
    keys: Option<&Keys>,
    ctx: &Context,
    scratch: &std::path::Path,
    timeout: Duration,
) -> Result<(), Error> {
    let max = ctx.mirrors.limits().max_file_bytes;
    for (path, data) in files.iter_mut() {
        let Some(format) = sops::encrypted_format(path, data) else {
            continue;
        };
        let decryptor = decryptor(keys, path, ctx, scratch, timeout)?;
        *data = decryptor
            .decrypt(path, format, std::mem::take(data), max)
            .await?;
    }
    Ok(())
}

/// Decrypts, in place in the private checkout at `src`, each of the `written` files that SOPS
/// encrypted: manifests, values files and the env files of generators alike.
async fn decrypt_checkout(
    src: &std::path::Path,
    written: &[String],
    keys: Option<&Keys>,
    ctx: &Context,
    scratch: &std::path::Path,
    timeout: Duration,
    max: u64,
) -> Result<(), Error> {
    for path in written.iter().filter(|p| sops::may_be_encrypted(p)) {
        let file = src.join(path);
        let is_file = std::fs::symlink_metadata(&file).is_ok_and(|m| m.is_file());
        if !is_file {
            continue;
        }
        let io = |source| RenderError::Io {
            path: file.clone(),
            source,
        };
        let data = std::fs::read(&file).map_err(io)?;
        let Some(format) = sops::encrypted_format(path, &data) else {
            continue;
        };
        let plain = decryptor(keys, path, ctx, scratch, timeout)?
            .decrypt(path, format, data, max)
            .await?;
        std::fs::write(&file, plain).map_err(io)?;
    }
    Ok(())
}

fn decryptor<'a>(
    keys: Option<&'a Keys>,
    path: &str,
    ctx: &'a Context,
    scratch: &'a std::path::Path,
    timeout: Duration,
) -> Result<sops::Decryptor<'a>, Error> {
    let keys = keys.ok_or_else(|| RenderError::Encrypted {
        file: path.to_owned(),
    })?;
    Ok(sops::Decryptor {
        sops: ctx.tools.require("sops")?,
        secret: &keys.secret,
        keys: &keys.keys,
        scratch,
        timeout,
    })
}
