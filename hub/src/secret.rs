//! Secrets: a value whose `Debug` shows nothing, and where one comes from (a file or an environment
//! variable, read once at start-up, never inline in the config file).

use std::fmt;
use std::path::PathBuf;

/// A secret value. Its `Debug` shows nothing of it, so it cannot leak into a log by accident.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wrap secret bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }

    /// The secret bytes, for verification only.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Where secrets and the environment come from; tests substitute their own.
pub trait Environment {
    /// The value of an environment variable.
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy)]
pub struct ProcessEnv;

impl Environment for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

/// Where one secret is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// A file (already resolved against the config file's directory); a trailing newline is dropped.
    File(PathBuf),
    /// An environment variable; a trailing newline is dropped.
    Env(String),
}

/// Why a secret could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The variable is not set.
    #[error("environment variable {name} is not set")]
    Env {
        /// The variable.
        name: String,
    },
}

impl SecretSource {
    /// The config field that names this source, below `secret`: `file` or `env`.
    pub fn field(&self) -> &'static str {
        match self {
            SecretSource::File(_) => "file",
            SecretSource::Env(_) => "env",
        }
    }

    /// Read the secret.
    pub fn read(&self, env: &dyn Environment) -> Result<Secret, SecretError> {
        match self {
            SecretSource::File(path) => std::fs::read(path)
                .map(|bytes| Secret::new(trim_newline(bytes)))
                .map_err(|source| SecretError::File {
                    path: path.clone(),
                    source,
                }),
            SecretSource::Env(name) => env
                .var(name)
                .map(|v| Secret::new(v.trim_end_matches(['\r', '\n']).as_bytes()))
                .ok_or_else(|| SecretError::Env { name: name.clone() }),
        }
    }
}

fn trim_newline(mut bytes: Vec<u8>) -> Vec<u8> {
    while matches!(bytes.last(), Some(b'\n' | b'\r')) {
        bytes.pop();
    }
    bytes
}

/// The first of `items` whose token hash (`hash_of`) is the SHA-256 of `token`. Every hash is
/// compared, in constant time, whichever matches: how long it takes says nothing of which did.
pub(crate) fn by_token_hash<'a, T>(
    items: &'a [T],
    token: &str,
    hash_of: impl Fn(&T) -> &[u8; 32],
) -> Option<&'a T> {
    use sha2::Digest as _;
    use subtle::ConstantTimeEq as _;
    let token = token.trim();
    if token.is_empty() {
        return None;
    }
    let hash = sha2::Sha256::digest(token.as_bytes());
    let mut found = None;
    for item in items {
        let equal = bool::from(hash_of(item).as_slice().ct_eq(hash.as_slice()));
        if equal && found.is_none() {
            found = Some(item);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_nothing_of_the_value() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "Secret(***)");
    }
}
