//! On-disk encodings of the shape log: checksummed record frames and fixed-size
//! chunk-index entries. A torn or corrupted tail is detected (short frame, bad
//! length or checksum mismatch) and reported, never decoded into a record.
//!
//! Record frame (little-endian lengths, big-endian offset):
//! `body_len: u32 | crc32(body): u32 | body`, with
//! `body = tx: u64 | op: u64 | operation: u8 | key_len: u32 | key | json`.
//!
//! Chunk-index entry: `first: 16 | last: 16 | start_pos: u64 | end_pos: u64 | crc32: u32`.

use super::{LogEntry, Operation};
use crate::offset::{LogOffset, OFFSET_BYTES};

const FRAME_HEADER_BYTES: usize = 8;
const BODY_FIXED_BYTES: usize = OFFSET_BYTES + 1 + 4;
/// A frame claiming more than this is corruption, not a record.
const MAX_BODY_BYTES: usize = 1 << 30;

pub fn encode_record(entry: &LogEntry, out: &mut Vec<u8>) {
    let body_len = BODY_FIXED_BYTES + entry.key.len() + entry.json.len();
    // The decoder treats anything larger as corruption; never write one.
    assert!(
        body_len <= MAX_BODY_BYTES,
        "a {body_len}-byte record exceeds the 1 GiB limit"
    );
    let body_start = out.len() + FRAME_HEADER_BYTES;
    out.extend_from_slice(
        &u32::try_from(body_len)
            .expect("record too large")
            .to_le_bytes(),
    );
    out.extend_from_slice(&[0; 4]); // crc, filled below
    out.extend_from_slice(&entry.offset.to_bytes());
    out.push(entry.operation.code());
    out.extend_from_slice(
        &u32::try_from(entry.key.len())
            .expect("key too large")
            .to_le_bytes(),
    );
    out.extend_from_slice(entry.key.as_bytes());
    out.extend_from_slice(entry.json.as_bytes());
    let crc = crc32fast::hash(&out[body_start..]);
    out[body_start - 4..body_start].copy_from_slice(&crc.to_le_bytes());
}

/// The size of `entry`'s frame.
pub fn record_len(entry: &LogEntry) -> u64 {
    (FRAME_HEADER_BYTES + BODY_FIXED_BYTES + entry.key.len() + entry.json.len()) as u64
}

/// What a scan of a byte range found.
pub struct Decoded {
    /// Each valid record with the position right after its frame.
    pub records: Vec<(LogEntry, u64)>,
    /// Why decoding stopped before the end, if it did.
    pub bad_tail: Option<String>,
}

/// Decodes frames from `bytes` (which start at file position `base`) until the
/// end or the first bad frame.
pub fn decode_records(bytes: &[u8], base: u64) -> Decoded {
    let mut records = Vec::new();
    let mut pos = 0usize;
    while pos < bytes.len() {
        match decode_one(&bytes[pos..]) {
            Ok((entry, frame_len)) => {
                pos += frame_len;
                records.push((entry, base + pos as u64));
            }
            Err(why) => {
                return Decoded {
                    records,
                    bad_tail: Some(format!("{why} at position {}", base + pos as u64)),
                };
            }
        }
    }
    Decoded {
        records,
        bad_tail: None,
    }
}

fn decode_one(bytes: &[u8]) -> Result<(LogEntry, usize), &'static str> {
    if bytes.len() < FRAME_HEADER_BYTES {
        return Err("short frame header");
    }
    let body_len = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    if !(BODY_FIXED_BYTES..=MAX_BODY_BYTES).contains(&body_len) {
        return Err("implausible record length");
    }
    let body = bytes
        .get(FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + body_len)
        .ok_or("short record body")?;
    if crc32fast::hash(body) != crc {
        return Err("record checksum mismatch");
    }
    let offset = LogOffset::from_bytes(body[..OFFSET_BYTES].try_into().expect("16 bytes"));
    let operation = Operation::from_code(body[OFFSET_BYTES]).ok_or("unknown operation code")?;
    let key_len = u32::from_le_bytes(
        body[OFFSET_BYTES + 1..BODY_FIXED_BYTES]
            .try_into()
            .expect("4 bytes"),
    ) as usize;
    let rest = &body[BODY_FIXED_BYTES..];
    if key_len > rest.len() {
        return Err("key longer than its record");
    }
    let key = std::str::from_utf8(&rest[..key_len]).map_err(|_| "key is not UTF-8")?;
    let json = std::str::from_utf8(&rest[key_len..]).map_err(|_| "payload is not UTF-8")?;
    let entry = LogEntry {
        offset,
        operation,
        key: key.to_string(),
        json: json.to_string(),
    };
    Ok((entry, FRAME_HEADER_BYTES + body_len))
}

