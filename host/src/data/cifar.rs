//! CIFAR-10 and CIFAR-100, binary version (Krizhevsky, 2009): fixed-size records of label
//! byte(s) followed by 3×32×32 pixels, channel-major (all red, then green, then blue).

use std::path::{Path, PathBuf};

use super::{Augment, DataError, Dataset, ImageShape, Part, read_maybe_gzipped};

const IMAGE_BYTES: usize = 3 * 32 * 32;
const SHAPE: ImageShape = ImageShape { channels: 3, height: 32, width: 32 };

/// The folder holding the `.bin` files: `dir` itself, or the archive's own subfolder in it.
fn bin_dir(dir: &Path, archive_folder: &str) -> PathBuf {
    let nested = dir.join(archive_folder);
    if nested.is_dir() { nested } else { dir.to_owned() }
}

/// Parses records of `label_bytes` label bytes (the label used is the last one) and an image.
fn parse(bytes: &[u8], label_bytes: usize, num_classes: usize, path: &Path, name: &str) -> Result<Dataset, DataError> {
    let record = label_bytes + IMAGE_BYTES;
    if bytes.is_empty() || bytes.len() % record != 0 {
        return Err(DataError::corrupt(
            path,
            format!(
                "{} bytes is not a whole number of {record}-byte records (truncated or not a {name} binary file)",
                bytes.len()
            ),
        ));
    }
    let n = bytes.len() / record;
    let mut images = Vec::with_capacity(n * IMAGE_BYTES);
    let mut labels = Vec::with_capacity(n);
    for chunk in bytes.chunks_exact(record) {
        labels.push(chunk[label_bytes - 1]);
        images.extend_from_slice(&chunk[label_bytes..]);
    }
    let dataset = Dataset { name: name.into(), shape: SHAPE, num_classes, augment: Augment::CropFlip, images, labels };
    dataset.validate(path)?;
    Ok(dataset)
}

fn load_files(dir: &Path, files: &[String], label_bytes: usize, classes: usize, name: &str) -> Result<Dataset, DataError> {
    let mut parts = Vec::new();
    for file in files {
        let path = dir.join(file);
        if !path.exists() {
            return Err(DataError::Missing { path, hint: format!("expected the {name} binary version here") });
        }
        parts.push(parse(&read_maybe_gzipped(&path)?, label_bytes, classes, &path, name)?);
    }
    Ok(Dataset::concat(parts))
}

/// CIFAR-10: `data_batch_1.bin` … `data_batch_5.bin` and `test_batch.bin`.
pub(super) fn load_cifar10(dir: &Path, part: Part) -> Result<Dataset, DataError> {
    let files: Vec<String> = match part {
        Part::Train => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
        Part::Test => vec!["test_batch.bin".into()],
    };
    load_files(&bin_dir(dir, "cifar-10-batches-bin"), &files, 1, 10, "cifar10")
}

/// CIFAR-100: `train.bin` and `test.bin`, records carry the coarse then the fine label; we
/// classify the 100 fine labels.
pub(super) fn load_cifar100(dir: &Path, part: Part) -> Result<Dataset, DataError> {
    let file = match part {
        Part::Train => "train.bin",
        Part::Test => "test.bin",
    };
    load_files(&bin_dir(dir, "cifar-100-binary"), &[file.into()], 2, 100, "cifar100")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(labels: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, label) in labels.iter().enumerate() {
            out.extend_from_slice(label);
            out.extend((0..IMAGE_BYTES).map(|p| ((p + i) % 256) as u8));
        }
        out
    }

    #[test]
    fn cifar10_loads_all_batches() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("cifar-10-batches-bin");
        std::fs::create_dir(&nested).unwrap();
        for i in 1..=5u8 {
            std::fs::write(nested.join(format!("data_batch_{i}.bin")), records(&[&[i], &[9]])).unwrap();
        }
        std::fs::write(nested.join("test_batch.bin"), records(&[&[0]])).unwrap();
        let train = load_cifar10(dir.path(), Part::Train).unwrap();
        assert_eq!(train.labels, vec![1, 9, 2, 9, 3, 9, 4, 9, 5, 9]);
        assert_eq!(train.images.len(), 10 * IMAGE_BYTES);
        assert_eq!(train.images[IMAGE_BYTES], 1, "second record's first pixel");
        assert_eq!(train.augment, Augment::CropFlip);
        assert_eq!(load_cifar10(&nested, Part::Test).unwrap().len(), 1);
    }

    #[test]
    fn cifar100_uses_fine_labels() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("train.bin"), records(&[&[3, 99], &[19, 0]])).unwrap();
        let train = load_cifar100(dir.path(), Part::Train).unwrap();
        assert_eq!(train.labels, vec![99, 0]);
        assert_eq!(train.num_classes, 100);
    }

    #[test]
    fn corrupt_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train.bin");
        std::fs::write(&path, &records(&[&[3, 99], &[19, 0]])[..5000]).unwrap();
        let err = load_cifar100(dir.path(), Part::Train).unwrap_err().to_string();
        assert!(err.contains("train.bin: 5000 bytes is not a whole number of 3074-byte records"), "{err}");

        std::fs::write(&path, records(&[&[3, 100]])).unwrap();
        let err = load_cifar100(dir.path(), Part::Train).unwrap_err().to_string();
        assert!(err.contains("train.bin: label 100 of record 0 is out of range 0..100"), "{err}");

        for i in 1..=4 {
            std::fs::write(dir.path().join(format!("data_batch_{i}.bin")), records(&[&[1]])).unwrap();
        }
        let err = load_cifar10(dir.path(), Part::Train).unwrap_err().to_string();
        assert!(err.contains("data_batch_5.bin: not found"), "{err}");
        std::fs::write(dir.path().join("data_batch_5.bin"), records(&[&[10]])).unwrap();
        let err = load_cifar10(dir.path(), Part::Train).unwrap_err().to_string();
        assert!(err.contains("data_batch_5.bin: label 10 of record 0 is out of range 0..10"), "{err}");
        std::fs::write(dir.path().join("data_batch_5.bin"), b"").unwrap();
        let err = load_cifar10(dir.path(), Part::Train).unwrap_err().to_string();
        assert!(err.contains("data_batch_5.bin: 0 bytes is not a whole number"), "{err}");
    }
}
