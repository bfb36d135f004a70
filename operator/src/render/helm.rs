//! Helm: `helm template` of the chart at `spec.path`, with the values files and inline values of
//! `spec.helm`, its CRDs included and its hooks left out; the output split back into the templates
//! it came from, so that a message names the template.

use std::ffi::OsString;
use std::path::Path;

use super::RenderError;
use crate::crd::HelmSpec;

/// What `helm template` is run with, once the defaults are applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// `.Release.Name`.
    pub name: String,
    /// `.Release.Namespace`.
    pub namespace: String,
}

impl Release {
    /// The release for a GitRepository: `spec.helm.releaseName` or its name, `spec.helm.namespace`
    /// or its target namespace or its own.
    pub fn of(
        helm: Option<&HelmSpec>,
        owner_name: &str,
        owner_namespace: &str,
        target_namespace: Option<&str>,
    ) -> Self {
        Self {
            name: helm
                .and_then(|h| h.release_name.clone())
                .unwrap_or_else(|| owner_name.to_owned()),
            namespace: helm
                .and_then(|h| h.namespace.clone())
                .or_else(|| target_namespace.map(str::to_owned))
                .unwrap_or_else(|| owner_namespace.to_owned()),
        }
    }
}

/// The values files of `spec.helm`, each from the repository root: relative to the chart folder
/// `chart` and inside the repository, or an error naming the entry.
pub fn values_files(chart: &str, files: &[String]) -> Result<Vec<String>, RenderError> {
    files
        .iter()
        .enumerate()
        .map(|(i, file)| {
            let joined = if chart.is_empty() {
                file.clone()
            } else {
                format!("{chart}/{file}")
            };
            super::inside_repository(&joined).ok_or_else(|| {
                RenderError::Refused(format!(
                    "spec.helm.valuesFiles[{i}] {file:?} leads outside the repository; values \
                     files are read from inside it (relative to the chart's folder)"
                ))
            })
        })
        .collect()
}

/// The arguments of `helm template` for the chart at `chart` (from the checkout's root), with
/// `values` (files from the root, then the inline values' file) and the cluster's version.
pub fn template_args(
    release: &Release,
    chart: &str,
    values: &[String],
    inline_values: Option<&Path>,
    kube_version: Option<&str>,
) -> Vec<OsString> {
    let chart = if chart.is_empty() {
        "./".to_owned()
    } else {
        format!("./{chart}")
    };
    let mut args: Vec<OsString> = vec![
        "template".into(),
        release.name.clone().into(),
        chart.into(),
        "--namespace".into(),
        release.namespace.clone().into(),
        "--include-crds".into(),
        "--no-hooks".into(),
        "--skip-tests".into(),
    ];
    if let Some(version) = kube_version {
        args.push("--kube-version".into());
        args.push(version.into());
    }
    for file in values {
        args.push("--values".into());
        args.push(format!("./{file}").into());
    }
    if let Some(file) = inline_values {
        args.push("--values".into());
        args.push(file.into());
    }
    args
}

