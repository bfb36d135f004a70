use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;

use super::keys::Plan;
use super::*;
use crate::ci::config::AccessConfig;

const ISSUER: &str = "https://token.actions.githubusercontent.com";

fn config(rules: &str) -> AccessConfig {
    let text = format!(
        "oidc:\n  - issuer: {ISSUER}\n    audience: tether\n    name: github\n    rules:\n{rules}"
    );
    AccessConfig::parse(Path::new("ci.yaml"), &text).unwrap()
}

fn issuer(rules: &str) -> OidcIssuer {
    config(rules).oidc.remove(0)
}

fn claims(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => panic!("not an object"),
    }
}

const MAIN_RULE: &str = "      - claims: { repository: \"acme/*\", ref: \"refs/heads/main\" }\n        user: \"github:{repository}\"\n        groups: [\"deployers\", \"repo:{repository}\"]\n";

#[test]
fn claims_are_matched_by_glob_and_the_first_matching_rule_wins() {
    let issuer = issuer(&format!(
        "{MAIN_RULE}      - claims: {{ repository: \"acme/**\" }}\n        user: readers\n"
    ));
    let main = claims(json!({"repository": "acme/app", "ref": "refs/heads/main"}));
    let identity = map_claims(&issuer, &main).unwrap();
    assert_eq!(identity.name, "oidc:github:0");
    assert_eq!(identity.user, "github:acme/app");
    assert_eq!(identity.groups, ["deployers", "repo:acme/app"]);

    // `*` stays within a segment; the second rule's `**` crosses them.
    let nested = claims(json!({"repository": "acme/team/app", "ref": "refs/heads/main"}));
    assert_eq!(map_claims(&issuer, &nested).unwrap().user, "readers");
    // Another branch falls to the second rule; another owner to none.
    let branch = claims(json!({"repository": "acme/app", "ref": "refs/heads/mainly"}));
    assert_eq!(map_claims(&issuer, &branch).unwrap().name, "oidc:github:1");
    let other = claims(json!({"repository": "acme-evil/app", "ref": "refs/heads/main"}));
    assert_eq!(map_claims(&issuer, &other), Err(Refusal::NoRule));
    // A missing claim matches nothing; a list matches if one of its items does.
    assert_eq!(
        map_claims(&issuer, &claims(json!({"ref": "refs/heads/main"}))),
        Err(Refusal::NoRule)
    );
    let listed = claims(json!({"repository": ["other/x", "acme/app"], "ref": "refs/heads/main"}));
    assert!(map_claims(&issuer, &listed).is_ok());
}

#[test]
fn a_claim_value_fills_one_name_and_cannot_widen_it() {
    let main = issuer(MAIN_RULE);
    // Commas stay inside the one group the template makes.
    let commas = claims(json!({"repository": "acme/a,system:masters", "ref": "refs/heads/main"}));
    let identity = map_claims(&main, &commas).unwrap();
    assert_eq!(identity.groups, ["deployers", "repo:acme/a,system:masters"]);
    // A newline cannot be a header value: the rule does not map.
    let newline =
        claims(json!({"repository": "acme/a\nImpersonate-Group: x", "ref": "refs/heads/main"}));
    assert_eq!(map_claims(&main, &newline), Err(Refusal::NoRule));
    let rule = &main.rules[0];
    assert!(
        apply_rule(rule, &newline)
            .unwrap_err()
            .contains("printable")
    );

    // A claim cannot make a system: name, nor system:masters.
    let bare = issuer(
        "      - claims: { sub: \"repo:acme/*\" }\n        user: \"{actor}\"\n        groups: [\"{team}\"]\n",
    );
    let system_user = claims(json!({"sub": "repo:acme/app", "actor": "system:admin", "team": "t"}));
    assert!(
        apply_rule(&bare.rules[0], &system_user)
            .unwrap_err()
            .contains("system:")
    );
    let masters = claims(json!({"sub": "repo:acme/app", "actor": "me", "team": "system:masters"}));
    assert!(
        apply_rule(&bare.rules[0], &masters)
            .unwrap_err()
            .contains("system:")
    );
    // A missing or structured claim in a template: no mapping.
    let missing = claims(json!({"sub": "repo:acme/app", "team": "t"}));
    assert!(
        apply_rule(&bare.rules[0], &missing)
            .unwrap_err()
            .contains("\"actor\"")
    );
    let object = claims(json!({"sub": "repo:acme/app", "actor": {"a": 1}, "team": "t"}));
    assert!(apply_rule(&bare.rules[0], &object).is_err());
    // Numbers and booleans render as JSON writes them.
    let numbers = claims(json!({"sub": "repo:acme/app", "actor": 42, "team": true}));
    let identity = apply_rule(&bare.rules[0], &numbers).unwrap().unwrap();
    assert_eq!(
        (identity.user.as_str(), identity.groups[0].as_str()),
        ("42", "true")
    );
}

