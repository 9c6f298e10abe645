//! Datasets: the embedded MNIST subset, CIFAR-10/100 binaries and (Fashion-)MNIST IDX files.
//!
//! Every parser checks what it reads (sizes, magic numbers, label ranges) and reports the
//! file and the problem; none of them panics on bad input.

mod cifar;
#[cfg(test)]
mod fuzz;
mod idx;
#[cfg(test)]
pub(crate) use idx::encode as encode_idx;
mod mnist_csv;

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

pub use mnist_csv::parse_mnist_csv;

/// The embedded default dataset: 5,000 real MNIST digits (500 per class), gzipped CSV.
/// Source and licence (CC BY-SA 3.0): `host/data/README.md`.
const MNIST_5K: &[u8] = include_bytes!("../../data/mnist_5k.csv.gz");

/// Why a dataset could not be loaded. Every variant names the file it is about.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {problem}")]
    Corrupt { path: PathBuf, problem: String },
    #[error("{path}: not found ({hint})")]
    Missing { path: PathBuf, hint: String },
    #[error("unknown dataset {0:?}: expected mnist5k, mnist:DIR, fashion-mnist:DIR, cifar10:DIR or cifar100:DIR")]
    UnknownSpec(String),
    #[error("{0}")]
    Invalid(String),
}

impl DataError {
    fn corrupt(path: impl Into<PathBuf>, problem: impl Into<String>) -> DataError {
        DataError::Corrupt { path: path.into(), problem: problem.into() }
    }
}

/// Image geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ImageShape {
    pub channels: i64,
    pub height: i64,
    pub width: i64,
}

impl ImageShape {
    /// Bytes (= pixels × channels) of one image.
    pub fn len(&self) -> usize {
        (self.channels * self.height * self.width) as usize
    }

    /// Whether an image has no pixels.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Training-time augmentation suited to a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Augment {
    /// None (digits: flipping a 2 does not make a 2).
    None,
    /// Random crop after 4-pixel zero padding, and random horizontal flip (CIFAR).
    CropFlip,
}

/// Images and labels in memory: 8-bit pixels, channel-major per image (NCHW).
#[derive(Debug, Clone)]
pub struct Dataset {
    pub name: String,
    pub shape: ImageShape,
    pub num_classes: usize,
    pub augment: Augment,
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
    /// The files the images were read from (empty for the embedded subset).
    pub files: Vec<PathBuf>,
}

impl Dataset {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The images at `indices`, in that order.
    pub fn subset(&self, indices: &[usize]) -> Dataset {
        let n = self.shape.len();
        let mut images = Vec::with_capacity(indices.len() * n);
        for &i in indices {
            images.extend_from_slice(&self.images[i * n..(i + 1) * n]);
        }
        Dataset {
            name: self.name.clone(),
            shape: self.shape,
            num_classes: self.num_classes,
            augment: self.augment,
            images,
            labels: indices.iter().map(|&i| self.labels[i]).collect(),
            files: self.files.clone(),
        }
    }

    /// Checks the invariants parsers must establish; a failure names `origin`.
    fn validate(&self, origin: &Path) -> Result<(), DataError> {
        if self.images.len() != self.labels.len() * self.shape.len() {
            return Err(DataError::corrupt(
                origin,
                format!("{} images of {} bytes do not match {} labels", self.images.len(), self.shape.len(), self.labels.len()),
            ));
        }
        check_labels(&self.labels, self.num_classes, origin)
    }

    fn concat(parts: Vec<Dataset>) -> Dataset {
        let mut parts = parts.into_iter();
        let mut all = parts.next().expect("at least one part");
        for part in parts {
            all.images.extend(part.images);
            all.labels.extend(part.labels);
            all.files.extend(part.files);
        }
        all
    }
}

/// Checks that every label is below `num_classes`; a failure names `origin` and the record.
fn check_labels(labels: &[u8], num_classes: usize, origin: &Path) -> Result<(), DataError> {
    match labels.iter().enumerate().find(|(_, label)| usize::from(**label) >= num_classes) {
        Some((index, label)) => Err(DataError::corrupt(origin, format!("label {label} of record {index} is out of range 0..{num_classes}"))),
        None => Ok(()),
    }
}

