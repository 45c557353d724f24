//! Prometheus' remote_write 1.0 messages (`prompb`), as far as writing samples needs them: the
//! hub's remote storage sends them, and the benchmarks feed the same samples to `vmagent`.
//! Field numbers and types as in Prometheus' `types.proto` and `remote.proto`; the body of a
//! request is this protobuf, snappy-compressed (block format).

use std::sync::Arc;

use outpost_storage::SeriesKey;

#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
}

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// A request as it goes on the wire: protobuf, then snappy's block format (which refuses
/// inputs of 4 GiB and more).
pub fn encode_request(request: &WriteRequest) -> Result<Vec<u8>, snap::Error> {
    snap::raw::Encoder::new().compress_vec(&prost::Message::encode_to_vec(request))
}

/// A series to send, named by a key of the store. Its labels are encoded straight from the
/// key: a hub that built a `Label` per label per series for each request spent more on that
/// than on the samples.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyedSeries {
    pub key: Arc<SeriesKey>,
    /// The metric name when it is not the key's (a rollup's figure series).
    pub name: Option<Box<str>>,
    pub samples: Vec<Sample>,
}

impl KeyedSeries {
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or(self.key.name())
    }

    /// The same series without its samples, to give a part of them.
    pub fn clone_labels(&self) -> KeyedSeries {
        KeyedSeries {
            key: self.key.clone(),
            name: self.name.clone(),
            samples: Vec::new(),
        }
    }

    /// The series as the protobuf message (for the dead-letter table).
    pub fn to_time_series(&self) -> TimeSeries {
        TimeSeries {
            labels: labels_of(&self.key, self.name()),
            samples: self.samples.clone(),
        }
    }

    /// A series read back from the protobuf message: its labels must make a valid key. Of two
    /// `__name__` labels the later is the name: a key's own `__name__` label is written before
    /// the name ([`labels_of`]).
    pub fn from_time_series(series: TimeSeries) -> Result<KeyedSeries, String> {
        let mut labels: Vec<(String, String)> = series
            .labels
            .into_iter()
            .map(|label| (label.name, label.value))
            .collect();
        let at = labels
            .iter()
            .rposition(|(label, _)| label == "__name__")
            .ok_or("a series without __name__")?;
        let (_, name) = labels.remove(at);
        let key = SeriesKey::new(name, labels).map_err(|e| e.to_string())?;
        Ok(KeyedSeries {
            key: Arc::new(key),
            name: None,
            samples: series.samples,
        })
    }
}

/// The request of these series as it goes on the wire: the bytes prost gives for the same
/// [`WriteRequest`] (proto3: zero values and empty strings left out), then snappy's block
/// format.
pub fn encode_keyed(series: &[KeyedSeries]) -> Result<Vec<u8>, snap::Error> {
    let samples: usize = series.iter().map(|s| s.samples.len()).sum();
    // An estimate: 96 bytes of labels a series, 14 bytes a sample (value, millisecond time).
    let mut out = Vec::with_capacity(series.len() * 96 + samples * 14);
    for one in series {
        put_time_series(&mut out, &one.key, one.name(), &one.samples);
    }
    snap::raw::Encoder::new().compress_vec(&out)
}

/// Appends one `WriteRequest.timeseries` field: the series `key`, named `name`, with these
/// samples, written by hand straight from the key and sized just before it is written, while
/// the key is in the cache.
pub fn put_time_series(out: &mut Vec<u8>, key: &SeriesKey, name: &str, samples: &[Sample]) {
    let mut labels = 0;
    for_each_label(key, name, |label, value| {
        labels += field_length(label_length(label, value));
    });
    let sample_bytes: usize = samples.iter().map(sample_field_length).sum();
    put_length_delimited(out, 1, labels + sample_bytes); // WriteRequest.timeseries
    for_each_label(key, name, |label, value| put_label(out, label, value));
    // Room for one whole stack field past the last sample: see `put_sample`.
    out.reserve(sample_bytes + MAX_SAMPLE_FIELD);
    for sample in samples {
        put_sample(out, sample);
    }
}

/// A series' labels as `TimeSeries.labels` lists them: `__name__` among them in name order;
/// a key's own `__name__` label, if it has one, stays before the name, as in [`labels_of`].
fn for_each_label<'a>(key: &'a SeriesKey, name: &'a str, mut each: impl FnMut(&'a str, &'a str)) {
    let mut name = Some(name);
    for (label, value) in key.labels() {
        if label > "__name__" {
            if let Some(name) = name.take() {
                each("__name__", name);
            }
        }
        each(label, value);
    }
    if let Some(name) = name {
        each("__name__", name);
    }
}

fn put_label(out: &mut Vec<u8>, name: &str, value: &str) {
    put_length_delimited(out, 1, label_length(name, value)); // TimeSeries.labels
    put_string(out, 1, name);
    put_string(out, 2, value);
}

/// The most bytes a sample takes as a field of its series: tag and length, the value's tag
/// and 8 bytes, the timestamp's tag and a varint of at most 10 bytes.
const MAX_SAMPLE_FIELD: usize = 2 + 9 + 11;

/// The bytes of a sample's `TimeSeries.samples` field: its tag and one-byte length, the value
/// unless zero, the timestamp unless zero.
fn sample_field_length(sample: &Sample) -> usize {
    let value = if sample.value != 0.0 { 9 } else { 0 };
    let timestamp = if sample.timestamp != 0 {
        1 + varint_length(sample.timestamp as u64)
    } else {
        0
    };
    2 + value + timestamp
}

