//! Reading a damaged store: what [`Store::check`] finds wrong, and [`Store::salvage_into`],
//! which copies everything still readable into a new store.
//!
//! Both read series by series, each series' chunks in their own read transaction and with any
//! panic of the database engine contained, so that damage to one part of the file costs only
//! the data stored there.

use redb::ReadableTable;

use crate::codec::{decode_chunk, decode_rollup_chunk};
use crate::error::{Error, Result};
use crate::store::{contain, CHUNKS, SERIES};
use crate::{SeriesKey, StateTable, Store, Tier, WriteBatch};

/// What [`Store::check`] and [`Store::salvage_into`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    pub series: u64,
    /// Chunks that decoded, per tier (raw, minute, hour).
    pub chunks_ok: [u64; 3],
    /// Raw samples and rollup points in the chunks that decoded.
    pub points_ok: [u64; 3],
    /// Samples replayed from the write-ahead logs (not yet in chunks).
    pub head_samples: u64,
    /// State-table entries read.
    pub state_entries: u64,
    /// One line per problem: what could not be read, and why.
    pub problems: Vec<String>,
}

impl CheckReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// One decoded chunk: raw samples, or rollup points of a tier.
enum Decoded {
    Raw(Vec<(i64, f64)>),
    Rollups(Tier, Vec<(i64, crate::Rollup)>),
}

impl Store {
    /// Reads every chunk and state entry of the store and reports what is damaged. Read-only
    /// stores are fine; nothing is written.
    pub fn check(&self) -> Result<CheckReport> {
        self.walk(|_, _| Ok(()), |_, _| Ok(()))
    }

    /// Copies every readable series, chunk and state entry into `target` (a new store), sealing
    /// as it goes; returns what it could and could not read.
    pub fn salvage_into(&self, target: &Store) -> Result<CheckReport> {
        let report = self.walk(
            |key, decoded| {
                let id = target.series_id(key)?;
                let mut batch = WriteBatch::default();
                match decoded {
                    Decoded::Raw(samples) => {
                        for (t, v) in samples {
                            batch.sample(id, *t, *v);
                        }
                    }
                    Decoded::Rollups(tier, points) => {
                        for (bucket, rollup) in points {
                            batch.rollup(id, *tier, *bucket, *rollup);
                        }
                    }
                }
                target.write(batch)
            },
            |table, entries| {
                let mut batch = WriteBatch::default();
                for (key, value) in entries {
                    batch.put_state(table, key.clone(), value.clone());
                }
                target.write(batch)
            },
        )?;
        // Samples replayed from the logs, which are in no chunk yet.
        let keys = self.all_series();
        for (id, key) in keys {
            let points = self.head_points(id);
            if points.is_empty() {
                continue;
            }
            let target_id = target.series_id(&key)?;
            let mut batch = WriteBatch::default();
            for (t, v) in points {
                batch.sample(target_id, t, v);
            }
            target.write(batch)?;
        }
        target.seal()?;
        Ok(report)
    }

    fn walk(
        &self,
        mut on_series: impl FnMut(&SeriesKey, &Decoded) -> Result<()>,
        mut on_state: impl FnMut(StateTable, &[(String, Vec<u8>)]) -> Result<()>,
    ) -> Result<CheckReport> {
        let mut report = CheckReport {
            problems: self.replay_report().to_vec(),
            ..CheckReport::default()
        };
        let series = self.all_series();
        report.series = series.len() as u64;
        report.head_samples = series
            .iter()
            .map(|(id, _)| self.head_points(*id).len() as u64)
            .sum();
        // The catalogue came from the series table at open; reading it again tells whether its
        // pages are still readable now.
        if let Err(e) = contain(self.path(), || self.read_series_table()) {
            report
                .problems
                .push(format!("the series table is unreadable: {e}"));
        }
        for (id, key) in &series {
            let chunks = contain(self.path(), || self.series_chunks(*id));
            let chunks = match chunks {
                Ok(chunks) => chunks,
                Err(e) => {
                    report
                        .problems
                        .push(format!("chunks of {key} are unreadable: {e}"));
                    continue;
                }
            };
            for (tier, window, bytes) in chunks {
                let decoded = match tier {
                    0 => decode_chunk(&bytes)
                        .map(|(t, v)| Decoded::Raw(t.into_iter().zip(v).collect())),
                    1 | 2 => {
                        let tier = if tier == 1 { Tier::Minute } else { Tier::Hour };
                        decode_rollup_chunk(&bytes)
                            .map(|(b, r)| Decoded::Rollups(tier, b.into_iter().zip(r).collect()))
                    }
                    other => {
                        report
                            .problems
                            .push(format!("{key}: chunk of unknown tier {other}"));
                        continue;
                    }
                };
                match decoded {
                    Ok(decoded) => {
                        let slot = usize::from(tier);
                        report.chunks_ok[slot] += 1;
                        report.points_ok[slot] += match &decoded {
                            Decoded::Raw(s) => s.len() as u64,
                            Decoded::Rollups(_, p) => p.len() as u64,
                        };
                        on_series(key, &decoded)?;
                    }
                    Err(e) => report.problems.push(format!(
                        "{key}: {} chunk of the window starting {} is corrupt ({e}): lost",
                        ["raw", "1-minute", "1-hour"][usize::from(tier)],
                        crate::rfc3339_ms(window)
                    )),
                }
            }
        }
        for table in StateTable::ALL {
            match contain(self.path(), || self.state_list(table, "")) {
                Ok(entries) => {
                    report.state_entries += entries.len() as u64;
                    on_state(table, &entries)?;
                }
                Err(e) => report.problems.push(format!(
                    "state table {} is unreadable: {e}",
                    table.table_name()
                )),
            }
        }
        Ok(report)
    }

    fn read_series_table(&self) -> Result<()> {
        let db = self.read_db();
        let txn = db.begin_read()?;
        let table = txn.open_table(SERIES)?;
        for entry in table.iter()? {
            entry?;
        }
        Ok(())
    }

    fn series_chunks(&self, id: u32) -> Result<Vec<(u8, i64, Vec<u8>)>> {
        let db = self.read_db();
        let txn = db.begin_read()?;
        let table = match txn.open_table(CHUNKS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(Error::from(e)),
        };
        let mut out = Vec::new();
        for entry in table.range((id, 0u8, i64::MIN)..=(id, u8::MAX, i64::MAX))? {
            let (key, value) = entry?;
            let (_, tier, window) = key.value();
            out.push((tier, window, value.value().to_vec()));
        }
        Ok(out)
    }
}
