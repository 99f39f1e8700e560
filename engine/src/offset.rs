//! Log offsets, exactly as Electric's `LogOffset`.
//!
//! A shape log is addressed by offsets that clients echo back:
//! - `-1`: before everything;
//! - `0_N`: the end of snapshot chunk `N` (virtual offsets have `tx == 0`);
//! - `0_inf`: the end of the snapshot;
//! - `<lsn>_<op>`: a real offset: the commit LSN of a transaction and the index of
//!   an operation inside it. Op indexes step by 2 per change so that a primary-key
//!   change can be split into a delete at `2k` and an insert at `2k + 1`;
//! - `<lsn>_inf`: after every operation of transaction `lsn`.
//!
//! The order is `(tx, op)` lexicographic, `-1` first and `inf` above every index.

use std::fmt;
use std::str::FromStr;

/// An operation index inside a transaction, or `inf` (after all of them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OpIndex {
    /// A concrete index. Declared first so that derived `Ord` puts it below `Inf`.
    At(u64),
    Inf,
}

/// A position in a shape log. Derived `Ord` is the log order: the variant
/// order puts `BeforeAll` first, then `(tx, op)` lexicographically.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogOffset {
    /// `-1`: before the first snapshot chunk.
    BeforeAll,
    At {
        tx: u64,
        op: OpIndex,
    },
}

/// Width of the binary encoding of a real offset: big-endian `tx` then `op`, so
/// byte order equals log order.
pub const OFFSET_BYTES: usize = 16;

impl LogOffset {
    /// `-1`.
    pub const BEFORE_ALL: LogOffset = LogOffset::BeforeAll;
    /// `0_0`: the end of the first snapshot chunk.
    pub const FIRST: LogOffset = LogOffset::At {
        tx: 0,
        op: OpIndex::At(0),
    };
    /// `0_inf`: the end of the snapshot; every real offset is above it.
    pub const SNAPSHOT_END: LogOffset = LogOffset::At {
        tx: 0,
        op: OpIndex::Inf,
    };
    /// The greatest offset.
    pub const LAST: LogOffset = LogOffset::At {
        tx: u64::MAX,
        op: OpIndex::Inf,
    };

    /// A concrete offset `tx_op`.
    pub const fn new(tx: u64, op: u64) -> LogOffset {
        LogOffset::At {
            tx,
            op: OpIndex::At(op),
        }
    }

    /// `tx_inf`: after every operation of transaction `tx`.
    pub const fn tx_end(tx: u64) -> LogOffset {
        LogOffset::At {
            tx,
            op: OpIndex::Inf,
        }
    }

    /// `0_N`: the end of snapshot chunk `n`.
    pub const fn snapshot_chunk(n: u64) -> LogOffset {
        LogOffset::new(0, n)
    }

    /// The transaction part (`-1` has none).
    pub fn tx(self) -> Option<u64> {
        match self {
            LogOffset::BeforeAll => None,
            LogOffset::At { tx, .. } => Some(tx),
        }
    }

    /// A real offset addresses an operation of a replicated transaction.
    pub fn is_real(self) -> bool {
        matches!(self, LogOffset::At { tx, op: OpIndex::At(_) } if tx > 0)
    }

    /// A virtual offset addresses the snapshot: `-1`, `0_N` or `0_inf`.
    pub fn is_virtual(self) -> bool {
        matches!(self, LogOffset::BeforeAll | LogOffset::At { tx: 0, .. })
    }

    /// The snapshot chunk number of `0_N`, if this is one.
    pub fn as_snapshot_chunk(self) -> Option<u64> {
        match self {
            LogOffset::At {
                tx: 0,
                op: OpIndex::At(n),
            } => Some(n),
            _ => None,
        }
    }

