//! The CI access file (`--ci-access FILE`): which bearer tokens are accepted and whom each one
//! is (static tokens by their hash, OIDC ID tokens by their issuer and claims), checked whole at
//! start-up so that a mistake stops the operator with every problem named.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobMatcher};
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

/// An OIDC issuer whose ID tokens are accepted, and the rules that map their claims.
#[derive(Debug, Clone)]
pub struct OidcIssuer {
    /// For logs and metrics: the entry's `name`, or the issuer's host.
    pub name: String,
    /// The issuer URL, compared exactly with the token's `iss` and the discovery document's.
    pub issuer: String,
    /// The `aud` a token must carry.
    pub audience: String,
    /// The extra CA (PEM) that signs the issuer's TLS certificate, besides the system roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Checked in order; the first whose claims all match maps the token.
    pub rules: Vec<ClaimRule>,
}

/// One rule of an issuer: the claims a token must have, and whom it then acts as.
#[derive(Debug, Clone)]
pub struct ClaimRule {
    /// The identity's name for logs, metrics and limits: `oidc:<issuer name>:<rule index>`.
    pub identity_name: String,
    /// Claim name and the glob its value must match; every one must.
    pub claims: Vec<(String, ClaimPattern)>,
    /// The impersonated user, `{claim}` replaced by the claim's value.
    pub user: Template,
    /// The impersonated groups, each one template giving one group.
    pub groups: Vec<Template>,
}

/// A glob over a claim's value: `*` stays within one `/`-separated segment, `**` crosses them,
/// as in the hub's repository globs.
#[derive(Debug, Clone)]
pub struct ClaimPattern {
    /// As written.
    pub pattern: String,
    matcher: GlobMatcher,
}

impl ClaimPattern {
    fn new(pattern: &str) -> Result<Self, globset::Error> {
        let glob = GlobBuilder::new(pattern).literal_separator(true).build()?;
        Ok(Self {
            pattern: pattern.to_string(),
            matcher: glob.compile_matcher(),
        })
    }

    /// Whether `value` matches.
    pub fn matches(&self, value: &str) -> bool {
        self.matcher.is_match(value)
    }

    /// Whether the pattern matches any value: it has no character of its own to pin.
    fn is_wildcard_only(&self) -> bool {
        self.pattern.chars().all(|c| matches!(c, '*' | '?'))
    }
}

/// A user or group name with `{claim}` placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// As written.
    pub text: String,
    pub parts: Vec<TemplatePart>,
}

/// A piece of a [`Template`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePart {
    Literal(String),
    /// A claim's value, taken whole as one literal string.
    Claim(String),
}

impl Template {
    /// Parses `text`; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(at) = rest.find(['{', '}']) {
            literal.push_str(&rest[..at]);
            if rest[at..].starts_with('}') {
                return Err("a '}' closes no '{'".to_string());
            }
            let after = &rest[at + 1..];
            let Some(end) = after.find('}') else {
                return Err("a '{' is never closed".to_string());
            };
            let claim = &after[..end];
            if !valid_claim_name(claim) {
                return Err(format!(
                    "{{{claim}}} must name a claim: letters, digits, '_', '-' or '.'"
                ));
            }
            if !literal.is_empty() {
                parts.push(TemplatePart::Literal(std::mem::take(&mut literal)));
            }
            parts.push(TemplatePart::Claim(claim.to_string()));
            rest = &after[end + 1..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(TemplatePart::Literal(literal));
        }
        Ok(Self {
            text: text.to_string(),
            parts,
        })
    }

    /// Whether any part is a claim.
    pub fn is_templated(&self) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p, TemplatePart::Claim(_)))
    }
}