/// A closed main-log chunk: the offsets of its first and last records and the
/// byte range they occupy in the log file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkEntry {
    pub first: LogOffset,
    pub last: LogOffset,
    pub start_pos: u64,
    pub end_pos: u64,
}

pub const CHUNK_ENTRY_BYTES: usize = 2 * OFFSET_BYTES + 16 + 4;

pub fn encode_chunk(chunk: &ChunkEntry, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&chunk.first.to_bytes());
    out.extend_from_slice(&chunk.last.to_bytes());
    out.extend_from_slice(&chunk.start_pos.to_le_bytes());
    out.extend_from_slice(&chunk.end_pos.to_le_bytes());
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// Decodes entries until the end or the first torn/corrupt one.
pub fn decode_chunks(bytes: &[u8]) -> Vec<ChunkEntry> {
    let mut chunks = Vec::new();
    for raw in bytes.chunks_exact(CHUNK_ENTRY_BYTES) {
        let (data, crc) = raw.split_at(CHUNK_ENTRY_BYTES - 4);
        if crc32fast::hash(data) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
            break;
        }
        let offset_at = |i: usize| {
            LogOffset::from_bytes(data[i..i + OFFSET_BYTES].try_into().expect("16 bytes"))
        };
        let u64_at = |i: usize| u64::from_le_bytes(data[i..i + 8].try_into().expect("8 bytes"));
        chunks.push(ChunkEntry {
            first: offset_at(0),
            last: offset_at(OFFSET_BYTES),
            start_pos: u64_at(2 * OFFSET_BYTES),
            end_pos: u64_at(2 * OFFSET_BYTES + 8),
        });
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(tx: u64, op: u64, json: &str) -> LogEntry {
        LogEntry {
            offset: LogOffset::new(tx, op),
            operation: Operation::Update,
            key: format!("k{tx}"),
            json: json.into(),
        }
    }

    #[test]
    fn every_cut_and_every_bit_flip_of_a_frame_is_detected() {
        let (a, b) = (entry(7, 0, "{\"a\":1}"), entry(7, 2, "{\"b\":\"two\"}"));
        let mut bytes = Vec::new();
        encode_record(&a, &mut bytes);
        let first_len = bytes.len();
        assert_eq!(first_len as u64, record_len(&a));
        encode_record(&b, &mut bytes);
        let whole = decode_records(&bytes, 100);
        assert!(whole.bad_tail.is_none());
        assert_eq!(
            whole.records,
            vec![
                (a.clone(), 100 + first_len as u64),
                (b, 100 + bytes.len() as u64)
            ]
        );
        for cut in first_len + 1..bytes.len() {
            let torn = decode_records(&bytes[..cut], 0);
            assert_eq!(torn.records.len(), 1, "cut at {cut}");
            assert!(torn.bad_tail.is_some(), "cut at {cut}");
        }
        for bit in 0..(first_len * 8) {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            let decoded = decode_records(&flipped, 0);
            assert!(
                decoded.bad_tail.is_some() && decoded.records.is_empty(),
                "flip of bit {bit} went unseen"
            );
        }
    }

    #[test]
    fn chunk_entries_roundtrip_and_a_torn_entry_is_dropped() {
        let chunks = [
            ChunkEntry {
                first: LogOffset::new(1, 0),
                last: LogOffset::new(3, 4),
                start_pos: 0,
                end_pos: 400,
            },
            ChunkEntry {
                first: LogOffset::new(4, 0),
                last: LogOffset::new(9, 2),
                start_pos: 400,
                end_pos: 999,
            },
        ];
        let mut bytes = Vec::new();
        chunks.iter().for_each(|c| encode_chunk(c, &mut bytes));
        assert_eq!(decode_chunks(&bytes), chunks);
        assert_eq!(decode_chunks(&bytes[..bytes.len() - 1]), chunks[..1]);
        bytes[CHUNK_ENTRY_BYTES + 3] ^= 0xff;
        assert_eq!(decode_chunks(&bytes), chunks[..1]);
    }
}
