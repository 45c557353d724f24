//! The write-ahead log: the head of the store on disk between two seals.
//!
//! Samples accepted since the last seal live in memory and, every `flush_interval`, are appended
//! to a log file as one compressed frame; the file is fsynced every `sync_interval`. A seal folds
//! the head into redb with one durable commit and starts a new log generation, so each log file
//! is written once, sequentially, and deleted after its seal: far fewer bytes reach the flash than
//! a redb commit per flush would cost. Files are named `<store file>.wal.<generation>`.
//!
//! File: `b"OUTPOSTL"`, format version (u32 LE), generation (u64 LE), then frames. Frame: body
//! length (u32 LE) and a sealed body (see [`crate::codec`]: tag, optional zstd, CRC-32). A frame
//! that fails its checksum or runs past the end of the file is damage: replay skips it and
//! resumes at the next intact frame, and when nothing intact follows, it is the torn tail of a
//! crash and is cut off.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::codec::{self, put_varint, put_zigzag, Reader, Rollup};
use crate::disk::{Disk, LogFile};
use crate::error::DecodeError;
use crate::{StateOp, StateTable, Tier};

const MAGIC: &[u8; 8] = b"OUTPOSTL";
const LOG_VERSION: u32 = 1;
pub(crate) const HEADER_LEN: usize = 20;
/// A frame larger than this is treated as garbage, not allocated.
const MAX_FRAME_BYTES: u32 = 256 << 20;

/// A rollup point written directly (the hub receiving a device's rollups).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RollupWrite {
    pub tier: Tier,
    pub series: u32,
    pub bucket: i64,
    pub rollup: Rollup,
}

/// Everything written between two flushes, in write order.
#[derive(Debug, Default, Clone)]
pub(crate) struct Record {
    /// Series created since the previous frame: id and canonical key.
    pub defs: Vec<(u32, String)>,
    pub samples: Vec<(u32, i64, f64)>,
    pub state: Vec<StateOp>,
    pub rollups: Vec<RollupWrite>,
}

