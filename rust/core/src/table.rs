//! `Table`: an embedding table's rows in one storage format, owned or memory-mapped.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use rand_xoshiro::rand_core::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use safetensors::tensor::{Metadata, SafeTensors};
use safetensors::{Dtype, View};

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::lookup::TableView;
use crate::parallel;
use crate::quant::{decode_row, encode_row, encode_row_checked};
use crate::storage::Storage;

/// Rows per parallel chunk when encoding, generating or decoding whole tables.
const CHUNK_ROWS: usize = 4096;

/// The safetensors metadata key that records a quantized tensor's format: the value is
/// `"<dtype>:<dim>"`, e.g. `"int4:37"`.
fn format_key(name: &str) -> String {
    format!("recengine:{name}")
}

/// An embedding table.
pub struct Table {
    storage: Storage,
    num_rows: usize,
    dim: usize,
    dtype: DType,
}

impl Table {
    fn check_shape(num_rows: usize, dim: usize, dtype: DType) -> Result<usize> {
        if dim == 0 {
            return Err(Error::value("an embedding table needs dim >= 1, got 0"));
        }
        if dim > (1 << 24) {
            return Err(Error::value(format!("dim {dim} is larger than this library allows (2^24)")));
        }
        num_rows
            .checked_mul(dtype.row_bytes(dim))
            .filter(|&n| n <= isize::MAX as usize)
            .ok_or_else(|| Error::value(format!("a table of {num_rows} rows of dim {dim} is too large")))
    }

    /// An owned table whose rows are filled by `fill(first_row, rows_bytes)` in parallel chunks.
    fn build(
        num_rows: usize,
        dim: usize,
        dtype: DType,
        fill: impl Fn(usize, &mut [u8]) -> Result<()> + Sync + Send,
    ) -> Result<Table> {
        let len = Table::check_shape(num_rows, dim, dtype)?;
        let rb = dtype.row_bytes(dim);
        let mut storage = Storage::zeroed(len)?;
        let bytes = storage.bytes_mut().expect("a new buffer is owned");
        if len > 0 {
            parallel::for_each_chunk(bytes, rb * CHUNK_ROWS, &|c, chunk| fill(c * CHUNK_ROWS, chunk))?;
        }
        Ok(Table { storage, num_rows, dim, dtype })
    }

    /// Encode float32 rows (`num_rows * dim` values, row-major) as `dtype`.
    pub fn from_f32(values: &[f32], num_rows: usize, dim: usize, dtype: DType) -> Result<Table> {
        if Some(values.len()) != num_rows.checked_mul(dim) {
            return Err(Error::value("values do not match num_rows * dim"));
        }
        let rb = dtype.row_bytes(dim);
        Table::build(num_rows, dim, dtype, |first, chunk| {
            for (i, dst) in chunk.chunks_exact_mut(rb).enumerate() {
                let r = first + i;
                encode_row_checked(dtype, &values[r * dim..(r + 1) * dim], dst, r)?;
            }
            Ok(())
        })
    }

    /// Encode float16 rows (raw IEEE half bits) as `dtype`.
    pub fn from_f16_bits(bits: &[u16], num_rows: usize, dim: usize, dtype: DType) -> Result<Table> {
        if Some(bits.len()) != num_rows.checked_mul(dim) {
            return Err(Error::value("values do not match num_rows * dim"));
        }
        let rb = dtype.row_bytes(dim);
        Table::build(num_rows, dim, dtype, |first, chunk| {
            let mut row = vec![0f32; dim];
            for (i, dst) in chunk.chunks_exact_mut(rb).enumerate() {
                let r = first + i;
                for (x, b) in row.iter_mut().zip(&bits[r * dim..(r + 1) * dim]) {
                    *x = half::f16::from_bits(*b).to_f32();
                }
                encode_row_checked(dtype, &row, dst, r)?;
            }
            Ok(())
        })
    }