/// One part of a dataset, ready to hand out subsets: in memory, or (IDX files, which can
/// hold millions of images) read from its file keeping only the images asked for.
enum Pool {
    InMemory(Dataset),
    Idx(idx::IdxPart),
}

impl Pool {
    fn len(&self) -> usize {
        match self {
            Pool::InMemory(dataset) => dataset.len(),
            Pool::Idx(part) => part.len(),
        }
    }

    /// The images at each list of indices, in that order.
    fn subsets(&self, wanted: &[&[usize]]) -> Result<Vec<Dataset>, DataError> {
        match self {
            Pool::InMemory(dataset) => Ok(wanted.iter().map(|indices| dataset.subset(indices)).collect()),
            Pool::Idx(part) => part.read(wanted),
        }
    }
}

/// Which dataset to use, as written on the command line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DatasetSpec {
    /// The embedded 5,000-image MNIST subset (no download).
    Mnist5k,
    /// MNIST IDX files in a folder (`train-images-idx3-ubyte[.gz]`, …).
    Mnist(PathBuf),
    /// Fashion-MNIST IDX files in a folder (same layout as MNIST).
    FashionMnist(PathBuf),
    /// CIFAR-10 binary version: `data_batch_{1..5}.bin`, `test_batch.bin`.
    Cifar10(PathBuf),
    /// CIFAR-100 binary version: `train.bin`, `test.bin`.
    Cifar100(PathBuf),
}

impl FromStr for DatasetSpec {
    type Err = DataError;

    fn from_str(text: &str) -> Result<DatasetSpec, DataError> {
        if text == "mnist5k" {
            return Ok(DatasetSpec::Mnist5k);
        }
        let Some((kind, dir)) = text.split_once(':') else {
            return Err(DataError::UnknownSpec(text.to_owned()));
        };
        let dir = PathBuf::from(dir);
        match kind {
            "mnist" => Ok(DatasetSpec::Mnist(dir)),
            "fashion-mnist" => Ok(DatasetSpec::FashionMnist(dir)),
            "cifar10" => Ok(DatasetSpec::Cifar10(dir)),
            "cifar100" => Ok(DatasetSpec::Cifar100(dir)),
            _ => Err(DataError::UnknownSpec(text.to_owned())),
        }
    }
}

impl TryFrom<String> for DatasetSpec {
    type Error = DataError;
    fn try_from(text: String) -> Result<Self, DataError> {
        text.parse()
    }
}

impl From<DatasetSpec> for String {
    fn from(spec: DatasetSpec) -> String {
        spec.to_string()
    }
}

impl fmt::Display for DatasetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatasetSpec::Mnist5k => f.write_str("mnist5k"),
            DatasetSpec::Mnist(dir) => write!(f, "mnist:{}", dir.display()),
            DatasetSpec::FashionMnist(dir) => write!(f, "fashion-mnist:{}", dir.display()),
            DatasetSpec::Cifar10(dir) => write!(f, "cifar10:{}", dir.display()),
            DatasetSpec::Cifar100(dir) => write!(f, "cifar100:{}", dir.display()),
        }
    }
}

/// The official parts of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Train,
    Test,
}

impl DatasetSpec {
    /// The folder the data is read from, for the datasets read from one.
    pub fn folder_mut(&mut self) -> Option<&mut PathBuf> {
        match self {
            DatasetSpec::Mnist5k => None,
            DatasetSpec::Mnist(dir) | DatasetSpec::FashionMnist(dir) | DatasetSpec::Cifar10(dir) | DatasetSpec::Cifar100(dir) => Some(dir),
        }
    }

