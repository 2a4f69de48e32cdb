//! Datasets in memory: decoded once into contiguous tensors, batches gathered by index.
//!
//! - [`idx`]: IDX files (MNIST family), plain or gzip, validated against their headers.
//! - [`cifar`]: CIFAR-10/100 binary batches read straight from their `.tar.gz`.
//! - [`imagefolder`]: one directory per class of PNG/JPEG files.
//! - [`builtin`] and [`download`]: the builtin catalogue, mirrors, pinned checksums.
//! - [`synth`]: the offline synth-digits generator (writes IDX).
//! - [`split`]: stable content-hash splits and the `fraction` subset.
//!
//! Images stay as u8 (N, C, H, W) on the training device and are normalised per batch; that
//! keeps a dataset at a quarter of its float size, and the conversion is one fused op on a batch.

pub mod builtin;
pub mod cifar;
pub mod download;
pub mod idx;
pub mod imagefolder;
pub mod split;
pub mod synth;

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use sha2::{Digest, Sha256};
use tch::{Device, Kind, Tensor};
use trainfleet_core::job::{Builtin, DatasetSpec, LocalFormat};

use crate::error::{Error, Result};
use split::Assignment;
use trainfleet_core::manifest::{Manifest, ManifestFile, Split as ManifestSplit};

/// One split: images (u8, N×C×H×W), labels (i64, N) and each sample's id.
#[derive(Debug)]
pub struct Split {
    /// Pixel data, contiguous.
    pub images: Tensor,
    /// Class indices.
    pub labels: Tensor,
    /// Sample ids in tensor order: the file path for an image folder, `train/<i>` or
    /// `test/<i>` for IDX sets, the archive member and record for CIFAR.
    pub ids: Vec<String>,
}

impl Split {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.size()[0] as usize
    }

    /// True when there are no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The split on `device`.
    pub fn to_device(&self, device: Device) -> Split {
        Split {
            images: self.images.to_device(device),
            labels: self.labels.to_device(device),
            ids: self.ids.clone(),
        }
    }
}

/// Where a dataset came from, recorded with every model trained on it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Identity {
    /// Builtin name or local path.
    pub source: String,
    /// sha256 over the sorted (file name, file sha256) pairs of the source files.
    pub root_sha256: String,
    /// Each source file and its sha256.
    pub files: Vec<(String, String)>,
    /// What a walk of an image folder left out, and why (the scan's rules). Empty for a pinned
    /// version (its record says what its scan left out) and for sample datasets. Cards written
    /// before this field read it as empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<(String, String)>,
}

/// A dataset ready for training: three splits on one device, classes, and normalisation.
#[derive(Debug)]
pub struct Dataset {
    /// Training split (after the validation carve and `fraction`).
    pub train: Split,
    /// Validation split (may be empty).
    pub val: Split,
    /// Test split (official where one exists).
    pub test: Split,
    /// Class names, by index.
    pub classes: Vec<String>,
    /// Channels, height, width.
    pub shape: [usize; 3],
    /// Per-channel mean and standard deviation of the training pixels, in [0, 1] units.
    pub mean: Vec<f64>,
    /// See `mean`.
    pub std: Vec<f64>,
    /// Provenance.
    pub identity: Identity,
}

impl Dataset {
    /// Moves every split to `device`.
    pub fn to_device(&self, device: Device) -> Dataset {
        Dataset {
            train: self.train.to_device(device),
            val: self.val.to_device(device),
            test: self.test.to_device(device),
            classes: self.classes.clone(),
            shape: self.shape,
            mean: self.mean.clone(),
            std: self.std.clone(),
            identity: self.identity.clone(),
        }
    }
}

/// Where datasets are cached and how missing ones are fetched.
#[derive(Debug, Clone)]
pub struct DataSettings {
    /// Cache of downloads and generated files.
    pub dir: PathBuf,
    /// How builtins are downloaded.
    pub downloader: download::Downloader,
}

impl DataSettings {
    /// Settings for `dir` with the default downloader, and `mirror` (the worker config's) unless
    /// the environment names one.
    pub fn new(dir: PathBuf, mirror: Option<String>) -> Self {
        let mut downloader = download::Downloader::default();
        if downloader.mirror.is_none() {
            downloader.mirror = mirror;
        }
        Self { dir, downloader }
    }
}

