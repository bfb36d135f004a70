//! The headers that cross the tunnel: both ends forward an HTTP/1.1 message, so both drop the
//! headers that belong to one hop and keep an upgrade's.

use http::{HeaderMap, HeaderValue, header};

/// Headers that belong to one hop and never cross (RFC 9110, 7.6.1), besides those the
/// `Connection` header names. `upgrade` is put back for an upgrade.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Whether the message asks to switch protocols (`Connection: upgrade` with an `Upgrade` header).
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// The end-to-end headers of `headers`; for an upgrade, `Connection: upgrade` and its `Upgrade`.
pub fn end_to_end(headers: &HeaderMap, upgrading: bool) -> HeaderMap {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let n = name.as_str();
        if HOP_BY_HOP.contains(&n) || named.iter().any(|c| c == n) {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    if upgrading && let Some(upgrade) = headers.get(header::UPGRADE) {
        out.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        out.insert(header::UPGRADE, upgrade.clone());
    }
    out
}
