//! Bytes of a table: an owned, cache-line aligned buffer or a read-only file mapping.

use std::fs::File;

use memmap2::{Mmap, MmapMut};

use crate::error::{Error, Result};

/// One cache line; owned buffers are made of these so that rows start where the allocation
/// does, on a 64-byte boundary.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct Line([u8; 64]);

/// Owned buffers at least this large are anonymous mappings asking for huge pages (a table
/// of 1 to 2 MiB then takes one 2 MiB page: at most 2x its size, for far fewer TLB misses).
const HUGE_MIN: usize = 1 << 20;
/// The huge page size the mappings are aligned to.
const HUGE_PAGE: usize = 2 << 20;

/// Where a table's rows are.
pub(crate) enum Storage {
    /// Memory the table owns.
    Owned { lines: Vec<Line>, len: usize },
    /// Memory the table owns, in an anonymous mapping: `len` bytes at `offset`, which is
    /// 2 MiB aligned, advised to use transparent huge pages. Random row gathers over a large
    /// table miss the TLB on almost every row with 4 KiB pages; 2 MiB pages remove most of
    /// those misses.
    Anon { map: MmapMut, offset: usize, len: usize },
    /// `len` bytes at `offset` of a read-only mapping of the file `file` at `path`.
    Mapped { map: Mmap, offset: usize, len: usize, file: File, path: String },
}

/// Open the regular file `path` for reading bytes `offset..offset + len`, which it must hold.
fn open_range(path: &str, offset: usize, len: usize) -> Result<File> {
    let file = open_regular(path)?;
    let size = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let end = offset.checked_add(len).ok_or_else(|| Error::value("file range overflows"))?;
    if (size as u128) < end as u128 {
        return Err(Error::value(format!(
            "{path}: the file has {size} bytes but the table needs {end} (offset {offset} + \
             {len} bytes of rows); the file is truncated or the shape is wrong"
        )));
    }
    Ok(file)
}

/// Open `path` for reading if it is a regular file: opening a FIFO blocks until a writer
/// comes, and a device or directory is no table.
pub(crate) fn open_regular(path: &str) -> Result<File> {
    use std::os::unix::fs::FileTypeExt;
    let kind = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.file_type();
    if !kind.is_file() {
        let what = if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "a device"
        };
        return Err(Error::value(format!("{path} is {what}, not a regular file")));
    }
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    // The path may have been replaced between the two calls; check what was opened.
    if !file.metadata().map_err(|e| Error::io(path, e))?.is_file() {
        return Err(Error::value(format!("{path} is not a regular file")));
    }
    Ok(file)
}

impl Storage {
    /// Whether the rows were asked to live in 2 MiB pages (an anonymous mapping advised so).
    pub fn huge_pages(&self) -> bool {
        matches!(self, Storage::Anon { .. })
    }

    /// A zeroed owned buffer of `len` bytes (huge pages requested when large), or
    /// `Error::Memory` when neither a mapping nor the heap can hold it.
    pub fn zeroed(len: usize) -> Result<Storage> {
        if len >= HUGE_MIN {
            if let Ok(map) = MmapMut::map_anon(len + HUGE_PAGE) {
                let offset = (HUGE_PAGE - (map.as_ptr() as usize) % HUGE_PAGE) % HUGE_PAGE;
                #[cfg(target_os = "linux")]
                {
                    // Only a hint: where transparent huge pages are off this changes nothing.
                    let _ = map.advise(memmap2::Advice::HugePage);
                }
                return Ok(Storage::Anon { map, offset, len });
            }
        }
        let lines = crate::mem::filled(len.div_ceil(64), Line([0; 64]), "a table's rows")?;
        Ok(Storage::Owned { lines, len })
    }

    /// Map `len` bytes at `offset` of the file at `path`, which must be a regular file (a
    /// FIFO or a device would block or misbehave) holding at least `offset + len` bytes.
    pub fn map_file(path: &str, offset: usize, len: usize) -> Result<Storage> {
        let file = open_range(path, offset, len)?;
        if len == 0 {
            return Storage::zeroed(0);
        }
        // SAFETY: the mapping is read-only. A file written by another process while mapped
        // changes the values read, never this process's memory safety; a file truncated
        // while mapped makes reads past its new end fault (SIGBUS). `bytes` checks the file's
        // size before every use, which turns the common case (truncated between two calls)
        // into an error; a truncation racing with a read in flight cannot be caught, which
        // the documentation of `EmbeddingTable.load` states (replace table files by writing
        // a new file and renaming it over the old one, which leaves this mapping intact).
        // This is the contract of every mmap-based loader (numpy.memmap, safetensors).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Ok(Storage::Mapped { map, offset, len, file, path: path.to_string() })
    }