#[test]
fn only_jwt_shaped_tokens_are_peeked() {
    let part = |v: Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let token = format!(
        "{}.{}.sig",
        part(json!({"alg": "RS256", "kid": "k1"})),
        part(json!({"iss": ISSUER}))
    );
    assert_eq!(
        peek(&token),
        Some(Peeked {
            alg: "RS256".into(),
            kid: Some("k1".into()),
            iss: Some(ISSUER.into())
        })
    );
    for not_jwt in [
        "a-static-token",
        "a.b.c",
        "a.b",
        &format!("{}.{}", part(json!({"alg": "RS256"})), part(json!({}))),
        &format!("{}.{}.s.x", part(json!({"alg": "RS256"})), part(json!({}))),
        &format!("{}.{}.s", part(json!({"typ": "JWT"})), part(json!({}))),
    ] {
        assert_eq!(peek(not_jwt), None, "{not_jwt}");
    }
}

fn key_set(kids: &[&str], fetched_at: Instant) -> KeySet {
    let keys = kids
        .iter()
        .map(|kid| VerifyKey {
            kid: Some(kid.to_string()),
            algorithms: vec![Algorithm::ES256],
            key: DecodingKey::from_ec_der(&[4; 65]),
        })
        .collect();
    KeySet::new(keys, fetched_at)
}

#[test]
fn unknown_key_ids_refetch_at_most_once_per_interval() {
    let t0 = Instant::now();
    let mut state = KeyState::default();
    assert!(matches!(
        state.plan(Some("k1"), Algorithm::ES256, t0),
        Plan::Fetch { refetch: false }
    ));
    state.record(Ok(key_set(&["k1"], t0)), false, t0);
    assert!(matches!(
        state.plan(Some("k1"), Algorithm::ES256, t0),
        Plan::Use(_)
    ));
    // The right id with another algorithm's header is refused, not refetched.
    assert!(matches!(
        state.plan(Some("k1"), Algorithm::RS256, t0),
        Plan::Refuse(Refusal::Algorithm)
    ));
    // An unknown id: one refetch, then none until the interval has passed.
    assert!(matches!(
        state.plan(Some("k2"), Algorithm::ES256, t0),
        Plan::Fetch { refetch: true }
    ));
    state.record(Ok(key_set(&["k1"], t0)), true, t0);
    let soon = t0 + REFETCH_INTERVAL / 2;
    assert!(matches!(
        state.plan(Some("k2"), Algorithm::ES256, soon),
        Plan::Refuse(Refusal::UnknownKid)
    ));
    let later = t0 + REFETCH_INTERVAL;
    assert!(matches!(
        state.plan(Some("k2"), Algorithm::ES256, later),
        Plan::Fetch { refetch: true }
    ));
    // A set past its age is fetched again; while that fails, the old set serves.
    let old = t0 + KEYS_MAX_AGE;
    assert!(matches!(
        state.plan(Some("k1"), Algorithm::ES256, old),
        Plan::Fetch { refetch: false }
    ));
    state.record(Err("down".into()), false, old);
    assert!(matches!(
        state.plan(Some("k1"), Algorithm::ES256, old),
        Plan::Use(_)
    ));
}

#[test]
fn a_failed_first_fetch_is_not_retried_within_the_interval() {
    let t0 = Instant::now();
    let mut state = KeyState::default();
    state.record(Err("down".into()), false, t0);
    assert!(matches!(
        state.plan(None, Algorithm::ES256, t0 + Duration::from_secs(1)),
        Plan::Refuse(Refusal::KeysUnavailable)
    ));
    assert!(matches!(
        state.plan(None, Algorithm::ES256, t0 + REFETCH_INTERVAL),
        Plan::Fetch { refetch: false }
    ));
}