impl Record {
    pub(crate) fn is_empty(&self) -> bool {
        self.defs.is_empty()
            && self.samples.is_empty()
            && self.state.is_empty()
            && self.rollups.is_empty()
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.samples.len() * 3 + 64);
        put_varint(&mut out, self.defs.len() as u64);
        for (id, key) in &self.defs {
            put_varint(&mut out, u64::from(*id));
            put_varint(&mut out, key.len() as u64);
            out.extend_from_slice(key.as_bytes());
        }
        // Grouped by series, each keeping its write order, because the codec compresses a
        // series' own timestamps and values far better than an interleaving.
        let mut groups: Vec<(u32, Vec<i64>, Vec<f64>)> = Vec::new();
        let mut slot_of: crate::fasthash::FastMap<u32, usize> = Default::default();
        for &(id, ts, value) in &self.samples {
            let slot = *slot_of.entry(id).or_insert_with(|| {
                groups.push((id, Vec::new(), Vec::new()));
                groups.len() - 1
            });
            groups[slot].1.push(ts);
            groups[slot].2.push(value);
        }
        // Timestamps relative to the frame's first one: every series of a frame starts near it,
        // so each group's first timestamp takes one or two bytes instead of six.
        let base = self.samples.first().map_or(0, |s| s.1);
        put_zigzag(&mut out, base);
        put_varint(&mut out, groups.len() as u64);
        for (id, timestamps, values) in &mut groups {
            put_varint(&mut out, u64::from(*id));
            for ts in timestamps.iter_mut() {
                *ts = ts.wrapping_sub(base);
            }
            codec::encode_samples_body(timestamps, values, &mut out);
        }
        put_varint(&mut out, self.state.len() as u64);
        for op in &self.state {
            match op {
                StateOp::Put { table, key, value } => {
                    out.push(table.tag());
                    out.push(0);
                    put_bytes(&mut out, key.as_bytes());
                    put_bytes(&mut out, value);
                }
                StateOp::Delete { table, key } => {
                    out.push(table.tag());
                    out.push(1);
                    put_bytes(&mut out, key.as_bytes());
                }
            }
        }
        put_varint(&mut out, self.rollups.len() as u64);
        for write in &self.rollups {
            out.push(write.tier as u8);
            put_varint(&mut out, u64::from(write.series));
            put_zigzag(&mut out, write.bucket);
            put_varint(&mut out, write.rollup.count);
            for value in [
                write.rollup.min,
                write.rollup.max,
                write.rollup.sum,
                write.rollup.last,
            ] {
                out.extend_from_slice(&value.to_bits().to_le_bytes());
            }
        }
        out
    }

    pub(crate) fn decode(body: &[u8]) -> Result<Record, DecodeError> {
        let mut reader = Reader::new(body);
        let mut record = Record::default();
        for _ in 0..reader.count("series definition", 2)? {
            let id = read_u32(&mut reader)?;
            let key = read_bytes(&mut reader)?;
            let key = String::from_utf8(key.to_vec())
                .map_err(|_| DecodeError::Invalid("series key is not UTF-8"))?;
            record.defs.push((id, key));
        }
        let base = reader.zigzag()?;
        for _ in 0..reader.count("sample group", 3)? {
            let id = read_u32(&mut reader)?;
            let (mut timestamps, values) = codec::decode_samples_body(&mut reader)?;
            for ts in &mut timestamps {
                *ts = ts.wrapping_add(base);
            }
            if record.samples.len() + timestamps.len() > codec::MAX_SAMPLES {
                return Err(DecodeError::TooLarge {
                    what: "frame sample",
                    count: (record.samples.len() + timestamps.len()) as u64,
                    limit: codec::MAX_SAMPLES as u64,
                });
            }
            record
                .samples
                .extend(timestamps.into_iter().zip(values).map(|(t, v)| (id, t, v)));
        }
        for _ in 0..reader.count("state operation", 3)? {
            let table = StateTable::from_tag(reader.u8()?).ok_or(DecodeError::UnknownTag {
                what: "state table",
                tag: 0,
            })?;
            let op = reader.u8()?;
            let key = String::from_utf8(read_bytes(&mut reader)?.to_vec())
                .map_err(|_| DecodeError::Invalid("state key is not UTF-8"))?;
            record.state.push(match op {
                0 => StateOp::Put {
                    table,
                    key,
                    value: read_bytes(&mut reader)?.to_vec(),
                },
                1 => StateOp::Delete { table, key },
                tag => {
                    return Err(DecodeError::UnknownTag {
                        what: "state operation",
                        tag,
                    })
                }
            });
        }
        for _ in 0..reader.count("rollup write", 36)? {
            let tier = match reader.u8()? {
                1 => Tier::Minute,
                2 => Tier::Hour,
                tag => {
                    return Err(DecodeError::UnknownTag {
                        what: "rollup tier",
                        tag,
                    })
                }
            };
            let series = read_u32(&mut reader)?;
            let bucket = reader.zigzag()?;
            let count = reader.varint()?;
            let mut next = || reader.u64_le().map(f64::from_bits);
            let (min, max, sum, last) = (next()?, next()?, next()?, next()?);
            record.rollups.push(RollupWrite {
                tier,
                series,
                bucket,
                rollup: Rollup {
                    min,
                    max,
                    sum,
                    count,
                    last,
                },
            });
        }
        reader.finish()?;
        Ok(record)
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn read_bytes<'a>(reader: &mut Reader<'a>) -> Result<&'a [u8], DecodeError> {
    let len = usize::try_from(reader.varint()?).map_err(|_| DecodeError::Invalid("length"))?;
    reader.take(len)
}

fn read_u32(reader: &mut Reader<'_>) -> Result<u32, DecodeError> {
    u32::try_from(reader.varint()?).map_err(|_| DecodeError::Invalid("series id above u32"))
}

/// The path of log generation `generation` of the store at `store_path`.
pub(crate) fn log_path(store_path: &Path, generation: u64) -> PathBuf {
    let mut name = store_path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".wal.{generation}"));
    store_path.with_file_name(name)
}

