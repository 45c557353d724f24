//! tegrastats parser throughput on the real TX2 log (2,660 lines). jetson-stats' parser on the
//! same lines: `benches/jtop-speed.py`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn parse(c: &mut Criterion) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/tegrastats/tx2-jetpack4-2660s.log.zst"
    );
    let bytes = zstd::decode_all(std::fs::File::open(path).expect("TX2 log")).expect("zstd");
    let text = String::from_utf8(bytes).expect("utf-8");
    let lines: Vec<&str> = text.lines().collect();
    let mut group = c.benchmark_group("tegrastats");
    group.throughput(Throughput::Elements(lines.len() as u64));
    group.bench_function("parse/tx2-2660-lines", |b| {
        b.iter(|| {
            for line in &lines {
                black_box(outpost::tegrastats::parse(black_box(line)));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);
