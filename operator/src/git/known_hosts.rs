//! A small reader for OpenSSH `known_hosts` text, enough to check a server's host key.
//!
//! Supported: plain host patterns with `*` and `?` wildcards, negated patterns (`!host`),
//! `[host]:port` for non-default ports, several patterns per line, and hashed entries
//! (`|1|<salt>|<HMAC-SHA1 of the name>`, as `ssh-keyscan -H` and `HashKnownHosts yes` write them).
//! Left out, and skipped when met: the `@cert-authority` and `@revoked` markers.

use base64::Engine;
use hmac::{Hmac, Mac};

/// One usable line of a `known_hosts` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownHost {
    hosts: Hosts,
    /// The key type, e.g. `ssh-ed25519`.
    pub key_type: String,
    /// The public key in SSH wire format (the base64 of the file, decoded).
    pub key: Vec<u8>,
}

/// The hosts a line is for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Hosts {
    /// Comma-separated patterns, as written.
    Patterns(Vec<String>),
    /// One name, hashed: HMAC-SHA1 under `salt` of `host` or `[host]:port`.
    Hashed { salt: Vec<u8>, hash: Vec<u8> },
}

/// Parses `known_hosts` text, skipping comments, blank lines and entries this reader does not
/// support.
pub fn parse(text: &str) -> Vec<KnownHost> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with('@') {
                return None;
            }
            let mut fields = line.split_whitespace();
            let hosts = fields.next()?;
            let key_type = fields.next()?;
            let key = fields.next()?;
            let hosts = match hosts.strip_prefix("|1|") {
                Some(hashed) => {
                    let (salt, hash) = hashed.split_once('|')?;
                    let b64 = &base64::engine::general_purpose::STANDARD;
                    Hosts::Hashed {
                        salt: b64.decode(salt).ok()?,
                        hash: b64.decode(hash).ok()?,
                    }
                }
                // Another hash scheme: none exists in OpenSSH today.
                None if hosts.starts_with('|') => return None,
                None => Hosts::Patterns(hosts.split(',').map(str::to_owned).collect()),
            };
            let key = base64::engine::general_purpose::STANDARD.decode(key).ok()?;
            Some(KnownHost {
                hosts,
                key_type: key_type.to_owned(),
                key,
            })
        })
        .collect()
}

/// The name under which `known_hosts` lists a server: `host` on port 22, `[host]:port` otherwise.
pub fn host_entry_name(host: &str, port: Option<u16>) -> String {
    match port {
        Some(port) if port != 22 => format!("[{host}]:{port}"),
        _ => host.to_owned(),
    }
}

impl KnownHost {
    /// Whether this entry applies to `name` (as made by [`host_entry_name`]).
    pub fn matches(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        let patterns = match &self.hosts {
            Hosts::Hashed { salt, hash } => {
                let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(salt) else {
                    return false;
                };
                mac.update(name.as_bytes());
                return mac.verify_slice(hash).is_ok();
            }
            Hosts::Patterns(patterns) => patterns,
        };
        let mut matched = false;
        for pattern in patterns {
            let pattern = pattern.to_ascii_lowercase();
            if let Some(negated) = pattern.strip_prefix('!') {
                if wildcard_match(negated, &name) {
                    return false;
                }
            } else if wildcard_match(&pattern, &name) {
                matched = true;
            }
        }
        matched
    }
}

/// The result of checking a presented host key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKeyCheck {
    /// An entry for the host lists this key.
    Match,
    /// Entries for the host exist, but none with this key.
    Mismatch,
    /// No entry names the host.
    Unknown,
}

/// Checks the key a server presented against the entries.
pub fn check(entries: &[KnownHost], name: &str, key: &[u8]) -> HostKeyCheck {
    let mut seen = false;
    for entry in entries.iter().filter(|e| e.matches(name)) {
        seen = true;
        if entry.key == key {
            return HostKeyCheck::Match;
        }
    }
    if seen {
        HostKeyCheck::Mismatch
    } else {
        HostKeyCheck::Unknown
    }
}

