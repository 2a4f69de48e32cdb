//! `imagefolder`: one sub-directory per class, PNG or JPEG files inside. Class names are the
//! sorted directory names; images are decoded in parallel, converted to grey or RGB, and resized
//! to `image_size` (or must all share one size when it is unset). There is no official test
//! split, so the test set is carved by content hash, stable as the folder grows.

use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use rayon::prelude::*;
use trainfleet_core::job::DatasetSpec;

use super::{Dataset, assemble, identity};
use crate::error::{Error, Result};

const EXTENSIONS: &[&str] = &["png", "jpg", "jpeg"];

/// Loads an image folder.
pub fn load(spec: &DatasetSpec, root: &Path) -> Result<Dataset> {
    let mut classes: Vec<(String, PathBuf)> = std::fs::read_dir(root)
        .map_err(|e| Error::io(root, e))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .filter(|(name, _)| !name.starts_with('.'))
        .collect();
    classes.sort();
    if classes.len() < 2 {
        return Err(Error::corrupt(
            root,
            None,
            format!(
                "an image folder needs one sub-directory per class and at least 2 classes; found {}",
                classes.len()
            ),
        ));
    }
    let mut files: Vec<(i64, PathBuf)> = Vec::new();
    for (label, (name, dir)) in classes.iter().enumerate() {
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().is_some_and(|x| {
                    EXTENSIONS.contains(&x.to_string_lossy().to_lowercase().as_str())
                }) && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        if found.is_empty() {
            return Err(Error::corrupt(
                dir,
                None,
                format!("class `{name}` has no PNG or JPEG files"),
            ));
        }
        found.sort();
        files.extend(found.into_iter().map(|p| (label as i64, p)));
    }
    let channels = if spec.grayscale { 1 } else { 3 };
    let decoded: Vec<(i64, u32, u32, Vec<u8>)> = files
        .par_iter()
        .map(|(label, path)| {
            let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
            let img = image::load_from_memory(&bytes)
                .map_err(|e| Error::corrupt(path, None, format!("cannot decode image: {e}")))?;
            let img = match spec.image_size {
                Some([h, w]) if (img.height(), img.width()) != (h, w) => {
                    img.resize_exact(w, h, FilterType::Triangle)
                }
                _ => img,
            };
            let (w, h) = (img.width(), img.height());
            let pixels = if spec.grayscale {
                img.into_luma8().into_raw()
            } else {
                to_chw(&img.into_rgb8().into_raw(), h, w)
            };
            Ok((*label, h, w, pixels))
        })
        .collect::<Result<_>>()?;
    let (h, w) = (decoded[0].1, decoded[0].2);
    if let Some(((_, hh, ww, _), (_, path))) = decoded
        .iter()
        .zip(&files)
        .find(|((_, hh, ww, _), _)| (*hh, *ww) != (h, w))
    {
        return Err(Error::corrupt(
            path,
            None,
            format!(
                "is {ww}×{hh} but {} is {w}×{h}; set dataset.image_size to resize every image to one size",
                files[0].1.display()
            ),
        ));
    }
    let mut hashes: Vec<(String, String)> = decoded
        .iter()
        .zip(&files)
        .map(|((label, _, _, px), (_, path))| {
            let rel = path
                .strip_prefix(root)
                .unwrap_or(path)
                .display()
                .to_string();
            (rel, super::hex(&super::split::item_hash(*label, px)))
        })
        .collect();
    hashes.sort();
    let ident = identity(root.display().to_string(), hashes);
    let samples = decoded.into_iter().map(|(l, _, _, px)| (l, px)).collect();
    let names = classes.into_iter().map(|(n, _)| n).collect();
    assemble(
        spec,
        samples,
        Vec::new(),
        [channels, h as usize, w as usize],
        names,
        ident,
        true,
    )
}

/// Interleaved RGB (HWC) to planar (CHW).
fn to_chw(hwc: &[u8], h: u32, w: u32) -> Vec<u8> {
    let plane = (h * w) as usize;
    let mut chw = vec![0u8; plane * 3];
    for (i, px) in hwc.chunks_exact(3).enumerate() {
        chw[i] = px[0];
        chw[plane + i] = px[1];
        chw[2 * plane + i] = px[2];
    }
    chw
}
