//! Shape handles: `<hash>-<ms>-<seq>`, the shape's 16-hex-digit hash, the
//! clock in milliseconds when the handle was issued and a sequence number.
//!
//! Handles are unique and never reused: the issuer never goes back in time
//! (it remembers the last `(ms, seq)` it issued and steps the sequence within
//! a millisecond), and the stack also refuses a handle it already knows.
//! A handle from a client is parsed before it is used anywhere, and the format
//! admits only `[0-9a-f-]` and digits, so it is always safe in a file name.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShapeHandle(String);

const HASH_DIGITS: usize = 16;

impl ShapeHandle {
    /// Checks a handle that came from outside (a client, a directory name).
    pub fn parse(text: &str) -> Result<ShapeHandle, String> {
        let bad =
            || format!("handle {text:?} has invalid format (expected <16 hex digits>-<ms>-<seq>)");
        let mut parts = text.split('-');
        let (Some(hash), Some(ms), Some(seq), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let hex = hash.len() == HASH_DIGITS
            && hash
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        let number = |s: &str| {
            !s.is_empty()
                && s.len() <= 20
                && s.bytes().all(|b| b.is_ascii_digit())
                && s.parse::<u64>().is_ok()
        };
        if hex && number(ms) && number(seq) {
            Ok(ShapeHandle(text.to_string()))
        } else {
            Err(bad())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shape hash this handle was issued for.
    pub fn hash(&self) -> &str {
        &self.0[..HASH_DIGITS]
    }
}

impl fmt::Display for ShapeHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Issues handles that increase in `(ms, seq)` order within a process.
#[derive(Debug, Default)]
pub struct HandleIssuer {
    last: (u64, u64),
}

impl HandleIssuer {
    /// A new handle for a shape with `hash`, at clock `now_ms`.
    pub fn issue(&mut self, hash: &str, now_ms: u64) -> ShapeHandle {
        assert!(
            hash.len() == HASH_DIGITS,
            "shape hash {hash:?} is not {HASH_DIGITS} hex digits"
        );
        let next = if now_ms > self.last.0 {
            (now_ms, 0)
        } else {
            (self.last.0, self.last.1 + 1)
        };
        self.last = next;
        ShapeHandle::parse(&format!("{hash}-{}-{}", next.0, next.1))
            .expect("issued handles are well-formed")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_handles_are_unique_and_parse() {
        let mut issuer = HandleIssuer::default();
        let hash = "0123456789abcdef";
        let a = issuer.issue(hash, 100);
        let b = issuer.issue(hash, 100);
        let c = issuer.issue(hash, 99); // the clock went back: still unique
        let d = issuer.issue(hash, 101);
        assert_eq!(a.as_str(), "0123456789abcdef-100-0");
        assert_eq!(
            (b.as_str(), c.as_str(), d.as_str()),
            (
                "0123456789abcdef-100-1",
                "0123456789abcdef-100-2",
                "0123456789abcdef-101-0"
            )
        );
        assert_eq!(ShapeHandle::parse(a.as_str()), Ok(a.clone()));
        assert_eq!(a.hash(), hash);
    }

    #[test]
    fn malformed_handles_are_refused_before_they_reach_a_path() {
        for bad in [
            "",
            "../x",
            "0123456789abcdef-1",
            "0123456789abcdef-1-2-3",
            "0123456789ABCDEF-1-2",
            "0123456789abcdef-1-x",
            "0123456789abcdef-/-1",
            "0123456789abcde-1-1",
            "0123456789abcdef--1",
            "0123456789abcdef-1-99999999999999999999",
        ] {
            let err = ShapeHandle::parse(bad).unwrap_err();
            assert!(err.contains("invalid format"), "{bad:?}: {err}");
        }
    }
}
