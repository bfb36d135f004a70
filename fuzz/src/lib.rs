//! What the fuzz targets share: reading a fuzz input as a webhook delivery or as the files of a
//! commit, and the checks every webhook provider must pass.
//!
//! The inputs are plain text so that a seed can be written by hand and read by a person:
//! - a delivery is `name: value` header lines, a blank line, then the body, like an HTTP request
//!   without its request line; an input without a blank line is all body;
//! - a commit is files separated by NUL bytes, each `path\ncontent` when its first line names a
//!   `.yaml`, `.yml` or `.json` file, otherwise all content, named `deploy/<n>.yaml`.

use http::{HeaderMap, HeaderName, HeaderValue};
use tether_hub::secret::Secret;
use tether_hub::webhook::{Event, Provider, hmac_sha256_hex};
use tether_protocol::normalize;

/// The secret every webhook target verifies against.
pub const SECRET: &[u8] = b"fuzz-secret";

/// Splits a fuzz input into headers and body. Header lines that are not a valid name and value are
/// skipped, as a client could not have sent them.
pub fn delivery(data: &[u8]) -> (HeaderMap, &[u8]) {
    let Some(end) = find(data, b"\n\n") else {
        return (HeaderMap::new(), data);
    };
    let mut headers = HeaderMap::new();
    for line in data[..end].split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.trim_ascii()),
            HeaderValue::from_bytes(value),
        ) {
            headers.append(name, value);
        }
    }
    (headers, &data[end + 2..])
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The header that carries a valid signature or token for [`SECRET`] over `body`.
fn signed(provider: Provider, body: &[u8]) -> (&'static str, String) {
    let hex = hmac_sha256_hex(SECRET, body);
    let secret = String::from_utf8_lossy(SECRET).into_owned();
    match provider {
        Provider::Github => ("x-hub-signature-256", format!("sha256={hex}")),
        Provider::Gitlab => ("x-gitlab-token", secret),
        Provider::Gitea => ("x-gitea-signature", hex),
        Provider::Bitbucket => ("x-hub-signature", format!("sha256={hex}")),
        Provider::Azure => ("x-tether-token", secret),
        Provider::Generic => ("x-tether-signature", format!("sha256={hex}")),
    }
}

/// Runs one delivery through `provider` as the intake does (verify, parse, name the delivery) and
/// checks what must hold for any input:
/// - nothing panics;
/// - the same delivery with a valid signature added verifies, whatever else it carries;
/// - a push names at least one repository and one ref, every repository id is a fixed point of
///   [`normalize`], and every sha is 40 or 64 hex digits;
/// - what the hub echoes or stores (an ignored event's kind, the delivery id) stays bounded.
pub fn webhook(provider: Provider, data: &[u8]) {
    let (mut headers, body) = delivery(data);
    let secret = Secret::new(SECRET);
    let _ = provider.verify(&headers, body, &secret);

    let id = provider.delivery_id(&headers, body);
    assert!(
        id.len() <= provider.name().len() + 1 + 200,
        "delivery id of {} bytes",
        id.len()
    );

    match provider.parse(&headers, body) {
        Ok(Event::Push(push)) => {
            assert!(!push.repos.is_empty(), "a push without a repository");
            assert!(!push.updates.is_empty(), "a push without a ref");
            for repo in &push.repos {
                assert_eq!(
                    normalize(repo.as_str()).as_ref(),
                    Ok(repo),
                    "a repository id that normalises to another"
                );
            }
            for update in &push.updates {
                assert!(!update.git_ref.is_empty(), "an empty ref");
                assert!(
                    matches!(update.sha.len(), 40 | 64)
                        && update.sha.bytes().all(|b| b.is_ascii_hexdigit()),
                    "sha {:?}",
                    update.sha
                );
            }
        }
        Ok(Event::Ignored { kind }) => {
            assert!(kind.chars().count() <= 64, "an echoed kind of {kind:?}");
        }
        Ok(Event::Ping) | Err(_) => {}
    }

    let (name, value) = signed(provider, body);
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert(name, value);
        assert!(
            provider.verify(&headers, body, &secret),
            "a validly signed delivery did not verify"
        );
    }
}

/// Splits a fuzz input into the files of a commit (see the [crate](self) docs).
pub fn files(data: &[u8]) -> Vec<(String, Vec<u8>)> {
    data.split(|b| *b == 0)
        .enumerate()
        .map(|(i, chunk)| {
            let (first, rest) = match chunk.iter().position(|b| *b == b'\n') {
                Some(nl) => (&chunk[..nl], &chunk[nl + 1..]),
                None => (chunk, &[][..]),
            };
            match std::str::from_utf8(first) {
                Ok(path) if is_manifest_name(path) => (path.to_owned(), rest.to_vec()),
                _ => (format!("deploy/{i}.yaml"), chunk.to_vec()),
            }
        })
        .collect()
}

fn is_manifest_name(line: &str) -> bool {
    let lower = line.to_ascii_lowercase();
    line.len() < 200
        && !line.contains(':')
        && [".yaml", ".yml", ".json"]
            .iter()
            .any(|e| lower.ends_with(e))
}