/// Glob matching with `*` (any run) and `?` (one character), as OpenSSH does for host patterns.
fn wildcard_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(c) if *c == '?' || *c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
    const KEY_B: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIKEY0000000000000000000000000000000000000000";

    fn decoded(k: &str) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .decode(k)
            .expect("test key is base64")
    }

    #[test]
    fn parses_plain_entries_and_skips_what_it_cannot_use() {
        let text = format!(
            "# comment\n\n\
             github.com,140.82.112.3 ssh-ed25519 {KEY_A}\n\
             [127.0.0.1]:2222 ssh-ed25519 {KEY_B} test host\n\
             |2|c2FsdA==|aGFzaA== ssh-ed25519 {KEY_A}\n\
             |1|not base64|aGFzaA== ssh-ed25519 {KEY_A}\n\
             @cert-authority *.example.com ssh-ed25519 {KEY_A}\n\
             broken-line\n\
             host ssh-rsa !!!notbase64\n"
        );
        let entries = parse(&text);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].key_type, "ssh-ed25519");
        assert_eq!(entries[0].key, decoded(KEY_A));
        assert!(entries[0].matches("github.com"));
        assert!(entries[0].matches("140.82.112.3"));
        assert!(entries[1].matches("[127.0.0.1]:2222"));
        assert!(!entries[1].matches("127.0.0.1"));
    }

    /// Lines written by OpenSSH's `ssh-keygen -H` from `github.com ...` and `[127.0.0.1]:2222 ...`.
    #[test]
    fn hashed_entries_match_the_name_they_were_made_from() {
        let entries = parse(&format!(
            "|1|zdptJoDEtkW6jNFe4CH2LlF+ADw=|f86T87WdpmeyX+J9e6Mqs0xyEqg= ssh-ed25519 {KEY_A}\n\
             |1|o4Juoq2B0fgx7wR+6h8KwoyVcT4=|7/QA8Zq5dyJZgtC1eHzaNbORgMk= ssh-ed25519 {KEY_A}\n"
        ));
        assert_eq!(entries.len(), 2);
        assert!(entries[0].matches("github.com"));
        assert!(entries[0].matches("GitHub.com"));
        assert!(!entries[0].matches("gitlab.com"));
        assert!(entries[1].matches("[127.0.0.1]:2222"));
        assert!(!entries[1].matches("127.0.0.1"));
        assert_eq!(
            check(&entries, "github.com", &decoded(KEY_A)),
            HostKeyCheck::Match
        );
        assert_eq!(
            check(&entries, "github.com", &decoded(KEY_B)),
            HostKeyCheck::Mismatch
        );
    }

    #[test]
    fn non_default_ports_use_brackets() {
        assert_eq!(host_entry_name("127.0.0.1", Some(2222)), "[127.0.0.1]:2222");
        assert_eq!(host_entry_name("github.com", Some(22)), "github.com");
        assert_eq!(host_entry_name("github.com", None), "github.com");
    }

    #[test]
    fn wildcards_and_negation() {
        let entries = parse(&format!(
            "*.example.com,!bad.example.com ssh-ed25519 {KEY_A}\n"
        ));
        assert!(entries[0].matches("git.example.com"));
        assert!(entries[0].matches("GIT.Example.com"));
        assert!(!entries[0].matches("bad.example.com"));
        assert!(!entries[0].matches("example.org"));
        assert!(wildcard_match("git?.host", "git1.host"));
        assert!(!wildcard_match("git?.host", "git12.host"));
        assert!(wildcard_match("*", "anything"));
    }

    #[test]
    fn check_tells_match_mismatch_and_unknown_apart() {
        let entries = parse(&format!("[127.0.0.1]:2222 ssh-ed25519 {KEY_A}\n"));
        assert_eq!(
            check(&entries, "[127.0.0.1]:2222", &decoded(KEY_A)),
            HostKeyCheck::Match
        );
        assert_eq!(
            check(&entries, "[127.0.0.1]:2222", &decoded(KEY_B)),
            HostKeyCheck::Mismatch
        );
        assert_eq!(
            check(&entries, "[127.0.0.1]:2223", &decoded(KEY_A)),
            HostKeyCheck::Unknown
        );
    }
}
