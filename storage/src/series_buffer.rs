//! One series' samples in the head, in write order, held compactly. The head holds every sample
//! since the last seal (15 minutes by default: 900 a series at 1 Hz), and on a device that is
//! most of the agent's heap, so full blocks of [`BLOCK`] samples are kept in the raw chunk body
//! encoding (delta-of-delta timestamps, the decimal value codec: a few bytes a sample, exact)
//! rather than as 16-byte pairs in a vector that grows by doubling.

use crate::codec::{decode_samples_body, encode_samples_body, Reader};

/// Samples per encoded block: small enough that the open tail costs little per series, large
/// enough that a block's own overhead (its first timestamp in full, its count) is amortised.
pub(crate) const BLOCK: usize = 64;

#[derive(Debug, Default, Clone)]
pub(crate) struct SeriesBuffer {
    blocks: Vec<Box<[u8]>>,
    tail: Vec<(i64, f64)>,
}

impl SeriesBuffer {
    pub(crate) fn push(&mut self, ts: i64, value: f64) {
        if self.tail.capacity() == 0 {
            self.tail.reserve_exact(BLOCK);
        }
        self.tail.push((ts, value));
        if self.tail.len() == BLOCK {
            let (timestamps, values): (Vec<i64>, Vec<f64>) = self.tail.drain(..).unzip();
            let mut body = Vec::with_capacity(BLOCK * 4);
            encode_samples_body(&timestamps, &values, &mut body);
            self.blocks.push(body.into_boxed_slice());
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.blocks.len() * BLOCK + self.tail.len()
    }

    fn block(bytes: &[u8]) -> impl Iterator<Item = (i64, f64)> {
        // Blocks are written by this process from valid samples; failing to read one back is a
        // bug, not bad input.
        let (timestamps, values) = decode_samples_body(&mut Reader::new(bytes))
            .expect("a head block decodes: it was encoded in this process");
        timestamps.into_iter().zip(values)
    }

    /// Samples `from..to` in write order (`to` at most [`SeriesBuffer::len`]).
    pub(crate) fn range(&self, from: usize, to: usize) -> Vec<(i64, f64)> {
        let to = to.min(self.len());
        let mut out = Vec::with_capacity(to.saturating_sub(from));
        if from >= to {
            return out;
        }
        for index in from / BLOCK..self.blocks.len().min(to.div_ceil(BLOCK)) {
            let start = index * BLOCK;
            out.extend(
                Self::block(&self.blocks[index])
                    .enumerate()
                    .filter(|(i, _)| (from..to).contains(&(start + i)))
                    .map(|(_, sample)| sample),
            );
        }
        let tail_start = self.blocks.len() * BLOCK;
        if to > tail_start {
            out.extend_from_slice(&self.tail[from.saturating_sub(tail_start)..to - tail_start]);
        }
        out
    }

    pub(crate) fn to_vec(&self) -> Vec<(i64, f64)> {
        self.range(0, self.len())
    }

    /// Heap bytes held, for the store's figures and the tests.
    #[cfg(test)]
    pub(crate) fn heap_bytes(&self) -> usize {
        self.blocks.iter().map(|b| b.len()).sum::<usize>()
            + self.blocks.capacity() * std::mem::size_of::<Box<[u8]>>()
            + self.tail.capacity() * 16
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn holds_exactly_what_a_vector_would(
            samples in prop::collection::vec((any::<i64>(), any::<u64>()), 0..400),
            from in 0usize..450,
            len in 0usize..450,
        ) {
            let samples: Vec<(i64, f64)> =
                samples.into_iter().map(|(t, v)| (t, f64::from_bits(v))).collect();
            let mut buffer = SeriesBuffer::default();
            for &(t, v) in &samples {
                buffer.push(t, v);
            }
            let bits = |s: &[(i64, f64)]| s.iter().map(|(t, v)| (*t, v.to_bits())).collect::<Vec<_>>();
            prop_assert_eq!(buffer.len(), samples.len());
            prop_assert_eq!(bits(&buffer.to_vec()), bits(&samples));
            let to = (from + len).min(samples.len());
            let from = from.min(to);
            prop_assert_eq!(bits(&buffer.range(from, to)), bits(&samples[from..to]));
        }
    }

    #[test]
    fn a_regular_series_takes_a_fraction_of_a_vectors_memory() {
        let mut buffer = SeriesBuffer::default();
        let mut vector = Vec::new();
        // 15 minutes at 1 Hz with a few ms of jitter, a temperature in tenths of a degree.
        for i in 0..900i64 {
            let (ts, value) = (
                1_790_000_000_000 + i * 1000 + (i * 7) % 5,
                40.0 + (i % 13) as f64 / 10.0,
            );
            buffer.push(ts, value);
            vector.push((ts, value));
        }
        let vector_bytes = vector.capacity() * 16;
        assert!(
            buffer.heap_bytes() * 3 < vector_bytes,
            "{} bytes against {vector_bytes}",
            buffer.heap_bytes()
        );
    }
}
