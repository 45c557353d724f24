//! The systemd journal's own files, read without `journalctl`: its output cost 3.6 times what the
//! agent does with it (benches/log-throughput.sh), and the agent needs four fields of each entry.
//!
//! The format is systemd's "Journal File Format" (systemd.io/JOURNAL_FILE_FORMAT): a header, then
//! objects; one chain of entry arrays lists every entry in the order written; an entry lists the
//! data objects (`FIELD=value`, shared between entries, compressed past a size) it is made of.
//! This reader follows that chain and nothing else (no hash table, no per-field chain), reads with
//! positional reads rather than `mmap` (a file truncated under a map kills its reader with
//! SIGBUS), and checks every offset, size and type it is given: journald writes while it is read,
//! so a file may be inconsistent for a moment, and a damaged one stays so. Nothing it reads can
//! make it panic or allocate past its bounds (the fuzz tests below).
//!
//! Files that need what it does not have (XZ compression, an incompatible flag of a newer
//! systemd) are refused when opened, with the flag named: the journal is then read through
//! `journalctl` (`collect/journal.rs`).

use std::collections::HashMap;
use std::fs::File;
use std::hash::{BuildHasherDefault, Hasher};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

const SIGNATURE: &[u8; 8] = b"LPKSHHRH";
/// Every header has its fields up to `n_data` (offset 208); later ones are checked by size.
const HEADER_MIN: u64 = 208;
const HEADER_READ: usize = 272;

#[cfg(test)] // files with it are refused, as any flag not known
const INCOMPATIBLE_XZ: u32 = 1;
const INCOMPATIBLE_LZ4: u32 = 1 << 1;
const INCOMPATIBLE_KEYED_HASH: u32 = 1 << 2;
const INCOMPATIBLE_ZSTD: u32 = 1 << 3;
const INCOMPATIBLE_COMPACT: u32 = 1 << 4;
/// The hash functions matter only to writers and to lookups by value, which this reader does not
/// do.
const INCOMPATIBLE_KNOWN: u32 =
    INCOMPATIBLE_LZ4 | INCOMPATIBLE_KEYED_HASH | INCOMPATIBLE_ZSTD | INCOMPATIBLE_COMPACT;

const OBJECT_DATA: u8 = 1;
const OBJECT_ENTRY: u8 = 3;
const OBJECT_ENTRY_ARRAY: u8 = 6;
const OBJECT_XZ: u8 = 1;
const OBJECT_LZ4: u8 = 1 << 1;
const OBJECT_ZSTD: u8 = 1 << 2;

const OBJECT_HEADER: u64 = 16;
/// An entry's fixed part: seqnum, realtime, monotonic, boot id, xor hash.
const ENTRY_ITEMS_AT: u64 = OBJECT_HEADER + 48;
const ARRAY_ITEMS_AT: u64 = OBJECT_HEADER + 8;
/// journald writes at most 1,024 fields an entry; room for that in the regular layout.
const MAX_ENTRY_OBJECT: u64 = ENTRY_ITEMS_AT + 16 * 4096;
/// The largest value read, decompressed or not (as the export reader's bound).
pub const MAX_VALUE: usize = 1 << 20;
/// The most data objects whose meaning is remembered (about 40 bytes each); the cache starts
/// again past it. The shared objects an entry refers to are a few dozen, read again at once.
const MAX_CACHED: usize = 1 << 13;
/// Reads are served from a few windows of the file: an entry and its new data objects lie
/// together near the end; the shared ones are remembered by offset.
const WINDOW: usize = 64 << 10;
const WINDOWS: usize = 4;

/// Why a file, or a part of it, could not be read.
#[derive(Debug, thiserror::Error)]
pub enum JournalFileError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not a journal file")]
    NotJournal,
    #[error(
        "written with features this reader lacks (incompatible flags {0:#x}: 0x1 is XZ \
         compression, others a newer systemd)"
    )]
    Unsupported(u32),
    #[error("damaged or not yet written at offset {offset}: {what}")]
    Damaged { offset: u64, what: &'static str },
}

type Result<T> = std::result::Result<T, JournalFileError>;

fn damaged<T>(offset: u64, what: &'static str) -> Result<T> {
    Err(JournalFileError::Damaged { offset, what })
}

/// What identifies an entry in the journal, as journalctl's cursors name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryId {
    pub seqnum_id: [u8; 16],
    pub seqnum: u64,
    pub boot_id: [u8; 16],
    pub monotonic: u64,
    pub realtime: u64,
    pub xor_hash: u64,
}

impl EntryId {
    /// The entry's cursor, in the form `journalctl` prints and takes (`--after-cursor`).
    pub fn cursor(&self) -> String {
        format!(
            "s={};i={:x};b={};m={:x};t={:x};x={:x}",
            hex::encode(self.seqnum_id),
            self.seqnum,
            hex::encode(self.boot_id),
            self.monotonic,
            self.realtime,
            self.xor_hash
        )
    }