/// Loads the dataset a job asks for, on the CPU. `cache_dir` holds downloads and generated
/// files; downloads use the default [`download::Downloader`] (mirror from the environment).
pub fn load(spec: &DatasetSpec, cache_dir: &Path) -> Result<Dataset> {
    load_with(spec, cache_dir, &download::Downloader::default())
}

/// Like [`load`], with an explicit downloader.
pub fn load_with(
    spec: &DatasetSpec,
    cache_dir: &Path,
    downloader: &download::Downloader,
) -> Result<Dataset> {
    let dataset = load_unchecked(spec, cache_dir, downloader)?;
    if let Some(pin) = &spec.version
        && dataset.identity.root_sha256 != *pin
    {
        return Err(Error::Drift {
            path: dataset.identity.source.clone(),
            message: format!(
                "it is version {} now, the job pins {}",
                &dataset.identity.root_sha256[..12],
                &pin[..12.min(pin.len())]
            ),
        });
    }
    Ok(dataset)
}

/// Where the pinned version of an object-store image folder is copied to.
pub fn remote_copy_dir(cache_dir: &Path, version: &str) -> PathBuf {
    cache_dir.join("remote").join(version)
}

fn load_unchecked(
    spec: &DatasetSpec,
    cache_dir: &Path,
    downloader: &download::Downloader,
) -> Result<Dataset> {
    let cache_dir = spec
        .cache_dir
        .clone()
        .unwrap_or_else(|| cache_dir.to_owned());
    if let (Some(LocalFormat::Imagefolder), None, Some(version)) =
        (spec.format, &spec.path, &spec.version)
        && spec.url.is_some()
    {
        return imagefolder::load(spec, &remote_copy_dir(&cache_dir, version), &cache_dir);
    }
    match (spec.builtin, spec.format, &spec.path) {
        (Some(Builtin::SynthDigits), _, _) => {
            let dir = synth::ensure(&cache_dir, &spec.synth)?;
            let source = format!(
                "synth-digits(v{}, seed {}, {}+{})",
                synth::GENERATOR_VERSION,
                spec.synth.seed,
                spec.synth.train_samples,
                spec.synth.test_samples
            );
            load_idx_dir(spec, &dir, source, digit_classes())
        }
        (Some(other), _, _) => builtin::load(other, spec, &cache_dir, downloader),
        (None, Some(LocalFormat::Idx), Some(path)) => {
            load_idx_dir(spec, path, path.display().to_string(), Vec::new())
        }
        (None, Some(LocalFormat::Imagefolder), Some(path)) => {
            imagefolder::load(spec, path, &cache_dir)
        }
        _ => Err(Error::Spec(trainfleet_core::Error::invalid_field(
            "dataset",
            "needs builtin, or format and path",
        ))),
    }
}

fn digit_classes() -> Vec<String> {
    (0..10).map(|d| d.to_string()).collect()
}

/// The IDX file for `stem` in `dir`, plain or `.gz`.
fn idx_file(dir: &Path, stem: &str) -> Result<PathBuf> {
    for name in [stem.to_owned(), format!("{stem}.gz")] {
        let path = dir.join(&name);
        if path.exists() {
            return Ok(path);
        }
    }
    Err(Error::io(
        &dir.join(stem),
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "IDX file not found (looked for it with and without .gz)",
        ),
    ))
}

