//! Dataset scans on real directory trees built by the test.

use std::fs;
use std::path::Path;

use trainfleet_core::manifest::{ScanOptions, Split, merkle_root, scan_imagefolder};

/// Writes `rel`; an image name gets a real PNG whose one row of pixels is `bytes` (so different
/// bytes make a different file), anything else the bytes themselves.
fn write(root: &Path, rel: &str, bytes: &[u8]) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let lower = rel.to_lowercase();
    if [".png", ".jpg", ".jpeg"].iter().any(|e| lower.ends_with(e)) {
        let image = image::GrayImage::from_raw(bytes.len() as u32, 1, bytes.to_vec()).unwrap();
        let mut png = Vec::new();
        image
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        fs::write(path, png).unwrap();
    } else {
        fs::write(path, bytes).unwrap();
    }
}

/// Writes raw bytes under an image name: an upload that is not what its name says.
fn write_raw(root: &Path, rel: &str, bytes: &[u8]) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
}

fn tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..30 {
        write(
            dir.path(),
            &format!("cat/{i:03}.png"),
            format!("cat {i}").as_bytes(),
        );
        write(
            dir.path(),
            &format!("dog/{i:03}.JPG"),
            format!("dog {i}").as_bytes(),
        );
    }
    dir
}

#[test]
fn a_scan_lists_labels_splits_and_counts_and_skips_what_is_not_a_sound_image_with_reasons() {
    let dir = tree();
    let root = dir.path();
    write(root, "cat/notes.txt", b"not an image");
    write(root, "cat/.DS_Store", b"x");
    write(root, "README.md", b"top level");
    fs::create_dir_all(root.join("empty")).unwrap();
    std::os::unix::fs::symlink(root, root.join("loop")).unwrap();
    std::os::unix::fs::symlink(root.join("cat/000.png"), root.join("dog/link.png")).unwrap();

    let scan = scan_imagefolder(root, None, ScanOptions::default()).unwrap();
    let m = &scan.manifest;
    assert_eq!(m.files.len(), 60);
    assert_eq!(m.classes.get("cat"), Some(&30));
    assert_eq!(m.classes.get("dog"), Some(&30));
    assert!(!m.classes.contains_key("empty"));
    assert_eq!(m.splits.values().sum::<u64>(), 60);
    assert!(
        m.splits.get(&Split::Test).is_some_and(|&n| n > 0),
        "{:?}",
        m.splits
    );
    assert_eq!((scan.hashed, scan.reused), (60, 0));
    assert_eq!(scan.added.len(), 60);
    let reason = |name: &str| {
        scan.skipped
            .iter()
            .find(|(p, _)| p.ends_with(name))
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| panic!("{name} not skipped: {:?}", scan.skipped))
    };
    assert!(reason("notes.txt").contains("not an image"));
    assert!(reason(".DS_Store").contains("hidden"));
    assert!(reason("README.md").contains("no class"));
    assert!(reason("empty").contains("no images"));
    assert!(reason("loop").contains("symbolic links"));
    assert!(reason("link.png").contains("symbolic links"));
    assert_eq!(m.root, merkle_root(&m.files));
    assert_eq!(m.root.len(), 64);
}

#[test]
fn rescans_reuse_hashes_and_report_what_changed() {
    let dir = tree();
    let root = dir.path();
    let first = scan_imagefolder(root, None, ScanOptions::default())
        .unwrap()
        .manifest;

    // Nothing changed: nothing is read, same root, not a new version.
    let again = scan_imagefolder(root, Some(&first), ScanOptions::default()).unwrap();
    assert_eq!((again.hashed, again.reused), (0, 60));
    assert_eq!(again.manifest, first);
    assert!(!again.is_new_version(Some(&first)));
    // --full reads everything and agrees.
    let full = scan_imagefolder(
        root,
        Some(&first),
        ScanOptions {
            full: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        (full.hashed, full.manifest.root.as_str()),
        (60, first.root.as_str())
    );

    // Grow, change, remove.
    write(root, "cat/100.png", b"a new cat");
    std::thread::sleep(std::time::Duration::from_millis(10));
    write(root, "dog/000.JPG", b"dog 0, redrawn");
    fs::remove_file(root.join("dog/001.JPG")).unwrap();
    let next = scan_imagefolder(root, Some(&first), ScanOptions::default()).unwrap();
    assert_eq!(next.added, ["cat/100.png"]);
    assert_eq!(next.changed, ["dog/000.JPG"]);
    assert_eq!(next.removed, ["dog/001.JPG"]);
    assert_eq!(
        next.hashed, 2,
        "only the new and the rewritten file are read"
    );
    assert!(next.is_new_version(Some(&first)));
}

#[test]
fn a_relabel_with_the_same_count_is_a_new_version() {
    let dir = tree();
    let root = dir.path();
    let first = scan_imagefolder(root, None, ScanOptions::default())
        .unwrap()
        .manifest;
    // The image was in the wrong class: same bytes, same count, new label.
    fs::rename(root.join("cat/005.png"), root.join("dog/005.png")).unwrap();
    let next = scan_imagefolder(root, Some(&first), ScanOptions::default()).unwrap();
    assert_eq!(next.manifest.files.len(), first.files.len());
    assert_ne!(next.manifest.root, first.root);
    assert_eq!(next.manifest.classes["dog"], 31);
    let moved = next
        .manifest
        .files
        .iter()
        .find(|f| f.path == "dog/005.png")
        .unwrap();
    let was = first
        .files
        .iter()
        .find(|f| f.path == "cat/005.png")
        .unwrap();
    assert_eq!(
        moved.split, was.split,
        "a file's split follows its content, not its label"
    );
}

#[test]
fn a_vanished_or_empty_directory_fails_the_scan_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let gone = dir.path().join("gone");
    let err = scan_imagefolder(&gone, None, ScanOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("gone") && err.contains("cannot scan"), "{err}");

    fs::create_dir_all(dir.path().join("only/empty-class")).unwrap();
    write(dir.path(), "only/readme.txt", b"x");
    let err = scan_imagefolder(&dir.path().join("only"), None, ScanOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("no usable images"), "{err}");
}

