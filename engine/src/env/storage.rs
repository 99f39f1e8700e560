//! The storage trait: a small POSIX-like file system with an explicit
//! durability contract.
//!
//! Durability contract (what survives a power loss):
//! - file *contents* are durable up to the last successful [`Storage::sync`]
//!   of that file; bytes written after it may be lost or kept as a torn prefix;
//! - directory *entries* (a create, rename or remove) are durable only after a
//!   successful [`Storage::sync_dir`] of the directory that holds them;
//! - a process crash (without power loss) loses nothing that a call has
//!   already returned from: the "OS" keeps it.
//!
//! Paths are relative and `/`-separated (see [`super::check_path`]); `""` is the root.

use async_trait::async_trait;
use std::io;

#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// Creates `dir` and any missing parents. Succeeds if it exists.
    async fn create_dir_all(&self, dir: &str) -> io::Result<()>;
    /// Creates an empty file, or truncates an existing one. The parent must exist.
    async fn create(&self, path: &str) -> io::Result<()>;
    /// Appends `data` at the end of an existing file.
    async fn append(&self, path: &str, data: &[u8]) -> io::Result<()>;
    /// Reads up to `len` bytes at `offset`; fewer at the end of the file.
    async fn read_at(&self, path: &str, offset: u64, len: u64) -> io::Result<Vec<u8>>;
    /// The file's current length in bytes.
    async fn size(&self, path: &str) -> io::Result<u64>;
    /// Cuts the file to `len` bytes (`len` must not exceed the size).
    async fn truncate(&self, path: &str, len: u64) -> io::Result<()>;
    /// Makes the file's current contents durable (fsync).
    async fn sync(&self, path: &str) -> io::Result<()>;
    /// Makes the directory's current entries durable (fsync of the directory).
    async fn sync_dir(&self, dir: &str) -> io::Result<()>;
    /// Atomically renames a file, replacing `to` if it is a file.
    async fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Removes a file.
    async fn remove(&self, path: &str) -> io::Result<()>;
    /// Removes a directory and everything in it.
    async fn remove_dir_all(&self, dir: &str) -> io::Result<()>;
    /// Names of the entries of `dir`, sorted bytewise.
    async fn list(&self, dir: &str) -> io::Result<Vec<String>>;
    /// Whether a file or directory exists at `path`.
    async fn exists(&self, path: &str) -> io::Result<bool>;

    /// The whole file.
    async fn read(&self, path: &str) -> io::Result<Vec<u8>> {
        let len = self.size(path).await?;
        self.read_at(path, 0, len).await
    }

    /// Replaces the file's contents (not durable until [`Storage::sync`]).
    async fn write(&self, path: &str, data: &[u8]) -> io::Result<()> {
        self.create(path).await?;
        self.append(path, data).await
    }
}
