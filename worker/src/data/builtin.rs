//! The builtin datasets: where each file lives, its pinned sha256, and its class names.

use std::path::Path;

use trainfleet_core::job::{Builtin, DatasetSpec};

use super::download::{Downloader, RemoteFile};
use super::{Dataset, cifar, load_idx_dir};
use crate::error::Result;

const MNIST_BASES: &[&str] = &[
    "https://storage.googleapis.com/cvdf-datasets/mnist",
    "https://ossci-datasets.s3.amazonaws.com/mnist",
    "http://yann.lecun.com/exdb/mnist",
];
const MNIST_FILES: &[RemoteFile] = &[
    RemoteFile {
        name: "train-images-idx3-ubyte.gz",
        sha256: "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    },
    RemoteFile {
        name: "train-labels-idx1-ubyte.gz",
        sha256: "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    },
    RemoteFile {
        name: "t10k-images-idx3-ubyte.gz",
        sha256: "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    },
    RemoteFile {
        name: "t10k-labels-idx1-ubyte.gz",
        sha256: "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    },
];

const FASHION_BASES: &[&str] = &[
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion",
];
const FASHION_FILES: &[RemoteFile] = &[
    RemoteFile {
        name: "train-images-idx3-ubyte.gz",
        sha256: "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    },
    RemoteFile {
        name: "train-labels-idx1-ubyte.gz",
        sha256: "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    },
    RemoteFile {
        name: "t10k-images-idx3-ubyte.gz",
        sha256: "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    },
    RemoteFile {
        name: "t10k-labels-idx1-ubyte.gz",
        sha256: "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    },
];
const FASHION_CLASSES: &[&str] = &[
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

const KMNIST_BASES: &[&str] = &["http://codh.rois.ac.jp/kmnist/dataset/kmnist"];
const KMNIST_FILES: &[RemoteFile] = &[
    RemoteFile {
        name: "train-images-idx3-ubyte.gz",
        sha256: "51467d22d8cc72929e2a028a0428f2086b092bb31cfb79c69cc0a90ce135fde4",
    },
    RemoteFile {
        name: "train-labels-idx1-ubyte.gz",
        sha256: "e38f9ebcd0f3ebcdec7fc8eabdcdaef93bb0df8ea12bee65224341c8183d8e17",
    },
    RemoteFile {
        name: "t10k-images-idx3-ubyte.gz",
        sha256: "edd7a857845ad6bb1d0ba43fe7e794d164fe2dce499a1694695a792adfac43c5",
    },
    RemoteFile {
        name: "t10k-labels-idx1-ubyte.gz",
        sha256: "20bb9a0ef54c7db3efc55a92eef5582c109615df22683c380526788f98e42a1c",
    },
];
const KMNIST_CLASSES: &[&str] = &["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"];

const CIFAR_BASES: &[&str] = &["https://www.cs.toronto.edu/~kriz"];
const CIFAR10_ARCHIVE: RemoteFile = RemoteFile {
    name: "cifar-10-binary.tar.gz",
    sha256: "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
};
const CIFAR100_ARCHIVE: RemoteFile = RemoteFile {
    name: "cifar-100-binary.tar.gz",
    sha256: "58a81ae192c23a4be8b1804d68e518ed807d710a4eb253b1f2a199162a40d8ec",
};

/// Base URLs and files of a downloadable builtin (not synth-digits).
pub fn remote(builtin: Builtin) -> (&'static [&'static str], Vec<RemoteFile>) {
    match builtin {
        Builtin::Mnist => (MNIST_BASES, MNIST_FILES.to_vec()),
        Builtin::FashionMnist => (FASHION_BASES, FASHION_FILES.to_vec()),
        Builtin::Kmnist => (KMNIST_BASES, KMNIST_FILES.to_vec()),
        Builtin::Cifar10 => (CIFAR_BASES, vec![CIFAR10_ARCHIVE]),
        Builtin::Cifar100 => (CIFAR_BASES, vec![CIFAR100_ARCHIVE]),
        Builtin::SynthDigits => (&[], Vec::new()),
    }
}

/// Downloads (or finds in the cache) and loads a builtin.
pub fn load(
    builtin: Builtin,
    spec: &DatasetSpec,
    cache_dir: &Path,
    downloader: &Downloader,
) -> Result<Dataset> {
    load_from(builtin, spec, cache_dir, downloader, &remote(builtin))
}

/// Like [`load`] with an explicit catalogue entry (tests use their own files and checksums).
pub fn load_from(
    builtin: Builtin,
    spec: &DatasetSpec,
    cache_dir: &Path,
    downloader: &Downloader,
    (bases, files): &(&[&str], Vec<RemoteFile>),
) -> Result<Dataset> {
    let dir = cache_dir.join(builtin.name());
    let paths = files
        .iter()
        .map(|f| downloader.ensure(&dir, builtin.name(), bases, f))
        .collect::<Result<Vec<_>>>()?;
    let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    match builtin {
        Builtin::Mnist => load_idx_dir(
            spec,
            &dir,
            "mnist".into(),
            (0..10).map(|d| d.to_string()).collect(),
        ),
        Builtin::FashionMnist => {
            load_idx_dir(spec, &dir, "fashion-mnist".into(), names(FASHION_CLASSES))
        }
        Builtin::Kmnist => load_idx_dir(spec, &dir, "kmnist".into(), names(KMNIST_CLASSES)),
        Builtin::Cifar10 => cifar::load(spec, &paths[0], cifar::Variant::Cifar10),
        Builtin::Cifar100 => cifar::load(spec, &paths[0], cifar::Variant::Cifar100),
        Builtin::SynthDigits => unreachable!("synth-digits is generated, not downloaded"),
    }
}