/// Loads `{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]` from `dir`. `classes` empty means
/// "as many as the largest label + 1".
pub fn load_idx_dir(
    spec: &DatasetSpec,
    dir: &Path,
    source: String,
    classes: Vec<String>,
) -> Result<Dataset> {
    let paths = [
        idx_file(dir, "train-images-idx3-ubyte")?,
        idx_file(dir, "train-labels-idx1-ubyte")?,
        idx_file(dir, "t10k-images-idx3-ubyte")?,
        idx_file(dir, "t10k-labels-idx1-ubyte")?,
    ];
    let expected = [idx::IMAGES, idx::LABELS, idx::IMAGES, idx::LABELS];
    let arrays = paths
        .par_iter()
        .zip(expected)
        .map(|(p, expect)| idx::read_as(p, Some(expect)))
        .collect::<Result<Vec<_>>>()?;
    let [train_images, train_labels, test_images, test_labels] =
        <[idx::IdxArray; 4]>::try_from(arrays).expect("four arrays");
    let class_count = if classes.is_empty() {
        let max = train_labels
            .data
            .iter()
            .chain(&test_labels.data)
            .copied()
            .max()
            .unwrap_or(0);
        max as usize + 1
    } else {
        classes.len()
    };
    let classes = if classes.is_empty() {
        (0..class_count).map(|c| c.to_string()).collect()
    } else {
        classes
    };
    let train = pair(
        &paths[0],
        &train_images,
        &paths[1],
        &train_labels,
        class_count,
    )?;
    let test = pair(
        &paths[2],
        &test_images,
        &paths[3],
        &test_labels,
        class_count,
    )?;
    if train.shape != test.shape {
        return Err(Error::corrupt(
            &paths[2],
            None,
            format!(
                "images are {:?} but the training images are {:?}",
                test.shape, train.shape
            ),
        ));
    }
    let files = paths
        .iter()
        .map(|p| file_sha256(p))
        .collect::<Result<Vec<_>>>()?;
    let mut identity = identity(source, files);
    let shape = train.shape;
    let ids = |prefix: &str, samples: Vec<(i64, Vec<u8>)>| {
        samples
            .into_iter()
            .enumerate()
            .map(|(i, (l, px))| (format!("{prefix}/{i:06}"), l, px))
            .collect()
    };
    let items = official_items(spec, ids("train", train.samples), ids("test", test.samples));
    identity.root_sha256 = sample_root(&items, &classes);
    assemble(spec, items, shape, classes, identity)
}

struct Samples {
    shape: [usize; 3],
    samples: Vec<(i64, Vec<u8>)>,
}

/// Checks an image file against its label file and pairs them.
fn pair(
    image_path: &Path,
    images: &idx::IdxArray,
    label_path: &Path,
    labels: &idx::IdxArray,
    classes: usize,
) -> Result<Samples> {
    if images.dims.len() != 3 {
        return Err(Error::corrupt(
            image_path,
            Some(3),
            format!(
                "image IDX must have 3 dimensions (count, height, width), found {}",
                images.dims.len()
            ),
        ));
    }
    if labels.dims.len() != 1 {
        return Err(Error::corrupt(
            label_path,
            Some(3),
            format!(
                "label IDX must have 1 dimension, found {}",
                labels.dims.len()
            ),
        ));
    }
    let (n, h, w) = (images.dims[0], images.dims[1], images.dims[2]);
    if labels.dims[0] != n {
        return Err(Error::corrupt(
            label_path,
            Some(4),
            format!(
                "{} labels for {n} images in {}",
                labels.dims[0],
                image_path.display()
            ),
        ));
    }
    if let Some((i, &label)) = labels
        .data
        .iter()
        .enumerate()
        .find(|(_, l)| **l as usize >= classes)
    {
        return Err(Error::corrupt(
            label_path,
            Some(8 + i as u64),
            format!("label {label} of sample {i} is out of range for {classes} classes"),
        ));
    }
    let size = h * w;
    let samples = labels
        .data
        .iter()
        .zip(images.data.chunks_exact(size))
        .map(|(&l, px)| (l as i64, px.to_vec()))
        .collect();
    Ok(Samples {
        shape: [1, h, w],
        samples,
    })
}

/// One sample and the split it goes to.
struct Item {
    id: String,
    label: i64,
    pixels: Vec<u8>,
    place: Assignment,
}

/// Places the samples of a dataset with an official test split: test stays test; validation
/// and the `fraction` subset are carved from training by content hash.
fn official_items(
    spec: &DatasetSpec,
    train: Vec<(String, i64, Vec<u8>)>,
    test: Vec<(String, i64, Vec<u8>)>,
) -> Vec<Item> {
    let mut items: Vec<Item> = train
        .into_par_iter()
        .map(|(id, label, pixels)| {
            let place = split::assign(
                &split::item_hash(label, &pixels),
                0,
                spec.validation_pct,
                spec.fraction,
            );
            Item {
                id,
                label,
                pixels,
                place,
            }
        })
        .collect();
    items.extend(test.into_iter().map(|(id, label, pixels)| Item {
        id,
        label,
        pixels,
        place: Assignment::Test,
    }));
    items
}

