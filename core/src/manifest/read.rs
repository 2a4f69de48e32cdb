//! Reading one file of an image folder: its sha256 and, in the same pass, whether it is an
//! image the loader can decode.

use std::fs;
use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::{hex, io_error};
use crate::error::Result;

/// The file's sha256, and why it is not a usable image if it is not (its header, read in the
/// same pass, does not decode).
pub(super) fn hash_file(path: &Path, expected_size: u64) -> Result<(String, Option<String>)> {
    let mut file = fs::File::open(path).map_err(|e| io_error(path, "cannot read", e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut total = 0u64;
    let mut verdict = None;
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| io_error(path, "cannot read", e))?;
        if n == 0 {
            break;
        }
        if total == 0 {
            verdict = Some(image_header_problem(&buf[..n], n as u64 == expected_size));
        }
        total += n as u64;
        hasher.update(&buf[..n]);
    }
    if total != expected_size {
        return Err(io_error(
            path,
            "changed while being scanned",
            format!("{expected_size} bytes when listed, {total} when read; scan again"),
        ));
    }
    let problem = match verdict {
        Some(problem) => problem,
        None => Some("empty file: not an image".to_owned()),
    };
    Ok((hex(&hasher.finalize()), problem))
}

/// Why `head` (the start of a file, the whole of it when `whole`) is not an image the loader
/// can decode: its format (from the content, as the loader tells it) and dimensions must read
/// from the header. Cheap: no pixel is decoded.
pub(super) fn image_header_problem(head: &[u8], whole: bool) -> Option<String> {
    let reader = match image::ImageReader::new(std::io::Cursor::new(head)).with_guessed_format() {
        Ok(reader) => reader,
        Err(e) => return Some(format!("cannot be read as an image: {e}")),
    };
    let Some(format) = reader.format() else {
        let start: Vec<String> = head.iter().take(4).map(|b| format!("{b:02x}")).collect();
        return Some(format!(
            "not a PNG or JPEG: starts with bytes {} at byte 0",
            start.join(" ")
        ));
    };
    let name = format!("{format:?}").to_uppercase();
    if !matches!(format, image::ImageFormat::Png | image::ImageFormat::Jpeg) {
        return Some(format!("holds {name} data; PNG and JPEG are supported"));
    }
    match reader.into_dimensions() {
        Ok((0, _)) | Ok((_, 0)) => Some(format!("a {name} of zero width or height")),
        Ok(_) => None,
        // The header ran past what was read: the rest of the file would hold it.
        Err(image::ImageError::IoError(e))
            if !whole && e.kind() == std::io::ErrorKind::UnexpectedEof =>
        {
            None
        }
        Err(e) => Some(format!("not a valid {name}: {e}")),
    }
}
