//! Kustomize: the checks Tether makes before `kustomize build` (every base and component inside
//! the repository, nothing fetched, no Helm inflation), and the build itself.
//!
//! `kustomize build --load-restrictor LoadRestrictionsRootOnly` already keeps the files one
//! kustomization reads (patches, generator inputs) inside its own folder. What it does not keep in
//! is where its `resources`, `components` and plugin entries lead: a folder is a new root, and an
//! entry that is no local path is fetched as a remote base. [`check`] walks that graph first.

use std::collections::{BTreeSet, VecDeque};
use std::path::Path;

use serde_yaml_ng::Value;

use super::RenderError;

/// The file names kustomize reads a kustomization from, in its order of preference.
pub const FILE_NAMES: [&str; 3] = ["kustomization.yaml", "kustomization.yml", "Kustomization"];

/// The fields whose entries name other files or kustomizations (folders become roots of their own).
const PATH_LISTS: [&str; 6] = [
    "resources",
    "bases",
    "components",
    "generators",
    "transformers",
    "validators",
];

/// The most kustomizations one build may reach: beyond it the graph is refused, not walked.
const MAX_KUSTOMIZATIONS: usize = 1_000;

/// Checks the kustomization at `start` (a folder from the repository root) and every one it
/// reaches, in the checkout at `root`: each entry must be a file or folder inside the repository,
/// or, with `allow_remote`, a remote base. Names the kustomization file and the entry at fault.
pub fn check(root: &Path, start: &str, allow_remote: bool) -> Result<(), RenderError> {
    let mut queue = VecDeque::from([super::inside_repository(start).unwrap_or_default()]);
    let mut seen = BTreeSet::new();
    while let Some(dir) = queue.pop_front() {
        if !seen.insert(dir.clone()) {
            continue;
        }
        if seen.len() > MAX_KUSTOMIZATIONS {
            return Err(RenderError::Refused(format!(
                "{start}: reaches more than {MAX_KUSTOMIZATIONS} kustomizations"
            )));
        }
        let Some((file, text)) = read_kustomization(root, &dir) else {
            return Err(RenderError::Refused(format!(
                "{}: no kustomization.yaml, kustomization.yml or Kustomization file",
                display_dir(&dir)
            )));
        };
        let doc: Value = serde_yaml_ng::from_str(&text)
            .map_err(|e| RenderError::Refused(format!("{file}: not valid YAML: {e}")))?;
        for field in ["helmCharts", "helmChartInflationGenerator", "helmGlobals"] {
            if doc.get(field).is_some() {
                return Err(RenderError::Refused(format!(
                    "{file}: {field}: Tether does not inflate Helm charts inside a kustomization \
                     (kustomize would fetch and run helm for it); point a GitRepository with \
                     render: helm at the chart instead, or commit the rendered chart"
                )));
            }
        }
        for field in PATH_LISTS {
            let Some(entries) = doc.get(field).and_then(Value::as_sequence) else {
                continue;
            };
            for (i, entry) in entries.iter().enumerate() {
                let Some(entry) = entry.as_str() else {
                    continue;
                };
                // An inline plugin configuration, not a path: kustomize itself refuses the plugins
                // Tether does not enable.
                if entry.contains('\n') {
                    continue;
                }
                let at = format!("{file}: {field}[{i}] {entry:?}");
                if looks_remote(entry) {
                    if allow_remote {
                        continue;
                    }
                    return Err(RenderError::Refused(format!(
                        "{at} is a remote base: Tether fetches nothing during a render; copy it \
                         into this repository (or ask the cluster admin to start the operator with \
                         --allow-remote-bases)"
                    )));
                }
                let Some(target) = super::inside_repository(&join(&dir, entry)) else {
                    return Err(RenderError::Refused(format!(
                        "{at} leads outside the repository; every base and component must be \
                         inside it"
                    )));
                };
                let on_disk = root.join(&target);
                match std::fs::symlink_metadata(&on_disk) {
                    Ok(meta) if meta.is_dir() => {
                        if matches!(field, "resources" | "bases" | "components")
                            || read_kustomization(root, &target).is_some()
                        {
                            queue.push_back(target);
                        }
                    }
                    Ok(_) => {}
                    Err(_) if allow_remote => {}
                    Err(_) => {
                        return Err(RenderError::Refused(format!(
                            "{at}: no such file or folder in the repository (kustomize would \
                             try it as a remote base, which Tether refuses)"
                        )));
                    }
                }
            }
        }
    }
    Ok(())
}

/// The kustomization file of `dir` (from the repository root) and its text.
fn read_kustomization(root: &Path, dir: &str) -> Option<(String, String)> {
    FILE_NAMES.iter().find_map(|name| {
        let rel = if dir.is_empty() {
            (*name).to_owned()
        } else {
            format!("{dir}/{name}")
        };
        std::fs::read_to_string(root.join(&rel))
            .ok()
            .map(|text| (rel, text))
    })
}

