//! Who may post to an HTTP input: bearer tokens, basic credentials and
//! HMAC-SHA256 signatures of the raw body (with an optional signed
//! timestamp against replays). Every comparison of a secret is constant
//! time. Pure: headers and bytes in, a verdict out.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq as _;
use weavster_spec::types::{HttpAuth, SignatureEncoding};

/// Why a request is refused (the text is safe to send: no secret in it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refused(pub &'static str);

/// The request's headers, looked up case-insensitively.
pub(crate) trait Headers {
    fn get(&self, name: &str) -> Option<&[u8]>;
}

/// Checks `auth` against a request; `now` is the Unix time. (The server
/// checks the two parts apart: credentials before reading the body.)
#[cfg(test)]
pub(crate) fn check(
    auth: &HttpAuth,
    headers: &dyn Headers,
    body: &[u8],
    now: i64,
) -> Result<(), Refused> {
    credentials(auth, headers)?;
    signature(auth, headers, body, now)
}

/// The `Authorization` header against `bearer` and `basic` (if either is
/// set): checked before the body is read.
pub(crate) fn credentials(auth: &HttpAuth, headers: &dyn Headers) -> Result<(), Refused> {
    if !auth.bearer.is_empty() || !auth.basic.is_empty() {
        let given = headers
            .get("authorization")
            .ok_or(Refused("missing Authorization"))?;
        let mut ok = false;
        if let Some(token) = strip_scheme(given, b"bearer ") {
            for t in &auth.bearer {
                ok |= bool::from(token.ct_eq(t.as_bytes()));
            }
        }
        if let Some(encoded) = strip_scheme(given, b"basic ")
            && let Ok(pair) = base64::engine::general_purpose::STANDARD.decode(encoded.trim_ascii())
        {
            for b in &auth.basic {
                let want = format!("{}:{}", b.user, b.password);
                ok |= bool::from(pair.as_slice().ct_eq(want.as_bytes()));
            }
        }
        if !ok {
            return Err(Refused("bad credentials"));
        }
    }
    Ok(())
}

/// The `hmac` signature of the raw body (if set).
pub(crate) fn signature(
    auth: &HttpAuth,
    headers: &dyn Headers,
    body: &[u8],
    now: i64,
) -> Result<(), Refused> {
    if let Some(h) = &auth.hmac {
        let sig = headers
            .get(&h.header.to_ascii_lowercase())
            .ok_or(Refused("missing signature"))?;
        let sig = std::str::from_utf8(sig).map_err(|_| Refused("bad signature"))?;
        let sig = match &h.prefix {
            Some(p) => sig
                .strip_prefix(p.as_str())
                .ok_or(Refused("bad signature"))?,
            None => sig,
        };
        let sig = match h.encoding.unwrap_or(SignatureEncoding::Hex) {
            SignatureEncoding::Hex => hex::decode(sig.trim()).ok(),
            SignatureEncoding::Base64 => base64::engine::general_purpose::STANDARD
                .decode(sig.trim())
                .ok(),
        }
        .ok_or(Refused("bad signature"))?;
        let timestamp = match &h.timestamp_header {
            Some(name) => {
                let t = headers
                    .get(&name.to_ascii_lowercase())
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .ok_or(Refused("missing timestamp"))?;
                let secs: i64 = t.trim().parse().map_err(|_| Refused("bad timestamp"))?;
                let tolerance = h.tolerance_s.unwrap_or(300) as i64;
                if (now - secs).abs() > tolerance {
                    return Err(Refused("stale timestamp"));
                }
                Some(t.trim().to_string())
            }
            None => None,
        };
        let template = h.signed.clone().unwrap_or_else(|| {
            if timestamp.is_some() {
                "{timestamp}.{body}".into()
            } else {
                "{body}".into()
            }
        });
        let mut ok = false;
        for secret in &h.secrets {
            let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
                continue;
            };
            feed(
                &mut mac,
                &template,
                timestamp.as_deref().unwrap_or(""),
                body,
            );
            ok |= mac.verify_slice(&sig).is_ok();
        }
        if !ok {
            return Err(Refused("bad signature"));
        }
    }
    Ok(())
}

/// `value` after a case-insensitive `scheme` (`bearer `).
fn strip_scheme<'a>(value: &'a [u8], scheme: &[u8]) -> Option<&'a [u8]> {
    (value.len() >= scheme.len() && value[..scheme.len()].eq_ignore_ascii_case(scheme))
        .then(|| &value[scheme.len()..])
}