    /// `len` bytes at `offset` of the file at `path` read into owned memory (checked as for
    /// `map_file`; `Error::Memory` when they do not fit).
    pub fn read_file(path: &str, offset: usize, len: usize) -> Result<Storage> {
        use std::os::unix::fs::FileExt;
        let file = open_range(path, offset, len)?;
        let mut s = Storage::zeroed(len)?;
        if let Some(dst) = s.bytes_mut() {
            file.read_exact_at(dst, offset as u64).map_err(|e| Error::io(path, e))?;
        }
        Ok(s)
    }

    /// The number of bytes.
    pub fn len(&self) -> usize {
        match self {
            Storage::Owned { len, .. } | Storage::Anon { len, .. } | Storage::Mapped { len, .. } => *len,
        }
    }

    /// The bytes. A mapped file is checked first: one that shrank below the mapped range
    /// since it was mapped is an error here rather than a SIGBUS at the first read past
    /// its new end.
    pub fn bytes(&self) -> Result<&[u8]> {
        match self {
            Storage::Owned { lines, len } => {
                // SAFETY: `lines` is a live allocation of `lines.len() * 64 >= len` initialised
                // bytes (`Line` is plain bytes with no padding), borrowed for the returned lifetime.
                Ok(unsafe { std::slice::from_raw_parts(lines.as_ptr().cast::<u8>(), *len) })
            }
            Storage::Mapped { map, offset, len, file, path } => {
                let size = file.metadata().map_err(|e| Error::io(path.as_str(), e))?.len();
                if (size as u128) < (*offset + *len) as u128 {
                    return Err(Error::io(
                        path.as_str(),
                        std::io::Error::other(format!(
                            "the file shrank to {size} bytes since it was mapped, but the mapping \
                             reads bytes {offset}..{}; it was truncated or rewritten in place \
                             (replace table files by writing a new file and renaming it over the \
                             old one); load it again",
                            offset + len
                        )),
                    ));
                }
                Ok(&map[*offset..*offset + *len])
            }
            Storage::Anon { map, offset, len } => Ok(&map[*offset..*offset + *len]),
        }
    }

    /// The bytes, writable (owned buffers only).
    pub fn bytes_mut(&mut self) -> Option<&mut [u8]> {
        match self {
            Storage::Owned { lines, len } => {
                // SAFETY: as in `bytes`, with the unique borrow of `lines` making the slice unique.
                Some(unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast::<u8>(), *len) })
            }
            Storage::Anon { map, offset, len } => Some(&mut map[*offset..*offset + *len]),
            Storage::Mapped { .. } => None,
        }
    }

    /// Whether the bytes are a file mapping.
    pub fn is_mapped(&self) -> bool {
        matches!(self, Storage::Mapped { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(name: &str, bytes: &[u8]) -> String {
        let path = std::env::temp_dir().join(format!("recengine-storage-{}-{name}", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        path.to_string_lossy().into_owned()
    }

    #[test]
    fn a_mapped_file_that_shrank_is_an_error_before_it_is_read() {
        let path = temp_file("shrink", &[7u8; 8192]);
        let s = Storage::map_file(&path, 64, 8000).unwrap();
        assert_eq!(s.bytes().unwrap()[..3], [7, 7, 7]);
        std::fs::File::options().write(true).open(&path).unwrap().set_len(100).unwrap();
        let err = s.bytes().unwrap_err();
        assert!(err.to_string().contains("shrank to 100 bytes"), "{err}");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn reading_a_file_into_memory_checks_its_size_and_kind() {
        let path = temp_file("read", &(0..=255u8).collect::<Vec<_>>());
        let s = Storage::read_file(&path, 10, 5).unwrap();
        assert!(!s.is_mapped());
        assert_eq!(s.bytes().unwrap(), &[10, 11, 12, 13, 14]);
        assert!(Storage::read_file(&path, 250, 10).err().unwrap().to_string().contains("truncated"));
        std::fs::remove_file(&path).unwrap();
        let dir = std::env::temp_dir();
        let err = Storage::map_file(dir.to_str().unwrap(), 0, 1).err().unwrap();
        assert!(err.to_string().contains("a directory, not a regular file"), "{err}");
    }
}
