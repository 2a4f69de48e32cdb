//! Datasets from the outside world: downloads against a real HTTP server on loopback (serving
//! files the test generates), CIFAR archives and image folders built by the test.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use trainfleet_core::job::{Builtin, DatasetSpec};
use trainfleet_worker::data::download::{Downloader, RemoteFile};
use trainfleet_worker::data::{builtin, idx, imagefolder, load_with};

/// How the test server answers one path.
#[derive(Clone)]
enum Route {
    /// 200 with the body.
    Ok(Vec<u8>),
    /// 200 announcing the full length, but the connection closes halfway.
    Truncated(Vec<u8>),
    /// 404.
    Missing,
}

/// A minimal HTTP/1.1 server on 127.0.0.1 for download tests; counts requests per path.
struct TestServer {
    base: String,
    routes: Arc<Mutex<HashMap<String, Route>>>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

impl TestServer {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let routes: Arc<Mutex<HashMap<String, Route>>> = Arc::default();
        let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let (r, h) = (routes.clone(), hits.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (r, h) = (r.clone(), h.clone());
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut line = String::new();
                    if reader.read_line(&mut line).is_err() {
                        return;
                    }
                    let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    loop {
                        let mut header = String::new();
                        if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                            break;
                        }
                    }
                    *h.lock().unwrap().entry(path.clone()).or_default() += 1;
                    let route = r
                        .lock()
                        .unwrap()
                        .get(&path)
                        .cloned()
                        .unwrap_or(Route::Missing);
                    let mut out = stream;
                    let _ = match route {
                        Route::Ok(body) => out
                            .write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()).as_bytes())
                            .and_then(|_| out.write_all(&body)),
                        Route::Truncated(body) => out
                            .write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()).as_bytes())
                            .and_then(|_| out.write_all(&body[..body.len() / 2])),
                        Route::Missing => out.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
                    };
                });
            }
        });
        Self { base, routes, hits }
    }

    fn serve(&self, path: &str, route: Route) {
        self.routes.lock().unwrap().insert(path.to_owned(), route);
    }

    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

fn sha(bytes: &[u8]) -> &'static str {
    Box::leak(
        Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
            .into_boxed_str(),
    )
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn quick() -> Downloader {
    Downloader {
        mirror: None,
        attempts: 2,
        retry_delay: Duration::from_millis(10),
        progress: false,
        ..Downloader::default()
    }
}

/// MNIST-shaped files: 30 training and 10 test images of 28×28.
fn mnist_like() -> Vec<(&'static str, Vec<u8>)> {
    let img = |n: usize| {
        gzip(&idx::encode(
            &[n, 28, 28],
            &(0..n * 784).map(|i| (i % 251) as u8).collect::<Vec<_>>(),
        ))
    };
    let lab = |n: usize| {
        gzip(&idx::encode(
            &[n],
            &(0..n).map(|i| (i % 10) as u8).collect::<Vec<_>>(),
        ))
    };
    vec![
        ("train-images-idx3-ubyte.gz", img(30)),
        ("train-labels-idx1-ubyte.gz", lab(30)),
        ("t10k-images-idx3-ubyte.gz", img(10)),
        ("t10k-labels-idx1-ubyte.gz", lab(10)),
    ]
}