/// Every log generation present beside the store, oldest first.
pub(crate) fn list_logs(
    disk: &dyn Disk,
    store_path: &Path,
) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let dir = match store_path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut prefix = store_path.file_name().unwrap_or_default().to_os_string();
    prefix.push(".wal.");
    let prefix = prefix.to_string_lossy().into_owned();
    let mut logs = Vec::new();
    for path in disk.list(&dir)? {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(generation) = name
            .strip_prefix(&prefix)
            .and_then(|g| g.parse::<u64>().ok())
        {
            logs.push((generation, path));
        }
    }
    logs.sort();
    Ok(logs)
}

#[derive(Debug)]
struct NoLog;

impl LogFile for NoLog {
    fn append(&self, _: &[u8]) -> std::io::Result<()> {
        Err(std::io::Error::other("the store is open read-only"))
    }

    fn sync(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An open log file, appended to by the store's writer.
#[derive(Debug)]
pub(crate) struct LogWriter {
    pub generation: u64,
    pub path: PathBuf,
    /// Shared so that the writer can fsync without holding the head's lock.
    pub file: Arc<dyn LogFile>,
    pub len: u64,
    /// Bytes appended since the last fsync.
    pub unsynced: u64,
}

impl LogWriter {
    pub(crate) fn create(
        disk: &dyn Disk,
        store_path: &Path,
        generation: u64,
    ) -> std::io::Result<Self> {
        let path = log_path(store_path, generation);
        let file = disk.create_log(&path)?;
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&LOG_VERSION.to_le_bytes());
        header.extend_from_slice(&generation.to_le_bytes());
        file.append(&header)?;
        Ok(LogWriter {
            generation,
            path,
            file,
            len: HEADER_LEN as u64,
            unsynced: HEADER_LEN as u64,
        })
    }

    /// A writer for a store opened read-only: it holds no file, and appending fails.
    pub(crate) fn detached(store_path: &Path, generation: u64) -> Self {
        LogWriter {
            generation,
            path: log_path(store_path, generation),
            file: Arc::new(NoLog),
            len: HEADER_LEN as u64,
            unsynced: 0,
        }
    }

    /// Appends one frame; returns the bytes written.
    pub(crate) fn append(&mut self, record: &Record, zstd_level: i32) -> std::io::Result<u64> {
        let sealed = codec::seal(&record.encode(), zstd_level);
        let mut frame = Vec::with_capacity(sealed.len() + 4);
        frame.extend_from_slice(&(sealed.len() as u32).to_le_bytes());
        frame.extend_from_slice(&sealed);
        self.file.append(&frame)?;
        self.len += frame.len() as u64;
        self.unsynced += frame.len() as u64;
        Ok(frame.len() as u64)
    }
}

/// What a log file held: its generation, the records of its valid frames, and the byte length
/// up to the end of the last valid frame.
#[derive(Debug)]
pub(crate) struct Replay {
    pub generation: u64,
    pub records: Vec<Record>,
    pub valid_len: u64,
    /// Set when the file ended in a torn or corrupt frame, which replay cut off.
    pub torn: Option<DecodeError>,
    /// Damaged stretches in the middle of the file that replay skipped, resuming at the next
    /// intact frame.
    pub damaged: Vec<Damage>,
}

/// A stretch of a log that holds no readable frame: its frames' samples are lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Damage {
    pub offset: u64,
    pub len: u64,
    pub error: DecodeError,
}

pub(crate) fn read_log(disk: &dyn Disk, path: &Path) -> Result<Replay, ReadLogError> {
    let bytes = disk.read(path).map_err(ReadLogError::Io)?;
    parse_log(&bytes).map_err(ReadLogError::Header)
}

#[derive(Debug)]
pub(crate) enum ReadLogError {
    Io(std::io::Error),
    Header(DecodeError),
}