#[tokio::test]
async fn an_object_store_prefix_scans_to_the_same_version_as_the_folder() {
    use trainfleet_core::artifacts::ArtifactStore;
    use trainfleet_core::manifest::scan_object_store;
    let root = tree();
    write(root.path(), "cat/deep/nested.png", b"nested");
    write(root.path(), "dog/notes.txt", b"not an image");
    let url = format!("file://{}", root.path().display());
    let store = ArtifactStore::open(&url).unwrap();
    let folder = scan_imagefolder(root.path(), None, ScanOptions::default()).unwrap();
    let remote = scan_object_store(&store, None, ScanOptions::default())
        .await
        .unwrap();
    assert_eq!(
        remote.manifest.root, folder.manifest.root,
        "same files, labels and bytes: same version, wherever they are kept"
    );
    assert_eq!(remote.manifest.classes, folder.manifest.classes);
    let reasons: Vec<(&str, &str)> = remote
        .skipped
        .iter()
        .map(|(p, r)| (p.as_str(), r.as_str()))
        .collect();
    assert!(
        reasons.contains(&(
            "cat/deep/nested.png",
            "nested directories are not part of a class"
        )),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|(_, r)| r.starts_with("not an image")),
        "{reasons:?}"
    );
    assert_eq!(remote.hashed, remote.manifest.files.len());

    // A rescan reuses every hash; one changed object is re-read and reported.
    let again = scan_object_store(&store, Some(&remote.manifest), ScanOptions::default())
        .await
        .unwrap();
    assert_eq!(
        (again.hashed, again.manifest.root.as_str()),
        (0, remote.manifest.root.as_str())
    );
    let changed = &remote.manifest.files[0].path;
    std::thread::sleep(std::time::Duration::from_millis(1100));
    write(root.path(), changed, b"different bytes, same name");
    let third = scan_object_store(&store, Some(&remote.manifest), ScanOptions::default())
        .await
        .unwrap();
    assert_eq!(third.changed, vec![changed.clone()]);
    assert_eq!(third.hashed, 1);
    assert_ne!(third.manifest.root, remote.manifest.root);
}

#[test]
fn an_image_that_does_not_decode_is_skipped_with_its_reason_and_stays_out() {
    let root = tree();
    // A fake PNG (text with a .png name), a PNG cut off inside its header, and an empty file.
    write_raw(root.path(), "cat/fake.png", b"<html>not an image</html>");
    let mut png = Vec::new();
    image::GrayImage::new(4, 4)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    write_raw(root.path(), "dog/cut.png", &png[..12]);
    write_raw(root.path(), "dog/empty.jpg", b"");
    let scan = scan_imagefolder(root.path(), None, ScanOptions::default()).unwrap();
    assert_eq!(
        scan.manifest.files.len(),
        60,
        "only the good images are in the version"
    );
    let reason = |name: &str| {
        scan.skipped
            .iter()
            .find(|(p, _)| p == name)
            .map(|(_, why)| why.clone())
            .unwrap_or_else(|| panic!("{name} not skipped: {:?}", scan.skipped))
    };
    assert!(
        reason("cat/fake.png")
            .contains("not a PNG or JPEG: starts with bytes 3c 68 74 6d at byte 0"),
        "{}",
        reason("cat/fake.png")
    );
    assert!(
        reason("dog/cut.png").contains("not a valid PNG"),
        "{}",
        reason("dog/cut.png")
    );
    assert!(
        reason("dog/empty.jpg").contains("empty file"),
        "{}",
        reason("dog/empty.jpg")
    );
    // A rescan keeps them out (they are read again: they are not in the previous version).
    let again =
        scan_imagefolder(root.path(), Some(&scan.manifest), ScanOptions::default()).unwrap();
    assert_eq!(again.manifest.root, scan.manifest.root);
    assert_eq!(again.skipped.len(), scan.skipped.len());
}

#[test]
fn a_class_whose_every_file_is_left_out_is_named_as_empty() {
    let root = tree();
    // `eel` holds only undecodable uploads, `fox` only a text file, `gnu` nothing at all.
    write_raw(root.path(), "eel/a.png", b"<html>a</html>");
    write_raw(root.path(), "eel/b.jpg", b"");
    write(root.path(), "fox/notes.txt", b"notes");
    fs::create_dir_all(root.path().join("gnu")).unwrap();
    // A bad file in a class that keeps good ones leaves the class as it is.
    write_raw(root.path(), "cat/fake.png", b"<html>not an image</html>");
    let scan = scan_imagefolder(root.path(), None, ScanOptions::default()).unwrap();
    assert_eq!(scan.empty_classes, ["eel", "fox", "gnu"]);
    assert_eq!(
        scan.manifest.classes.keys().collect::<Vec<_>>(),
        ["cat", "dog"],
        "a version's classes are those with files"
    );
}
