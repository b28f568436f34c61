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
    /// `len` bytes at `offset` of a read-only mapping of a file.
    Mapped { map: Mmap, offset: usize, len: usize },
}

impl Storage {
    /// Whether the rows were asked to live in 2 MiB pages (an anonymous mapping advised so).
    pub fn huge_pages(&self) -> bool {
        matches!(self, Storage::Anon { .. })
    }

    /// A zeroed owned buffer of `len` bytes (huge pages requested when large).
    pub fn zeroed(len: usize) -> Storage {
        if len >= HUGE_MIN {
            if let Ok(map) = MmapMut::map_anon(len + HUGE_PAGE) {
                let offset = (HUGE_PAGE - (map.as_ptr() as usize) % HUGE_PAGE) % HUGE_PAGE;
                #[cfg(target_os = "linux")]
                {
                    // Only a hint: where transparent huge pages are off this changes nothing.
                    let _ = map.advise(memmap2::Advice::HugePage);
                }
                return Storage::Anon { map, offset, len };
            }
        }
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
            Storage::Anon { map, offset, len } => &map[*offset..*offset + *len],
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