fn catalogue(files: &[(&'static str, Vec<u8>)]) -> Vec<RemoteFile> {
    files
        .iter()
        .map(|(name, body)| RemoteFile {
            name,
            sha256: sha(body),
        })
        .collect()
}

/// Base URLs and pinned files standing in for a builtin's catalogue entry.
type Entry<'a> = (&'a [&'a str], Vec<RemoteFile>);

fn load_mnist(
    cache: &Path,
    downloader: &Downloader,
    entry: &Entry<'_>,
) -> trainfleet_worker::Result<trainfleet_worker::data::Dataset> {
    builtin::load_from(
        Builtin::Mnist,
        &spec(Builtin::Mnist),
        cache,
        downloader,
        entry,
    )
}

fn spec(builtin: Builtin) -> DatasetSpec {
    DatasetSpec {
        builtin: Some(builtin),
        validation_pct: 0,
        ..DatasetSpec::default()
    }
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".part"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn downloads_verify_and_load_and_the_cache_is_reused() {
    let server = TestServer::start();
    let files = mnist_like();
    for (name, body) in &files {
        server.serve(&format!("/mnist/{name}"), Route::Ok(body.clone()));
    }
    let cache = tempfile::tempdir().unwrap();
    let base = format!("{}/mnist", server.base);
    let entry = (vec![base.as_str()].leak() as &[&str], catalogue(&files));
    let ds = load_mnist(cache.path(), &quick(), &entry).unwrap();
    assert_eq!(
        (ds.train.len(), ds.test.len(), ds.shape),
        (30, 10, [1, 28, 28])
    );
    assert_eq!(server.hits("/mnist/train-images-idx3-ubyte.gz"), 1);

    load_mnist(cache.path(), &quick(), &entry).unwrap();
    assert_eq!(
        server.hits("/mnist/train-images-idx3-ubyte.gz"),
        1,
        "second load reads the verified cache"
    );

    // A cached file that went bad is noticed and fetched again.
    std::fs::write(
        cache.path().join("mnist/t10k-labels-idx1-ubyte.gz"),
        b"bit rot",
    )
    .unwrap();
    load_mnist(cache.path(), &quick(), &entry).unwrap();
    assert_eq!(server.hits("/mnist/t10k-labels-idx1-ubyte.gz"), 2);
}

#[test]
fn the_configured_mirror_is_tried_first_then_the_canonical_urls() {
    let server = TestServer::start();
    let files = mnist_like();
    for (name, body) in &files {
        server.serve(&format!("/canonical/{name}"), Route::Ok(body.clone()));
    }
    let cache = tempfile::tempdir().unwrap();
    let downloader = Downloader {
        mirror: Some(format!("{}/mirror/", server.base)),
        ..quick()
    };
    let base = format!("{}/canonical", server.base);
    let entry = (vec![base.as_str()].leak() as &[&str], catalogue(&files));
    load_mnist(cache.path(), &downloader, &entry).unwrap();
    assert_eq!(
        server.hits("/mirror/mnist/train-images-idx3-ubyte.gz"),
        1,
        "mirror first; a 404 is not retried"
    );
    assert_eq!(server.hits("/canonical/train-images-idx3-ubyte.gz"), 1);
}

#[test]
fn a_checksum_mismatch_deletes_the_download_and_names_file_expected_and_got() {
    let server = TestServer::start();
    let mut files = mnist_like();
    let pinned = catalogue(&files);
    files[0].1 = gzip(b"not the real file");
    let got = sha(&files[0].1);
    for (name, body) in &files {
        server.serve(&format!("/m/{name}"), Route::Ok(body.clone()));
    }
    let cache = tempfile::tempdir().unwrap();
    let base = format!("{}/m", server.base);
    let entry = (vec![base.as_str()].leak() as &[&str], pinned.clone());
    let err = load_mnist(cache.path(), &quick(), &entry)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("checksum mismatch for train-images-idx3-ubyte.gz"),
        "{err}"
    );
    assert!(
        err.contains(&format!("expected sha256 {}, got {got}", pinned[0].sha256)),
        "{err}"
    );
    assert!(err.contains("the download was deleted"), "{err}");
    assert_eq!(
        server.hits("/m/train-images-idx3-ubyte.gz"),
        1,
        "a wrong checksum is not retried on the same URL"
    );
    let dir = cache.path().join("mnist");
    assert!(!dir.join("train-images-idx3-ubyte.gz").exists());
    assert!(
        leftovers(&dir).is_empty(),
        "no partial files: {:?}",
        leftovers(&dir)
    );
}

#[test]
fn a_truncated_transfer_is_retried_then_the_next_url_is_used() {
    let server = TestServer::start();
    let files = mnist_like();
    for (name, body) in &files {
        server.serve(&format!("/flaky/{name}"), Route::Truncated(body.clone()));
        server.serve(&format!("/good/{name}"), Route::Ok(body.clone()));
    }
    let cache = tempfile::tempdir().unwrap();
    let (flaky, good) = (
        format!("{}/flaky", server.base),
        format!("{}/good", server.base),
    );
    let entry = (
        vec![flaky.as_str(), good.as_str()].leak() as &[&str],
        catalogue(&files),
    );
    load_mnist(cache.path(), &quick(), &entry).unwrap();
    assert_eq!(
        server.hits("/flaky/train-images-idx3-ubyte.gz"),
        2,
        "retried once"
    );
    assert_eq!(server.hits("/good/train-images-idx3-ubyte.gz"), 1);
    assert!(leftovers(&cache.path().join("mnist")).is_empty());

    // Only the flaky source: the error reports every attempt.
    let cache = tempfile::tempdir().unwrap();
    let entry = (vec![flaky.as_str()].leak() as &[&str], catalogue(&files));
    let err = load_mnist(cache.path(), &quick(), &entry)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cannot download train-images-idx3-ubyte.gz"),
        "{err}"
    );
    assert!(err.contains("(attempt 2)"), "{err}");
    assert!(
        err.contains("truncated transfer") || err.contains("transfer broke"),
        "{err}"
    );
}

fn cifar_archive(records: &[(u8, u8)], extra: usize) -> Vec<u8> {
    let record = |label: u8, fill: u8| {
        let mut r = vec![label];
        r.extend(std::iter::repeat_n(fill, 3072));
        r
    };
    let batch: Vec<u8> = records
        .iter()
        .flat_map(|&(l, f)| record(l, f))
        .chain(std::iter::repeat_n(7u8, extra))
        .collect();
    let test: Vec<u8> = records
        .iter()
        .take(2)
        .flat_map(|&(l, f)| record(l, f))
        .collect();
    let meta = b"airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n";
    let mut tar = tar::Builder::new(Vec::new());
    for (name, body) in [
        ("cifar-10-batches-bin/batches.meta.txt", meta.to_vec()),
        ("cifar-10-batches-bin/data_batch_1.bin", batch),
        ("cifar-10-batches-bin/test_batch.bin", test),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, name, body.as_slice()).unwrap();
    }
    gzip(&tar.into_inner().unwrap())
}

fn load_cifar10(archive: &Path) -> trainfleet_worker::Result<trainfleet_worker::data::Dataset> {
    use trainfleet_worker::data::cifar;
    cifar::load(&spec(Builtin::Cifar10), archive, cifar::Variant::Cifar10)
}

#[test]
fn cifar_archives_load_and_corruption_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let records: Vec<(u8, u8)> = (0..20).map(|i| ((i % 10) as u8, (i * 10) as u8)).collect();
    let archive = dir.path().join("cifar-10-binary.tar.gz");
    std::fs::write(&archive, cifar_archive(&records, 0)).unwrap();
    let ds = load_cifar10(&archive).unwrap();
    assert_eq!(
        (ds.train.len(), ds.test.len(), ds.shape),
        (20, 2, [3, 32, 32])
    );
    assert_eq!(ds.classes[9], "truck");

    std::fs::write(&archive, cifar_archive(&records, 100)).unwrap();
    let err = load_cifar10(&archive).unwrap_err().to_string();
    assert!(
        err.contains("at byte 61460: member cifar-10-batches-bin/data_batch_1.bin has 61560 bytes"),
        "{err}"
    );

    let whole = cifar_archive(&records, 0);
    std::fs::write(&archive, &whole[..whole.len() / 2]).unwrap();
    let err = load_cifar10(&archive).unwrap_err().to_string();
    assert!(
        err.contains("cifar-10-binary.tar.gz") && err.contains("truncated or corrupt archive"),
        "{err}"
    );

    let bad_label = vec![(10u8, 0u8); 3];
    std::fs::write(&archive, cifar_archive(&bad_label, 0)).unwrap();
    let err = load_cifar10(&archive).unwrap_err().to_string();
    assert!(
        err.contains("record 0: label 10 is out of range for 10 classes"),
        "{err}"
    );
}

