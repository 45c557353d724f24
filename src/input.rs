//! Reading the files users hand to the commands: plain text or zstd-compressed, recognised by
//! content rather than by name, so `tegrastats.log.zst` and a piped `zstd -dc` both work.

use std::io::{BufRead, BufReader};

/// The four bytes every zstd frame starts with.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

pub fn is_zstd(bytes: &[u8]) -> bool {
    bytes.starts_with(&ZSTD_MAGIC)
}

/// Wraps `reader` in a zstd decoder when its content is compressed.
pub fn decompressing<'a, R: BufRead + 'a>(mut reader: R) -> std::io::Result<Box<dyn BufRead + 'a>> {
    if is_zstd(reader.fill_buf()?) {
        Ok(Box::new(BufReader::with_capacity(
            1 << 20,
            zstd::Decoder::with_buffer(reader)?,
        )))
    } else {
        Ok(Box::new(reader))
    }
}