    /// What a cursor of this entry says.
    pub fn parsed(&self) -> ParsedCursor {
        ParsedCursor {
            seqnum_id: Some(self.seqnum_id),
            seqnum: Some(self.seqnum),
            boot_id: Some(self.boot_id),
            monotonic: Some(self.monotonic),
            realtime: Some(self.realtime),
        }
    }

    /// Whether this entry comes at or before the one `cursor` names, as the journal orders
    /// entries of different files: by sequence number where they share a sequence, by monotonic
    /// time within one boot, else by wall-clock time.
    pub fn at_or_before(&self, cursor: &ParsedCursor) -> bool {
        if cursor.seqnum_id == Some(self.seqnum_id) {
            if let Some(seqnum) = cursor.seqnum {
                return self.seqnum <= seqnum;
            }
        }
        if cursor.boot_id == Some(self.boot_id) {
            if let Some(monotonic) = cursor.monotonic {
                return self.monotonic <= monotonic;
            }
        }
        cursor.realtime.is_some_and(|t| self.realtime <= t)
    }
}

/// The parts of a journalctl cursor (`s=…;i=…;b=…;m=…;t=…;x=…`); those missing or unreadable
/// are `None`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ParsedCursor {
    pub seqnum_id: Option<[u8; 16]>,
    pub seqnum: Option<u64>,
    pub boot_id: Option<[u8; 16]>,
    pub monotonic: Option<u64>,
    pub realtime: Option<u64>,
}

impl ParsedCursor {
    pub fn parse(cursor: &str) -> ParsedCursor {
        let mut parsed = ParsedCursor::default();
        let id = |v: &str| {
            let mut out = [0u8; 16];
            hex::decode_to_slice(v, &mut out).ok().map(|()| out)
        };
        let number = |v: &str| u64::from_str_radix(v, 16).ok();
        for part in cursor.split(';') {
            match part.split_once('=') {
                Some(("s", v)) => parsed.seqnum_id = id(v),
                Some(("i", v)) => parsed.seqnum = number(v),
                Some(("b", v)) => parsed.boot_id = id(v),
                Some(("m", v)) => parsed.monotonic = number(v),
                Some(("t", v)) => parsed.realtime = number(v),
                _ => {}
            }
        }
        parsed
    }
}

/// The fields the agent counts by; the others are passed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Unit,
    Identifier,
    Priority,
    Message,
}

impl Field {
    fn of(name: &[u8]) -> Option<Field> {
        match name {
            b"_SYSTEMD_UNIT" => Some(Field::Unit),
            b"SYSLOG_IDENTIFIER" => Some(Field::Identifier),
            b"PRIORITY" => Some(Field::Priority),
            b"MESSAGE" => Some(Field::Message),
            _ => None,
        }
    }
}

/// One entry: its identity and the fields counted (text, read lossily as UTF-8).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EntryValues {
    pub unit: Option<Rc<str>>,
    pub identifier: Option<Rc<str>>,
    pub priority: Option<Rc<str>>,
    pub message: Option<Rc<str>>,
    /// A counted field past [`MAX_VALUE`], or one that would not decompress: the entry is
    /// counted as malformed, as the export reader counts it.
    pub oversized: bool,
}

/// What a data object holds, remembered by its offset: most objects (unit names, priorities,
/// the fields not read) are shared by many entries.
#[derive(Debug, Clone)]
enum Known {
    Skipped,
    Value(Field, Rc<str>),
    Oversized,
}

/// The header's fields this reader uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub file_id: [u8; 16],
    pub seqnum_id: [u8; 16],
    /// 0 offline, 1 online (being written), 2 archived.
    pub state: u8,
    pub n_entries: u64,
    compact: bool,
    header_size: u64,
    /// Where the part of the file in use ends.
    arena_end: u64,
    entry_array_offset: u64,
}

impl Header {
    pub fn online(&self) -> bool {
        self.state == 1
    }
}

fn le64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("eight bytes"))
}

fn le32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("four bytes"))
}

fn id128(bytes: &[u8], at: usize) -> [u8; 16] {
    bytes[at..at + 16].try_into().expect("sixteen bytes")
}

fn read_header(file: &File) -> Result<Header> {
    let mut bytes = [0u8; HEADER_READ];
    let read = read_up_to(file, 0, &mut bytes)?;
    if read < HEADER_MIN as usize || &bytes[..8] != SIGNATURE {
        return Err(JournalFileError::NotJournal);
    }
    let incompatible = le32(&bytes, 12);
    if incompatible & !INCOMPATIBLE_KNOWN != 0 {
        return Err(JournalFileError::Unsupported(incompatible));
    }
    let header_size = le64(&bytes, 88);
    let arena_size = le64(&bytes, 96);
    if header_size < HEADER_MIN || !header_size.is_multiple_of(8) {
        return damaged(88, "header size");
    }
    Ok(Header {
        file_id: id128(&bytes, 24),
        seqnum_id: id128(&bytes, 72),
        state: bytes[16],
        n_entries: le64(&bytes, 152),
        compact: incompatible & INCOMPATIBLE_COMPACT != 0,
        header_size,
        arena_end: header_size.saturating_add(arena_size),
        entry_array_offset: le64(&bytes, 176),
    })
}