/// One `TimeSeries.samples` field, built on the stack and copied in one go: all of the stack
/// buffer, a copy of fixed size that compiles to a few moves, where a copy of the field's own length
/// calls `memcpy` (a third of the encoding's time in a profile of the hub), then cut to it.
fn put_sample(out: &mut Vec<u8>, sample: &Sample) {
    let mut field = [0u8; MAX_SAMPLE_FIELD];
    let mut at = 2;
    if sample.value != 0.0 {
        field[at] = 1 << 3 | 1; // Sample.value, 64-bit
        field[at + 1..at + 9].copy_from_slice(&sample.value.to_le_bytes());
        at += 9;
    }
    if sample.timestamp != 0 {
        field[at] = 2 << 3; // Sample.timestamp, varint
        at += 1;
        let mut value = sample.timestamp as u64;
        while value >= 0x80 {
            field[at] = value as u8 | 0x80;
            value >>= 7;
            at += 1;
        }
        field[at] = value as u8;
        at += 1;
    }
    field[0] = 2 << 3 | 2; // TimeSeries.samples, length-delimited
    field[1] = (at - 2) as u8; // at most 19: a one-byte varint
    let start = out.len();
    out.extend_from_slice(&field);
    out.truncate(start + at);
}

fn label_length(name: &str, value: &str) -> usize {
    string_length(name) + string_length(value)
}

fn string_length(text: &str) -> usize {
    if text.is_empty() {
        0
    } else {
        field_length(text.len())
    }
}

/// A length-delimited field's bytes: its one-byte tag, its length, its content.
fn field_length(content: usize) -> usize {
    1 + varint_length(content as u64) + content
}

fn varint_length(value: u64) -> usize {
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_length_delimited(out: &mut Vec<u8>, field: u8, length: usize) {
    out.push(field << 3 | 2);
    put_varint(out, length as u64);
}

fn put_string(out: &mut Vec<u8>, field: u8, text: &str) {
    if !text.is_empty() {
        put_length_delimited(out, field, text.len());
        out.extend_from_slice(text.as_bytes());
    }
}

/// A series' labels as remote_write wants them: `__name__` among them, sorted by name.
pub fn labels_of(key: &SeriesKey, name: &str) -> Vec<Label> {
    let mut labels: Vec<Label> = key
        .labels()
        .map(|(name, value)| Label {
            name: name.to_string(),
            value: value.to_string(),
        })
        .collect();
    labels.push(Label {
        name: "__name__".into(),
        value: name.into(),
    });
    labels.sort_by(|a, b| a.name.cmp(&b.name));
    labels
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn series() -> impl Strategy<Value = KeyedSeries> {
        // Label names on both sides of `__name__`, and `__name__` itself as a key's label.
        let label = prop_oneof![
            Just("__name__".to_string()),
            "__[a-z]{1,3}",
            "[a-zA-Z_][a-zA-Z0-9_]{0,12}",
        ];
        let value = prop_oneof![Just(String::new()), ".{1,40}", ".{100,300}"];
        let sample = (
            prop_oneof![
                Just(0.0),
                Just(-0.0),
                Just(f64::NAN),
                Just(f64::INFINITY),
                any::<f64>()
            ],
            prop_oneof![Just(0i64), Just(i64::MIN), Just(i64::MAX), any::<i64>()],
        )
            .prop_map(|(value, timestamp)| Sample { value, timestamp });
        (
            "[a-zA-Z_:][a-zA-Z0-9_:]{0,20}",
            proptest::collection::btree_map(label, value, 0..8),
            proptest::option::of("[a-z]{1,10}:max_1h"),
            proptest::collection::vec(sample, 0..40),
        )
            .prop_map(|(name, labels, own_name, samples)| KeyedSeries {
                key: Arc::new(SeriesKey::new(name, labels).expect("valid by construction")),
                name: own_name.map(String::into_boxed_str),
                samples,
            })
    }

    proptest! {
        /// The hand-written encoding is prost's, byte for byte, for any series: the engine
        /// reads it with a protobuf decoder.
        #[test]
        fn keyed_series_encode_as_prost_encodes_their_messages(
            sent in proptest::collection::vec(series(), 0..12)
        ) {
            let request = WriteRequest {
                timeseries: sent.iter().map(KeyedSeries::to_time_series).collect(),
            };
            let wire = encode_keyed(&sent).unwrap();
            let wire = snap::raw::Decoder::new().decompress_vec(&wire).unwrap();
            prop_assert_eq!(wire, prost::Message::encode_to_vec(&request));
        }

        /// A series read back from its message is the series it was (a refused part of a
        /// request, and a dead letter, are read back so).
        #[test]
        fn keyed_series_read_back_from_their_messages_are_themselves(sent in series()) {
            let back = KeyedSeries::from_time_series(sent.to_time_series()).unwrap();
            prop_assert_eq!(back.name(), sent.name());
            prop_assert_eq!(
                back.key.labels().collect::<Vec<_>>(),
                sent.key.labels().collect::<Vec<_>>()
            );
            prop_assert_eq!(
                back.samples.iter().map(|s| (s.timestamp, s.value.to_bits())).collect::<Vec<_>>(),
                sent.samples.iter().map(|s| (s.timestamp, s.value.to_bits())).collect::<Vec<_>>()
            );
        }
    }
}