fn write_image(path: &Path, w: u32, h: u32, shade: u8) {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([shade, (x * 7) as u8, (y * 5) as u8])
    });
    img.save(path).unwrap();
}

#[test]
fn image_folders_load_resized_and_bad_files_are_named() {
    let root = tempfile::tempdir().unwrap();
    for (class, shade) in [("cat", 30u8), ("dog", 200)] {
        std::fs::create_dir(root.path().join(class)).unwrap();
        for i in 0..12 {
            let ext = if i % 2 == 0 { "png" } else { "jpg" };
            write_image(
                &root.path().join(class).join(format!("{i}.{ext}")),
                20 + i,
                16,
                shade,
            );
        }
    }
    std::fs::write(root.path().join("dog/notes.txt"), "ignored").unwrap();
    let spec = DatasetSpec {
        format: Some(trainfleet_core::job::LocalFormat::Imagefolder),
        path: Some(root.path().to_owned()),
        image_size: Some([16, 16]),
        test_pct: 25,
        validation_pct: 0,
        ..DatasetSpec::default()
    };
    let ds = load_with(&spec, root.path(), &quick()).unwrap();
    assert_eq!(ds.classes, vec!["cat", "dog"]);
    assert_eq!(ds.shape, [3, 16, 16]);
    assert_eq!(ds.train.len() + ds.test.len(), 24);
    assert!(
        !ds.test.is_empty(),
        "a test split is carved by content hash"
    );

    let grey = DatasetSpec {
        grayscale: true,
        ..spec.clone()
    };
    assert_eq!(
        imagefolder::load(&grey, root.path(), root.path())
            .unwrap()
            .shape,
        [1, 16, 16]
    );

    let no_size = DatasetSpec {
        image_size: None,
        ..spec.clone()
    };
    let err = imagefolder::load(&no_size, root.path(), root.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("set dataset.image_size"), "{err}");

    // A file whose header does not decode is left out with why, as a scan leaves it out, and
    // the rest loads: the root is the one a scan records.
    let before = imagefolder::load(&spec, root.path(), root.path()).unwrap();
    std::fs::write(
        root.path().join("cat/broken.png"),
        b"\x89PNG\r\n\x1a\nnot really",
    )
    .unwrap();
    let ds = imagefolder::load(&spec, root.path(), root.path()).unwrap();
    assert_eq!(ds.train.len() + ds.test.len(), 24);
    assert_eq!(ds.identity.root_sha256, before.identity.root_sha256);
    let (path, why) = ds
        .identity
        .skipped
        .iter()
        .find(|(p, _)| p == "cat/broken.png")
        .unwrap_or_else(|| panic!("not left out: {:?}", ds.identity.skipped));
    assert!(why.contains("not a valid PNG"), "{path}: {why}");
    assert!(
        ds.identity
            .skipped
            .iter()
            .any(|(p, why)| p == "dog/notes.txt" && why.contains("not an image"))
    );
    let scan = trainfleet_core::manifest::scan_imagefolder(
        root.path(),
        None,
        trainfleet_core::manifest::ScanOptions {
            test_pct: 25,
            validation_pct: 0,
            full: false,
        },
    )
    .unwrap();
    assert_eq!(scan.manifest.root, ds.identity.root_sha256);

    // A sound header over pixel data cut short passes that check; decoding then names it.
    std::fs::remove_file(root.path().join("cat/broken.png")).unwrap();
    let mut png = Vec::new();
    image::RgbImage::new(16, 16)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    std::fs::write(root.path().join("cat/cut.png"), &png[..png.len() - 20]).unwrap();
    let err = imagefolder::load(&spec, root.path(), root.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cat/cut.png") && err.contains("cannot decode image"),
        "{err}"
    );
}