/// Splits `helm template`'s output at its document separators and groups the documents by the
/// template named in each one's `# Source:` line: `(label, documents)`, in the order the templates
/// first appear. `label` is `<chart> (helm template): <template>`.
pub fn split_by_source(chart: &str, output: &[u8]) -> Vec<(String, Vec<u8>)> {
    let text = String::from_utf8_lossy(output);
    let mut groups: Vec<(String, String)> = Vec::new();
    let mut current: Option<(String, String)> = None;
    let flush = |doc: Option<(String, String)>, groups: &mut Vec<(String, String)>| {
        let Some((source, body)) = doc else { return };
        if body.trim().is_empty() {
            return;
        }
        match groups.iter_mut().find(|(s, _)| *s == source) {
            Some((_, all)) => {
                all.push_str("---\n");
                all.push_str(&body);
            }
            None => groups.push((source, body)),
        }
    };
    for line in text.split_inclusive('\n') {
        if line.trim_end() == "---" {
            flush(current.take(), &mut groups);
            current = Some((String::new(), String::new()));
            continue;
        }
        let (source, body) = current.get_or_insert_with(Default::default);
        if source.is_empty()
            && body.trim().is_empty()
            && let Some(name) = line.trim_end().strip_prefix("# Source: ")
        {
            *source = name.to_owned();
        }
        body.push_str(line);
    }
    flush(current.take(), &mut groups);
    let chart = if chart.is_empty() { "." } else { chart };
    groups
        .into_iter()
        .map(|(source, body)| {
            let source = if source.is_empty() {
                "output".to_owned()
            } else {
                source
            };
            (
                format!("{chart} (helm template): {source}"),
                body.into_bytes(),
            )
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_release_defaults_to_the_gitrepository() {
        assert_eq!(
            Release::of(None, "web", "team-a", None),
            Release {
                name: "web".into(),
                namespace: "team-a".into()
            }
        );
        assert_eq!(
            Release::of(None, "web", "team-a", Some("apps")).namespace,
            "apps"
        );
        let helm = HelmSpec {
            release_name: Some("podinfo".into()),
            namespace: Some("prod".into()),
            ..Default::default()
        };
        assert_eq!(
            Release::of(Some(&helm), "web", "team-a", Some("apps")),
            Release {
                name: "podinfo".into(),
                namespace: "prod".into()
            }
        );
    }

    #[test]
    fn values_files_are_relative_to_the_chart_and_stay_inside() {
        assert_eq!(
            values_files(
                "charts/web",
                &["values-prod.yaml".into(), "../../env/prod.yaml".into()]
            )
            .unwrap(),
            ["charts/web/values-prod.yaml", "env/prod.yaml"]
        );
        let err = values_files("charts/web", &["../../../secret.yaml".into()]).unwrap_err();
        assert!(
            err.to_string().contains("spec.helm.valuesFiles[0]"),
            "{err}"
        );
    }

    #[test]
    fn the_output_is_grouped_by_template() {
        let out = b"---\n# Source: web/crds/crd.yaml\nkind: CustomResourceDefinition\n\
                    ---\n# Source: web/templates/cm.yaml\nkind: ConfigMap\nmetadata: {name: a}\n\
                    ---\n# Source: web/templates/cm.yaml\nkind: ConfigMap\nmetadata: {name: b}\n\
                    ---\n# Source: web/templates/empty.yaml\n\n";
        let groups = split_by_source("charts/web", out);
        let labels: Vec<&str> = groups.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(
            labels,
            [
                "charts/web (helm template): web/crds/crd.yaml",
                "charts/web (helm template): web/templates/cm.yaml",
                "charts/web (helm template): web/templates/empty.yaml",
            ]
        );
        let cm = String::from_utf8(groups[1].1.clone()).unwrap();
        assert_eq!(cm.matches("kind: ConfigMap").count(), 2);
        assert!(cm.contains("---\n"));
    }

    #[test]
    fn hooks_are_left_out_and_crds_kept() {
        let args = template_args(
            &Release {
                name: "r".into(),
                namespace: "n".into(),
            },
            "chart",
            &["chart/values-dev.yaml".into()],
            Some(Path::new("/scratch/values.json")),
            Some("v1.36.3"),
        );
        let args: Vec<String> = args.into_iter().map(|a| a.into_string().unwrap()).collect();
        for flag in ["--include-crds", "--no-hooks", "--skip-tests"] {
            assert!(args.iter().any(|a| a == flag), "{flag}");
        }
        assert_eq!(args[1..3], ["r", "./chart"]);
        let values: Vec<&String> = args.iter().skip_while(|a| *a != "--values").collect();
        assert_eq!(
            values,
            [
                "--values",
                "./chart/values-dev.yaml",
                "--values",
                "/scratch/values.json"
            ]
        );
    }
}
