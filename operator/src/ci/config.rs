//! The CI access file (`--ci-access FILE`): which bearer tokens are accepted and whom each one
//! is, checked whole at start-up so that a mistake stops the operator with every problem named.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Whom a CI request acts as: the API server sees this user and these groups (impersonated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The entry's name in the file: for logs and metrics only.
    pub name: String,
    /// The impersonated user.
    pub user: String,
    /// The impersonated groups.
    pub groups: Vec<String>,
}

/// A static token, known by its SHA-256 only.
#[derive(Debug, Clone)]
pub struct StaticToken {
    pub sha256: [u8; 32],
    pub identity: Identity,
}

/// Bounds on what CI clients may hold at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLimits {
    /// Requests (a watch, an upgraded connection, any call) in flight at once per identity; 429
    /// above it.
    pub max_requests_per_identity: usize,
}

impl Default for AccessLimits {
    fn default() -> Self {
        Self {
            max_requests_per_identity: 256,
        }
    }
}

/// The checked file.
#[derive(Debug, Clone)]
pub struct AccessConfig {
    pub tokens: Vec<StaticToken>,
    pub limits: AccessLimits,
}

/// Why the file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AccessConfigError {
    /// It could not be read.
    #[error("CI access file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// It is not the expected YAML.
    #[error("CI access file {}: {reason}", path.display())]
    Parse { path: PathBuf, reason: String },
    /// Its fields are wrong; every problem is listed.
    #[error("CI access file {}:\n  {}", path.display(), problems.join("\n  "))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccess {
    #[serde(default)]
    tokens: Vec<RawToken>,
    #[serde(default)]
    oidc: Vec<serde_yaml_ng::Value>,
    #[serde(default)]
    limits: RawLimits,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    name: String,
    sha256: String,
    user: String,
    #[serde(default)]
    groups: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_requests_per_identity: Option<usize>,
}

/// The group the API server lets do anything: no CI identity may claim it.
const MASTERS: &str = "system:masters";

