//! Chunk codecs: how samples and rollup points become bytes.
//!
//! A chunk is `[tag][body or zstd(body)][crc32]`. The body stores timestamps as delta-of-delta
//! zigzag varints, then values with a codec chosen per chunk:
//!
//! - **decimal**: most gauges and counters a device produces are integers or short decimals
//!   (`111.11` CPU seconds, `25276514304` bytes). Each value is written as an integer `i` with a
//!   chunk-wide scale `s` such that `i as f64 / 10^s` is bit-identical to the value (IEEE division
//!   is correctly rounded, so this holds for every decimal of up to 15 significant digits). The
//!   integers are then delta or delta-of-delta coded, whichever is shorter. Values that do not fit
//!   (NaN payloads, -0.0, infinities, binary fractions) are kept verbatim as exceptions.
//! - **xor**: Gorilla's XOR with the previous value, byte-aligned rather than bit-packed so that
//!   zstd, applied afterwards, still finds repetitions.
//!
//! zstd is applied to the body only when it makes it smaller. Every decoder here takes untrusted
//! bytes and returns [`DecodeError`] instead of panicking; counts are checked against the input
//! length before anything is allocated.

use crate::error::DecodeError;

type DResult<T> = Result<T, DecodeError>;

/// At most this many samples in one chunk or log section; bounds allocations on decode.
pub const MAX_SAMPLES: usize = 1 << 22;
/// The largest decompressed body accepted; bounds allocations on decode.
const MAX_BODY_BYTES: usize = 64 << 20;
const TAG_PLAIN: u8 = 1;
const TAG_ZSTD: u8 = 2;
const VALUES_DECIMAL: u8 = 0;
const VALUES_XOR: u8 = 1;
const INTS_DELTA: u8 = 0;
const INTS_DELTA_OF_DELTA: u8 = 1;
const MAX_SCALE: usize = 15;
const POW10: [f64; MAX_SCALE + 1] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];
/// Integers beyond this are not exactly representable as f64, so the decimal codec avoids them.
const MAX_EXACT_INT: f64 = 9_007_199_254_740_992.0;

/// One rollup point: the aggregate of the samples of one series in one time bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rollup {
    pub min: f64,
    pub max: f64,
    pub sum: f64,
    pub count: u64,
    /// The value of the newest sample in the bucket.
    pub last: f64,
}

impl Rollup {
    /// The rollup of a single sample.
    pub fn of(value: f64) -> Self {
        Rollup {
            min: value,
            max: value,
            sum: value,
            count: 1,
            last: value,
        }
    }

    /// Folds in a later sample or a later bucket (callers merge in time order, for `last`).
    pub fn merge(&mut self, later: &Rollup) {
        self.min = self.min.min(later.min);
        self.max = self.max.max(later.max);
        self.sum = add_decimal(self.sum, later.sum);
        self.count += later.count;
        self.last = later.last;
    }

    /// Exact equality, bit for bit, so that NaN compares equal to itself in tests.
    pub fn bits_eq(&self, other: &Rollup) -> bool {
        self.min.to_bits() == other.min.to_bits()
            && self.max.to_bits() == other.max.to_bits()
            && self.sum.to_bits() == other.sum.to_bits()
            && self.count == other.count
            && self.last.to_bits() == other.last.to_bits()
    }
}

/// Adds two values as the decimals they print as, when both are short decimals: the result is
/// the f64 nearest to the exact decimal sum (`0.1 + 0.2` gives `0.3`), which makes sums exact,
/// independent of the order of additions, and cheap to store with the decimal codec. Anything
/// else is added as binary floating point.
pub fn add_decimal(a: f64, b: f64) -> f64 {
    // Integers below 2^52 add exactly in binary already, and are the common case.
    const EXACT: f64 = 4_503_599_627_370_496.0;
    if a.fract() == 0.0 && b.fract() == 0.0 && a.abs() < EXACT && b.abs() < EXACT {
        return a + b;
    }
    if let (Some((scale_a, int_a)), Some((scale_b, int_b))) = (decimal_form(a), decimal_form(b)) {
        let scale = scale_a.max(scale_b);
        let widen = |int: i64, from: usize| i128::from(int) * 10i128.pow((scale - from) as u32);
        let sum = widen(int_a, scale_a) + widen(int_b, scale_b);
        if sum.unsigned_abs() < (1u128 << 53) {
            return sum as f64 / POW10[scale];
        }
    }
    a + b
}