/// The frame at the start of `bytes`, and its length with its length prefix.
fn frame_at(bytes: &[u8]) -> Result<(Record, usize), DecodeError> {
    let mut reader = Reader::new(bytes);
    let len_bytes = reader.take(4)?;
    let len = u32::from_le_bytes(
        len_bytes
            .try_into()
            .map_err(|_| DecodeError::Invalid("frame length"))?,
    );
    if len > MAX_FRAME_BYTES {
        return Err(DecodeError::Invalid("frame length beyond the limit"));
    }
    let sealed = reader.take(len as usize)?;
    let body = codec::unseal(sealed)?;
    Ok((Record::decode(&body)?, 4 + len as usize))
}

/// Where the next intact frame after a damaged one at `from` begins, if any: first where the
/// damaged frame's own length says (damage inside its body), else the first offset at which a
/// whole frame checks out. A frame's CRC-32 and its decoding both have to pass, so a false
/// match inside damaged bytes is as unlikely as a CRC collision.
fn resync(bytes: &[u8], from: usize) -> Option<usize> {
    let claimed = bytes
        .get(from..from + 4)
        .map(|b| from + 4 + u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
    if let Some(next) = claimed.filter(|&n| n < bytes.len()) {
        if frame_at(&bytes[next..]).is_ok() {
            return Some(next);
        }
    }
    (from + 1..bytes.len().saturating_sub(4)).find(|&at| {
        // Cheap checks first: a plausible length and a known chunk tag.
        let len = u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        let fits = (len as usize) <= bytes.len() - at - 4 && len >= 5;
        fits && matches!(bytes[at + 4], 1 | 2) && frame_at(&bytes[at..]).is_ok()
    })
}

/// Parses a whole log file. Only a bad header is an error. A bad frame in the middle is skipped
/// (recorded in [`Replay::damaged`]) and replay goes on at the next intact frame; a bad frame
/// with nothing intact after it is the torn tail of a crash.
pub(crate) fn parse_log(bytes: &[u8]) -> Result<Replay, DecodeError> {
    let mut reader = Reader::new(bytes);
    if reader.take(8)? != MAGIC {
        return Err(DecodeError::Invalid("not an Outpost log file (bad magic)"));
    }
    let version = u32::from_le_bytes(
        reader
            .take(4)?
            .try_into()
            .map_err(|_| DecodeError::Invalid("version"))?,
    );
    if version != LOG_VERSION {
        return Err(DecodeError::Invalid("unknown log format version"));
    }
    let generation = reader.u64_le()?;
    let mut replay = Replay {
        generation,
        records: Vec::new(),
        valid_len: HEADER_LEN as u64,
        torn: None,
        damaged: Vec::new(),
    };
    let mut at = HEADER_LEN;
    while at < bytes.len() {
        match frame_at(&bytes[at..]) {
            Ok((record, len)) => {
                replay.records.push(record);
                at += len;
                replay.valid_len = at as u64;
            }
            Err(error) => match resync(bytes, at) {
                Some(next) => {
                    replay.damaged.push(Damage {
                        offset: at as u64,
                        len: (next - at) as u64,
                        error,
                    });
                    at = next;
                }
                None => {
                    replay.torn = Some(error);
                    break;
                }
            },
        }
    }
    Ok(replay)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_record() -> Record {
        Record {
            defs: vec![(0, "a".into()), (1, "b{x=\"y\"}".into())],
            samples: vec![(1, 10, 1.5), (0, 10, 2.0), (1, 11, f64::NAN), (0, 11, -0.0)],
            state: vec![
                StateOp::Put {
                    table: StateTable::SyncCursor,
                    key: "cursor".into(),
                    value: vec![1, 2, 3],
                },
                StateOp::Delete {
                    table: StateTable::AlertState,
                    key: "cpu".into(),
                },
            ],
            rollups: vec![RollupWrite {
                tier: Tier::Hour,
                series: 1,
                bucket: 3_600_000,
                rollup: Rollup::of(4.0),
            }],
        }
    }

    #[test]
    fn records_round_trip_keeping_per_series_order() {
        let record = sample_record();
        let decoded = Record::decode(&record.encode()).unwrap();
        assert_eq!(decoded.defs, record.defs);
        assert_eq!(decoded.state, record.state);
        assert_eq!(decoded.rollups, record.rollups);
        let per_series = |r: &Record, id: u32| -> Vec<(i64, u64)> {
            r.samples
                .iter()
                .filter(|s| s.0 == id)
                .map(|s| (s.1, s.2.to_bits()))
                .collect()
        };
        for id in [0, 1] {
            assert_eq!(per_series(&decoded, id), per_series(&record, id));
        }
    }

    #[test]
    fn a_torn_tail_is_cut_off_and_earlier_frames_survive() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("s.redb");
        let disk = crate::disk::RealDisk;
        let mut log = LogWriter::create(&disk, &store, 7).unwrap();
        log.append(&sample_record(), 3).unwrap();
        let good_len = log.len;
        log.append(&sample_record(), 3).unwrap();
        drop(log);
        let path = log_path(&store, 7);
        let bytes = std::fs::read(&path).unwrap();
        for cut in good_len as usize..bytes.len() {
            let replay = parse_log(&bytes[..cut]).unwrap();
            assert_eq!(replay.generation, 7);
            assert_eq!(replay.records.len(), 1);
            assert_eq!(replay.valid_len, good_len);
        }
        assert_eq!(parse_log(&bytes).unwrap().records.len(), 2);
        assert_eq!(list_logs(&disk, &store).unwrap(), vec![(7, path)]);
    }

    fn three_frame_log() -> (Vec<u8>, Vec<u64>) {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("s.redb");
        let mut log = LogWriter::create(&crate::disk::RealDisk, &store, 3).unwrap();
        let mut ends = Vec::new();
        for _ in 0..3 {
            log.append(&sample_record(), 3).unwrap();
            ends.push(log.len);
        }
        drop(log);
        (std::fs::read(log_path(&store, 3)).unwrap(), ends)
    }

    #[test]
    fn a_damaged_frame_loses_only_itself() {
        let (bytes, ends) = three_frame_log();
        let start = HEADER_LEN as u64;
        let frames = [(start, ends[0]), (ends[0], ends[1]), (ends[1], ends[2])];
        // Every single byte of every frame, flipped: the other frames survive.
        for (damaged, &(from, to)) in frames.iter().enumerate() {
            for at in from..to {
                let mut bad = bytes.clone();
                bad[at as usize] ^= 0x5a;
                let replay = parse_log(&bad).unwrap();
                assert_eq!(replay.records.len(), 2, "byte {at} of frame {damaged}");
                let want = format!("{:?}", parse_log(&bytes).unwrap().records[0]);
                assert!(replay.records.iter().all(|r| format!("{r:?}") == want));
                if damaged < 2 {
                    assert_eq!(replay.damaged.len(), 1, "byte {at}");
                    assert_eq!(replay.damaged[0].offset, from);
                    assert_eq!(replay.damaged[0].offset + replay.damaged[0].len, to);
                    assert!(replay.torn.is_none());
                } else {
                    assert!(replay.torn.is_some() && replay.damaged.is_empty());
                }
            }
        }
        // A zeroed stretch over the end of frame 0 and the start of frame 1.
        let mut bad = bytes.clone();
        for b in &mut bad[ends[0] as usize - 3..ends[0] as usize + 6] {
            *b = 0;
        }
        let replay = parse_log(&bad).unwrap();
        assert_eq!(replay.records.len(), 1, "frame 2 survives");
        assert_eq!(replay.damaged[0].offset + replay.damaged[0].len, ends[1]);
    }

    proptest::proptest! {
        #[test]
        fn log_parsing_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let mut file = MAGIC.to_vec();
            file.extend_from_slice(&LOG_VERSION.to_le_bytes());
            file.extend_from_slice(&1u64.to_le_bytes());
            file.extend_from_slice(&bytes);
            let _ = parse_log(&file);
            let _ = parse_log(&bytes);
            let _ = Record::decode(&bytes);
        }
    }
}
