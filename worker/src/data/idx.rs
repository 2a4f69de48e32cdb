//! IDX files (the MNIST family's format), plain or gzip-compressed.
//!
//! Layout: two zero bytes, a type byte (0x08 = unsigned byte, the only one image datasets use), the
//! number of dimensions, then each dimension as a big-endian u32, then the data. The header is
//! untrusted: its claimed size is checked against the file before any buffer of that size is
//! allocated, and every error names the file and the byte offset.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use flate2::read::GzDecoder;

use crate::error::{Error, Result};

/// Most dimensions an IDX file may declare.
const MAX_DIMS: u8 = 4;
/// Largest payload we accept (8 GiB): more is a corrupt header, not a dataset.
const MAX_PAYLOAD: u64 = 8 << 30;

/// A decoded IDX array of unsigned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    /// Dimensions, outermost first (e.g. [60000, 28, 28]).
    pub dims: Vec<usize>,
    /// Row-major data.
    pub data: Vec<u8>,
}

/// What an IDX file is expected to hold: its magic number's dimension count, and a name for
/// messages.
#[derive(Debug, Clone, Copy)]
pub struct Expect {
    /// Dimensions (the magic number's last byte).
    pub dims: u8,
    /// What the file is, e.g. "an image file (count × height × width)".
    pub what: &'static str,
}

/// An image file: count × height × width bytes.
pub const IMAGES: Expect = Expect {
    dims: 3,
    what: "an image file (count × height × width)",
};
/// A label file: one byte per sample.
pub const LABELS: Expect = Expect {
    dims: 1,
    what: "a label file (one byte per sample)",
};

/// Reads an IDX file; gzip is detected by its magic bytes, not the file name.
pub fn read(path: &Path) -> Result<IdxArray> {
    read_as(path, None)
}

/// Reads an IDX file that must be what `expect` says: a magic number with another dimension
/// count is named as such before its dimensions are believed.
pub fn read_as(path: &Path, expect: Option<Expect>) -> Result<IdxArray> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut reader = BufReader::new(file);
    let mut magic = [0u8; 2];
    let peeked = read_full(&mut reader, &mut magic).map_err(|e| Error::io(path, e))?;
    let head = std::io::Cursor::new(magic[..peeked].to_vec());
    if peeked == 2 && magic == [0x1f, 0x8b] {
        let decoder = GzDecoder::new(head.chain(reader));
        parse_as(path, decoder, None, expect)
    } else {
        parse_as(path, head.chain(reader), Some(file_len), expect)
    }
}

/// Parses IDX from `reader`. `file_len` (uncompressed files) lets the header be checked against
/// the real size before reading the data.
pub fn parse(path: &Path, reader: impl Read, file_len: Option<u64>) -> Result<IdxArray> {
    parse_as(path, reader, file_len, None)
}