/// A P-256 key as a JWK and its private key for signing.
fn ec_key(kid: &str) -> (Value, EncodingKey) {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = pair.public_key_raw();
    let jwk = json!({
        "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
        "x": URL_SAFE_NO_PAD.encode(&raw[1..33]),
        "y": URL_SAFE_NO_PAD.encode(&raw[33..65]),
    });
    (jwk, EncodingKey::from_ec_der(&pair.serialize_der()))
}

fn now() -> i64 {
    i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap()
}

fn github_claims() -> Value {
    json!({
        "iss": ISSUER, "aud": "tether", "exp": now() + 300, "iat": now(),
        "sub": "repo:acme/app:ref:refs/heads/main",
        "repository": "acme/app", "ref": "refs/heads/main",
    })
}

fn sign(claims: &Value, kid: &str, key: &EncodingKey) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

/// A verifier for [`MAIN_RULE`] whose keys come from `jwks`, counting the fetches.
fn verifier(jwks: Value) -> (OidcVerifier, Arc<AtomicUsize>) {
    let fetches = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&fetches);
    let source: KeySource = Arc::new(move || {
        counted.fetch_add(1, Ordering::SeqCst);
        let jwks = jwks.clone();
        Box::pin(async move {
            let (keys, _) = keys_from_jwks(&jwks)?;
            Ok(KeySet::new(keys, Instant::now()))
        })
    });
    let verifier = OidcVerifier::with_sources(vec![issuer(MAIN_RULE)], vec![source], None);
    (verifier, fetches)
}

async fn check(verifier: &OidcVerifier, token: &str) -> Result<Identity, Refusal> {
    let peeked = peek(token).ok_or(Refusal::Malformed)?;
    verifier.verify(token, &peeked).await.map_err(|r| r.refusal)
}