    /// Reads one official part. The embedded subset has no test part.
    pub fn load(&self, part: Part) -> Result<Dataset, DataError> {
        let dataset = match self {
            DatasetSpec::Mnist5k => match part {
                Part::Train => parse_mnist_csv(MNIST_5K, Path::new("<embedded mnist_5k.csv.gz>"))?,
                Part::Test => {
                    return Err(DataError::Invalid(
                        "the embedded mnist5k subset has no official test part: hold out a fraction instead".into(),
                    ));
                }
            },
            DatasetSpec::Mnist(dir) => idx::load(dir, part, "mnist")?,
            DatasetSpec::FashionMnist(dir) => idx::load(dir, part, "fashion-mnist")?,
            DatasetSpec::Cifar10(dir) => cifar::load_cifar10(dir, part)?,
            DatasetSpec::Cifar100(dir) => cifar::load_cifar100(dir, part)?,
        };
        Ok(dataset)
    }
}

impl DatasetSpec {
    /// Opens one official part, reading its images only when they are asked for where the
    /// format allows it (IDX).
    fn open(&self, part: Part) -> Result<Pool, DataError> {
        Ok(match self {
            DatasetSpec::Mnist(dir) => Pool::Idx(idx::open(dir, part, "mnist")?),
            DatasetSpec::FashionMnist(dir) => Pool::Idx(idx::open(dir, part, "fashion-mnist")?),
            _ => Pool::InMemory(self.load(part)?),
        })
    }
}

/// Finds `name` or, failing that, `name.gz` in `dir`.
fn find_maybe_gzipped(dir: &Path, name: &str) -> Result<PathBuf, DataError> {
    let plain = dir.join(name);
    if plain.exists() {
        return Ok(plain);
    }
    let gz = dir.join(format!("{name}.gz"));
    if gz.exists() {
        return Ok(gz);
    }
    Err(DataError::Missing { path: plain, hint: "nor a .gz version of it".into() })
}

/// Reads a whole file, transparently gunzipping it when it starts with the gzip magic.
fn read_maybe_gzipped(path: &Path) -> Result<Vec<u8>, DataError> {
    let raw = std::fs::read(path).map_err(|source| DataError::Io { path: path.to_owned(), source })?;
    gunzip_if_needed(raw, path)
}

fn gunzip_if_needed(raw: Vec<u8>, path: &Path) -> Result<Vec<u8>, DataError> {
    if !raw.starts_with(&[0x1f, 0x8b]) {
        return Ok(raw);
    }
    gunzip_at_most(&raw, MAX_INFLATED_FILE).map_err(|message| DataError::corrupt(path, message))
}

/// The most a whole-file dataset (CSV, CIFAR batch, IDX labels) may inflate to: 1 GiB,
/// over 30 times a CIFAR-10 batch. The big IDX image files are streamed, not inflated whole.
const MAX_INFLATED_FILE: u64 = 1 << 30;

/// Inflates gzip data (all members), refusing to produce more than `limit` bytes: deflate
/// shrinks up to about 1032 to 1, so a small damaged or hostile file could otherwise ask
/// for more memory than the machine has. The error says which of the two went wrong.
pub(crate) fn gunzip_at_most(raw: &[u8], limit: u64) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(raw)
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| format!("gzip data is truncated or corrupt ({e})"))?;
    if out.len() as u64 > limit {
        return Err(format!("gzip data inflates to more than {} MiB, more than a file of this kind holds", limit >> 20));
    }
    Ok(out)
}

/// Where the held-out images come from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Holdout {
    /// This fraction of the training part, chosen by the seed.
    Fraction(f64),
    /// The dataset's official test part.
    Official,
}

impl FromStr for Holdout {
    type Err = String;
    fn from_str(text: &str) -> Result<Holdout, String> {
        if text == "test" {
            return Ok(Holdout::Official);
        }
        match text.parse::<f64>() {
            Ok(f) if f > 0.0 && f < 1.0 => Ok(Holdout::Fraction(f)),
            _ => Err(format!("{text:?} is neither 'test' nor a fraction strictly between 0 and 1")),
        }
    }
}