/// The checked file.
#[derive(Debug, Clone)]
pub struct AccessConfig {
    pub tokens: Vec<StaticToken>,
    pub oidc: Vec<OidcIssuer>,
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
    oidc: Vec<RawIssuer>,
    #[serde(default)]
    limits: RawLimits,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIssuer {
    issuer: String,
    audience: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    rules: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(default)]
    claims: BTreeMap<String, serde_yaml_ng::Value>,
    user: String,
    #[serde(default)]
    groups: Vec<String>,
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
pub(crate) const MASTERS: &str = "system:masters";

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
        let oidc = check_issuers(&mut problems, path, raw.oidc);
        if tokens.is_empty() && oidc.is_empty() && problems.is_empty() {
            problems
                .push("tokens, oidc: none configured; CI access would admit nobody".to_string());
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
        Ok(Self {
            tokens,
            oidc,
            limits,
        })
    }

    /// Every user and group the file names, for the RBAC that lets the operator impersonate them;
    /// an OIDC rule's templates as written (`github:{repository}`).
    pub fn subjects(&self) -> (Vec<&str>, Vec<&str>) {
        let rules = || self.oidc.iter().flat_map(|i| i.rules.iter());
        let mut users: Vec<&str> = self
            .tokens
            .iter()
            .map(|t| t.identity.user.as_str())
            .chain(rules().map(|r| r.user.text.as_str()))
            .collect();
        let mut groups: Vec<&str> = self
            .tokens
            .iter()
            .flat_map(|t| t.identity.groups.iter().map(String::as_str))
            .chain(rules().flat_map(|r| r.groups.iter().map(|g| g.text.as_str())))
            .collect();
        users.sort_unstable();
        users.dedup();
        groups.sort_unstable();
        groups.dedup();
        (users, groups)
    }

    /// The name of every identity the file can map to (tokens and OIDC rules), each once.
    pub fn identity_names(&self) -> impl Iterator<Item = &str> {
        self.tokens.iter().map(|t| t.identity.name.as_str()).chain(
            self.oidc
                .iter()
                .flat_map(|i| i.rules.iter().map(|r| r.identity_name.as_str())),
        )
    }
}

/// Checks the `oidc:` entries, adding each problem with its field path.
fn check_issuers(problems: &mut Vec<String>, path: &Path, raw: Vec<RawIssuer>) -> Vec<OidcIssuer> {
    let mut out = Vec::new();
    let mut names = HashSet::new();
    let mut urls = HashSet::new();
    for (i, entry) in raw.into_iter().enumerate() {
        let field = format!("oidc[{i}]");
        let host = match issuer_host(&entry.issuer) {
            Ok(host) => Some(host),
            Err(why) => {
                problems.push(format!("{field}.issuer: {:?} {why}", entry.issuer));
                None
            }
        };
        if !urls.insert(entry.issuer.clone()) {
            problems.push(format!(
                "{field}.issuer: {:?} is listed twice; give one entry all its rules",
                entry.issuer
            ));
        }
        let name = match (&entry.name, &host) {
            (Some(name), _) => {
                if !valid_name(name) {
                    problems.push(format!(
                        "{field}.name: {name:?} must be 1 to 63 letters, digits, '-', '_' or '.' (it labels metrics)"
                    ));
                }
                name.clone()
            }
            (None, Some(host)) if valid_name(host) => host.clone(),
            (None, Some(host)) => {
                problems.push(format!(
                    "{field}.name: needed, since the issuer's host {host:?} cannot label metrics; give 1 to 63 letters, digits, '-', '_' or '.'"
                ));
                host.clone()
            }
            (None, None) => String::new(),
        };
        if !name.is_empty() && !names.insert(name.clone()) {
            problems.push(format!(
                "{field}.name: {name:?} is used by another issuer; give each a name of its own"
            ));
        }
        if !printable(&entry.audience) {
            problems.push(format!(
                "{field}.audience: {:?} must be the non-empty audience the CI job requests its token for (printable ASCII)",
                entry.audience
            ));
        }
        let ca_pem = entry
            .ca_file
            .as_ref()
            .and_then(|file| match read_ca(path, file) {
                Ok(pem) => Some(pem),
                Err(why) => {
                    problems.push(format!("{field}.ca_file: {}: {why}", file.display()));
                    None
                }
            });
        if entry.rules.is_empty() {
            problems.push(format!(
                "{field}.rules: none given; an issuer without rules admits nobody"
            ));
        }
        let mut rules = Vec::new();
        for (j, rule) in entry.rules.into_iter().enumerate() {
            let field = format!("{field}.rules[{j}]");
            rules.push(check_rule(problems, &field, &name, j, rule));
        }
        out.push(OidcIssuer {
            name,
            issuer: entry.issuer,
            audience: entry.audience,
            ca_pem,
            rules,
        });
    }
    out
}