// ---------------------------------------------------------------------------------------------
// Primitive readers and writers

/// A bounds-checked cursor over untrusted bytes.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len()
    }

    pub(crate) fn u8(&mut self) -> DResult<u8> {
        let (&first, rest) = self
            .bytes
            .split_first()
            .ok_or(DecodeError::Truncated { needed: 1 })?;
        self.bytes = rest;
        Ok(first)
    }

    pub(crate) fn take(&mut self, len: usize) -> DResult<&'a [u8]> {
        if len > self.bytes.len() {
            return Err(DecodeError::Truncated {
                needed: len - self.bytes.len(),
            });
        }
        let (head, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(head)
    }

    pub(crate) fn u64_le(&mut self) -> DResult<u64> {
        let bytes = self.take(8)?;
        let mut array = [0u8; 8];
        array.copy_from_slice(bytes);
        Ok(u64::from_le_bytes(array))
    }

    pub(crate) fn varint(&mut self) -> DResult<u64> {
        let mut value: u64 = 0;
        for shift in (0..70).step_by(7) {
            let byte = self.u8()?;
            if shift == 63 && byte > 1 {
                return Err(DecodeError::VarintOverflow);
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::VarintOverflow)
    }

    pub(crate) fn zigzag(&mut self) -> DResult<i64> {
        Ok(unzigzag(self.varint()?))
    }

    /// A count of items that each need at least `min_bytes_each` more bytes of input, so that a
    /// hostile count cannot make the decoder allocate more than the input justifies.
    pub(crate) fn count(&mut self, what: &'static str, min_bytes_each: usize) -> DResult<usize> {
        let count = self.varint()?;
        let limit = (self.remaining() / min_bytes_each.max(1) + 2).min(MAX_SAMPLES) as u64;
        if count > limit {
            return Err(DecodeError::TooLarge { what, count, limit });
        }
        Ok(count as usize)
    }

    pub(crate) fn finish(&self) -> DResult<()> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes {
                extra: self.bytes.len(),
            })
        }
    }
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn varint_len(value: u64) -> usize {
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

pub(crate) fn put_zigzag(out: &mut Vec<u8>, value: i64) {
    put_varint(out, zigzag(value));
}

// ---------------------------------------------------------------------------------------------
// Timestamps

/// Writes timestamps as first value, first delta, then deltas of deltas. Wrapping arithmetic makes
/// every i64 sequence round-trip, however far apart.
pub(crate) fn encode_timestamps(timestamps: &[i64], out: &mut Vec<u8>) {
    let mut previous = 0i64;
    let mut previous_delta = 0i64;
    for (index, &ts) in timestamps.iter().enumerate() {
        let delta = ts.wrapping_sub(previous);
        let written = if index <= 1 {
            delta
        } else {
            delta.wrapping_sub(previous_delta)
        };
        put_zigzag(out, if index == 0 { ts } else { written });
        previous = ts;
        previous_delta = delta;
    }
}

pub(crate) fn decode_timestamps(reader: &mut Reader<'_>, count: usize) -> DResult<Vec<i64>> {
    let mut timestamps = Vec::with_capacity(count);
    decode_timestamps_into(reader, count, &mut timestamps)?;
    Ok(timestamps)
}

/// [`decode_timestamps`], appended to `timestamps`.
fn decode_timestamps_into(
    reader: &mut Reader<'_>,
    count: usize,
    timestamps: &mut Vec<i64>,
) -> DResult<()> {
    timestamps.reserve(count);
    let mut previous = 0i64;
    let mut previous_delta = 0i64;
    for index in 0..count {
        let read = reader.zigzag()?;
        let delta = if index <= 1 {
            read
        } else {
            previous_delta.wrapping_add(read)
        };
        let ts = if index == 0 {
            read
        } else {
            previous.wrapping_add(delta)
        };
        timestamps.push(ts);
        previous = ts;
        previous_delta = if index == 0 { 0 } else { delta };
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Values

/// The smallest decimal scale at which `value` is an exact scaled integer, with that integer.
fn decimal_form(value: f64) -> Option<(usize, i64)> {
    if !value.is_finite() {
        return None;
    }
    if value.fract() == 0.0 && value.abs() < MAX_EXACT_INT && value.to_bits() != (-0.0f64).to_bits()
    {
        return Some((0, value as i64));
    }
    for (scale, &power) in POW10.iter().enumerate() {
        if let Some(int) = scaled_int(value, power) {
            return Some((scale, int));
        }
        if (value * power).abs() >= MAX_EXACT_INT {
            return None;
        }
    }
    None
}

fn scaled_int(value: f64, power: f64) -> Option<i64> {
    let rounded = (value * power).round();
    if rounded.abs() >= MAX_EXACT_INT {
        return None;
    }
    let int = rounded as i64;
    ((int as f64 / power).to_bits() == value.to_bits()).then_some(int)
}

pub(crate) fn encode_values(values: &[f64], out: &mut Vec<u8>) {
    if !encode_decimal(values, out) {
        encode_xor(values, out);
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// The first element, then the differences between neighbours.
fn second_differences(values: &[i64]) -> impl Iterator<Item = i64> + '_ {
    let mut previous = 0i64;
    values.iter().map(move |&v| {
        let d = v.wrapping_sub(previous);
        previous = v;
        d
    })
}

/// Returns false (writing nothing) when too many values are not short decimals.
fn encode_decimal(values: &[f64], out: &mut Vec<u8>) -> bool {
    let mut scale_histogram = [0usize; MAX_SCALE + 1];
    let mut not_decimal = 0usize;
    for &value in values {
        match decimal_form(value) {
            Some((scale, _)) => scale_histogram[scale] += 1,
            None => not_decimal += 1,
        }
    }
    // The smallest scale that covers nearly all values: a rare value with many digits becomes an
    // exception instead of inflating every integer in the chunk.
    let decimal = values.len() - not_decimal;
    let mut covered = 0usize;
    let mut scale = 0usize;
    for (candidate, &count) in scale_histogram.iter().enumerate() {
        covered += count;
        scale = candidate;
        if covered * 50 >= decimal * 49 {
            break;
        }
    }
    let power = POW10[scale];
    let mut ints = Vec::with_capacity(values.len());
    let mut exceptions: Vec<(usize, u64)> = Vec::new();
    let mut previous = 0i64;
    for (index, &value) in values.iter().enumerate() {
        match scaled_int(value, power) {
            Some(int) => {
                ints.push(int);
                previous = int;
            }
            None => {
                exceptions.push((index, value.to_bits()));
                ints.push(previous);
            }
        }
    }
    if exceptions.len() * 4 > values.len() {
        return false;
    }
    // Steps between consecutive integers, divided by their greatest common divisor: memory
    // gauges move in whole pages (4096 bytes), which this turns into steps of one.
    let steps: Vec<i64> = ints.windows(2).map(|w| w[1].wrapping_sub(w[0])).collect();
    let divisor = steps
        .iter()
        .fold(0u64, |g, &s| gcd(g, s.unsigned_abs()))
        .max(1);
    let quotients: Vec<i64> = steps
        .iter()
        .map(|&s| (i128::from(s) / i128::from(divisor)) as i64)
        .collect();
    let delta_cost: usize = quotients.iter().map(|&q| varint_len(zigzag(q))).sum();
    let dod_cost: usize = second_differences(&quotients)
        .map(|d| varint_len(zigzag(d)))
        .sum();
    let mode = if dod_cost < delta_cost {
        INTS_DELTA_OF_DELTA
    } else {
        INTS_DELTA
    };
    out.push(VALUES_DECIMAL);
    out.push(scale as u8);
    out.push(mode);
    put_varint(out, exceptions.len() as u64);
    let mut previous_index = 0usize;
    for &(index, bits) in &exceptions {
        put_varint(out, (index - previous_index) as u64);
        out.extend_from_slice(&bits.to_le_bytes());
        previous_index = index;
    }
    if let Some(&first) = ints.first() {
        put_varint(out, divisor);
        put_zigzag(out, first);
    }
    if mode == INTS_DELTA {
        for &q in &quotients {
            put_zigzag(out, q);
        }
    } else {
        for d in second_differences(&quotients) {
            put_zigzag(out, d);
        }
    }
    true
}

fn encode_xor(values: &[f64], out: &mut Vec<u8>) {
    out.push(VALUES_XOR);
    let mut previous = 0u64;
    for &value in values {
        let bits = value.to_bits();
        let xor = bits ^ previous;
        previous = bits;
        if xor == 0 {
            out.push(0);
            continue;
        }
        let leading = (xor.leading_zeros() / 8) as usize;
        let trailing = (xor.trailing_zeros() / 8) as usize;
        let len = 8 - leading - trailing;
        out.push(0x40 | ((leading as u8) << 3) | trailing as u8);
        let bytes = (xor >> (trailing * 8)).to_le_bytes();
        out.extend_from_slice(&bytes[..len]);
    }
}

pub(crate) fn decode_values(reader: &mut Reader<'_>, count: usize) -> DResult<Vec<f64>> {
    let mut values = Vec::with_capacity(count);
    decode_values_into(reader, count, &mut values)?;
    Ok(values)
}

/// [`decode_values`], appended to `values`.
fn decode_values_into(reader: &mut Reader<'_>, count: usize, values: &mut Vec<f64>) -> DResult<()> {
    match reader.u8()? {
        VALUES_DECIMAL => decode_decimal(reader, count, values),
        VALUES_XOR => decode_xor(reader, count, values),
        tag => Err(DecodeError::UnknownTag {
            what: "value codec",
            tag,
        }),
    }
}

fn decode_decimal(reader: &mut Reader<'_>, count: usize, values: &mut Vec<f64>) -> DResult<()> {
    let scale = reader.u8()? as usize;
    let power = *POW10
        .get(scale)
        .ok_or(DecodeError::Invalid("decimal scale out of range"))?;
    let mode = reader.u8()?;
    if mode != INTS_DELTA && mode != INTS_DELTA_OF_DELTA {
        return Err(DecodeError::UnknownTag {
            what: "integer codec",
            tag: mode,
        });
    }
    let exception_count = reader.count("exception", 9)?;
    if exception_count > count {
        return Err(DecodeError::Invalid("more exceptions than values"));
    }
    let mut exceptions = Vec::with_capacity(exception_count);
    let mut index = 0usize;
    for position in 0..exception_count {
        let step = usize::try_from(reader.varint()?)
            .map_err(|_| DecodeError::Invalid("exception index"))?;
        if position > 0 && step == 0 {
            return Err(DecodeError::Invalid("exception indices not increasing"));
        }
        index = index
            .checked_add(step)
            .filter(|&i| i < count)
            .ok_or(DecodeError::Invalid("exception index out of range"))?;
        exceptions.push((index, f64::from_bits(reader.u64_le()?)));
    }
    let start = values.len();
    values.reserve(count);
    if count > 0 {
        let divisor = reader.varint()?;
        if divisor == 0 {
            return Err(DecodeError::Invalid("zero step divisor"));
        }
        let divisor = divisor as i64;
        let mut int = reader.zigzag()?;
        values.push(int as f64 / power);
        let mut quotient = 0i64;
        for _ in 1..count {
            let read = reader.zigzag()?;
            quotient = if mode == INTS_DELTA {
                read
            } else {
                quotient.wrapping_add(read)
            };
            int = int.wrapping_add(quotient.wrapping_mul(divisor));
            values.push(int as f64 / power);
        }
    }
    for (index, value) in exceptions {
        if let Some(slot) = values.get_mut(start + index) {
            *slot = value;
        }
    }
    Ok(())
}

fn decode_xor(reader: &mut Reader<'_>, count: usize, values: &mut Vec<f64>) -> DResult<()> {
    values.reserve(count);
    let mut previous = 0u64;
    for _ in 0..count {
        let control = reader.u8()?;
        if control != 0 {
            if control & 0xc0 != 0x40 {
                return Err(DecodeError::UnknownTag {
                    what: "xor control",
                    tag: control,
                });
            }
            let leading = usize::from((control >> 3) & 7);
            let trailing = usize::from(control & 7);
            let len = 8usize
                .checked_sub(leading + trailing)
                .filter(|&len| len > 0)
                .ok_or(DecodeError::Invalid("xor byte counts exceed 8"))?;
            let mut bytes = [0u8; 8];
            bytes[..len].copy_from_slice(reader.take(len)?);
            previous ^= u64::from_le_bytes(bytes) << (trailing * 8);
        }
        values.push(f64::from_bits(previous));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Framing: tag, optional zstd, checksum

/// Wraps an encoded body: compresses it when that pays, and appends a CRC-32 of the result.
pub(crate) fn seal(body: &[u8], zstd_level: i32) -> Vec<u8> {
    // One compression context per thread and level: creating one per chunk costs more than
    // compressing a small chunk.
    thread_local! {
        static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
            const { std::cell::RefCell::new(None) };
    }
    let header = 1 + varint_len(body.len() as u64);
    // Compressed in place, behind the tag and length: a buffer of its own for the compressed
    // bytes cost the body's size once more, at a hub's largest log frames.
    let mut out = Vec::with_capacity(header + zstd::compress_bound(body.len()) + 4);
    let compressed = body.len() > 32
        && COMPRESSOR.with(|cell| {
            let mut cell = cell.borrow_mut();
            if cell.as_ref().is_none_or(|(level, _)| *level != zstd_level) {
                *cell = zstd::bulk::Compressor::new(zstd_level)
                    .ok()
                    .map(|c| (zstd_level, c));
            }
            let Some((_, compressor)) = cell.as_mut() else {
                return false;
            };
            out.push(TAG_ZSTD);
            put_varint(&mut out, body.len() as u64);
            let mut behind_header = std::io::Cursor::new(&mut out);
            behind_header.set_position(header as u64);
            compressor
                .compress_to_buffer(body, &mut behind_header)
                .is_ok_and(|len| len + header - 1 < body.len())
        });
    if !compressed {
        out.clear();
        out.push(TAG_PLAIN);
        out.extend_from_slice(body);
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Checks the checksum and returns the decompressed body.
pub(crate) fn unseal(bytes: &[u8]) -> DResult<std::borrow::Cow<'_, [u8]>> {
    if bytes.len() < 5 {
        return Err(DecodeError::Truncated {
            needed: 5 - bytes.len(),
        });
    }
    let (content, crc_bytes) = bytes.split_at(bytes.len() - 4);
    let mut crc = [0u8; 4];
    crc.copy_from_slice(crc_bytes);
    let stored = u32::from_le_bytes(crc);
    let computed = crc32fast::hash(content);
    if stored != computed {
        return Err(DecodeError::Checksum { stored, computed });
    }
    let mut reader = Reader::new(content);
    match reader.u8()? {
        TAG_PLAIN => Ok(std::borrow::Cow::Borrowed(reader.take(reader.remaining())?)),
        TAG_ZSTD => {
            let len = reader.varint()?;
            if len > MAX_BODY_BYTES as u64 {
                return Err(DecodeError::TooLarge {
                    what: "decompressed body",
                    count: len,
                    limit: MAX_BODY_BYTES as u64,
                });
            }
            // One decompression context per thread, as for compression: a context costs more
            // to create than a small chunk costs to decompress.
            thread_local! {
                static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
                    const { std::cell::RefCell::new(None) };
            }
            let compressed = reader.take(reader.remaining())?;
            let body = DECOMPRESSOR
                .with(|cell| {
                    let mut cell = cell.borrow_mut();
                    if cell.is_none() {
                        *cell = Some(zstd::bulk::Decompressor::new()?);
                    }
                    cell.as_mut()
                        .expect("set above")
                        .decompress(compressed, len as usize)
                })
                .map_err(|e| DecodeError::Zstd(e.to_string()))?;
            if body.len() as u64 != len {
                return Err(DecodeError::Invalid(
                    "decompressed length differs from header",
                ));
            }
            Ok(std::borrow::Cow::Owned(body))
        }
        tag => Err(DecodeError::UnknownTag {
            what: "chunk framing",
            tag,
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Sample and rollup chunks

/// Appends the body encoding of samples (count, timestamps, values) without framing.
pub(crate) fn encode_samples_body(timestamps: &[i64], values: &[f64], out: &mut Vec<u8>) {
    debug_assert_eq!(timestamps.len(), values.len());
    put_varint(out, timestamps.len() as u64);
    encode_timestamps(timestamps, out);
    encode_values(values, out);
}

pub(crate) fn decode_samples_body(reader: &mut Reader<'_>) -> DResult<(Vec<i64>, Vec<f64>)> {
    // Each sample needs at least one byte of timestamp and one of value (or an exception).
    let count = reader.count("sample", 2)?;
    let timestamps = decode_timestamps(reader, count)?;
    let values = decode_values(reader, count)?;
    Ok((timestamps, values))
}

/// Encodes a run of samples, sorted by timestamp with one sample per timestamp, as a chunk body
/// without framing (no zstd, no checksum): for callers that compress and authenticate many runs
/// together, as the sync protocol does with its batches.
pub fn encode_samples(timestamps: &[i64], values: &[f64]) -> Vec<u8> {
    let mut body = Vec::with_capacity(timestamps.len() * 3 + 16);
    encode_samples_body(timestamps, values, &mut body);
    body
}

/// Decodes what [`encode_samples`] wrote. Any input gives samples or an error, never a panic.
pub fn decode_samples(bytes: &[u8]) -> Result<(Vec<i64>, Vec<f64>), DecodeError> {
    let mut reader = Reader::new(bytes);
    let decoded = decode_samples_body(&mut reader)?;
    reader.finish()?;
    Ok(decoded)
}

/// How many samples an encoded run says it holds, checked as [`decode_samples`] checks it
/// (at most one per two bytes): for sizing a buffer before decoding several runs into it.
pub fn samples_in(bytes: &[u8]) -> Result<usize, DecodeError> {
    Reader::new(bytes).count("sample", 2)
}

/// [`decode_samples`] into two buffers, replacing what they held: for a caller decoding many
/// runs, who then allocates for none of them (a hub decodes a hundred runs per batch).
/// On an error the buffers hold part of the run.
pub fn decode_samples_into(
    bytes: &[u8],
    timestamps: &mut Vec<i64>,
    values: &mut Vec<f64>,
) -> Result<(), DecodeError> {
    timestamps.clear();
    values.clear();
    let mut reader = Reader::new(bytes);
    let count = reader.count("sample", 2)?;
    decode_timestamps_into(&mut reader, count, timestamps)?;
    decode_values_into(&mut reader, count, values)?;
    reader.finish()
}

/// Encodes a sorted run of samples as a stored chunk.
pub fn encode_chunk(timestamps: &[i64], values: &[f64], zstd_level: i32) -> Vec<u8> {
    let mut body = Vec::with_capacity(timestamps.len() * 3 + 16);
    encode_samples_body(timestamps, values, &mut body);
    seal(&body, zstd_level)
}

/// Decodes a stored chunk. Any input gives samples or an error, never a panic.
pub fn decode_chunk(bytes: &[u8]) -> Result<(Vec<i64>, Vec<f64>), DecodeError> {
    let body = unseal(bytes)?;
    let mut reader = Reader::new(&body);
    let decoded = decode_samples_body(&mut reader)?;
    reader.finish()?;
    Ok(decoded)
}

/// The timestamps of a stored chunk, its values left undecoded (the checksum still covers
/// them): for lookups that ask only whether a series has samples in a range.
pub(crate) fn decode_chunk_timestamps(bytes: &[u8]) -> Result<Vec<i64>, DecodeError> {
    let body = unseal(bytes)?;
    let mut reader = Reader::new(&body);
    let count = reader.count("sample", 2)?;
    decode_timestamps(&mut reader, count)
}

/// Encodes rollup points, sorted by bucket start, as a stored chunk.
pub fn encode_rollup_chunk(buckets: &[i64], rollups: &[Rollup], zstd_level: i32) -> Vec<u8> {
    debug_assert_eq!(buckets.len(), rollups.len());
    let mut body = Vec::with_capacity(buckets.len() * 8 + 16);
    put_varint(&mut body, buckets.len() as u64);
    encode_timestamps(buckets, &mut body);
    let mut previous = 0i64;
    for rollup in rollups {
        let count = rollup.count as i64;
        put_zigzag(&mut body, count.wrapping_sub(previous));
        previous = count;
    }
    let column = |pick: fn(&Rollup) -> f64, body: &mut Vec<u8>| {
        let values: Vec<f64> = rollups.iter().map(pick).collect();
        encode_values(&values, body);
    };
    column(|r| r.min, &mut body);
    column(|r| r.max, &mut body);
    column(|r| r.sum, &mut body);
    column(|r| r.last, &mut body);
    seal(&body, zstd_level)
}

/// Decodes a stored rollup chunk. Any input gives points or an error, never a panic.
pub fn decode_rollup_chunk(bytes: &[u8]) -> Result<(Vec<i64>, Vec<Rollup>), DecodeError> {
    let body = unseal(bytes)?;
    let mut reader = Reader::new(&body);
    // Bucket, count and four value columns: at least six bytes per point.
    let count = reader.count("rollup point", 6)?;
    let buckets = decode_timestamps(&mut reader, count)?;
    let mut counts = Vec::with_capacity(count);
    let mut previous = 0i64;
    for _ in 0..count {
        previous = previous.wrapping_add(reader.zigzag()?);
        counts.push(previous as u64);
    }
    let min = decode_values(&mut reader, count)?;
    let max = decode_values(&mut reader, count)?;
    let sum = decode_values(&mut reader, count)?;
    let last = decode_values(&mut reader, count)?;
    reader.finish()?;
    let rollups = (0..count)
        .map(|i| Rollup {
            min: min[i],
            max: max[i],
            sum: sum[i],
            count: counts[i],
            last: last[i],
        })
        .collect();
    Ok((buckets, rollups))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(timestamps: &[i64], values: &[f64]) {
        let bytes = encode_chunk(timestamps, values, 3);
        let (ts, vs) = decode_chunk(&bytes).expect("decodes");
        assert_eq!(ts, timestamps);
        let bits: Vec<u64> = vs.iter().map(|v| v.to_bits()).collect();
        let expected: Vec<u64> = values.iter().map(|v| v.to_bits()).collect();
        assert_eq!(bits, expected);
    }

    #[test]
    fn special_values_round_trip() {
        let values = [
            0.0,
            -0.0,
            f64::NAN,
            f64::from_bits(0x7ff8_dead_beef_0001),
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MIN_POSITIVE,
            f64::MAX,
            111.11,
            0.1 + 0.2,
        ];
        let timestamps: Vec<i64> = (0..values.len() as i64).map(|i| i * 1000).collect();
        round_trip(&timestamps, &values);
    }

    #[test]
    fn short_decimals_use_the_decimal_codec_and_compress_well() {
        let timestamps: Vec<i64> = (0..3600).map(|i| 1_700_000_000_000 + i * 1000).collect();
        let values: Vec<f64> = (0..3600)
            .map(|i| f64::from(11_111 + 37 * i) / 100.0)
            .collect();
        let mut body = Vec::new();
        encode_values(&values, &mut body);
        assert_eq!(body[0], VALUES_DECIMAL);
        let bytes = encode_chunk(&timestamps, &values, 3);
        assert!(bytes.len() < 3600 / 2, "{} bytes", bytes.len());
        round_trip(&timestamps, &values);
    }

    #[test]
    fn binary_fractions_fall_back_to_xor() {
        let values: Vec<f64> = (1..200).map(|i| 1.0 / f64::from(i) + 1e-3).collect();
        let mut body = Vec::new();
        encode_values(&values, &mut body);
        assert_eq!(body[0], VALUES_XOR);
        let timestamps: Vec<i64> = (0..values.len() as i64).collect();
        round_trip(&timestamps, &values);
    }

    #[test]
    fn decimal_sums_are_exact() {
        assert_eq!(add_decimal(0.1, 0.2), 0.3);
        assert_eq!(add_decimal(111.11, 0.005), 111.115);
        assert_eq!(add_decimal(1e300, 1e300), 2e300);
        assert!(add_decimal(f64::NAN, 1.0).is_nan());
        assert_eq!(add_decimal(f64::INFINITY, 1.0), f64::INFINITY);
        let mut forward = 0.0;
        let mut backward = 0.0;
        let values: Vec<f64> = (0..1000)
            .map(|i| f64::from(i) * 0.01 + 0.07)
            .map(|v| (v * 100.0).round() / 100.0)
            .collect();
        for v in &values {
            forward = add_decimal(forward, *v);
        }
        for v in values.iter().rev() {
            backward = add_decimal(backward, *v);
        }
        assert_eq!(forward.to_bits(), backward.to_bits());
    }

    #[test]
    fn extreme_timestamps_round_trip() {
        round_trip(
            &[i64::MIN, i64::MAX, 0, -1, i64::MAX],
            &[1.0, 2.0, 3.0, 4.0, 5.0],
        );
    }

    #[test]
    fn corruption_is_detected() {
        let bytes = encode_chunk(&[1, 2, 3], &[1.0, 2.0, 3.0], 3);
        for i in 0..bytes.len() {
            let mut corrupt = bytes.clone();
            corrupt[i] ^= 0x10;
            assert!(
                decode_chunk(&corrupt).is_err(),
                "flip at byte {i} went unnoticed"
            );
        }
    }

    #[test]
    fn hostile_counts_are_refused_without_allocating() {
        let mut body = Vec::new();
        put_varint(&mut body, u64::MAX >> 1);
        let bytes = seal(&body, 3);
        assert!(matches!(
            decode_chunk(&bytes),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    fn any_f64() -> impl Strategy<Value = f64> {
        prop_oneof![
            any::<u64>().prop_map(f64::from_bits),
            (-1_000_000i64..1_000_000, 0u32..4).prop_map(|(i, s)| i as f64 / 10f64.powi(s as i32)),
            Just(-0.0),
            Just(f64::NAN),
        ]
    }

    proptest! {
        #[test]
        fn any_samples_round_trip(samples in proptest::collection::vec((any::<i64>(), any_f64()), 0..300)) {
            let timestamps: Vec<i64> = samples.iter().map(|s| s.0).collect();
            let values: Vec<f64> = samples.iter().map(|s| s.1).collect();
            round_trip(&timestamps, &values);
        }

        #[test]
        fn any_rollups_round_trip(points in proptest::collection::vec((any::<i64>(), any_f64(), any_f64(), any::<u64>()), 0..100)) {
            let buckets: Vec<i64> = points.iter().map(|p| p.0).collect();
            let rollups: Vec<Rollup> = points.iter().map(|p| Rollup { min: p.1, max: p.2, sum: p.1 + p.2, count: p.3, last: p.2 }).collect();
            let bytes = encode_rollup_chunk(&buckets, &rollups, 3);
            let (b, r) = decode_rollup_chunk(&bytes).unwrap();
            prop_assert_eq!(b, buckets);
            prop_assert!(r.iter().zip(&rollups).all(|(a, b)| a.bits_eq(b)));
        }

        /// Decoding into reused buffers gives what decoding into fresh ones gives, for runs
        /// of either value codec (with exceptions) and for garbage, whatever the buffers held.
        #[test]
        fn decoding_into_used_buffers_matches_decoding_anew(
            samples in proptest::collection::vec((any::<i64>(), any_f64()), 0..300),
            decimals in proptest::collection::vec(-1_000_000i64..1_000_000, 0..300),
            garbage in proptest::collection::vec(any::<u8>(), 0..200),
            held in proptest::collection::vec(any::<i64>(), 0..50),
        ) {
            let timestamps: Vec<i64> = samples.iter().map(|s| s.0).collect();
            let values: Vec<f64> = samples.iter().map(|s| s.1).collect();
            let mut decimal_values: Vec<f64> = decimals.iter().map(|&d| d as f64 / 100.0).collect();
            if let Some(first) = decimal_values.first_mut() {
                *first = f64::NAN; // an exception among decimals
            }
            let decimal_times: Vec<i64> = (0..decimal_values.len() as i64).map(|t| t * 1000).collect();
            let inputs = [
                encode_samples(&timestamps, &values),
                encode_samples(&decimal_times, &decimal_values),
                garbage,
            ];
            let mut into = (held.clone(), held.iter().map(|&h| h as f64).collect::<Vec<f64>>());
            for bytes in &inputs {
                let fresh = decode_samples(bytes);
                let reused = decode_samples_into(bytes, &mut into.0, &mut into.1);
                match fresh {
                    Ok((t, v)) => {
                        prop_assert!(reused.is_ok());
                        prop_assert_eq!(samples_in(bytes), Ok(t.len()));
                        prop_assert_eq!(&into.0, &t);
                        prop_assert_eq!(
                            into.1.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                            v.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                        );
                    }
                    Err(error) => prop_assert_eq!(reused.unwrap_err().to_string(), error.to_string()),
                }
            }
        }

        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_chunk(&bytes);
            let _ = decode_rollup_chunk(&bytes);
            // Also behind a valid checksum, so that the body decoders see the garbage.
            let sealed = seal(&bytes, 1);
            let _ = decode_chunk(&sealed);
            let _ = decode_rollup_chunk(&sealed);
        }
    }
}
