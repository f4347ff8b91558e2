//! What guest RAM is mapped from: anonymous memory (QEMU's
//! `memory-backend-ram`, the default) or a file's pages
//! (`memory-backend-file,mem-path=PATH`), as QEMU maps them.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use memmap2::{MmapMut, MmapOptions};

/// The source of guest RAM's pages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum RamBacking {
    /// Anonymous memory, zero at start.
    #[default]
    Anonymous,
    /// A file's pages: the guest starts with the file's contents.
    File {
        /// `mem-path`: a regular file (created when absent) or a directory,
        /// in which an unnamed file is created, as QEMU does.
        path: PathBuf,
        /// `share=on`: guest writes reach the file (`MAP_SHARED`); otherwise
        /// they are private copies (`MAP_PRIVATE`).
        share: bool,
    },
}

impl RamBacking {
    /// Whether the RAM may hold non-zero bytes before the guest writes any.
    pub fn has_contents(&self) -> bool {
        matches!(self, RamBacking::File { .. })
    }

    /// Maps `len` bytes. Errors are one line naming the file.
    pub(super) fn map(&self, len: usize) -> Result<MmapMut, String> {
        match self {
            RamBacking::Anonymous => MmapMut::map_anon(len).map_err(|e| e.to_string()),
            RamBacking::File { path, share } => {
                let file = open_backing_file(path, len as u64)?;
                let options = {
                    let mut o = MmapOptions::new();
                    o.len(len);
                    o
                };
                // SAFETY: the mapping stays valid however the file changes
                // later (truncating it would fault the guest, as in QEMU);
                // every access goes through GuestRam's atomics.
                let map = unsafe {
                    if *share {
                        options.map_mut(&file)
                    } else {
                        options.map_copy(&file)
                    }
                };
                map.map_err(|e| format!("{}: {e}", path.display()))
            }
        }
    }
}

/// Opens `mem-path` for `size` bytes of RAM: an existing file must hold at
/// least `size` bytes (QEMU's rule and text); an empty or new file is
/// extended to `size`; a directory gets an unnamed file.
fn open_backing_file(path: &Path, size: u64) -> Result<File, String> {
    let at = |e: std::io::Error| format!("{}: {e}", path.display());
    let file = if path.is_dir() {
        tempfile::tempfile_in(path).map_err(at)?
    } else {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(at)?
    };
    let file_size = file.metadata().map_err(at)?.len();
    if file_size == 0 {
        file.set_len(size).map_err(at)?;
    } else if file_size < size {
        return Err(format!(
            "backing store size 0x{file_size:x} does not match 'size' option 0x{size:x}"
        ));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_file_mappings_show_the_file_and_keep_writes_to_themselves() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ram");
        std::fs::write(&path, vec![7u8; 8192]).unwrap();
        let backing = RamBacking::File {
            path: path.clone(),
            share: false,
        };
        let mut map = backing.map(8192).unwrap();
        assert!(map.iter().all(|&b| b == 7));
        map[0] = 1;
        assert_eq!(
            std::fs::read(&path).unwrap()[0],
            7,
            "share=off writes stay private"
        );

        let shared = RamBacking::File {
            path: path.clone(),
            share: true,
        };
        let mut map = shared.map(8192).unwrap();
        map[1] = 9;
        map.flush().unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap()[1],
            9,
            "share=on writes reach the file"
        );
    }

    #[test]
    fn new_files_are_sized_short_files_refused_directories_get_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new");
        let backing = RamBacking::File {
            path: path.clone(),
            share: false,
        };
        let map = backing.map(4096 * 3).unwrap();
        assert!(map.iter().all(|&b| b == 0));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 4096 * 3);
        let err = backing.map(4096 * 4).unwrap_err();
        assert_eq!(
            err,
            "backing store size 0x3000 does not match 'size' option 0x4000"
        );
        let in_dir = RamBacking::File {
            path: dir.path().to_path_buf(),
            share: true,
        };
        assert_eq!(in_dir.map(4096).unwrap().len(), 4096);
        let missing = RamBacking::File {
            path: dir.path().join("no/such/dir/file"),
            share: false,
        };
        assert!(missing.map(4096).unwrap_err().contains("no/such/dir"));
    }
}