    /// Copy rows already in `dtype`'s format (`num_rows * row_bytes` bytes).
    pub fn from_raw(bytes: &[u8], num_rows: usize, dim: usize, dtype: DType) -> Result<Table> {
        let len = Table::check_shape(num_rows, dim, dtype)?;
        if bytes.len() != len {
            return Err(Error::value(format!(
                "raw rows hold {} bytes but {num_rows} rows of {} ({} bytes each) need {len}",
                bytes.len(),
                dtype.name(),
                dtype.row_bytes(dim)
            )));
        }
        let mut storage = Storage::zeroed(len)?;
        storage.bytes_mut().expect("a new buffer is owned").copy_from_slice(bytes);
        Ok(Table { storage, num_rows, dim, dtype })
    }

    /// Values uniform in [-1, 1), encoded as `dtype`. Each chunk of rows has its own generator
    /// seeded from `(seed, chunk)`, so the table is the same whatever the thread count.
    pub fn random(num_rows: usize, dim: usize, dtype: DType, seed: u64) -> Result<Table> {
        let rb = dtype.row_bytes(dim);
        Table::build(num_rows, dim, dtype, |first, chunk| {
            let c = (first / CHUNK_ROWS) as u64;
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ c.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut row = vec![0f32; dim];
            for dst in chunk.chunks_exact_mut(rb) {
                for x in &mut row {
                    // 24 random bits -> [0, 1) -> [-1, 1).
                    *x = (rng.next_u64() >> 40) as f32 * (2.0 / 16_777_216.0) - 1.0;
                }
                encode_row(dtype, &row, dst); // finite by construction
            }
            Ok(())
        })
    }

    /// `num_rows` rows of `dtype` from `path`, starting at byte `offset`: memory-mapped
    /// read-only when `mapped`, else read into memory now.
    pub fn open(path: &str, offset: usize, num_rows: usize, dim: usize, dtype: DType, mapped: bool) -> Result<Table> {
        let len = Table::check_shape(num_rows, dim, dtype)?;
        let storage = if mapped { Storage::map_file(path, offset, len)? } else { Storage::read_file(path, offset, len)? };
        Ok(Table { storage, num_rows, dim, dtype })
    }

    /// Names of the tensors in a safetensors file, sorted.
    pub fn safetensors_names(path: &str) -> Result<Vec<String>> {
        let (_, meta) = read_header(path)?;
        let mut names: Vec<String> = meta.tensors().into_keys().collect();
        names.sort();
        Ok(names)
    }

    /// One tensor of a safetensors file (memory-mapped when `mapped`, as [`Table::open`]):
    /// F32, F16 or BF16 `[rows, dim]`, or U8 rows of a quantized table saved by
    /// [`Table::save_safetensors`]. `name` may be omitted when the file holds one tensor.
    pub fn load_safetensors(path: &str, name: Option<&str>, mapped: bool) -> Result<Table> {
        let (header_len, meta) = read_header(path)?;
        let tensors = meta.tensors();
        let name = match name {
            Some(n) => n.to_string(),
            None if tensors.len() == 1 => tensors.keys().next().cloned().unwrap_or_default(),
            None => {
                let mut names: Vec<&String> = tensors.keys().collect();
                names.sort();
                return Err(Error::value(format!(
                    "{path} holds {} tensors; pass name= one of {names:?}",
                    names.len()
                )));
            }
        };
        let info = meta.info(&name).ok_or_else(|| {
            let mut names: Vec<&String> = tensors.keys().collect();
            names.sort();
            Error::value(format!("{path} has no tensor {name:?}; it has {names:?}"))
        })?;
        let quant = meta.metadata().as_ref().and_then(|m| m.get(&format_key(&name)));
        let (dtype, rows, dim) = match (info.dtype, info.shape.as_slice(), quant) {
            (Dtype::F32, &[r, d], _) => (DType::Fp32, r, d),
            (Dtype::F16, &[r, d], _) => (DType::Fp16, r, d),
            (Dtype::BF16, &[r, d], _) => (DType::Bf16, r, d),
            (Dtype::U8, &[r, _], Some(fmt)) => {
                let (dt, d) = fmt
                    .split_once(':')
                    .and_then(|(dt, d)| Some((DType::parse(dt).ok()?, d.parse::<usize>().ok()?)))
                    .ok_or_else(|| Error::value(format!("{path}: bad format record {fmt:?} for {name:?}")))?;
                (dt, r, d)
            }
            (dt, shape, _) if shape.len() == 2 => {
                return Err(Error::type_(format!(
                    "{path}: tensor {name:?} has dtype {dt:?}; tables must be F32, F16 or BF16 \
                     (or quantized tables saved by recengine)"
                )))
            }
            (_, shape, _) => {
                return Err(Error::value(format!(
                    "{path}: tensor {name:?} has shape {shape:?}; a table is 2-D [num_rows, dim]"
                )))
            }
        };
        let len = Table::check_shape(rows, dim, dtype)?;
        let (start, end) = info.data_offsets;
        if end - start != len {
            return Err(Error::value(format!(
                "{path}: tensor {name:?} holds {} bytes but a {} table of {rows} x {dim} needs {len}",
                end - start,
                dtype.name()
            )));
        }
        Table::open(path, 8 + header_len + start, rows, dim, dtype, mapped)
    }