impl AccessConfig {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Self, AccessConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| AccessConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Checks the file's `text`; `path` names it in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, AccessConfigError> {
        let raw: RawAccess =
            serde_yaml_ng::from_str(text).map_err(|e| AccessConfigError::Parse {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        let mut problems = Vec::new();
        if !raw.oidc.is_empty() {
            problems.push(
                "oidc: OIDC issuers are not supported by this version; use tokens".to_string(),
            );
        }
        let mut names = HashSet::new();
        let mut hashes: Vec<([u8; 32], usize)> = Vec::new();
        let mut tokens = Vec::new();
        for (i, t) in raw.tokens.into_iter().enumerate() {
            let field = format!("tokens[{i}]");
            if !valid_name(&t.name) {
                problems.push(format!(
                    "{field}.name: {:?} must be 1 to 63 letters, digits, '-', '_' or '.' (it labels metrics)",
                    t.name
                ));
            } else if !names.insert(t.name.clone()) {
                problems.push(format!("{field}.name: {:?} is used twice", t.name));
            }
            let sha256 = match parse_sha256(&t.sha256) {
                Some(h) => h,
                None => {
                    problems.push(format!(
                        "{field}.sha256: must be 64 hex digits, the SHA-256 of the token (printf %s \"$TOKEN\" | sha256sum)"
                    ));
                    [0; 32]
                }
            };
            if let Some((_, first)) = hashes.iter().find(|(h, _)| *h == sha256 && *h != [0; 32]) {
                problems.push(format!(
                    "{field}.sha256: the same token as tokens[{first}]; one token maps to one identity"
                ));
            }
            hashes.push((sha256, i));
            check_subject(&mut problems, &field, &t.user, &t.groups);
            tokens.push(StaticToken {
                sha256,
                identity: Identity {
                    name: t.name,
                    user: t.user,
                    groups: t.groups,
                },
            });
        }
        if tokens.is_empty() && problems.is_empty() {
            problems.push("tokens: none configured; CI access would admit nobody".to_string());
        }
        let defaults = AccessLimits::default();
        let limits = AccessLimits {
            max_requests_per_identity: match raw.limits.max_requests_per_identity {
                Some(0) => {
                    problems.push(
                        "limits.max_requests_per_identity: must be greater than zero".to_string(),
                    );
                    defaults.max_requests_per_identity
                }
                Some(n) => n,
                None => defaults.max_requests_per_identity,
            },
        };
        if !problems.is_empty() {
            return Err(AccessConfigError::Invalid {
                path: path.to_path_buf(),
                problems,
            });
        }
        Ok(Self { tokens, limits })
    }

    /// Every user and group the file names, for the RBAC that lets the operator impersonate them.
    pub fn subjects(&self) -> (Vec<&str>, Vec<&str>) {
        let mut users: Vec<&str> = self
            .tokens
            .iter()
            .map(|t| t.identity.user.as_str())
            .collect();
        let mut groups: Vec<&str> = self
            .tokens
            .iter()
            .flat_map(|t| t.identity.groups.iter().map(String::as_str))
            .collect();
        users.sort_unstable();
        users.dedup();
        groups.sort_unstable();
        groups.dedup();
        (users, groups)
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn parse_sha256(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

/// A user and groups that can go in `Impersonate-*` headers, and no `system:masters`.
fn check_subject(problems: &mut Vec<String>, field: &str, user: &str, groups: &[String]) {
    let printable = |s: &str| !s.is_empty() && s.chars().all(|c| (' '..='~').contains(&c));
    if !printable(user) || user.trim() != user {
        problems.push(format!(
            "{field}.user: {user:?} must be a non-empty name of printable ASCII, without surrounding spaces"
        ));
    }
    for (j, g) in groups.iter().enumerate() {
        if !printable(g) || g.trim() != g {
            problems.push(format!(
                "{field}.groups[{j}]: {g:?} must be a non-empty name of printable ASCII, without surrounding spaces"
            ));
        } else if g == MASTERS {
            problems.push(format!(
                "{field}.groups[{j}]: {MASTERS} bypasses RBAC and is never granted to CI; grant the rights with RBAC instead"
            ));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn parse(text: &str) -> Result<AccessConfig, AccessConfigError> {
        AccessConfig::parse(Path::new("ci.yaml"), text)
    }

    #[test]
    fn a_token_maps_to_its_identity() {
        let config = parse(&format!(
            "tokens:\n  - name: deployer\n    sha256: \"{HASH}\"\n    user: ci-deployer\n    groups: [\"tether:ci\"]\n"
        ))
        .unwrap();
        assert_eq!(config.tokens.len(), 1);
        assert_eq!(config.tokens[0].identity.user, "ci-deployer");
        assert_eq!(config.tokens[0].identity.groups, ["tether:ci"]);
        assert_eq!(config.limits, AccessLimits::default());
        let (users, groups) = config.subjects();
        assert_eq!((users, groups), (vec!["ci-deployer"], vec!["tether:ci"]));
    }

    #[test]
    fn every_problem_is_named_with_its_field() {
        let err = parse(&format!(
            "tokens:\n  - name: a\n    sha256: \"abc\"\n    user: \"\"\n  - name: a\n    sha256: \"{HASH}\"\n    user: u\n    groups: [system:masters]\n  - name: \"bad name\"\n    sha256: \"{HASH}\"\n    user: v\nlimits:\n  max_requests_per_identity: 0\n"
        ))
        .unwrap_err()
        .to_string();
        for part in [
            "ci.yaml",
            "tokens[0].sha256: must be 64 hex digits",
            "tokens[0].user",
            "tokens[1].name: \"a\" is used twice",
            "tokens[1].groups[0]: system:masters",
            "tokens[2].name",
            "tokens[2].sha256: the same token as tokens[1]",
            "limits.max_requests_per_identity",
        ] {
            assert!(err.contains(part), "{part:?} missing from:\n{err}");
        }
    }

    #[test]
    fn unknown_fields_and_empty_files_are_refused() {
        let err = parse("tokens: []\nsecrets: 1\n").unwrap_err().to_string();
        assert!(err.contains("unknown field `secrets`"), "{err}");
        let err = parse("tokens: []\n").unwrap_err().to_string();
        assert!(err.contains("admit nobody"), "{err}");
    }
}
