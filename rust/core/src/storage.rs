//! Bytes of a table: an owned, cache-line aligned buffer or a read-only file mapping.

use std::fs::File;

use memmap2::Mmap;

use crate::error::{Error, Result};

/// One cache line; owned buffers are made of these so that rows start where the allocation
/// does, on a 64-byte boundary.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct Line([u8; 64]);

/// Where a table's rows are.
pub(crate) enum Storage {
    /// Memory the table owns.
    Owned { lines: Vec<Line>, len: usize },
    /// `len` bytes at `offset` of a read-only mapping of a file.
    Mapped { map: Mmap, offset: usize, len: usize },
}

impl Storage {
    /// A zeroed owned buffer of `len` bytes.
    pub fn zeroed(len: usize) -> Storage {
        Storage::Owned { lines: vec![Line([0; 64]); len.div_ceil(64)], len }
    }

    /// Map `len` bytes at `offset` of the file at `path`.
    pub fn map_file(path: &str, offset: usize, len: usize) -> Result<Storage> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let size = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let end = offset.checked_add(len).ok_or_else(|| Error::value("file range overflows"))?;
        if (size as u128) < end as u128 {
            return Err(Error::value(format!(
                "{path}: the file has {size} bytes but the table needs {end} (offset {offset} + \
                 {len} bytes of rows); the file is truncated or the shape is wrong"
            )));
        }
        if len == 0 {
            return Ok(Storage::zeroed(0));
        }
        // SAFETY: the mapping is read-only. Memory-mapped files can change underneath if another
        // process writes to them; that changes values read, never memory safety of this process
        // except by truncation, which the documentation of `EmbeddingTable.load` warns against.
        // This is the contract of every mmap-based loader (numpy.memmap, safetensors).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Ok(Storage::Mapped { map, offset, len })
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Storage::Owned { lines, len } => {
                // SAFETY: `lines` is a live allocation of `lines.len() * 64 >= len` initialised
                // bytes (`Line` is plain bytes with no padding), borrowed for the returned lifetime.
                unsafe { std::slice::from_raw_parts(lines.as_ptr().cast::<u8>(), *len) }
            }
            Storage::Mapped { map, offset, len } => &map[*offset..*offset + *len],
        }
    }

    /// The bytes, writable (owned buffers only).
    pub fn bytes_mut(&mut self) -> Option<&mut [u8]> {
        match self {
            Storage::Owned { lines, len } => {
                // SAFETY: as in `bytes`, with the unique borrow of `lines` making the slice unique.
                Some(unsafe { std::slice::from_raw_parts_mut(lines.as_mut_ptr().cast::<u8>(), *len) })
            }
            Storage::Mapped { .. } => None,
        }
    }

    /// Whether the bytes are a file mapping.
    pub fn is_mapped(&self) -> bool {
        matches!(self, Storage::Mapped { .. })
    }
}