/// Training and held-out images.
#[derive(Debug, Clone)]
pub struct Split {
    pub train: Dataset,
    pub heldout: Dataset,
}

/// Held-out images a `--limit`ed experiment keeps at most (the size of the official test
/// parts of MNIST and CIFAR): a quick experiment on a large file should not judge every
/// training on a fifth of the file.
pub const LIMITED_HELDOUT: usize = 10_000;

impl Split {
    /// Loads `spec` and splits it deterministically by `seed`. `limit` caps the number of
    /// training images (a seeded sample), to keep quick experiments quick; the held-out
    /// fraction then keeps at most [`LIMITED_HELDOUT`] images (a prefix of the same
    /// seeded order, so the training images do not change), and of an IDX file only the
    /// images kept are held in memory.
    pub fn load(spec: &DatasetSpec, holdout: Holdout, limit: Option<usize>, seed: u64) -> Result<Split, DataError> {
        Split::of(&spec.open(Part::Train)?, spec, holdout, limit, seed)
    }

    /// Splits `pool`, the training part of `spec`.
    fn of(pool: &Pool, spec: &DatasetSpec, holdout: Holdout, limit: Option<usize>, seed: u64) -> Result<Split, DataError> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_da7a);
        let mut order: Vec<usize> = (0..pool.len()).collect();
        order.shuffle(&mut rng);
        let (train_idx, heldout_idx): (&[usize], &[usize]) = match holdout {
            Holdout::Official => (&order, &[]),
            Holdout::Fraction(fraction) => {
                let n_heldout = ((pool.len() as f64) * fraction).round() as usize;
                let (heldout_idx, train_idx) = order.split_at(n_heldout.min(pool.len()));
                let kept = if limit.is_some() { heldout_idx.len().min(LIMITED_HELDOUT) } else { heldout_idx.len() };
                (train_idx, &heldout_idx[..kept])
            }
        };
        let train_idx = match limit {
            Some(limit) => &train_idx[..limit.min(train_idx.len())],
            None => train_idx,
        };
        let mut parts = pool.subsets(&[train_idx, heldout_idx])?.into_iter();
        let (Some(train), Some(heldout)) = (parts.next(), parts.next()) else {
            return Err(DataError::Invalid(format!("{spec}: the split lost a part")));
        };
        let heldout = match holdout {
            Holdout::Official => spec.load(Part::Test)?,
            Holdout::Fraction(_) => heldout,
        };
        if train.is_empty() || heldout.is_empty() {
            return Err(DataError::Invalid(format!(
                "{spec}: split leaves {} training and {} held-out images; both need at least one",
                train.len(),
                heldout.len()
            )));
        }
        Ok(Split { train, heldout })
    }
}

/// A dataset on a device: float images normalised per channel, and int64 labels.
#[derive(Debug)]
pub struct TensorData {
    /// `[N, C, H, W]`, float.
    pub images: Tensor,
    /// `[N]`, int64.
    pub labels: Tensor,
}

/// Per-channel mean and standard deviation, computed on the training images.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Normalization {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

impl Normalization {
    /// Statistics of `dataset` (pixels scaled to [0, 1]).
    pub fn of(dataset: &Dataset) -> Normalization {
        let c = dataset.shape.channels as usize;
        let plane = (dataset.shape.height * dataset.shape.width) as usize;
        let mut sum = vec![0f64; c];
        let mut sq = vec![0f64; c];
        for image in dataset.images.chunks_exact(dataset.shape.len()) {
            for (ch, values) in image.chunks_exact(plane).enumerate() {
                for &v in values {
                    let v = f64::from(v) / 255.0;
                    sum[ch] += v;
                    sq[ch] += v * v;
                }
            }
        }
        let n = (dataset.len() * plane).max(1) as f64;
        let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
        let std = sq.iter().zip(&mean).map(|(s, m)| (s / n - m * m).max(1e-12).sqrt()).collect();
        Normalization { mean, std }
    }