    /// The next offset. `-1` steps to `0_0`, `tx_op` to `tx_(op+1)` and `tx_inf`
    /// to `(tx+1)_0`. Electric only uses the last case with `tx == 0` (a control
    /// message appended after `0_inf` gets `1_0`); the general rule agrees with it.
    pub fn increment(self) -> LogOffset {
        match self {
            LogOffset::BeforeAll => LogOffset::FIRST,
            LogOffset::At {
                tx,
                op: OpIndex::At(op),
            } => {
                let next = op.checked_add(1).expect("op index overflow");
                LogOffset::new(tx, next)
            }
            LogOffset::At {
                tx,
                op: OpIndex::Inf,
            } => {
                let next = tx
                    .checked_add(1)
                    .expect("offset increment past LogOffset::LAST");
                LogOffset::new(next, 0)
            }
        }
    }

    /// Big-endian `(tx, op)`. Only concrete offsets are ever stored on disk.
    pub fn to_bytes(self) -> [u8; OFFSET_BYTES] {
        let LogOffset::At {
            tx,
            op: OpIndex::At(op),
        } = self
        else {
            panic!("only concrete offsets are encodable, got {self}");
        };
        let mut bytes = [0u8; OFFSET_BYTES];
        bytes[..8].copy_from_slice(&tx.to_be_bytes());
        bytes[8..].copy_from_slice(&op.to_be_bytes());
        bytes
    }

    pub fn from_bytes(bytes: [u8; OFFSET_BYTES]) -> LogOffset {
        let tx = u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"));
        let op = u64::from_be_bytes(bytes[8..].try_into().expect("8 bytes"));
        LogOffset::new(tx, op)
    }
}

impl fmt::Display for LogOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogOffset::BeforeAll => f.write_str("-1"),
            LogOffset::At {
                tx,
                op: OpIndex::At(op),
            } => write!(f, "{tx}_{op}"),
            LogOffset::At {
                tx,
                op: OpIndex::Inf,
            } => write!(f, "{tx}_inf"),
        }
    }
}

/// Why an offset string was rejected. The message is what a client sees in a 400.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("offset {input:?} has invalid format: {reason} (expected -1, <tx>_<op> or <tx>_inf)")]
pub struct ParseOffsetError {
    pub input: String,
    pub reason: &'static str,
}

impl FromStr for LogOffset {
    type Err = ParseOffsetError;

    fn from_str(input: &str) -> Result<LogOffset, ParseOffsetError> {
        let fail = |reason| ParseOffsetError {
            input: input.to_string(),
            reason,
        };
        if input == "-1" {
            return Ok(LogOffset::BeforeAll);
        }
        let (tx, op) = input.split_once('_').ok_or_else(|| fail("missing '_'"))?;
        let tx = parse_u64(tx)
            .ok_or_else(|| fail("the part before '_' is not an unsigned 64-bit integer"))?;
        let op = if op == "inf" {
            OpIndex::Inf
        } else {
            OpIndex::At(parse_u64(op).ok_or_else(|| {
                fail("the part after '_' is neither 'inf' nor an unsigned 64-bit integer")
            })?)
        };
        Ok(LogOffset::At { tx, op })
    }
}

