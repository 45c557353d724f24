//! The byte budget: importing far more than the budget allows keeps the files within it (plus
//! 10 %), keeps the newest data intact, and keeps rollups of the raw data it dropped.

use outpost_storage::{Aggregation, Options, Retention, Store, WriteBatch};

use crate::selector;

#[test]
fn the_store_stays_within_its_byte_budget() {
    let budget: u64 = 4 << 20;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("budget.redb");
    let options = Options {
        budget_bytes: Some(budget),
        retention: Retention {
            raw: None,
            minute: None,
            hour: None,
        },
        max_head_samples: 150_000,
        zstd_level: 3,
        ..crate::test_options()
    };
    let store = Store::open(&path, options).unwrap();
    let series = 20usize;
    let ids: Vec<_> = crate::numbered_series(&store, "noise", series);
    // Six-digit decimals from a xorshift generator: about 3 bytes per sample after compression,
    // so 80 hours of 20 series (5.8 M samples) need about four times the budget.
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut value = |series: usize, second: i64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % 1_000_000) as f64 / 1000.0 + series as f64 + (second % 7) as f64
    };
    let hours = 80i64;
    let mut last_hour = Vec::new();
    let mut peak = 0u64;
    for hour in 0..hours {
        let mut batch = WriteBatch::with_capacity(series * 3600);
        for second in hour * 3600..(hour + 1) * 3600 {
            for (s, id) in ids.iter().enumerate() {
                let v = value(s, second);
                batch.sample(*id, second * 1000, v);
                if hour == hours - 1 && s == 0 {
                    last_hour.push((second * 1000, v));
                }
            }
        }
        store.write(batch).unwrap();
        let stats = store.stats().unwrap();
        let disk = stats.disk_bytes;
        if std::env::var_os("OUTPOST_BUDGET_TRACE").is_some() {
            eprintln!("hour {hour}: {stats:?}");
        }
        peak = peak.max(disk);
        assert!(
            disk <= budget + budget / 10,
            "hour {hour}: {disk} bytes on disk, budget {budget}"
        );
    }
    store.seal().unwrap();
    let stats = store.stats().unwrap();
    assert!(stats.disk_bytes <= budget + budget / 10, "{stats:?}");
    assert!(
        stats.raw_samples < (hours as u64) * 3600 * series as u64,
        "nothing was dropped: {stats:?}"
    );

    // The newest hour is intact.
    let sel = selector(r#"noise{s="0"}"#);
    let from = (hours - 1) * 3_600_000;
    let got = store.query_raw(&sel, from, i64::MAX).unwrap();
    assert_eq!(got[0].points, last_hour);

    // The first hour's raw samples are gone, but its rollups still answer.
    let raw = store.query_raw(&sel, 0, 3_599_999).unwrap();
    assert!(
        raw.first().is_none_or(|s| s.points.is_empty()),
        "oldest raw data kept"
    );
    let counts = store
        .query_step(&sel, 0, 3_599_999, 3_600_000, Aggregation::Count)
        .unwrap();
    assert_eq!(counts[0].points, vec![(0, 3600.0)]);
    store.close().unwrap();
    eprintln!(
        "budget {budget}, peak on disk {peak}, final {}",
        stats.disk_bytes
    );
}