    /// Moves `dataset` to `device` as normalised floats of `kind`. Fails (rather than
    /// panicking) when libtorch cannot allocate it there: the images are outside input, and
    /// a large enough file fills any device.
    pub fn apply(&self, dataset: &Dataset, device: Device, kind: Kind) -> Result<TensorData, tch::TchError> {
        let s = dataset.shape;
        let shape = [dataset.len() as i64, s.channels, s.height, s.width];
        let c = s.channels;
        let per_channel = |values: &[f64]| Tensor::f_from_slice(values)?.f_view([1, c, 1, 1])?.f_to_kind(kind)?.f_to_device(device);
        let (mean, std) = (per_channel(&self.mean)?, per_channel(&self.std)?);
        let images = Tensor::f_from_slice(&dataset.images)?.f_view(shape)?.f_to_device(device)?.f_to_kind(kind)?.f_div_scalar(255.0)?;
        let images = images.f_sub(&mean)?.f_div(&std)?;
        let labels = Tensor::f_from_slice(&dataset.labels)?.f_to_device(device)?.f_to_kind(Kind::Int64)?;
        Ok(TensorData { images, labels })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_data_that_inflates_past_the_limit_is_refused_not_read() {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(&vec![0u8; 3 << 20]).unwrap();
        let bomb = encoder.finish().unwrap();
        assert!(bomb.len() < 64 << 10, "{} bytes", bomb.len());
        assert_eq!(gunzip_at_most(&bomb, 3 << 20).unwrap().len(), 3 << 20);
        let err = gunzip_at_most(&bomb, 2 << 20).unwrap_err();
        assert!(err.contains("inflates to more than 2 MiB"), "{err}");
        let err = gunzip_at_most(&bomb[..bomb.len() / 2], 4 << 20).unwrap_err();
        assert!(err.contains("truncated or corrupt"), "{err}");
    }

    #[test]
    fn embedded_default_loads_with_balanced_labels() {
        let data = DatasetSpec::Mnist5k.load(Part::Train).unwrap();
        assert_eq!(data.len(), 5000);
        assert_eq!(data.shape, ImageShape { channels: 1, height: 28, width: 28 });
        assert_eq!(data.num_classes, 10);
        for class in 0..10u8 {
            assert_eq!(data.labels.iter().filter(|&&l| l == class).count(), 500);
        }
        assert!(data.images.contains(&255));
    }

    #[test]
    fn an_idx_file_is_split_keeping_only_the_images_used_and_as_if_read_whole() {
        use std::io::Write;
        // 30,000 images of 3×3 pixels, nearly all different.
        let n = 30_000u32;
        let pixels: Vec<u8> = (0..n).flat_map(|i| (0..9u32).map(move |p| ((i * 7 + p * 13 + i / 251) % 256) as u8)).collect();
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        for gzip in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            for (name, bytes) in [
                ("train-images-idx3-ubyte", idx::encode(&[n, 3, 3], &pixels)),
                ("train-labels-idx1-ubyte", idx::encode(&[n], &labels)),
            ] {
                if gzip {
                    let file = std::fs::File::create(dir.path().join(format!("{name}.gz"))).unwrap();
                    let mut encoder = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
                    encoder.write_all(&bytes).unwrap();
                    encoder.finish().unwrap();
                } else {
                    std::fs::write(dir.path().join(name), bytes).unwrap();
                }
            }
            let spec = DatasetSpec::Mnist(dir.path().to_owned());
            // What the files hold, built apart from the reader.
            let whole = Pool::InMemory(Dataset {
                name: "mnist".into(),
                shape: ImageShape { channels: 1, height: 3, width: 3 },
                num_classes: 10,
                augment: Augment::None,
                images: pixels.clone(),
                labels: labels.clone(),
                files: vec![],
            });
            assert_eq!(spec.load(Part::Train).unwrap().images, pixels, "read whole");
            for limit in [None, Some(500)] {
                let streamed = Split::load(&spec, Holdout::Fraction(0.5), limit, 3).unwrap();
                let in_memory = Split::of(&whole, &spec, Holdout::Fraction(0.5), limit, 3).unwrap();
                for (a, b) in [(&streamed.train, &in_memory.train), (&streamed.heldout, &in_memory.heldout)] {
                    assert_eq!((&a.images, &a.labels, a.shape), (&b.images, &b.labels, b.shape));
                }
                let (train, heldout) = (streamed.train.len(), streamed.heldout.len());
                match limit {
                    None => assert_eq!((train, heldout), (15_000, 15_000)),
                    // The held-out part of a limited experiment stops at LIMITED_HELDOUT.
                    Some(_) => assert_eq!((train, heldout), (500, LIMITED_HELDOUT)),
                }
            }
            // The limited split's images are those of the unlimited one: a prefix of each part.
            let all = Split::load(&spec, Holdout::Fraction(0.5), None, 3).unwrap();
            let limited = Split::load(&spec, Holdout::Fraction(0.5), Some(500), 3).unwrap();
            assert_eq!(limited.train.images[..], all.train.images[..500 * 9]);
            assert_eq!(limited.heldout.images[..], all.heldout.images[..LIMITED_HELDOUT * 9]);
        }
    }