fn check_rule(
    problems: &mut Vec<String>,
    field: &str,
    issuer_name: &str,
    index: usize,
    raw: RawRule,
) -> ClaimRule {
    if raw.claims.is_empty() {
        problems.push(format!(
            "{field}.claims: none given; a rule must pin claims (an issuer such as GitHub's signs tokens for every repository it hosts)"
        ));
    }
    let mut claims = Vec::new();
    for (claim, value) in raw.claims {
        let at = format!("{field}.claims.{claim}");
        if !valid_claim_name(&claim) {
            problems.push(format!(
                "{at}: the claim name must be letters, digits, '_', '-' or '.'"
            ));
        }
        let text = match value {
            serde_yaml_ng::Value::String(s) => s,
            serde_yaml_ng::Value::Bool(b) => b.to_string(),
            serde_yaml_ng::Value::Number(n) => n.to_string(),
            _ => {
                problems.push(format!(
                    "{at}: must be a string (a glob over the claim's value)"
                ));
                continue;
            }
        };
        match ClaimPattern::new(&text) {
            Ok(pattern) => claims.push((claim, pattern)),
            Err(e) => problems.push(format!("{at}: {text:?} is not a glob: {e}")),
        }
    }
    if !claims.is_empty() && claims.iter().all(|(_, p)| p.is_wildcard_only()) {
        problems.push(format!(
            "{field}.claims: every pattern matches any value; pin at least one claim to a value"
        ));
    }
    let mut template = |at: String, text: &str| match Template::parse(text) {
        Ok(t) => Some(t),
        Err(why) => {
            problems.push(format!("{at}: {text:?}: {why}"));
            None
        }
    };
    let user = template(format!("{field}.user"), &raw.user);
    let groups: Vec<Option<Template>> = raw
        .groups
        .iter()
        .enumerate()
        .map(|(k, g)| template(format!("{field}.groups[{k}]"), g))
        .collect();
    check_subject(problems, field, &raw.user, &raw.groups);
    ClaimRule {
        identity_name: format!("oidc:{issuer_name}:{index}"),
        claims,
        user: user.unwrap_or_else(|| Template {
            text: raw.user.clone(),
            parts: Vec::new(),
        }),
        groups: groups.into_iter().flatten().collect(),
    }
}

/// The host of an `https://` issuer URL, or why it is not one.
fn issuer_host(url: &str) -> Result<String, &'static str> {
    let parts = tether_protocol::url::Url::split(url);
    if !parts
        .scheme
        .is_some_and(|s| s.eq_ignore_ascii_case("https"))
    {
        return Err("must be an https:// URL, exactly as the issuer's tokens give it in iss");
    }
    if parts.userinfo.is_some() || parts.path.contains(['?', '#']) {
        return Err("must have no user info, query or fragment");
    }
    let (host, _) = parts
        .host_port()
        .map_err(|_| "has an invalid host or port")?;
    if host.is_empty() {
        return Err("has no host");
    }
    Ok(tether_protocol::url::unbracket(host).to_ascii_lowercase())
}

/// The PEM certificates of `file` (relative to the access file's folder when not absolute).
fn read_ca(access_file: &Path, file: &Path) -> Result<Vec<u8>, String> {
    let full = if file.is_absolute() {
        file.to_path_buf()
    } else {
        access_file
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join(file)
    };
    let pem = std::fs::read(&full).map_err(|e| e.to_string())?;
    let mut found = 0;
    for cert in rustls_pemfile::certs(&mut &pem[..]) {
        cert.map_err(|e| format!("cannot read PEM: {e}"))?;
        found += 1;
    }
    if found == 0 {
        return Err("no CERTIFICATE blocks found".to_string());
    }
    Ok(pem)
}