/// Feeds the signed text: `template` with `{timestamp}` and `{body}`.
fn feed(mac: &mut Hmac<Sha256>, template: &str, timestamp: &str, body: &[u8]) {
    let mut rest = template;
    while !rest.is_empty() {
        let next = [("{timestamp}", 0), ("{body}", 1)]
            .iter()
            .filter_map(|(k, w)| rest.find(k).map(|i| (i, *k, *w)))
            .min_by_key(|(i, _, _)| *i);
        match next {
            Some((i, k, w)) => {
                mac.update(&rest.as_bytes()[..i]);
                if w == 0 {
                    mac.update(timestamp.as_bytes());
                } else {
                    mac.update(body);
                }
                rest = &rest[i + k.len()..];
            }
            None => {
                mac.update(rest.as_bytes());
                rest = "";
            }
        }
    }
}

/// The signature of `body` for tests and senders: hex HMAC-SHA256.
#[cfg(test)]
pub(crate) fn sign_hex(secret: &str, signed: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(signed);
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use weavster_spec::types::{BasicAuth, HmacAuth};

    use super::*;

    struct H(HashMap<String, Vec<u8>>);
    impl Headers for H {
        fn get(&self, name: &str) -> Option<&[u8]> {
            self.0.get(name).map(Vec::as_slice)
        }
    }

    fn check_with(auth: &HttpAuth, headers: &[(&str, &str)], body: &str) -> Result<(), Refused> {
        let h = H(headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.as_bytes().to_vec()))
            .collect());
        check(auth, &h, body.as_bytes(), 1_000_000)
    }

    #[test]
    fn tokens_and_credentials() {
        let auth = HttpAuth {
            bearer: vec!["old".into(), "new".into()],
            basic: vec![BasicAuth {
                user: "u".into(),
                password: "p".into(),
            }],
            hmac: None,
        };
        assert_eq!(
            check_with(&auth, &[("Authorization", "Bearer new")], ""),
            Ok(())
        );
        assert_eq!(
            check_with(&auth, &[("Authorization", "bearer old")], ""),
            Ok(())
        );
        assert_eq!(
            check_with(&auth, &[("Authorization", "Basic dTpw")], ""),
            Ok(())
        );
        assert!(check_with(&auth, &[("Authorization", "Bearer nope")], "").is_err());
        assert!(check_with(&auth, &[("Authorization", "Basic dTpx")], "").is_err());
        assert!(check_with(&auth, &[], "").is_err());
    }

    #[test]
    fn signatures_with_prefix_timestamp_and_rotation() {
        let auth = HttpAuth {
            hmac: Some(HmacAuth {
                header: "X-Signature".into(),
                secrets: vec!["s1".into(), "s2".into()],
                prefix: Some("sha256=".into()),
                encoding: None,
                timestamp_header: Some("X-Timestamp".into()),
                tolerance_s: Some(60),
                signed: None,
            }),
            ..HttpAuth::default()
        };
        let body = "{\"a\":1}";
        let good = format!(
            "sha256={}",
            sign_hex("s2", format!("1000000.{body}").as_bytes())
        );
        let at = |t: &str, sig: &str| {
            check_with(&auth, &[("X-Signature", sig), ("X-Timestamp", t)], body)
        };
        assert_eq!(at("1000000", &good), Ok(()));
        assert_eq!(
            at("999990", &good),
            Err(Refused("bad signature")),
            "the timestamp is signed"
        );
        assert_eq!(at("999000", &good), Err(Refused("stale timestamp")));
        let other = format!(
            "sha256={}",
            sign_hex("s3", format!("1000000.{body}").as_bytes())
        );
        assert_eq!(at("1000000", &other), Err(Refused("bad signature")));
        assert_eq!(at("1000000", "sha256=zz"), Err(Refused("bad signature")));
        assert!(check_with(&auth, &[("X-Signature", &good)], body).is_err());
    }

    proptest::proptest! {
        /// Any body and secret: its signature passes, and changing any one
        /// byte of the body (or the timestamp) makes it fail.
        #[test]
        fn signatures_bind_every_byte(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..64),
            secret in "[ -~]{1,16}",
            at in 0usize..64,
            flip in 1u8..=255,
        ) {
            let auth = HttpAuth {
                hmac: Some(HmacAuth {
                    header: "X-Sig".into(),
                    secrets: vec![secret.clone()],
                    prefix: None,
                    encoding: None,
                    timestamp_header: Some("X-Ts".into()),
                    tolerance_s: None,
                    signed: None,
                }),
                ..HttpAuth::default()
            };
            let mut signed = b"1000000.".to_vec();
            signed.extend_from_slice(&body);
            let sig = sign_hex(&secret, &signed);
            let h = |ts: &str| H([("x-sig".to_string(), sig.clone().into_bytes()), ("x-ts".to_string(), ts.as_bytes().to_vec())].into_iter().collect());
            proptest::prop_assert_eq!(check(&auth, &h("1000000"), &body, 1_000_000), Ok(()));
            let mut changed = body.clone();
            let i = at % changed.len();
            changed[i] ^= flip;
            proptest::prop_assert!(check(&auth, &h("1000000"), &changed, 1_000_000).is_err());
            proptest::prop_assert!(check(&auth, &h("1000001"), &body, 1_000_000).is_err());
        }
    }
}