    #[test]
    fn split_is_deterministic_by_seed_and_disjoint() {
        let spec = DatasetSpec::Mnist5k;
        let a = Split::load(&spec, Holdout::Fraction(0.2), None, 7).unwrap();
        let b = Split::load(&spec, Holdout::Fraction(0.2), None, 7).unwrap();
        let c = Split::load(&spec, Holdout::Fraction(0.2), None, 8).unwrap();
        assert_eq!((a.train.len(), a.heldout.len()), (4000, 1000));
        // Disjoint, and together every image once (the embedded digits are distinct).
        let train: std::collections::HashSet<&[u8]> = a.train.images.chunks(784).collect();
        let heldout: std::collections::HashSet<&[u8]> = a.heldout.images.chunks(784).collect();
        assert_eq!((train.len(), heldout.len()), (4000, 1000));
        assert!(train.is_disjoint(&heldout));
        assert_eq!(a.train.labels, b.train.labels);
        assert_eq!(a.heldout.images, b.heldout.images);
        assert_ne!(a.train.images, c.train.images);
        let limited = Split::load(&spec, Holdout::Fraction(0.2), Some(100), 7).unwrap();
        assert_eq!(limited.train.len(), 100);
        assert_eq!(limited.train.images[..], a.train.images[..100 * 784]);
        assert!(matches!(
            Split::load(&spec, Holdout::Official, None, 7),
            Err(DataError::Invalid(m)) if m.contains("no official test part")
        ));
    }

    #[test]
    fn specs_parse_and_print() {
        for text in ["mnist5k", "mnist:/d", "fashion-mnist:/d", "cifar10:/x/y", "cifar100:rel"] {
            assert_eq!(text.parse::<DatasetSpec>().unwrap().to_string(), text);
        }
        let err = "imagenet:/d".parse::<DatasetSpec>().unwrap_err();
        assert!(err.to_string().contains("unknown dataset \"imagenet:/d\""), "{err}");
        assert_eq!("0.2".parse::<Holdout>(), Ok(Holdout::Fraction(0.2)));
        assert_eq!("test".parse::<Holdout>(), Ok(Holdout::Official));
        assert!("1.5".parse::<Holdout>().is_err());
    }

    #[test]
    fn normalization_gives_zero_mean_unit_variance() {
        let data = DatasetSpec::Mnist5k.load(Part::Train).unwrap().subset(&(0..500).collect::<Vec<_>>());
        let norm = Normalization::of(&data);
        let t = norm.apply(&data, Device::Cpu, Kind::Double).unwrap();
        assert_eq!(t.images.size(), vec![500, 1, 28, 28]);
        assert!(t.images.mean(Kind::Double).double_value(&[]).abs() < 1e-9);
        assert!((t.images.std(false).double_value(&[]) - 1.0).abs() < 1e-6);
        assert_eq!(t.labels.kind(), Kind::Int64);
    }
}
