//! CIFAR-10 and CIFAR-100, binary version (Krizhevsky, 2009): fixed-size records of label
//! byte(s) followed by 3×32×32 pixels, channel-major (all red, then green, then blue).

use std::path::{Path, PathBuf};

use super::{Augment, DataError, Dataset, ImageShape, Part, find_maybe_gzipped, read_maybe_gzipped};

const IMAGE_BYTES: usize = 3 * 32 * 32;
const SHAPE: ImageShape = ImageShape { channels: 3, height: 32, width: 32 };

/// The folder holding the `.bin` files: `dir` itself, or the archive's own subfolder in it.
fn bin_dir(dir: &Path, archive_folder: &str) -> PathBuf {
    let nested = dir.join(archive_folder);
    if nested.is_dir() { nested } else { dir.to_owned() }
}

/// Parses records of `label_bytes` label bytes (the label used is the last one) and an image.
pub(super) fn parse(bytes: &[u8], label_bytes: usize, num_classes: usize, path: &Path, name: &str) -> Result<Dataset, DataError> {
    let record = label_bytes + IMAGE_BYTES;
    if bytes.is_empty() || !bytes.len().is_multiple_of(record) {
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
    let dataset =
        Dataset { name: name.into(), shape: SHAPE, num_classes, augment: Augment::CropFlip, images, labels, files: vec![] };
    dataset.validate(path)?;
    Ok(dataset)
}

/// Reads `path` as records of `label_bytes` label bytes and an image.
fn load_file(path: &Path, label_bytes: usize, classes: usize, name: &str) -> Result<Dataset, DataError> {
    let mut dataset = parse(&read_maybe_gzipped(path)?, label_bytes, classes, path, name)?;
    dataset.files = vec![path.to_owned()];
    Ok(dataset)
}

/// CIFAR-10: `data_batch_1.bin` … `data_batch_5.bin` and `test_batch.bin`, each possibly
/// gzipped (`.bin.gz`). The training part is every training batch present: a folder with
/// only some of them is a smaller training set (the dataset's `files` say which were read).
pub(super) fn load_cifar10(dir: &Path, part: Part) -> Result<Dataset, DataError> {
    let dir = bin_dir(dir, "cifar-10-batches-bin");
    let mut parts = Vec::new();
    match part {
        Part::Train => {
            for i in 1..=5 {
                if let Ok(path) = find_maybe_gzipped(&dir, &format!("data_batch_{i}.bin")) {
                    parts.push(load_file(&path, 1, 10, "cifar10")?);
                }
            }
            if parts.is_empty() {
                return Err(DataError::Missing {
                    path: dir.join("data_batch_1.bin"),
                    hint: "expected the CIFAR-10 binary version here: data_batch_1.bin … data_batch_5.bin, or .bin.gz".into(),
                });
            }
        }
        Part::Test => parts.push(load_file(&find_maybe_gzipped(&dir, "test_batch.bin")?, 1, 10, "cifar10")?),
    }
    Ok(Dataset::concat(parts))
}

/// CIFAR-100: `train.bin` and `test.bin` (or `.bin.gz`); records carry the coarse then the
/// fine label; we classify the 100 fine labels.
pub(super) fn load_cifar100(dir: &Path, part: Part) -> Result<Dataset, DataError> {
    let file = match part {
        Part::Train => "train.bin",
        Part::Test => "test.bin",
    };
    let dir = bin_dir(dir, "cifar-100-binary");
    load_file(&find_maybe_gzipped(&dir, file)?, 2, 100, "cifar100")
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
        assert_eq!(train.files.len(), 5);
    }

    #[test]
    fn cifar10_reads_gzipped_batches_and_a_partial_training_set() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let gz = |name: &str, bytes: &[u8]| {
            let file = std::fs::File::create(dir.path().join(name)).unwrap();
            let mut encoder = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
            encoder.write_all(bytes).unwrap();
            encoder.finish().unwrap();
        };
        gz("data_batch_1.bin.gz", &records(&[&[3], &[4]]));
        std::fs::write(dir.path().join("data_batch_3.bin"), records(&[&[5]])).unwrap();
        gz("test_batch.bin.gz", &records(&[&[7]]));
        let train = load_cifar10(dir.path(), Part::Train).unwrap();
        assert_eq!(train.labels, vec![3, 4, 5]);
        let names: Vec<String> = train.files.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["data_batch_1.bin.gz", "data_batch_3.bin"]);
        assert_eq!(load_cifar10(dir.path(), Part::Test).unwrap().labels, vec![7]);
        // A truncated gzip stream is named as such.
        std::fs::write(dir.path().join("data_batch_1.bin.gz"), &std::fs::read(dir.path().join("test_batch.bin.gz")).unwrap()[..20]).unwrap();
        let err = load_cifar10(dir.path(), Part::Train).unwrap_err().to_string();
        assert!(err.contains("data_batch_1.bin.gz: gzip data is truncated or corrupt"), "{err}");
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

        let err = load_cifar10(dir.path(), Part::Train).unwrap_err().to_string();
        assert!(err.contains("data_batch_1.bin: not found"), "{err}");
        std::fs::write(dir.path().join("data_batch_5.bin"), records(&[&[10]])).unwrap();
        let err = load_cifar10(dir.path(), Part::Train).unwrap_err().to_string();
        assert!(err.contains("data_batch_5.bin: label 10 of record 0 is out of range 0..10"), "{err}");
        std::fs::write(dir.path().join("data_batch_5.bin"), b"").unwrap();
        let err = load_cifar10(dir.path(), Part::Train).unwrap_err().to_string();
        assert!(err.contains("data_batch_5.bin: 0 bytes is not a whole number"), "{err}");
    }
}