/// A claim name: the key of a top-level claim of the token.
fn valid_claim_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Non-empty printable ASCII without surrounding spaces: what an `Impersonate-*` header can carry.
pub(crate) fn printable(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| (' '..='~').contains(&c)) && s.trim() == s
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
    if !printable(user) {
        problems.push(format!(
            "{field}.user: {user:?} must be a non-empty name of printable ASCII, without surrounding spaces"
        ));
    }
    for (j, g) in groups.iter().enumerate() {
        if !printable(g) {
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

    #[test]
    fn an_oidc_issuer_maps_claims_through_its_rules() {
        let config = parse(
            "oidc:\n  - issuer: https://gitlab.example.com\n    audience: tether\n    rules:\n      - claims: { project_path: \"acme/*\", ref_protected: true }\n        user: \"gitlab:{project_path}\"\n        groups: [deployers]\n",
        )
        .unwrap();
        let issuer = &config.oidc[0];
        assert_eq!(issuer.name, "gitlab.example.com");
        let rule = &issuer.rules[0];
        assert_eq!(rule.identity_name, "oidc:gitlab.example.com:0");
        let (name, pattern) = &rule.claims[1];
        assert_eq!(
            (name.as_str(), pattern.pattern.as_str()),
            ("ref_protected", "true")
        );
        assert_eq!(
            rule.user.parts,
            [
                TemplatePart::Literal("gitlab:".into()),
                TemplatePart::Claim("project_path".into())
            ]
        );
        assert_eq!(
            config.identity_names().collect::<Vec<_>>(),
            ["oidc:gitlab.example.com:0"]
        );
        let (users, groups) = config.subjects();
        assert_eq!(
            (users, groups),
            (vec!["gitlab:{project_path}"], vec!["deployers"])
        );
    }

    #[test]
    fn templates_are_parsed_or_refused_with_the_reason() {
        let t = Template::parse("ci:{repository}:{ref}").unwrap();
        assert_eq!(t.parts.len(), 4);
        assert!(t.is_templated());
        assert!(!Template::parse("plain").unwrap().is_templated());
        for (text, why) in [
            ("a{b", "never closed"),
            ("a}b", "closes no"),
            ("{}", "must name a claim"),
            ("{a b}", "must name a claim"),
        ] {
            let err = Template::parse(text).unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn every_oidc_problem_is_named_with_its_field() {
        let err = parse(
            "oidc:\n  - issuer: http://plain.example.com\n    audience: \"\"\n    rules: []\n  - issuer: https://a.example.com\n    audience: tether\n    ca_file: /no/such/ca.pem\n    rules:\n      - claims: {}\n        user: \"{unclosed\"\n      - claims: { repository: \"*\" }\n        user: u\n        groups: [system:masters]\n      - claims: { repository: \"a/[\" }\n        user: u\n  - issuer: https://a.example.com\n    audience: tether\n    rules:\n      - claims: { repository: acme/app }\n        user: u\n",
        )
        .unwrap_err()
        .to_string();
        for part in [
            "oidc[0].issuer: \"http://plain.example.com\" must be an https:// URL",
            "oidc[0].audience",
            "oidc[0].rules: none given",
            "oidc[1].ca_file: /no/such/ca.pem",
            "oidc[1].rules[0].claims: none given",
            "oidc[1].rules[0].user: \"{unclosed\": a '{' is never closed",
            "oidc[1].rules[1].claims: every pattern matches any value",
            "oidc[1].rules[1].groups[0]: system:masters",
            "oidc[1].rules[2].claims.repository: \"a/[\" is not a glob",
            "oidc[2].issuer: \"https://a.example.com\" is listed twice",
            "oidc[2].name: \"a.example.com\" is used by another issuer",
        ] {
            assert!(err.contains(part), "{part:?} missing from:\n{err}");
        }
    }
}