    /// Write the table as tensor `name` of a new safetensors file. Quantized tables are stored
    /// as U8 `[rows, row_bytes]` with their format recorded in the file's metadata.
    pub fn save_safetensors(&self, path: &str, name: &str) -> Result<()> {
        let mut info = HashMap::new();
        if self.dtype.is_quantized() {
            info.insert(format_key(name), format!("{}:{}", self.dtype.name(), self.dim));
        }
        self.bytes()?;
        let view = TableTensor { table: self, shape: self.stored_shape() };
        safetensors::serialize_to_file([(name, view)], Some(info), Path::new(path))
            .map_err(|e| Error::io(path, std::io::Error::other(e.to_string())))
    }

    fn stored_shape(&self) -> [usize; 2] {
        match self.dtype {
            DType::Int8 | DType::Int4 => [self.num_rows, self.row_bytes()],
            _ => [self.num_rows, self.dim],
        }
    }

    /// A new table with the rows converted to `dtype` (decoded to f32, then encoded).
    pub fn convert(&self, dtype: DType) -> Result<Table> {
        let (src_dtype, dim, src_rb) = (self.dtype, self.dim, self.row_bytes());
        let src = self.storage.bytes()?;
        let rb = dtype.row_bytes(dim);
        Table::build(self.num_rows, dim, dtype, |first, chunk| {
            let mut row = vec![0f32; dim];
            for (i, dst) in chunk.chunks_exact_mut(rb).enumerate() {
                let r = first + i;
                decode_row(src_dtype, &src[r * src_rb..(r + 1) * src_rb], &mut row);
                encode_row_checked(dtype, &row, dst, r)?;
            }
            Ok(())
        })
    }

    /// A new owned table of rows `rows` and columns `cols` of this one, in the same format.
    /// Quantized rows keep their scale and bias, so every value decodes exactly as before.
    pub fn slice(&self, rows: std::ops::Range<usize>, cols: std::ops::Range<usize>) -> Result<Table> {
        if rows.start > rows.end || rows.end > self.num_rows || cols.start >= cols.end || cols.end > self.dim {
            return Err(Error::value(format!(
                "rows {rows:?} and columns {cols:?} are not a non-empty part of a {} x {} table",
                self.num_rows, self.dim
            )));
        }
        let (dtype, src_rb) = (self.dtype, self.row_bytes());
        let dim = cols.len();
        let src = self.storage.bytes()?;
        let (first_row, c0) = (rows.start, cols.start);
        let rb = dtype.row_bytes(dim);
        Table::build(rows.len(), dim, dtype, |first, chunk| {
            for (i, dst) in chunk.chunks_exact_mut(rb).enumerate() {
                let r = first_row + first + i;
                slice_row(dtype, &src[r * src_rb..(r + 1) * src_rb], self.dim, c0, dst, dim);
            }
            Ok(())
        })
    }