/// `entry` of the kustomization in `dir` (from the repository root), as a path from the root.
fn join(dir: &str, entry: &str) -> String {
    if dir.is_empty() {
        entry.to_owned()
    } else {
        format!("{dir}/{entry}")
    }
}

fn display_dir(dir: &str) -> &str {
    if dir.is_empty() {
        "the repository root"
    } else {
        dir
    }
}

/// Whether a kustomization entry names something to fetch rather than a local path: a URL, an
/// scp-like `git@host:path`, or a `host/org/repo` form kustomize reads as a git repository.
pub fn looks_remote(entry: &str) -> bool {
    let lower = entry.to_ascii_lowercase();
    lower.contains("://")
        || lower.contains("?ref=")
        || lower.contains("?version=")
        || lower.starts_with("git@")
        || lower.starts_with("git::")
        || [
            "github.com/",
            "gitlab.com/",
            "bitbucket.org/",
            "dev.azure.com/",
        ]
        .iter()
        .any(|host| lower.starts_with(host))
}

/// The arguments of `kustomize build` for the folder `path` of the checkout.
pub fn build_args(path: &str) -> Vec<std::ffi::OsString> {
    let dir = if path.is_empty() { "." } else { path };
    vec![
        "build".into(),
        dir.into(),
        "--load-restrictor".into(),
        "LoadRestrictionsRootOnly".into(),
    ]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn repo(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        dir
    }

    fn refused(files: &[(&str, &str)], start: &str) -> String {
        let dir = repo(files);
        match check(dir.path(), start, false) {
            Err(RenderError::Refused(m)) => m,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_overlay_over_bases_and_components_inside_the_repository_passes() {
        let dir = repo(&[
            (
                "clusters/dev/kustomization.yaml",
                "resources: [../../apps/base, extra.yaml]\ncomponents: [../../components/debug]\n",
            ),
            ("clusters/dev/extra.yaml", "kind: ConfigMap\n"),
            ("apps/base/kustomization.yml", "resources: [deploy.yaml]\n"),
            ("apps/base/deploy.yaml", "kind: Deployment\n"),
            ("components/debug/Kustomization", "kind: Component\n"),
        ]);
        check(dir.path(), "clusters/dev", false).unwrap();
    }

    #[test]
    fn remote_bases_are_refused_unless_allowed() {
        for entry in [
            "https://github.com/org/repo//base?ref=v1",
            "github.com/org/repo/base?ref=main",
            "git@github.com:org/repo.git//base",
        ] {
            let files = [("kustomization.yaml", format!("resources: ['{entry}']\n"))];
            let files: Vec<(&str, &str)> = files.iter().map(|(a, b)| (*a, b.as_str())).collect();
            let message = refused(&files, "");
            assert!(message.contains("is a remote base"), "{entry}: {message}");
            assert!(message.contains("--allow-remote-bases"), "{message}");
            let dir = repo(&files);
            check(dir.path(), "", true).unwrap();
        }
    }

    #[test]
    fn an_entry_leading_outside_the_repository_is_refused() {
        let message = refused(
            &[("a/kustomization.yaml", "resources: [../../../etc]\n")],
            "a",
        );
        assert_eq!(
            message,
            "a/kustomization.yaml: resources[0] \"../../../etc\" leads outside the repository; \
             every base and component must be inside it"
        );
    }

    #[test]
    fn a_missing_entry_is_named_rather_than_fetched() {
        let message = refused(&[("kustomization.yaml", "resources: [gone/]\n")], "");
        assert!(message.starts_with("kustomization.yaml: resources[0] \"gone/\": no such file"));
    }

    #[test]
    fn the_walk_follows_bases_and_checks_theirs() {
        let message = refused(
            &[
                ("app/kustomization.yaml", "resources: [../base]\n"),
                (
                    "base/kustomization.yaml",
                    "resources: [https://example.com/x.yaml]\n",
                ),
            ],
            "app",
        );
        assert!(
            message.starts_with("base/kustomization.yaml: resources[0]"),
            "{message}"
        );
    }

    #[test]
    fn helm_inflation_is_refused_with_what_to_do() {
        let message = refused(
            &[(
                "kustomization.yaml",
                "helmCharts:\n- name: podinfo\n  repo: https://x\n",
            )],
            "",
        );
        assert!(message.contains("render: helm"), "{message}");
    }

    #[test]
    fn a_folder_without_a_kustomization_is_named() {
        let message = refused(
            &[
                ("a/kustomization.yaml", "resources: [../b]\n"),
                ("b/x.yaml", ""),
            ],
            "a",
        );
        assert_eq!(
            message,
            "b: no kustomization.yaml, kustomization.yml or Kustomization file"
        );
    }
}