/// Reads from `offset` until `buffer` is full or the file ends; how many bytes came.
fn read_up_to(file: &File, offset: u64, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buffer.len() {
        match file.read_at(&mut buffer[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(done)
}

/// Data objects' offsets are multiples of eight and already spread: they need no hashing.
#[derive(Default)]
struct OffsetHasher(u64);

impl Hasher for OffsetHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }
    fn write_u64(&mut self, offset: u64) {
        self.0 = (offset >> 3).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// Where the reader is in the chain of entry arrays.
#[derive(Debug, Clone, Copy, Default)]
struct Position {
    /// The entry array being read (0: not entered yet).
    array: u64,
    capacity: u64,
    in_array: u64,
    /// Entries read (or passed) so far: the index of the next.
    read: u64,
}

/// One journal file, read entry by entry in the order written.
pub struct JournalFile {
    path: PathBuf,
    file: File,
    header: Header,
    position: Position,
    windows: Vec<(u64, Vec<u8>)>,
    next_window: usize,
    known: HashMap<u64, Known, BuildHasherDefault<OffsetHasher>>,
    items: Vec<u64>,
    scratch: Vec<u8>,
    zstd: Option<zstd::bulk::Decompressor<'static>>,
}

impl JournalFile {
    /// Opens a file and reads its header; the reader stands before its first entry.
    pub fn open(path: &Path) -> Result<JournalFile> {
        let file = File::open(path)?;
        let header = read_header(&file)?;
        Ok(JournalFile {
            path: path.to_path_buf(),
            file,
            header,
            position: Position::default(),
            windows: Vec::new(),
            next_window: 0,
            known: HashMap::default(),
            items: Vec::new(),
            scratch: Vec::new(),
            zstd: None,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Entries read or passed so far.
    pub fn read(&self) -> u64 {
        self.position.read
    }

    /// Reads the header again, for the entries written since. The windows are dropped: the
    /// links they hold (the last entry array's slots, its next array) may have been written.
    pub fn refresh(&mut self) -> Result<()> {
        let header = read_header(&self.file)?;
        if header.file_id != self.header.file_id {
            // Written over in place: nothing journald does; read from the start again.
            self.position = Position::default();
            self.known.clear();
        }
        self.header = header;
        self.windows.clear();
        Ok(())
    }

    /// Lets go of what speeds up reading (the windows, the cache, the decompression buffer): the
    /// file is read to its end and not being written, and may stay so for ever (an archive).
    pub fn rest(&mut self) {
        self.windows = Vec::new();
        self.known = HashMap::default();
        self.scratch = Vec::new();
        self.zstd = None;
    }

    /// The entries not read yet, as far as the header counts them.
    pub fn unread(&self) -> u64 {
        self.header.n_entries.saturating_sub(self.position.read)
    }

    /// `len` bytes at `offset`, within the part of the file in use.
    fn bytes(&mut self, offset: u64, len: usize) -> Result<&[u8]> {
        let end = offset.checked_add(len as u64);
        if offset < self.header.header_size || end.is_none_or(|end| end > self.header.arena_end) {
            return damaged(offset, "offset outside the file");
        }
        let hit = self.windows.iter().position(|(start, bytes)| {
            offset >= *start && offset + len as u64 <= start + bytes.len() as u64
        });
        let index = match hit {
            Some(index) => index,
            None => {
                let want = len.max(WINDOW);
                let mut buffer = if self.windows.len() < WINDOWS {
                    Vec::new()
                } else {
                    std::mem::take(&mut self.windows[self.next_window].1)
                };
                buffer.resize(want, 0);
                let read = read_up_to(&self.file, offset, &mut buffer)?;
                if read < len {
                    return damaged(offset, "object past the end of the file");
                }
                buffer.truncate(read);
                let index = if self.windows.len() < WINDOWS {
                    self.windows.push((offset, buffer));
                    self.windows.len() - 1
                } else {
                    self.windows[self.next_window] = (offset, buffer);
                    self.next_window
                };
                self.next_window = (index + 1) % WINDOWS;
                index
            }
        };
        let (start, bytes) = &self.windows[index];
        let at = (offset - start) as usize;
        Ok(&bytes[at..at + len])
    }

    /// An object's header checked for its type and a size within `min..=max`; its size.
    fn object(&mut self, offset: u64, kind: u8, min: u64, max: u64) -> Result<u64> {
        if !offset.is_multiple_of(8) {
            return damaged(offset, "object not aligned");
        }
        let header = self.bytes(offset, OBJECT_HEADER as usize)?;
        let (found, size) = (header[0], le64(header, 8));
        if found != kind {
            return damaged(offset, "object of another type");
        }
        if size < min || size > max {
            return damaged(offset, "object size");
        }
        Ok(size)
    }

    fn item_size(&self) -> u64 {
        if self.header.compact {
            4
        } else {
            8
        }
    }

    fn enter_array(&mut self, offset: u64) -> Result<()> {
        let item = self.item_size();
        let size = self.object(offset, OBJECT_ENTRY_ARRAY, ARRAY_ITEMS_AT + item, u64::MAX)?;
        let capacity = (size - ARRAY_ITEMS_AT) / item;
        self.position.array = offset;
        self.position.capacity = capacity;
        self.position.in_array = 0;
        Ok(())
    }

    /// The offset of the next entry, moving on to the next entry array where one is full;
    /// `None` where the header counts no more.
    fn next_slot(&mut self) -> Result<Option<u64>> {
        if self.position.read >= self.header.n_entries {
            return Ok(None);
        }
        if self.position.array == 0 {
            let first = self.header.entry_array_offset;
            self.enter_array(first)?;
        }
        while self.position.in_array >= self.position.capacity {
            let array = self.position.array;
            let next = le64(self.bytes(array + OBJECT_HEADER, 8)?, 0);
            // Arrays are appended, so each lies past the one before: no chain can loop.
            if next <= array {
                return damaged(array, "entry array chain");
            }
            self.enter_array(next)?;
        }
        let item = self.item_size();
        let at = self.position.array + ARRAY_ITEMS_AT + self.position.in_array * item;
        let bytes = self.bytes(at, item as usize)?;
        let offset = if item == 4 {
            u64::from(le32(bytes, 0))
        } else {
            le64(bytes, 0)
        };
        if offset == 0 {
            return damaged(at, "empty entry array slot");
        }
        Ok(Some(offset))
    }

    fn advance(&mut self) {
        self.position.in_array += 1;
        self.position.read += 1;
    }

    /// Passes over the next entry without reading it (one that did not read); `false` where
    /// even its place in the entry arrays cannot be found, and nothing after it can be read.
    pub fn skip(&mut self) -> bool {
        match self.next_slot() {
            Ok(Some(_)) => {
                self.advance();
                true
            }
            _ => false,
        }
    }

    /// The identity of the last entry read or passed, if any.
    pub fn last_id(&mut self) -> Result<Option<EntryId>> {
        let (position, read) = (self.position, self.position.read);
        if read == 0 {
            return Ok(None);
        }
        self.seek_index(read - 1)?;
        let id = self.peek_id();
        self.position = position;
        id
    }

    /// Gives up on the rest of the file (its entry arrays are damaged): it is read no further.
    pub fn abandon(&mut self) {
        self.position.read = u64::MAX;
    }

    /// Passes over every entry the header counts, without reading them: the first start
    /// begins at the journal's end.
    pub fn seek_end(&mut self) -> Result<()> {
        self.seek_index(self.header.n_entries)
    }

    /// Stands before the entry at `index`, walking the arrays' sizes only.
    fn seek_index(&mut self, index: u64) -> Result<()> {
        self.position = Position::default();
        let mut left = index.min(self.header.n_entries);
        if left == 0 {
            return Ok(());
        }
        self.enter_array(self.header.entry_array_offset)?;
        loop {
            if left < self.position.capacity {
                self.position.in_array = left;
                self.position.read += left;
                return Ok(());
            }
            left -= self.position.capacity;
            self.position.read += self.position.capacity;
            self.position.in_array = self.position.capacity;
            if left == 0 {
                return Ok(());
            }
            let array = self.position.array;
            let next = le64(self.bytes(array + OBJECT_HEADER, 8)?, 0);
            if next <= array {
                return damaged(array, "entry array chain");
            }
            self.enter_array(next)?;
        }
    }

    /// Resumes after the `read`th entry, whose sequence number was `seqnum`; where the file
    /// does not hold that entry there (it should, files are only appended to), after the last
    /// entry numbered `seqnum` or lower.
    pub fn resume(&mut self, read: u64, seqnum: u64) -> Result<()> {
        if read > 0 && read <= self.header.n_entries {
            self.seek_index(read - 1)?;
            if let Some(id) = self.peek_id()? {
                if id.seqnum == seqnum {
                    self.advance();
                    return Ok(());
                }
            }
        }
        self.skip_while(|id| id.seqnum <= seqnum)
    }

    /// From the file's start, passes over the entries that `before` says come before where
    /// reading starts (entries are in order, so it stops at the first that does not).
    pub fn skip_while(&mut self, before: impl Fn(&EntryId) -> bool) -> Result<()> {
        self.position = Position::default();
        while let Some(id) = self.peek_id()? {
            if !before(&id) {
                break;
            }
            self.advance();
        }
        Ok(())
    }

    /// The next entry's identity, without moving past it.
    fn peek_id(&mut self) -> Result<Option<EntryId>> {
        let Some(offset) = self.next_slot()? else {
            return Ok(None);
        };
        Ok(Some(self.entry_id(offset)?.0))
    }

    /// The identity of the entry at `offset`, and its object's size.
    fn entry_id(&mut self, offset: u64) -> Result<(EntryId, u64)> {
        let size = self.object(offset, OBJECT_ENTRY, ENTRY_ITEMS_AT, MAX_ENTRY_OBJECT)?;
        let seqnum_id = self.header.seqnum_id;
        let fixed = self.bytes(offset + OBJECT_HEADER, 48)?;
        let id = EntryId {
            seqnum_id,
            seqnum: le64(fixed, 0),
            realtime: le64(fixed, 8),
            monotonic: le64(fixed, 16),
            boot_id: id128(fixed, 24),
            xor_hash: le64(fixed, 40),
        };
        Ok((id, size))
    }

    /// Reads the next entry and moves past it; `None` where none is counted yet. An error
    /// leaves the reader before the entry: [`JournalFile::skip`] passes over it.
    pub fn next_entry(&mut self) -> Result<Option<(EntryId, EntryValues)>> {
        let Some(offset) = self.next_slot()? else {
            return Ok(None);
        };
        let (id, size) = self.entry_id(offset)?;
        let item = if self.header.compact { 4 } else { 16 };
        let count = ((size - ENTRY_ITEMS_AT) / item) as usize;
        let mut items = std::mem::take(&mut self.items);
        items.clear();
        {
            let bytes = self.bytes(offset + ENTRY_ITEMS_AT, count * item as usize)?;
            for chunk in bytes.chunks_exact(item as usize) {
                items.push(if item == 4 {
                    u64::from(le32(chunk, 0))
                } else {
                    le64(chunk, 0)
                });
            }
        }
        let mut fields = EntryValues::default();
        let mut result = Ok(());
        for data in &items {
            match self.data(*data) {
                Ok(Known::Skipped) => {}
                Ok(Known::Oversized) => fields.oversized = true,
                Ok(Known::Value(field, value)) => {
                    let slot = match field {
                        Field::Unit => &mut fields.unit,
                        Field::Identifier => &mut fields.identifier,
                        Field::Priority => &mut fields.priority,
                        Field::Message => &mut fields.message,
                    };
                    *slot = Some(value);
                }
                Err(error) => {
                    result = Err(error);
                    break;
                }
            }
        }
        self.items = items;
        result?;
        self.advance();
        Ok(Some((id, fields)))
    }

    /// What the data object at `offset` holds, from the cache where it was read before.
    fn data(&mut self, offset: u64) -> Result<Known> {
        if let Some(known) = self.known.get(&offset) {
            return Ok(known.clone());
        }
        let known = self.read_data(offset)?;
        // Messages are mostly unique: remembering them would only push the others out.
        let shared = !matches!(known, Known::Value(Field::Message, _));
        if shared {
            if self.known.len() >= MAX_CACHED {
                self.known.clear();
            }
            self.known.insert(offset, known.clone());
        }
        Ok(known)
    }

    fn read_data(&mut self, offset: u64) -> Result<Known> {
        let payload_at = if self.header.compact { 72 } else { 64 };
        let size = self.object(offset, OBJECT_DATA, payload_at, u64::MAX)?;
        let flags = self.bytes(offset + 1, 1)?[0];
        let stored = size - payload_at;
        let start = offset + payload_at;
        if flags & (OBJECT_XZ | OBJECT_LZ4 | OBJECT_ZSTD) == 0 {
            // The name first: the value is read only for a field counted.
            let head = self.bytes(start, stored.min(64) as usize)?;
            let Some(eq) = head.iter().position(|b| *b == b'=') else {
                return Ok(Known::Skipped);
            };
            let Some(field) = Field::of(&head[..eq]) else {
                return Ok(Known::Skipped);
            };
            let length = stored as usize - eq - 1;
            if length > MAX_VALUE {
                return Ok(Known::Oversized);
            }
            let value = self.bytes(start + eq as u64 + 1, length)?;
            return Ok(Known::Value(field, String::from_utf8_lossy(value).into()));
        }
        if stored > MAX_VALUE as u64 {
            return Ok(Known::Oversized);
        }
        let compressed = self.bytes(start, stored as usize)?.to_vec();
        let mut payload = std::mem::take(&mut self.scratch);
        let decompressed = decompress(&mut self.zstd, flags, &compressed, &mut payload);
        let known = match decompressed {
            Err(()) => Known::Oversized,
            Ok(()) => match payload.iter().position(|b| *b == b'=') {
                None => Known::Skipped,
                Some(eq) => match Field::of(&payload[..eq]) {
                    None => Known::Skipped,
                    Some(field) => {
                        Known::Value(field, String::from_utf8_lossy(&payload[eq + 1..]).into())
                    }
                },
            },
        };
        self.scratch = payload;
        Ok(known)
    }
}

/// Decompresses a data object's payload into `out`, at most [`MAX_VALUE`] bytes and a name;
/// `Err` for a payload that does not decompress within that (or in XZ, which a file that is
/// read never declares, see [`INCOMPATIBLE_KNOWN`]).
fn decompress(
    zstd: &mut Option<zstd::bulk::Decompressor<'static>>,
    flags: u8,
    compressed: &[u8],
    out: &mut Vec<u8>,
) -> std::result::Result<(), ()> {
    const BOUND: usize = MAX_VALUE + 256;
    out.clear();
    if flags & OBJECT_ZSTD != 0 {
        if zstd.is_none() {
            *zstd = Some(zstd::bulk::Decompressor::new().map_err(|_| ())?);
        }
        let decoder = zstd.as_mut().expect("made above");
        // Capacity, not memory: only the pages written are touched.
        out.reserve(BOUND);
        return decoder
            .decompress_to_buffer(compressed, out)
            .map(|_| ())
            .map_err(|_| ());
    }
    if flags & OBJECT_LZ4 != 0 {
        // systemd's LZ4 payloads are the decompressed size (64-bit little endian), then a
        // block.
        if compressed.len() < 8 {
            return Err(());
        }
        let size = le64(compressed, 0);
        if size > BOUND as u64 {
            return Err(());
        }
        out.resize(size as usize, 0);
        return match lz4_flex::block::decompress_into(&compressed[8..], out) {
            Ok(written) if written == size as usize => Ok(()),
            _ => Err(()),
        };
    }
    Err(())
}

/// The journal files in `paths`: files, directories (their `*.journal` files), and file names
/// with `*` or `?` in their last part (as `journalctl --file` takes them).
pub fn list_files(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for path in paths {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.contains(['*', '?']) {
            let parent = path.parent().unwrap_or(Path::new("."));
            out.extend(matching(parent, |file| wildcard(name, file)));
        } else if path.is_dir() {
            out.extend(matching(path, |file| {
                file.ends_with(".journal") || file.ends_with(".journal~")
            }));
        } else {
            out.push(path.clone());
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The system's journal: the local machine's directories under `/run/log/journal` (volatile)
/// and `/var/log/journal` (persistent), as `journalctl` reads them by default.
pub fn system_directories() -> Vec<PathBuf> {
    let machine = super::read_text(Path::new("/etc/machine-id")).unwrap_or_default();
    let machine = if machine.len() == 32 && machine.bytes().all(|b| b.is_ascii_hexdigit()) {
        machine
    } else {
        String::new()
    };
    ["/run/log/journal", "/var/log/journal"]
        .iter()
        .map(|root| Path::new(root).join(&machine))
        .filter(|dir| dir.is_dir())
        .collect()
}

fn matching(dir: &Path, accept: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_name().to_str().is_some_and(&accept))
        .map(|entry| entry.path())
        .filter(|path| path.is_file())
        .collect()
}

/// Whether `name` matches `pattern`, where `*` is any run of characters and `?` any one.
fn wildcard(pattern: &str, name: &str) -> bool {
    let (pattern, name): (Vec<char>, Vec<char>) =
        (pattern.chars().collect(), name.chars().collect());
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == name[n]) {
            p += 1;
            n += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            star = Some((p, n));
            p += 1;
        } else if let Some((star_p, star_n)) = star {
            p = star_p + 1;
            n = star_n + 1;
            star = Some((star_p, star_n + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::io::Write;

    /// A real journal file, written by Debian's `systemd-journal-remote` from `export` (the
    /// journal's export format), in the compact layout of systemd 252 or the regular one.
    pub(crate) fn write_journal(path: &Path, export: &[u8], compact: bool) {
        write_journal_with(path, export, compact, true)
    }

    fn write_journal_with(path: &Path, export: &[u8], compact: bool, compress: bool) {
        let remote = [
            "/lib/systemd/systemd-journal-remote",
            "/usr/lib/systemd/systemd-journal-remote",
        ]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("systemd-journal-remote (apt-get install systemd-journal-remote)");
        let mut child = std::process::Command::new(remote)
            .arg(format!("--output={}", path.display()))
            .arg(format!("--compress={compress}"))
            .arg("-")
            .env("SYSTEMD_JOURNAL_COMPACT", if compact { "1" } else { "0" })
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(export).unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Entries of every shape the reader meets: shared and unique values, messages long enough
    /// to be compressed, multi-line and non-UTF-8 messages (binary fields), entries without a
    /// unit, a priority or a message.
    pub(crate) fn varied_export(first: usize, count: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for n in first..first + count {
            out.extend(
                format!(
                    "__REALTIME_TIMESTAMP={}\n__MONOTONIC_TIMESTAMP={}\n\
                     _BOOT_ID=0123456789abcdef0123456789abcdef\n_PID={}\n",
                    1_796_000_000_000_000u64 + n as u64,
                    1_000 + n,
                    100 + n % 13
                )
                .into_bytes(),
            );
            if n % 11 != 3 {
                out.extend(format!("_SYSTEMD_UNIT=app{}.service\n", n % 5).into_bytes());
            }
            if n % 4 == 0 {
                out.extend(format!("SYSLOG_IDENTIFIER=ident{}\n", n % 3).into_bytes());
            }
            if n % 9 != 5 {
                out.extend(format!("PRIORITY={}\n", n % 8).into_bytes());
            }
            let message: Vec<u8> = match n % 6 {
                0 => format!("level=error module=db n={n} {}", "padding ".repeat(100)).into_bytes(),
                1 => format!("two\nlines n={n}").into_bytes(),
                2 => vec![b'n', b'=', 0xff, 0xfe, b'0' + (n % 10) as u8],
                3 => b"the same message every time".to_vec(),
                4 if n % 12 == 4 => Vec::new(),
                _ => format!("served request n={n}").into_bytes(),
            };
            if !message.is_empty() {
                if message.contains(&b'\n') || std::str::from_utf8(&message).is_err() {
                    out.extend(b"MESSAGE\n");
                    out.extend((message.len() as u64).to_le_bytes());
                    out.extend(&message);
                    out.push(b'\n');
                } else {
                    out.extend(b"MESSAGE=");
                    out.extend(&message);
                    out.push(b'\n');
                }
            }
            out.push(b'\n');
        }
        out
    }

    /// What `journalctl -o export` gives of each entry of `path`: its cursor and the fields
    /// counted.
    pub(crate) fn journalctl_entries(path: &Path) -> Vec<(String, EntryValues)> {
        let output = std::process::Command::new("journalctl")
            .args(["-o", "export", "--no-pager", "--quiet"])
            .arg(format!("--file={}", path.display()))
            .arg("--output-fields=_SYSTEMD_UNIT,SYSLOG_IDENTIFIER,PRIORITY,MESSAGE")
            .output()
            .expect("journalctl");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let mut reader = std::io::BufReader::new(output.stdout.as_slice());
        let mut line = Vec::new();
        let mut out = Vec::new();
        use crate::collect::journal::{read_export_entry, ExportEntry};
        while let ExportEntry::Fields(fields) = read_export_entry(&mut reader, &mut line).unwrap() {
            let text = |name: &str| fields.get(name).map(|v| Rc::from(v.as_str()));
            out.push((
                fields["__CURSOR"].clone(),
                EntryValues {
                    unit: text("_SYSTEMD_UNIT"),
                    identifier: text("SYSLOG_IDENTIFIER"),
                    priority: text("PRIORITY"),
                    message: text("MESSAGE"),
                    oversized: false,
                },
            ));
        }
        out
    }

    /// Every entry of `path`, through this reader.
    fn read_all(path: &Path) -> Vec<(String, EntryValues)> {
        let mut file = JournalFile::open(path).unwrap();
        let mut out = Vec::new();
        while let Some((id, fields)) = file.next_entry().unwrap() {
            out.push((id.cursor(), fields));
        }
        out
    }

    #[test]
    fn every_entry_reads_as_journalctl_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        for compact in [false, true] {
            let path = dir.path().join(format!("compact-{compact}.journal"));
            write_journal(&path, &varied_export(0, 3000), compact);
            let ours = read_all(&path);
            let theirs = journalctl_entries(&path);
            assert_eq!(ours.len(), 3000);
            assert_eq!(ours.len(), theirs.len());
            for (n, (ours, theirs)) in ours.iter().zip(&theirs).enumerate() {
                assert_eq!(ours, theirs, "entry {n} (compact: {compact})");
            }
            // The long messages were compressed: the file says so.
            let header = JournalFile::open(&path).unwrap().header;
            assert_eq!(header.compact, compact);
        }
    }

    /// A copy of `path` (written uncompressed) with its long data objects compressed with LZ4, as
    /// the systemd of JetPack 4 and 5 (237, 245) writes them; Debian's writes ZSTD only.
    fn recompressed_with_lz4(path: &Path, copy: &Path) -> usize {
        let mut bytes = std::fs::read(path).unwrap();
        let compact = le32(&bytes, 12) & INCOMPATIBLE_COMPACT != 0;
        let payload_at = if compact { 72 } else { 64 };
        let (mut at, tail) = (le64(&bytes, 88) as usize, le64(&bytes, 136) as usize);
        let mut rewritten = 0;
        while at <= tail {
            let size = le64(&bytes, at + 8) as usize;
            if bytes[at] == OBJECT_DATA && bytes[at + 1] == 0 && size - payload_at >= 300 {
                let stored = &bytes[at + payload_at..at + size];
                let plain = stored.to_vec();
                let mut lz4 = (plain.len() as u64).to_le_bytes().to_vec();
                lz4.extend(lz4_flex::block::compress(&plain));
                if lz4.len() <= stored.len() {
                    bytes[at + payload_at..at + payload_at + lz4.len()].copy_from_slice(&lz4);
                    bytes[at + 1] = OBJECT_LZ4;
                    let new_size = (payload_at + lz4.len()) as u64;
                    bytes[at + 8..at + 16].copy_from_slice(&new_size.to_le_bytes());
                    rewritten += 1;
                }
            }
            at += size.div_ceil(8) * 8;
        }
        let incompatible = le32(&bytes, 12) | INCOMPATIBLE_LZ4;
        bytes[12..16].copy_from_slice(&incompatible.to_le_bytes());
        std::fs::write(copy, bytes).unwrap();
        rewritten
    }

    #[test]
    fn lz4_objects_read_as_journalctl_reads_them() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain.journal");
        write_journal_with(&plain, &varied_export(0, 600), true, false);
        let lz4 = dir.path().join("lz4.journal");
        let rewritten = recompressed_with_lz4(&plain, &lz4);
        assert!(rewritten >= 100, "{rewritten} objects rewritten");
        let theirs = journalctl_entries(&lz4);
        assert_eq!(
            theirs,
            journalctl_entries(&plain),
            "journalctl reads the copy as the original"
        );
        assert_eq!(read_all(&lz4), theirs);
    }

    #[test]
    fn a_file_this_reader_cannot_read_is_refused_with_its_flag() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.journal");
        write_journal(&path, &varied_export(0, 10), true);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[12] |= INCOMPATIBLE_XZ as u8;
        std::fs::write(&path, &bytes).unwrap();
        let error = JournalFile::open(&path).err().expect("refused");
        assert!(
            matches!(error, JournalFileError::Unsupported(flags) if flags & 1 == 1),
            "{error}"
        );
        std::fs::write(&path, b"not a journal").unwrap();
        assert!(matches!(
            JournalFile::open(&path),
            Err(JournalFileError::NotJournal)
        ));
    }

    /// The used part of a small real journal file, in the compact or the regular layout.
    fn small_journal(compact: bool) -> &'static [u8] {
        static FILES: std::sync::OnceLock<[Vec<u8>; 2]> = std::sync::OnceLock::new();
        let files = FILES.get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            [false, true].map(|compact| {
                let path = dir.path().join("small.journal");
                let _ = std::fs::remove_file(&path);
                write_journal(&path, &varied_export(0, 40), compact);
                let mut bytes = std::fs::read(&path).unwrap();
                let used = (le64(&bytes, 88) + le64(&bytes, 96)) as usize;
                bytes.truncate(used);
                bytes
            })
        });
        &files[usize::from(compact)]
    }

    /// Reads what can be read of `path` as the follower does: an entry that does not read is
    /// passed over; where nothing can be, the file is left. Also seeks and resumes in it.
    fn read_damaged(path: &Path) -> usize {
        let Ok(mut file) = JournalFile::open(path) else {
            return 0;
        };
        let mut steps = 0;
        loop {
            steps += 1;
            assert!(steps < 1_000_000, "the reader does not end");
            match file.next_entry() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) if file.skip() => {}
                Err(_) => break,
            }
        }
        let _ = file.resume(3, 3);
        let _ = file.seek_end();
        let _ = file.skip_while(|id| id.seqnum < 20);
        let _ = file.refresh();
        steps
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

        /// A real file with any bytes changed, or cut short: entries, errors, never a panic,
        /// a loop or an allocation past the bounds.
        #[test]
        fn a_damaged_file_reads_without_a_panic(
            compact in proptest::prelude::any::<bool>(),
            changes in proptest::collection::vec((proptest::prelude::any::<proptest::sample::Index>(), proptest::prelude::any::<u8>()), 1..12),
            cut in proptest::option::of(proptest::prelude::any::<proptest::sample::Index>()),
        ) {
            let mut bytes = small_journal(compact).to_vec();
            for (at, byte) in changes {
                let at = at.index(bytes.len());
                bytes[at] = byte;
            }
            if let Some(cut) = cut {
                bytes.truncate(cut.index(bytes.len()));
            }
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("damaged.journal");
            std::fs::write(&path, &bytes).unwrap();
            read_damaged(&path);
        }
    }

    #[test]
    fn the_undamaged_fixture_reads_whole() {
        for compact in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("whole.journal");
            std::fs::write(&path, small_journal(compact)).unwrap();
            assert_eq!(read_all(&path).len(), 40);
        }
    }

    #[test]
    fn wildcards_match_as_the_shell_does() {
        assert!(wildcard("remote*.journal", "remote-a@1.journal"));
        assert!(wildcard("remote*.journal", "remote.journal"));
        assert!(!wildcard("remote*.journal", "remote.journal~"));
        assert!(wildcard("s?stem.journal", "system.journal"));
        assert!(!wildcard("s?stem.journal", "sstem.journal"));
        assert!(wildcard("*", ""));
        assert!(wildcard("a*b*c", "aXbYbZc"));
        assert!(!wildcard("a*b*c", "aXbYbZ"));
    }

    #[test]
    fn a_cursor_reads_back_and_orders_entries_as_the_journal_does() {
        let id = EntryId {
            seqnum_id: [0xab; 16],
            seqnum: 0x1f,
            boot_id: [0x01; 16],
            monotonic: 0x100,
            realtime: 0x5000,
            xor_hash: 0xdead,
        };
        let cursor = ParsedCursor::parse(&id.cursor());
        assert_eq!(cursor.seqnum, Some(0x1f));
        assert!(id.at_or_before(&cursor));
        let later = EntryId { seqnum: 0x20, ..id };
        assert!(!later.at_or_before(&cursor));
        // Another sequence (another writer): the same boot orders by monotonic time, another
        // boot by wall-clock time.
        let other = EntryId {
            seqnum_id: [0xcd; 16],
            seqnum: 1,
            monotonic: 0x50,
            realtime: 0x9000,
            ..id
        };
        assert!(other.at_or_before(&cursor));
        let other_boot = EntryId {
            boot_id: [0x02; 16],
            ..other
        };
        assert!(!other_boot.at_or_before(&cursor));
        assert!(!id.at_or_before(&ParsedCursor::parse("garbage")));
    }
}