    /// Decode every row into `out` (`num_rows * dim` floats).
    pub fn to_f32(&self, out: &mut [f32]) -> Result<()> {
        if out.len() != self.num_rows * self.dim {
            return Err(Error::value("output of the wrong size"));
        }
        let (dtype, dim, rb) = (self.dtype, self.dim, self.row_bytes());
        let src = self.storage.bytes()?;
        parallel::for_each_chunk(out, dim * CHUNK_ROWS, &|c, chunk| {
            for (i, row) in chunk.chunks_exact_mut(dim).enumerate() {
                let r = c * CHUNK_ROWS + i;
                decode_row(dtype, &src[r * rb..(r + 1) * rb], row);
            }
            Ok(())
        })
    }

    /// The rows to read, checked as [`Table::bytes`] is.
    pub fn view(&self) -> Result<TableView<'_>> {
        Ok(TableView {
            data: self.storage.bytes()?,
            num_rows: self.num_rows,
            dim: self.dim,
            dtype: self.dtype,
            huge_pages: self.storage.huge_pages(),
        })
    }

    /// The stored rows. For a memory-mapped table this checks first that the file still holds
    /// them (an error, not a SIGBUS, when it was truncated since it was loaded).
    pub fn bytes(&self) -> Result<&[u8]> {
        self.storage.bytes()
    }

    pub fn num_rows(&self) -> usize {
        self.num_rows
    }
    pub fn dim(&self) -> usize {
        self.dim
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn row_bytes(&self) -> usize {
        self.dtype.row_bytes(self.dim)
    }
    pub fn nbytes(&self) -> usize {
        self.storage.len()
    }
    pub fn is_mmap(&self) -> bool {
        self.storage.is_mapped()
    }
}

/// Columns `c0..c0 + dim` of one stored row of `src_dim` values, in the same format.
fn slice_row(dtype: DType, src: &[u8], src_dim: usize, c0: usize, dst: &mut [u8], dim: usize) {
    match dtype {
        DType::Fp32 => dst.copy_from_slice(&src[4 * c0..4 * (c0 + dim)]),
        DType::Fp16 | DType::Bf16 => dst.copy_from_slice(&src[2 * c0..2 * (c0 + dim)]),
        DType::Int8 => {
            dst[..dim].copy_from_slice(&src[c0..c0 + dim]);
            dst[dim..].copy_from_slice(&src[src_dim..src_dim + 8]);
        }
        DType::Int4 => {
            let nbytes = dim.div_ceil(2);
            dst[..nbytes].fill(0);
            for c in 0..dim {
                let s = c0 + c;
                let code = (src[s / 2] >> ((s % 2) * 4)) & 0x0f;
                dst[c / 2] |= code << ((c % 2) * 4);
            }
            let src_nbytes = src_dim.div_ceil(2);
            dst[nbytes..].copy_from_slice(&src[src_nbytes..src_nbytes + 4]);
        }
    }
}

fn read_header(path: &str) -> Result<(usize, Metadata)> {
    let file = crate::storage::open_regular(path)?;
    // SAFETY: read-only mapping used only to parse the header during this call; see
    // `Storage::map_file` for the contract on files changed underneath.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    SafeTensors::read_metadata(&map)
        .map_err(|e| Error::value(format!("{path} is not a valid safetensors file: {e}")))
}

struct TableTensor<'a> {
    table: &'a Table,
    shape: [usize; 2],
}

impl View for TableTensor<'_> {
    fn dtype(&self) -> Dtype {
        match self.table.dtype {
            DType::Fp32 => Dtype::F32,
            DType::Fp16 => Dtype::F16,
            DType::Bf16 => Dtype::BF16,
            DType::Int8 | DType::Int4 => Dtype::U8,
        }
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        // `save_safetensors` checked the bytes (`data` cannot fail); a file truncated since
        // then reads as empty, which the serializer refuses as a length mismatch.
        Cow::Borrowed(self.table.bytes().unwrap_or(&[]))
    }
    fn data_len(&self) -> usize {
        self.table.nbytes()
    }
}
