//! The real-disk [`Storage`]: `std::fs` under a root directory, with real
//! `fsync` of files and directories. The engine never sees this type; a host
//! that runs on a real machine hands it to the engine as `Arc<dyn Storage>`.

use async_trait::async_trait;
use engine::env::{Storage, check_path};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub struct DiskStorage {
    root: PathBuf,
}

impl DiskStorage {
    /// Uses `root` (which must exist) as the storage root.
    pub fn new(root: impl Into<PathBuf>) -> io::Result<DiskStorage> {
        let root = root.into();
        if !root.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("storage root {} is not a directory", root.display()),
            ));
        }
        Ok(DiskStorage { root })
    }

    /// The OS path of a checked storage path.
    fn os_path(&self, path: &str) -> io::Result<PathBuf> {
        check_path(path)?;
        Ok(if path.is_empty() {
            self.root.clone()
        } else {
            self.root.join(path)
        })
    }
}

fn is_dir(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
}

fn error(path: &str, what: &str) -> io::Error {
    io::Error::other(format!("{path:?}: {what}"))
}

#[async_trait]
impl Storage for DiskStorage {
    async fn create_dir_all(&self, dir: &str) -> io::Result<()> {
        fs::create_dir_all(self.os_path(dir)?)
    }

    async fn create(&self, path: &str) -> io::Result<()> {
        File::create(self.os_path(path)?).map(drop)
    }

    async fn append(&self, path: &str, data: &[u8]) -> io::Result<()> {
        OpenOptions::new()
            .append(true)
            .open(self.os_path(path)?)?
            .write_all(data)
    }

    async fn read_at(&self, path: &str, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let mut file = File::open(self.os_path(path)?)?;
        file.seek(SeekFrom::Start(offset))?;
        let mut buf = Vec::new();
        file.take(len).read_to_end(&mut buf)?;
        Ok(buf)
    }

    async fn size(&self, path: &str) -> io::Result<u64> {
        let meta = fs::metadata(self.os_path(path)?)?;
        if meta.is_dir() {
            return Err(error(path, "is a directory"));
        }
        Ok(meta.len())
    }

    async fn truncate(&self, path: &str, len: u64) -> io::Result<()> {
        let file = OpenOptions::new().write(true).open(self.os_path(path)?)?;
        // `set_len` would extend the file; the contract only allows cutting.
        if len > file.metadata()?.len() {
            return Err(error(path, "truncate beyond the end of the file"));
        }
        file.set_len(len)
    }

    async fn sync(&self, path: &str) -> io::Result<()> {
        let os_path = self.os_path(path)?;
        if is_dir(&os_path) {
            return Err(error(path, "is a directory; use sync_dir"));
        }
        File::open(os_path)?.sync_all()
    }

    async fn sync_dir(&self, dir: &str) -> io::Result<()> {
        File::open(self.os_path(dir)?)?.sync_all()
    }

    async fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let (from_os, to_os) = (self.os_path(from)?, self.os_path(to)?);
        fs::symlink_metadata(&from_os)?;
        if from.is_empty() || to.is_empty() || to.starts_with(&format!("{from}/")) {
            return Err(error(
                to,
                "cannot rename a directory into itself or the root",
            ));
        }
        if to_os.exists() && (is_dir(&from_os) || is_dir(&to_os)) {
            return Err(error(
                to,
                "rename onto an existing directory, or of a directory onto a file",
            ));
        }
        fs::rename(from_os, to_os)
    }

    async fn remove(&self, path: &str) -> io::Result<()> {
        fs::remove_file(self.os_path(path)?)
    }

    async fn remove_dir_all(&self, dir: &str) -> io::Result<()> {
        if dir.is_empty() {
            return Err(error(dir, "cannot remove the root"));
        }
        fs::remove_dir_all(self.os_path(dir)?)
    }

    async fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(self.os_path(dir)?)? {
            let name = entry?.file_name();
            let name = name
                .into_string()
                .map_err(|n| error(dir, &format!("entry {n:?} is not UTF-8")))?;
            names.push(name);
        }
        names.sort();
        Ok(names)
    }

    async fn exists(&self, path: &str) -> io::Result<bool> {
        Ok(fs::symlink_metadata(self.os_path(path)?).is_ok())
    }
}
