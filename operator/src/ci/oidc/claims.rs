//! From a verified token's claims to an identity: the issuer's rules, matched by glob in order,
//! their `{claim}` templates filled with whole claim values.

use serde_json::{Map, Value};
use tracing::debug;

use super::Refusal;
use crate::ci::config::{
    ClaimRule, Identity, MASTERS, OidcIssuer, Template, TemplatePart, printable,
};

/// The longest user or group a template may render.
const MAX_NAME_BYTES: usize = 256;

/// The identity of the first rule of `issuer` whose claims all match; [`Refusal::NoRule`] if
/// none does.
pub fn map_claims(issuer: &OidcIssuer, claims: &Map<String, Value>) -> Result<Identity, Refusal> {
    for (i, rule) in issuer.rules.iter().enumerate() {
        match apply_rule(rule, claims) {
            Ok(Some(identity)) => return Ok(identity),
            Ok(None) => {}
            Err(why) => {
                debug!(issuer = %issuer.name, rule = i, why = %why, "an OIDC rule's claims match but it cannot map the token")
            }
        }
    }
    Err(Refusal::NoRule)
}

/// The identity `rule` maps `claims` to; `None` when its claims do not match; an error (why, in
/// words that repeat no claim value) when they match but a template cannot be filled safely.
pub fn apply_rule(
    rule: &ClaimRule,
    claims: &Map<String, Value>,
) -> Result<Option<Identity>, String> {
    let matches = rule
        .claims
        .iter()
        .all(|(name, pattern)| match claims.get(name) {
            Some(Value::Array(items)) => items
                .iter()
                .any(|item| scalar(item).is_some_and(|v| pattern.matches(&v))),
            Some(value) => scalar(value).is_some_and(|v| pattern.matches(&v)),
            None => false,
        });
    if !matches {
        return Ok(None);
    }
    let user = render(&rule.user, claims).map_err(|why| format!("user: {why}"))?;
    let mut groups = Vec::with_capacity(rule.groups.len());
    for (k, group) in rule.groups.iter().enumerate() {
        let group = render(group, claims).map_err(|why| format!("groups[{k}]: {why}"))?;
        if group == MASTERS {
            return Err(format!(
                "groups[{k}]: renders {MASTERS}, never granted to CI"
            ));
        }
        groups.push(group);
    }
    Ok(Some(Identity {
        name: rule.identity_name.clone(),
        user,
        groups,
    }))
}

/// A claim's value as one string: a string as it is, a number or boolean as JSON writes it.
fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `template` with each `{claim}` replaced by the claim's whole value, as one literal string: a
/// value with commas stays one name, and one that cannot be a header value (a newline, say) is
/// refused, as is a `system:` name the template's own text does not begin with.
pub fn render(template: &Template, claims: &Map<String, Value>) -> Result<String, String> {
    let mut out = String::new();
    for part in &template.parts {
        match part {
            TemplatePart::Literal(text) => out.push_str(text),
            TemplatePart::Claim(name) => {
                let value = claims.get(name).and_then(scalar).ok_or_else(|| {
                    format!("the token has no claim {name:?} with a single value")
                })?;
                out.push_str(&value);
            }
        }
    }
    if !printable(&out) || out.len() > MAX_NAME_BYTES {
        return Err(format!(
            "{:?} renders a name that is not 1 to {MAX_NAME_BYTES} printable ASCII characters",
            template.text
        ));
    }
    let own_prefix = match template.parts.first() {
        Some(TemplatePart::Literal(text)) => text.starts_with("system:"),
        _ => false,
    };
    if out.starts_with("system:") && !own_prefix {
        return Err(format!(
            "{:?} renders a system: name from a claim",
            template.text
        ));
    }
    Ok(out)
}
