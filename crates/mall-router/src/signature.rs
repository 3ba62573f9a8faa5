//! Signed callbacks. A provider sends
//! `X-Mall-Signature: t=<unix ms>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`
//! with each callback. The receiver recomputes the MAC in constant time,
//! refuses a timestamp outside its tolerance (a replay of an old callback)
//! and remembers event ids it has taken (a replay inside the tolerance).

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const HEADER: &str = "x-mall-signature";

/// Callbacks older or newer than this (against the receiver's clock) are refused.
pub const TOLERANCE_MS: i64 = 5 * 60 * 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignatureError {
    /// The header is missing or not `t=…,v1=…`.
    Malformed,
    /// The MAC does not match: forged, or signed with another secret.
    Mismatch,
    /// The timestamp is outside the tolerance.
    Stale,
}

impl SignatureError {
    pub fn code(self) -> &'static str {
        match self {
            SignatureError::Malformed => "signature_malformed",
            SignatureError::Mismatch => "signature_mismatch",
            SignatureError::Stale => "signature_stale",
        }
    }
}

fn mac(secret: &[u8], t: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The header value for `body` sent at `now_ms`.
pub fn sign(secret: &[u8], now_ms: i64, body: &[u8]) -> String {
    let tag = mac(secret, now_ms, body).finalize().into_bytes();
    let mut hex = String::with_capacity(64);
    for b in tag {
        hex.push_str(&format!("{b:02x}"));
    }
    format!("t={now_ms},v1={hex}")
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() & 1 == 1 || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// Checks `header` against `body`; `Ok(t)` is the signed timestamp.
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now_ms: i64,
) -> Result<i64, SignatureError> {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => v1 = unhex(v),
            _ => return Err(SignatureError::Malformed),
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return Err(SignatureError::Malformed);
    };
    mac(secret, t, body)
        .verify_slice(&v1)
        .map_err(|_| SignatureError::Mismatch)?;
    if now_ms.abs_diff(t) > TOLERANCE_MS.unsigned_abs() {
        return Err(SignatureError::Stale);
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_bodies_verify_and_tampering_does_not() {
        let h = sign(b"secret", 1_000, b"{\"a\":1}");
        assert_eq!(verify(b"secret", &h, b"{\"a\":1}", 2_000), Ok(1_000));
        assert_eq!(
            verify(b"secret", &h, b"{\"a\":2}", 2_000),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"other", &h, b"{\"a\":1}", 2_000),
            Err(SignatureError::Mismatch)
        );
        let moved = h.replace("t=1000", "t=1001");
        assert_eq!(
            verify(b"secret", &moved, b"{\"a\":1}", 2_000),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"secret", &h, b"{\"a\":1}", 1_000 + TOLERANCE_MS + 1),
            Err(SignatureError::Stale)
        );
        for junk in [
            "",
            "t=1",
            "v1=00",
            "t=x,v1=00",
            "t=1,v1=zz",
            "t=1,v1=0",
            "a=b",
        ] {
            assert_eq!(
                verify(b"secret", junk, b"", 1),
                Err(SignatureError::Malformed),
                "{junk}"
            );
        }
    }
}
