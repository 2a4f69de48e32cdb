//! A small image-folder dataset for retrain tests, written as real PNG files.

use std::path::Path;

/// A small 3-class problem a CNN learns in a few epochs: horizontal stripes, vertical stripes
/// and a checkerboard, 12×12 grey, each image with its own noise (so each file is distinct).
pub fn image(class: &str, i: usize) -> image::GrayImage {
    let mut seed = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ class.len() as u64;
    image::GrayImage::from_fn(12, 12, |x, y| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let noise = (seed >> 59) as u8;
        let on = match class {
            "horizontal" => y % 4 < 2,
            "vertical" => x % 4 < 2,
            _ => (x / 3 + y / 3) % 2 == 0,
        };
        image::Luma([if on { 200 + noise } else { 30 + noise }])
    })
}

pub fn add_images(root: &Path, range: std::ops::Range<usize>) -> anyhow::Result<()> {
    for class in ["horizontal", "vertical", "checker"] {
        std::fs::create_dir_all(root.join(class))?;
        for i in range.clone() {
            image(class, i).save(root.join(class).join(format!("{i:04}.png")))?;
        }
    }
    Ok(())
}