fn parse_as(
    path: &Path,
    mut reader: impl Read,
    file_len: Option<u64>,
    expect: Option<Expect>,
) -> Result<IdxArray> {
    let corrupt = |offset: u64, message: String| Error::corrupt(path, Some(offset), message);
    let mut header = [0u8; 4];
    read_header(path, &mut reader, &mut header, 0)?;
    if header[0] != 0 || header[1] != 0 {
        return Err(corrupt(
            0,
            format!(
                "wrong IDX magic {:02x} {:02x} (expected 00 00): not an IDX file, or a compressed one \
                 that is not gzip",
                header[0], header[1]
            ),
        ));
    }
    if header[2] != 0x08 {
        return Err(corrupt(
            2,
            format!(
                "IDX data type 0x{:02x} is not supported; image datasets use 0x08 (unsigned byte)",
                header[2]
            ),
        ));
    }
    let ndims = header[3];
    if ndims == 0 || ndims > MAX_DIMS {
        return Err(corrupt(
            3,
            format!("IDX declares {ndims} dimensions; expected 1 to {MAX_DIMS}"),
        ));
    }
    if let Some(expect) = expect
        && ndims != expect.dims
    {
        return Err(corrupt(
            0,
            format!(
                "bad IDX magic number 00 00 08 {ndims:02x} ({ndims} dimensions): {} has magic \
                 00 00 08 {:02x}; the wrong file, or a damaged header",
                expect.what, expect.dims
            ),
        ));
    }
    let mut dims = Vec::with_capacity(ndims as usize);
    for i in 0..ndims as u64 {
        let mut raw = [0u8; 4];
        read_header(path, &mut reader, &mut raw, 4 + 4 * i)?;
        let dim = u32::from_be_bytes(raw);
        if dim == 0 {
            return Err(corrupt(4 + 4 * i, format!("dimension {i} is 0")));
        }
        dims.push(dim as usize);
    }
    let header_len = 4 + 4 * ndims as u64;
    let claimed = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
    let shape = dims
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("×");
    let claimed = match claimed {
        Some(n) if n <= MAX_PAYLOAD => n,
        _ => {
            return Err(corrupt(
                4,
                format!("header claims {shape} bytes of data, more than the 8 GiB limit"),
            ));
        }
    };
    if let Some(len) = file_len {
        let available = len.saturating_sub(header_len);
        if available != claimed {
            return Err(corrupt(
                header_len,
                format!(
                    "header claims {shape} = {claimed} bytes of data but the file has {available} after \
                     the {header_len}-byte header ({})",
                    if available < claimed {
                        "truncated"
                    } else {
                        "trailing bytes"
                    }
                ),
            ));
        }
    }
    // Grow with what actually arrives (never trust `claimed` for the allocation when the size
    // could not be checked up front), reading at most one byte past the claim to detect trailing
    // data.
    let mut data = Vec::with_capacity(if file_len.is_some() {
        claimed as usize
    } else {
        0
    });
    let got = reader
        .take(claimed + 1)
        .read_to_end(&mut data)
        .map_err(|e| {
            corrupt(
                header_len + data.len() as u64,
                format!("cannot read data: {e} (truncated gzip?)"),
            )
        })? as u64;
    if got < claimed {
        return Err(corrupt(
            header_len + got,
            format!(
                "data ends after {got} of the {claimed} bytes the header claims ({shape}): truncated"
            ),
        ));
    }
    if got > claimed {
        return Err(corrupt(
            header_len + claimed,
            format!("trailing bytes after the {claimed} bytes the header claims"),
        ));
    }
    Ok(IdxArray { dims, data })
}

fn read_header(path: &Path, reader: &mut impl Read, buf: &mut [u8], offset: u64) -> Result<()> {
    let got = read_full(reader, buf).map_err(|e| {
        Error::corrupt(
            path,
            Some(offset),
            format!("cannot read header: {e} (truncated gzip?)"),
        )
    })?;
    if got < buf.len() {
        return Err(Error::corrupt(
            path,
            Some(offset + got as u64),
            "file ends inside the IDX header".into(),
        ));
    }
    Ok(())
}

