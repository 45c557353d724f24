//! Chunk codec speed: encode and decode samples per second, on real series and on noise.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use outpost_storage::codec::{decode_chunk, encode_chunk};
use std::hint::black_box;

mod common;

fn codec(c: &mut Criterion) {
    let series = common::host_series();
    let mut cases: Vec<(String, Vec<i64>, Vec<f64>)> = [
        "node_memory_Active_bytes",
        r#"node_cpu_seconds_total{cpu="0",mode="user"}"#,
        "node_load1",
    ]
    .iter()
    .map(|name| {
        let (t, v) = series[*name].clone();
        (name.to_string(), t, v)
    })
    .collect();
    // Binary fractions that no decimal scale fits: the XOR path.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let noise: Vec<f64> = (0..3600)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 11) as f64 / (1u64 << 53) as f64
        })
        .collect();
    cases.push(("noise".into(), cases[0].1.clone(), noise));

    let mut group = c.benchmark_group("codec");
    for (name, timestamps, values) in &cases {
        group.throughput(Throughput::Elements(timestamps.len() as u64));
        group.bench_function(format!("encode/{name}"), |b| {
            b.iter(|| encode_chunk(black_box(timestamps), black_box(values), 9))
        });
        let encoded = encode_chunk(timestamps, values, 9);
        group.bench_function(format!("decode/{name}"), |b| {
            b.iter(|| decode_chunk(black_box(&encoded)).expect("decodes"))
        });
    }
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
