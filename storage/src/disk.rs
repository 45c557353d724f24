//! Where the store's bytes go: the redb file and the log files.
//!
//! [`RealDisk`] is the file system. The trait exists so that tests can put the store on a
//! simulated disk that loses every write not yet synced when they cut the power, the way redb's
//! own tests use a [`StorageBackend`] of their own.

use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::StorageBackend;

/// The storage under a store.
pub trait Disk: Send + Sync + Debug + 'static {
    /// The redb backend for the store file, creating the file if needed, and whether the file
    /// was empty (a new store) before.
    fn database(&self, path: &Path) -> std::io::Result<(Box<dyn StorageBackend>, bool)>;
    /// The redb backend for an existing store file, opened for reading only.
    fn database_read_only(&self, path: &Path) -> std::io::Result<Box<dyn StorageBackend>> {
        let _ = path;
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "this disk cannot open stores read-only",
        ))
    }
    /// Creates (or truncates) a log file, durably: after a power loss it exists.
    fn create_log(&self, path: &Path) -> std::io::Result<Arc<dyn LogFile>>;
    /// The whole content of a file.
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>>;
    fn remove(&self, path: &Path) -> std::io::Result<()>;
    /// The files in a directory.
    fn list(&self, dir: &Path) -> std::io::Result<Vec<PathBuf>>;
    /// Bytes allocated to a file on the device (what `du` reports); 0 if it does not exist.
    fn allocated_bytes(&self, path: &Path) -> u64;
}

/// An append-only file.
pub trait LogFile: Send + Sync + Debug {
    fn append(&self, bytes: &[u8]) -> std::io::Result<()>;
    /// Makes everything appended so far durable.
    fn sync(&self) -> std::io::Result<()>;
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealDisk;

#[derive(Debug)]
struct RealLog(File);

impl LogFile for RealLog {
    fn append(&self, bytes: &[u8]) -> std::io::Result<()> {
        (&self.0).write_all(bytes)
    }

    fn sync(&self) -> std::io::Result<()> {
        self.0.sync_data()
    }
}

impl Disk for RealDisk {
    fn database(&self, path: &Path) -> std::io::Result<(Box<dyn StorageBackend>, bool)> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let fresh = file.metadata()?.len() == 0;
        let backend = redb::backends::FileBackend::new(file).map_err(std::io::Error::other)?;
        Ok((Box::new(backend), fresh))
    }

    fn database_read_only(&self, path: &Path) -> std::io::Result<Box<dyn StorageBackend>> {
        let file = OpenOptions::new().read(true).open(path)?;
        Ok(Box::new(
            redb::backends::FileBackend::new(file).map_err(std::io::Error::other)?,
        ))
    }

    fn create_log(&self, path: &Path) -> std::io::Result<Arc<dyn LogFile>> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(path)?;
        // The new name must survive a power loss along with the data later synced into it.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        Ok(Arc::new(RealLog(file)))
    }

    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn remove(&self, path: &Path) -> std::io::Result<()> {
        std::fs::remove_file(path)
    }

    fn list(&self, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
        std::fs::read_dir(dir)?
            .map(|entry| entry.map(|e| e.path()))
            .collect()
    }

    fn allocated_bytes(&self, path: &Path) -> u64 {
        std::fs::metadata(path).map_or(0, |m| allocated(&m))
    }
}

#[cfg(unix)]
fn allocated(metadata: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    metadata.blocks() * 512
}

#[cfg(not(unix))]
fn allocated(metadata: &std::fs::Metadata) -> u64 {
    metadata.len()
}