/// Like `read_exact`, but reports how much was read instead of failing at EOF.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Encodes `data` with `dims` as an IDX byte array (used by synth-digits and tests).
pub fn encode(dims: &[usize], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for &d in dims {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    fn err(path: &Path) -> String {
        read(path).unwrap_err().to_string()
    }

    #[test]
    fn round_trips_plain_and_gzip() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..2 * 3 * 4).map(|i| i as u8).collect();
        let bytes = encode(&[2, 3, 4], &data);
        for (name, content) in [
            ("a-idx3-ubyte", bytes.clone()),
            ("a-idx3-ubyte.gz", gzip(&bytes)),
        ] {
            let array = read(&write(dir.path(), name, &content)).unwrap();
            assert_eq!(array.dims, vec![2, 3, 4]);
            assert_eq!(array.data, data);
        }
    }

    #[test]
    fn wrong_magic_and_type_name_the_offset() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "x", b"PK\x03\x04rest");
        assert!(
            err(&p).contains("at byte 0: wrong IDX magic 50 4b"),
            "{}",
            err(&p)
        );
        let p = write(dir.path(), "y", &[0, 0, 0x0d, 1, 0, 0, 0, 1, 0, 0, 0, 0]);
        assert!(
            err(&p).contains("at byte 2: IDX data type 0x0d is not supported"),
            "{}",
            err(&p)
        );
    }

    #[test]
    fn a_magic_number_with_the_wrong_dimension_count_is_named_as_such() {
        let dir = tempfile::tempdir().unwrap();
        // An image file whose magic says 4 dimensions: read blindly, its first two pixels
        // become a fourth dimension ("header claims 100×28×28×131074 bytes").
        let mut bytes = vec![0, 0, 8, 4];
        for d in [100u32, 28, 28] {
            bytes.extend_from_slice(&d.to_be_bytes());
        }
        bytes.extend_from_slice(&[0, 2, 0, 2]);
        bytes.extend(std::iter::repeat_n(0u8, 100 * 28 * 28 - 4));
        let p = write(dir.path(), "train-images-idx3-ubyte", &bytes);
        let e = read_as(&p, Some(IMAGES)).unwrap_err().to_string();
        assert!(
            e.contains("at byte 0: bad IDX magic number 00 00 08 04 (4 dimensions)")
                && e.contains("an image file (count × height × width) has magic 00 00 08 03"),
            "{e}"
        );
        assert!(!e.contains("header claims"), "{e}");
        // A label file handed where images go.
        let mut labels = vec![0, 0, 8, 1];
        labels.extend_from_slice(&3u32.to_be_bytes());
        labels.extend_from_slice(&[0, 1, 2]);
        let p = write(dir.path(), "labels", &labels);
        let e = read_as(&p, Some(IMAGES)).unwrap_err().to_string();
        assert!(e.contains("bad IDX magic number 00 00 08 01"), "{e}");
        assert!(read_as(&p, Some(LABELS)).is_ok());
    }

    #[test]
    fn header_larger_than_the_file_is_refused_without_allocating_it() {
        let dir = tempfile::tempdir().unwrap();
        // Claims 4e9 × 4e9 bytes; must fail on arithmetic, not on a huge allocation.
        let mut bytes = vec![0, 0, 8, 2];
        bytes.extend_from_slice(&4_000_000_000u32.to_be_bytes());
        bytes.extend_from_slice(&4_000_000_000u32.to_be_bytes());
        let p = write(dir.path(), "huge", &bytes);
        assert!(err(&p).contains("more than the 8 GiB limit"), "{}", err(&p));

        let mut short = encode(&[10, 28, 28], &vec![7; 10 * 28 * 28]);
        short.truncate(16 + 1000);
        let p = write(dir.path(), "short", &short);
        let e = err(&p);
        assert!(
            e.contains("short at byte 16: header claims 10×28×28 = 7840 bytes"),
            "{e}"
        );
        assert!(
            e.contains("has 1000 after the 16-byte header (truncated)"),
            "{e}"
        );

        let mut long = encode(&[2, 2], &[1, 2, 3, 4]);
        long.push(9);
        assert!(err(&write(dir.path(), "long", &long)).contains("(trailing bytes)"));
    }

    #[test]
    fn truncated_gzip_is_reported_with_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let data = vec![3u8; 50_000];
        let gz = gzip(&encode(&[50, 1000], &data));
        let p = write(dir.path(), "cut.gz", &gz[..gz.len() / 2]);
        let e = err(&p);
        assert!(e.contains("cut.gz at byte"), "{e}");
        assert!(e.contains("truncated"), "{e}");

        // Decompresses fine but holds less data than its header claims.
        let p = write(
            dir.path(),
            "few.gz",
            &gzip(&encode(&[50, 1000], &data[..100])),
        );
        assert!(
            err(&p).contains("data ends after 100 of the 50000 bytes"),
            "{}",
            err(&p)
        );
    }

    #[test]
    fn empty_and_header_only_files() {
        let dir = tempfile::tempdir().unwrap();
        assert!(err(&write(dir.path(), "empty", b"")).contains("file ends inside the IDX header"));
        assert!(
            err(&write(dir.path(), "zero", &[0, 0, 8, 1, 0, 0, 0, 0])).contains("dimension 0 is 0")
        );
    }
}
