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

#[derive(Clone, PartialEq, prost::Message)]
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

    /// The labels as remote_write wants them: `__name__` among them, sorted by name.
    pub fn labels(&self) -> impl Iterator<Item = (&str, &str)> {
        let pairs = self.key.labels();
        // Stable, as `labels_of`: a key's own `__name__` label stays before the name.
        let split = pairs
            .clone()
            .take_while(|&(name, _)| name <= "__name__")
            .count();
        pairs
            .clone()
            .take(split)
            .chain(std::iter::once(("__name__", self.name())))
            .chain(pairs.skip(split))
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

    /// A series read back from the protobuf message: its labels must make a valid key.
    pub fn from_time_series(series: TimeSeries) -> Result<KeyedSeries, String> {
        let mut name = None;
        let mut labels = Vec::with_capacity(series.labels.len());
        for label in series.labels {
            if label.name == "__name__" && name.is_none() {
                name = Some(label.value);
            } else {
                labels.push((label.name, label.value));
            }
        }
        let name = name.ok_or("a series without __name__")?;
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
/// format. Written by hand, each series sized just before it is written: its key is then still
/// in the cache (sizing a whole request first read every key of a large fleet twice from
/// memory).
pub fn encode_keyed(series: &[KeyedSeries]) -> Result<Vec<u8>, snap::Error> {
    let samples: usize = series.iter().map(|s| s.samples.len()).sum();
    // An estimate: 96 bytes of labels a series, 14 bytes a sample (value, millisecond time).
    let mut out = Vec::with_capacity(series.len() * 96 + samples * 14);
    for one in series {
        put_length_delimited(&mut out, 1, series_length(one)); // WriteRequest.timeseries
        for (name, value) in one.labels() {
            put_length_delimited(&mut out, 1, label_length(name, value)); // TimeSeries.labels
            put_string(&mut out, 1, name);
            put_string(&mut out, 2, value);
        }
        for sample in &one.samples {
            put_length_delimited(&mut out, 2, sample_length(sample)); // TimeSeries.samples
            if sample.value != 0.0 {
                out.push(1 << 3 | 1); // Sample.value, 64-bit
                out.extend_from_slice(&sample.value.to_le_bytes());
            }
            if sample.timestamp != 0 {
                out.push(2 << 3); // Sample.timestamp, varint
                put_varint(&mut out, sample.timestamp as u64);
            }
        }
    }
    snap::raw::Encoder::new().compress_vec(&out)
}

fn series_length(series: &KeyedSeries) -> usize {
    let labels: usize = series
        .labels()
        .map(|(name, value)| field_length(label_length(name, value)))
        .sum();
    let samples: usize = series
        .samples
        .iter()
        .map(|s| field_length(sample_length(s)))
        .sum();
    labels + samples
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

fn sample_length(sample: &Sample) -> usize {
    let value = if sample.value != 0.0 { 9 } else { 0 };
    let timestamp = if sample.timestamp != 0 {
        1 + varint_length(sample.timestamp as u64)
    } else {
        0
    };
    value + timestamp
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
