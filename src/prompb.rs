//! Prometheus' remote_write 1.0 messages (`prompb`), as far as writing samples needs them: the
//! hub's remote storage sends them, and the benchmarks feed the same samples to `vmagent`.
//! Field numbers and types as in Prometheus' `types.proto` and `remote.proto`; the body of a
//! request is this protobuf, snappy-compressed (block format).

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
    encode_series(&request.timeseries)
}

/// The request of these series as it goes on the wire, encoded from the slice: the same
/// bytes as [`encode_request`], without first copying the series into a request.
pub fn encode_series(series: &[TimeSeries]) -> Result<Vec<u8>, snap::Error> {
    use prost::encoding::message;
    let field = 1; // WriteRequest.timeseries
                   // An estimate (labels, and 18 bytes a sample): the exact length costs another pass as
                   // long as the encoding itself.
    let samples: usize = series.iter().map(|s| s.samples.len()).sum();
    let mut protobuf = Vec::with_capacity(series.len() * 96 + samples * 18);
    for one in series {
        message::encode(field, one, &mut protobuf);
    }
    snap::raw::Encoder::new().compress_vec(&protobuf)
}

/// A series' labels as remote_write wants them: `__name__` among them, sorted by name.
pub fn labels_of(key: &outpost_storage::SeriesKey, name: &str) -> Vec<Label> {
    let mut labels: Vec<Label> = key
        .labels()
        .iter()
        .map(|(name, value)| Label {
            name: name.clone(),
            value: value.clone(),
        })
        .collect();
    labels.push(Label {
        name: "__name__".into(),
        value: name.into(),
    });
    labels.sort_by(|a, b| a.name.cmp(&b.name));
    labels
}