/// A folder of 2 classes × `per_class` distinct images.
fn image_folder(root: &Path, per_class: u32) {
    for (class, shade) in [("cat", 30u8), ("dog", 200)] {
        std::fs::create_dir_all(root.join(class)).unwrap();
        for i in 0..per_class {
            write_image(
                &root.join(class).join(format!("{i:03}.png")),
                8,
                8,
                shade + i as u8,
            );
        }
    }
}

#[test]
fn a_pinned_version_loads_exactly_its_files_and_refuses_drift() {
    use trainfleet_core::manifest::{ScanOptions, Split, scan_imagefolder};
    let data = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    image_folder(data.path(), 20);
    let scan = scan_imagefolder(data.path(), None, ScanOptions::default()).unwrap();
    let version = scan.manifest.root.clone();
    let spec = DatasetSpec {
        format: Some(trainfleet_core::job::LocalFormat::Imagefolder),
        path: Some(data.path().to_owned()),
        ..DatasetSpec::default()
    };

    // Unpinned, the loader sees what a scan sees: the same root, the same test files.
    let now = imagefolder::load(&spec, data.path(), cache.path()).unwrap();
    assert_eq!(now.identity.root_sha256, version);
    let test_files: Vec<String> = scan
        .manifest
        .files
        .iter()
        .filter(|f| f.split == Split::Test)
        .map(|f| f.path.clone())
        .collect();
    assert!(!test_files.is_empty());
    assert_eq!(
        now.test.ids, test_files,
        "the test split is the manifest's, in path order"
    );

    // Pinned with the manifest cached: files added later are not part of the version.
    let pinned = DatasetSpec {
        version: Some(version.clone()),
        ..spec.clone()
    };
    let cached = imagefolder::manifest_cache_path(cache.path(), &version);
    std::fs::create_dir_all(cached.parent().unwrap()).unwrap();
    std::fs::write(&cached, serde_json::to_vec(&scan.manifest).unwrap()).unwrap();
    write_image(&data.path().join("dog/999.png"), 8, 8, 7);
    let ds = imagefolder::load(&pinned, data.path(), cache.path()).unwrap();
    assert_eq!(ds.identity.root_sha256, version);
    assert_eq!(ds.train.len() + ds.val.len() + ds.test.len(), 40);
    assert_eq!(ds.test.ids, test_files);

    // Unpinned, the new file makes it another version; pinned without the manifest, refused.
    let grown = imagefolder::load(&spec, data.path(), cache.path()).unwrap();
    assert_ne!(grown.identity.root_sha256, version);
    let err = imagefolder::load(&pinned, data.path(), tempfile::tempdir().unwrap().path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("refusing to train on drifted data") && err.contains(&version[..12]),
        "{err}"
    );

    // A file of the version whose bytes changed: refused, naming it.
    write_image(&data.path().join("cat/003.png"), 8, 8, 99);
    let err = imagefolder::load(&pinned, data.path(), cache.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cat/003.png") && err.contains("content changed since version"),
        "{err}"
    );
    // One removed: refused too.
    std::fs::remove_file(data.path().join("cat/004.png")).unwrap();
    write_image(&data.path().join("cat/003.png"), 8, 8, 33);
    let err = imagefolder::load(&pinned, data.path(), cache.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cat/004.png") && err.contains("cannot be read now"),
        "{err}"
    );

    // A cached manifest that is not the version it is filed under is refused, not trusted.
    let mut forged = scan.manifest.clone();
    forged.files.pop();
    std::fs::write(&cached, serde_json::to_vec(&forged).unwrap()).unwrap();
    let err = imagefolder::load(&pinned, data.path(), cache.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("it is not that version"), "{err}");
}

#[test]
fn the_test_server_counts_every_request() {
    // Guards the test server itself: every request is counted once.
    let server = TestServer::start();
    server.serve("/x", Route::Ok(b"hello".to_vec()));
    let n = AtomicUsize::new(0);
    for _ in 0..3 {
        let body = ureq::get(format!("{}/x", server.base))
            .call()
            .unwrap()
            .body_mut()
            .read_to_vec()
            .unwrap();
        assert_eq!(body, b"hello");
        n.fetch_add(1, Ordering::Relaxed);
    }
    assert_eq!(server.hits("/x"), n.load(Ordering::Relaxed));
}
