//! Globs over normalised repository ids, as the config gives them to agents and webhook secrets.
//! They match in any letter case, as the hub's fan-out and store do (ids differing only in case
//! name one repository: forges treat owner and repository names so).

use globset::{Glob, GlobBuilder, GlobMatcher};
use tether_protocol::RepoId;

/// A set of globs over normalised repository ids. `*` stays within one path segment; `**` crosses them.
#[derive(Debug, Clone)]
pub struct RepoGlobs {
    patterns: Vec<String>,
    matchers: Vec<GlobMatcher>,
}

impl RepoGlobs {
    /// Compile globs; the error names the first bad pattern.
    pub fn new(patterns: &[String]) -> Result<Self, (String, globset::Error)> {
        let mut matchers = Vec::with_capacity(patterns.len());
        for p in patterns {
            let glob: Glob = GlobBuilder::new(p)
                .literal_separator(true)
                .case_insensitive(true)
                .build()
                .map_err(|e| (p.clone(), e))?;
            matchers.push(glob.compile_matcher());
        }
        Ok(Self {
            patterns: patterns.to_vec(),
            matchers,
        })
    }

    /// Globs that match nothing.
    pub(crate) fn none() -> Self {
        Self {
            patterns: Vec::new(),
            matchers: Vec::new(),
        }
    }

    /// Whether any glob matches the repository.
    pub fn matches(&self, repo: &RepoId) -> bool {
        self.matchers.iter().any(|m| m.is_match(repo.as_str()))
    }

    /// The patterns as written.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn single_star_stays_in_one_segment() {
        let g = RepoGlobs::new(&["github.com/acme/*".to_string()]).unwrap();
        let id = |s: &str| tether_protocol::normalize(s).unwrap();
        assert!(g.matches(&id("github.com/acme/app")));
        assert!(!g.matches(&id("github.com/acme/sub/app")));
        assert!(!g.matches(&id("github.com/other/app")));
        // Letter case does not separate repositories.
        assert!(g.matches(&id("https://GitHub.com/ACME/App")));
        let upper = RepoGlobs::new(&["github.com/Acme/*".to_string()]).unwrap();
        assert!(upper.matches(&id("github.com/acme/app")));
        let all = RepoGlobs::new(&["**".to_string()]).unwrap();
        assert!(all.matches(&id("gitlab.com:2222/group/name")));
    }
}