/// The version root of a dataset of samples (IDX sets, CIFAR, synth-digits): the manifest
/// Merkle root over every sample (its id, pixel count, the sha256 of its pixels, its class),
/// the same leaves a scan of it records, so a job pinned to a version can be checked.
fn sample_root(items: &[Item], classes: &[String]) -> String {
    let mut files: Vec<ManifestFile> = items
        .par_iter()
        .map(|item| ManifestFile {
            path: item.id.clone(),
            size: item.pixels.len() as u64,
            mtime_ns: 0,
            sha256: trainfleet_core::manifest::sha256_hex(&item.pixels),
            label: classes
                .get(item.label as usize)
                .cloned()
                .unwrap_or_else(|| item.label.to_string()),
            split: match item.place {
                Assignment::Test => ManifestSplit::Test,
                Assignment::Validation => ManifestSplit::Validation,
                Assignment::Train | Assignment::Unused => ManifestSplit::Train,
            },
        })
        .collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    trainfleet_core::manifest::merkle_root(&files)
}

/// A manifest of every sample of `dataset` (loaded with `fraction` 1): what a scan of a builtin
/// or IDX dataset records. Its root is the dataset's identity root.
pub fn sample_manifest(dataset: &Dataset) -> Result<Manifest> {
    let mut files = Vec::new();
    let class_names = &dataset.classes;
    for (split, kind) in [
        (&dataset.train, ManifestSplit::Train),
        (&dataset.val, ManifestSplit::Validation),
        (&dataset.test, ManifestSplit::Test),
    ] {
        let per = dataset.shape.iter().product::<usize>();
        let pixels: Vec<u8> = Vec::try_from(split.images.flatten(0, -1))?;
        let labels: Vec<i64> = Vec::try_from(&split.labels)?;
        files.par_extend(
            pixels
                .par_chunks(per.max(1))
                .zip(labels.par_iter())
                .zip(split.ids.par_iter())
                .map(|((px, label), id)| ManifestFile {
                    path: id.clone(),
                    size: px.len() as u64,
                    mtime_ns: 0,
                    sha256: trainfleet_core::manifest::sha256_hex(px),
                    label: class_names[*label as usize].clone(),
                    split: kind,
                }),
        );
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let mut classes = std::collections::BTreeMap::new();
    let mut splits = std::collections::BTreeMap::new();
    for f in &files {
        *classes.entry(f.label.clone()).or_insert(0) += 1;
        *splits.entry(f.split).or_insert(0) += 1;
    }
    Ok(Manifest {
        root: trainfleet_core::manifest::merkle_root(&files),
        files,
        classes,
        splits,
        test_pct: 0,
        validation_pct: 0,
    })
}

/// Packs placed samples into the three splits and measures normalisation on training.
fn assemble(
    spec: &DatasetSpec,
    items: Vec<Item>,
    shape: [usize; 3],
    classes: Vec<String>,
    identity: Identity,
) -> Result<Dataset> {
    let pick =
        |want: Assignment| -> Vec<&Item> { items.iter().filter(|i| i.place == want).collect() };
    let train_split = pack(&pick(Assignment::Train), shape);
    if train_split.is_empty() {
        return Err(Error::Unsupported(format!(
            "the training split of {} is empty after carving validation ({}%) and fraction {}",
            identity.source, spec.validation_pct, spec.fraction
        )));
    }
    let (mean, std) = channel_stats(&train_split.images);
    Ok(Dataset {
        val: pack(&pick(Assignment::Validation), shape),
        test: pack(&pick(Assignment::Test), shape),
        train: train_split,
        classes,
        shape,
        mean,
        std,
        identity,
    })
}

fn pack(items: &[&Item], shape: [usize; 3]) -> Split {
    let per = shape.iter().product::<usize>();
    let mut pixels = Vec::with_capacity(items.len() * per);
    let mut labels = Vec::with_capacity(items.len());
    let mut ids = Vec::with_capacity(items.len());
    for item in items {
        pixels.extend_from_slice(&item.pixels);
        labels.push(item.label);
        ids.push(item.id.clone());
    }
    let n = items.len() as i64;
    Split {
        images: Tensor::from_slice(&pixels).reshape([
            n,
            shape[0] as i64,
            shape[1] as i64,
            shape[2] as i64,
        ]),
        labels: Tensor::from_slice(&labels),
        ids,
    }
}

/// Per-channel mean and std of u8 images, in [0, 1] units.
fn channel_stats(images: &Tensor) -> (Vec<f64>, Vec<f64>) {
    let x = images.to_kind(Kind::Float) / 255.0;
    let dims: &[i64] = &[0, 2, 3];
    let mean = Vec::<f64>::try_from(x.mean_dim(dims, false, Kind::Double)).unwrap_or_default();
    let std = Vec::<f64>::try_from(x.std_dim(dims, false, false).to_kind(Kind::Double))
        .unwrap_or_default();
    let std = std
        .into_iter()
        .map(|s| if s < 1e-6 { 1.0 } else { s })
        .collect();
    (mean, std)
}

/// sha256 of a file, hex.
pub fn file_sha256(path: &Path) -> Result<(String, String)> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(|e| Error::io(path, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok((name, hex(&hasher.finalize())))
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn identity(source: String, mut files: Vec<(String, String)>) -> Identity {
    files.sort();
    let mut root = Sha256::new();
    for (name, sha) in &files {
        root.update(name.as_bytes());
        root.update([0]);
        root.update(sha.as_bytes());
        root.update([b'\n']);
    }
    Identity {
        source,
        root_sha256: hex(&root.finalize()),
        files,
        skipped: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trainfleet_core::job::SynthSpec;

    fn synth_spec(train: u32, test: u32) -> DatasetSpec {
        DatasetSpec {
            builtin: Some(Builtin::SynthDigits),
            synth: SynthSpec {
                train_samples: train,
                test_samples: test,
                seed: 3,
            },
            ..DatasetSpec::default()
        }
    }

    #[test]
    fn synth_digits_load_into_tensors_with_a_validation_carve() {
        let dir = tempfile::tempdir().unwrap();
        let ds = load(&synth_spec(1000, 200), dir.path()).unwrap();
        assert_eq!(ds.shape, [1, 28, 28]);
        assert_eq!(ds.classes.len(), 10);
        assert_eq!(ds.test.len(), 200, "official test split kept whole");
        assert_eq!(ds.train.len() + ds.val.len(), 1000);
        assert!(
            (60..150).contains(&ds.val.len()),
            "about 10% validation: {}",
            ds.val.len()
        );
        assert_eq!(ds.train.images.kind(), Kind::Uint8);
        assert_eq!(
            ds.train.images.size(),
            vec![ds.train.len() as i64, 1, 28, 28]
        );
        assert!(
            ds.mean[0] > 0.02 && ds.mean[0] < 0.5 && ds.std[0] > 0.1,
            "{:?} {:?}",
            ds.mean,
            ds.std
        );
        assert_eq!(ds.identity.files.len(), 4);
        assert_eq!(ds.identity.root_sha256.len(), 64);
    }

    #[test]
    fn label_out_of_range_and_count_mismatch_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let write =
            |name: &str, bytes: Vec<u8>| std::fs::write(dir.path().join(name), bytes).unwrap();
        write("train-images-idx3-ubyte", idx::encode(&[3, 2, 2], &[0; 12]));
        write("train-labels-idx1-ubyte", idx::encode(&[3], &[0, 1, 2]));
        write("t10k-images-idx3-ubyte", idx::encode(&[2, 2, 2], &[0; 8]));
        write("t10k-labels-idx1-ubyte", idx::encode(&[3], &[0, 1, 1]));
        let spec = DatasetSpec {
            validation_pct: 0,
            ..DatasetSpec::default()
        };
        let err = load_idx_dir(&spec, dir.path(), "x".into(), Vec::new())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("t10k-labels-idx1-ubyte at byte 4: 3 labels for 2 images"),
            "{err}"
        );

        write("t10k-labels-idx1-ubyte", idx::encode(&[2], &[0, 1]));
        let err = load_idx_dir(&spec, dir.path(), "x".into(), digit_classes()[..2].to_vec())
            .unwrap_err()
            .to_string();
        assert!(err.contains("train-labels-idx1-ubyte at byte 10: label 2 of sample 2 is out of range for 2 classes"), "{err}");
    }

    #[test]
    fn fraction_keeps_a_stable_subset() {
        let dir = tempfile::tempdir().unwrap();
        let mut half = synth_spec(2000, 10);
        half.fraction = 0.5;
        let full = load(&synth_spec(2000, 10), dir.path()).unwrap();
        let part = load(&half, dir.path()).unwrap();
        assert_eq!(
            part.val.len(),
            full.val.len(),
            "validation does not depend on fraction"
        );
        let ratio = part.train.len() as f64 / full.train.len() as f64;
        assert!((0.44..0.56).contains(&ratio), "{ratio}");
    }
}