/// Digits only: `u64::from_str` would also accept a leading `+`.
fn parse_u64(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl serde::Serialize for LogOffset {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for LogOffset {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<LogOffset, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_offset() -> impl Strategy<Value = LogOffset> {
        let op = prop_oneof![
            4 => any::<u64>().prop_map(OpIndex::At),
            4 => (0u64..8).prop_map(OpIndex::At),
            1 => Just(OpIndex::Inf),
        ];
        let tx = prop_oneof![Just(0u64), 1u64..5, any::<u64>()];
        prop_oneof![
            1 => Just(LogOffset::BeforeAll),
            9 => (tx, op).prop_map(|(tx, op)| LogOffset::At { tx, op }),
        ]
    }

    /// The order an offset must have: `(tx, op)` with `-1` below everything and
    /// `inf` above every index, computed on wide integers.
    fn order_key(o: LogOffset) -> (i128, u128) {
        match o {
            LogOffset::BeforeAll => (-1, 0),
            LogOffset::At {
                tx,
                op: OpIndex::At(op),
            } => (tx as i128, op as u128),
            LogOffset::At {
                tx,
                op: OpIndex::Inf,
            } => (tx as i128, u128::MAX),
        }
    }

    proptest! {
        #![proptest_config(crate::testing::proptest_config(256))]

        #[test]
        fn parse_inverts_format(o in arb_offset()) {
            prop_assert_eq!(o.to_string().parse::<LogOffset>(), Ok(o));
        }

        #[test]
        fn order_is_tx_then_op(a in arb_offset(), b in arb_offset()) {
            prop_assert_eq!(a.cmp(&b), order_key(a).cmp(&order_key(b)));
            // Antisymmetry and totality follow from matching a total order above;
            // also check consistency with equality.
            prop_assert_eq!(a == b, order_key(a) == order_key(b));
        }

        #[test]
        fn order_is_transitive(a in arb_offset(), b in arb_offset(), c in arb_offset()) {
            if a <= b && b <= c {
                prop_assert!(a <= c);
            }
        }

        #[test]
        fn increment_is_the_least_greater_offset(o in arb_offset()) {
            prop_assume!(o != LogOffset::LAST && o != LogOffset::tx_end(u64::MAX) && o != LogOffset::new(u64::MAX, u64::MAX));
            prop_assume!(!matches!(o, LogOffset::At { op: OpIndex::At(u64::MAX), .. }));
            let next = o.increment();
            prop_assert!(next > o);
            // Nothing concrete lies strictly between o and its successor.
            if let LogOffset::At { tx, op: OpIndex::At(op) } = o {
                prop_assert_eq!(next, LogOffset::new(tx, op + 1));
            }
        }

        #[test]
        fn bytes_roundtrip_and_preserve_order(a in any::<(u64, u64)>(), b in any::<(u64, u64)>()) {
            let (x, y) = (LogOffset::new(a.0, a.1), LogOffset::new(b.0, b.1));
            prop_assert_eq!(LogOffset::from_bytes(x.to_bytes()), x);
            prop_assert_eq!(x.to_bytes().cmp(&y.to_bytes()), x.cmp(&y));
        }
    }

    #[test]
    fn electric_constants_and_text_forms() {
        assert_eq!(LogOffset::BEFORE_ALL.to_string(), "-1");
        assert_eq!(LogOffset::FIRST.to_string(), "0_0");
        assert_eq!(LogOffset::SNAPSHOT_END.to_string(), "0_inf");
        assert_eq!(LogOffset::new(1234, 6).to_string(), "1234_6");
        assert_eq!(LogOffset::tx_end(7).to_string(), "7_inf");
        assert!(LogOffset::BEFORE_ALL < LogOffset::FIRST);
        assert!(LogOffset::snapshot_chunk(99) < LogOffset::SNAPSHOT_END);
        assert!(LogOffset::SNAPSHOT_END < LogOffset::new(1, 0));
        assert!(LogOffset::new(5, 1_000_000) < LogOffset::tx_end(5));
        assert!(LogOffset::tx_end(5) < LogOffset::new(6, 0));
        assert_eq!(LogOffset::SNAPSHOT_END.increment(), LogOffset::new(1, 0));
        assert_eq!(LogOffset::BEFORE_ALL.increment(), LogOffset::FIRST);
        assert!(LogOffset::new(3, 0).is_real());
        assert!(!LogOffset::SNAPSHOT_END.is_real() && LogOffset::SNAPSHOT_END.is_virtual());
        assert_eq!(LogOffset::snapshot_chunk(4).as_snapshot_chunk(), Some(4));
    }

    #[test]
    fn malformed_offsets_say_what_is_wrong() {
        for bad in [
            "",
            "now",
            "1",
            "-2",
            "1_",
            "_1",
            "a_1",
            "1_b",
            "+1_2",
            "1_-2",
            "1_2_3",
            "1_ 2",
            "18446744073709551616_0",
        ] {
            let err = bad.parse::<LogOffset>().expect_err(bad);
            let msg = err.to_string();
            assert!(
                msg.contains("invalid format") && msg.contains(&format!("{bad:?}")),
                "{msg}"
            );
        }
    }
}