#[tokio::test]
async fn a_signed_token_maps_and_every_forgery_is_refused_for_its_reason() {
    let (jwk, key) = ec_key("k1");
    let (verifier, fetches) = verifier(json!({ "keys": [jwk.clone()] }));
    let good = sign(&github_claims(), "k1", &key);
    assert_eq!(
        check(&verifier, &good).await.unwrap().user,
        "github:acme/app"
    );

    let with = |change: &dyn Fn(&mut Value)| {
        let mut claims = github_claims();
        change(&mut claims);
        sign(&claims, "k1", &key)
    };
    let cases = [
        (with(&|c| c["aud"] = json!("other")), Refusal::Audience),
        (with(&|c| c["exp"] = json!(now() - 120)), Refusal::Expired),
        (
            with(&|c| c["nbf"] = json!(now() + 120)),
            Refusal::NotYetValid,
        ),
        (
            with(&|c| c["iss"] = json!("https://gitlab.com")),
            Refusal::Issuer,
        ),
        (
            with(&|c| c["repository"] = json!("other/app")),
            Refusal::NoRule,
        ),
        (
            with(&|c| drop(c.as_object_mut().unwrap().remove("exp"))),
            Refusal::Malformed,
        ),
    ];
    for (token, refusal) in cases {
        assert_eq!(check(&verifier, &token).await, Err(refusal));
    }
    // Still within the clock skew: accepted.
    let skewed = with(&|c| c["exp"] = json!(now() - 10));
    assert!(check(&verifier, &skewed).await.is_ok());

    // Another key's signature under k1's id.
    let (_, other) = ec_key("k1");
    let forged = sign(&github_claims(), "k1", &other);
    assert_eq!(check(&verifier, &forged).await, Err(Refusal::Signature));

    // alg none, and HS256 keyed with the public key's bytes.
    let (_, rest) = good.split_once('.').unwrap();
    let payload = rest.split('.').next().unwrap();
    let none = format!(
        "{}.{payload}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"k1"}"#)
    );
    assert_eq!(check(&verifier, &none).await, Err(Refusal::Algorithm));
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some("k1".into());
    let public = jwk.to_string();
    let hmac = jsonwebtoken::encode(
        &hs,
        &github_claims(),
        &EncodingKey::from_secret(public.as_bytes()).unwrap(),
    )
    .unwrap();
    assert_eq!(check(&verifier, &hmac).await, Err(Refusal::Algorithm));
    // The header says ES384 over k1 (a P-256 key): refused before any signature check.
    let mismatched = format!(
        "{}.{rest}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"ES384","kid":"k1"}"#)
    );
    assert_eq!(check(&verifier, &mismatched).await, Err(Refusal::Algorithm));
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        1,
        "one fetch served all of these"
    );

    // An unknown id: one refetch, then refusals without going to the issuer.
    let unknown = sign(&github_claims(), "k9", &key);
    for _ in 0..20 {
        assert_eq!(check(&verifier, &unknown).await, Err(Refusal::UnknownKid));
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_silent_issuer_delays_only_its_own_tokens_and_only_up_to_the_timeout() {
    let (jwk, key) = ec_key("k1");
    let jwks = json!({ "keys": [jwk] });
    let answering: KeySource = Arc::new(move || {
        let jwks = jwks.clone();
        Box::pin(async move {
            let (keys, _) = keys_from_jwks(&jwks)?;
            Ok(KeySet::new(keys, Instant::now()))
        })
    });
    let silent: KeySource = Arc::new(|| Box::pin(futures::future::pending()));
    let mut quiet = issuer(MAIN_RULE);
    quiet.issuer = "https://quiet.example.com".into();
    quiet.name = "quiet".into();
    let verifier = Arc::new(OidcVerifier::with_sources(
        vec![quiet, issuer(MAIN_RULE)],
        vec![silent, answering],
        None,
    ));

    let began = tokio::time::Instant::now();
    let mut quiet_claims = github_claims();
    quiet_claims["iss"] = json!("https://quiet.example.com");
    let quiet_token = sign(&quiet_claims, "k1", &key);
    let waiting = {
        let verifier = Arc::clone(&verifier);
        tokio::spawn(async move { check(&verifier, &quiet_token).await })
    };
    tokio::task::yield_now().await;
    // The other issuer's token is verified while the silent one's fetch hangs.
    let good = sign(&github_claims(), "k1", &key);
    assert!(check(&verifier, &good).await.is_ok());
    assert!(began.elapsed() < Duration::from_secs(1));
    // The silent issuer's request gives up at the fetch timeout.
    assert_eq!(waiting.await.unwrap(), Err(Refusal::KeysUnavailable));
    let waited = began.elapsed();
    assert!(
        waited >= FETCH_TIMEOUT && waited < FETCH_TIMEOUT + Duration::from_secs(1),
        "{waited:?}"
    );
}

#[test]
fn symmetric_small_and_misfitting_keys_are_left_out() {
    let (ec, _) = ec_key("ec");
    let mut ec_as_rsa = ec.clone();
    ec_as_rsa["alg"] = json!("RS256");
    let mut encryption = ec.clone();
    encryption["use"] = json!("enc");
    let jwks = json!({"keys": [
        ec,
        ec_as_rsa,
        encryption,
        {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
        {"kty": "RSA", "n": URL_SAFE_NO_PAD.encode([0xff; 128]), "e": "AQAB", "kid": "rsa1024"},
        {"kty": "RSA", "n": URL_SAFE_NO_PAD.encode([0xff; 256]), "e": "AQAB", "kid": "rsa2048"},
        {"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"},
    ]});
    let (keys, skipped) = keys_from_jwks(&jwks).unwrap();
    let kids: Vec<_> = keys.iter().map(|k| k.kid.clone().unwrap()).collect();
    assert_eq!(kids, ["ec", "rsa2048"]);
    assert_eq!(skipped, 5);
    assert_eq!(keys[1].algorithms.len(), 6);
}

/// docs/metrics.md lists both metrics with every reason, and docs/ci-access.md has a
/// troubleshooting row for each.
#[test]
fn every_reason_is_documented() {
    let docs = |name: &str| {
        std::fs::read_to_string(format!("{}/../docs/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    };
    let (metrics, guide) = (docs("metrics.md"), docs("ci-access.md"));
    let registry = prometheus::Registry::new();
    let handles = OidcMetrics::register(&registry).unwrap();
    handles.refused(None, Refusal::Expired);
    handles.fetched("github", true);
    let families = registry.gather();
    assert_eq!(families.len(), 2);
    for family in families {
        let row = format!("| `{}` |", family.name());
        assert!(metrics.contains(&row), "docs/metrics.md has no row {row}");
    }
    for refusal in Refusal::ALL {
        let reason = refusal.reason();
        assert!(
            metrics.contains(&format!("`{reason}`")),
            "docs/metrics.md lacks {reason}"
        );
        assert!(
            guide.contains(&format!("| `{reason}` | {refusal} |")),
            "docs/ci-access.md has no row for {reason} saying {refusal:?}"
        );
    }
}
