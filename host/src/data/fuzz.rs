//! Property tests of the data file parsers (see `crate::fuzz`): IDX (parsed whole, and an
//! MNIST-layout folder streamed from plain or gzipped files), CIFAR binary and MNIST CSV,
//! each fed random bytes and random edits of a valid file. No panic; every rejection names
//! the file.

use std::path::Path;

use proptest::prelude::*;

use crate::fuzz::{config, edits, mutate};

proptest! {
    #![proptest_config(config())]

    #[test]
    fn idx_files_parse_or_name_the_file(bytes in prop::collection::vec(any::<u8>(), 0..64), n in 0u32..4, edits in edits()) {
        let valid = super::idx::encode(&[n, 2, 3], &vec![7; (n * 6) as usize]);
        let path = Path::new("train-images-idx3-ubyte");
        for input in [&bytes, &mutate(&valid, &edits)] {
            for dims in [1, 3] {
                if let Err(error) = super::idx::parse(input, dims, path) {
                    prop_assert!(error.to_string().starts_with("train-images-idx3-ubyte: "), "{}", error);
                }
            }
        }
    }

    #[test]
    fn mnist_folders_load_or_name_the_file(gzip in any::<bool>(), damage_images in any::<bool>(), edits in edits()) {
        let images = super::idx::encode(&[2, 2, 3], &[7; 12]);
        let labels = super::idx::encode(&[2], &[1, 2]);
        let (images, labels) = if damage_images { (mutate(&images, &edits), labels) } else { (images, mutate(&labels, &edits)) };
        let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        for (name, bytes) in [("train-images-idx3-ubyte", images), ("train-labels-idx1-ubyte", labels)] {
            let (path, bytes) = if gzip { (dir.path().join(format!("{name}.gz")), gzipped(&bytes)) } else { (dir.path().join(name), bytes) };
            std::fs::write(path, bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
        if let Err(error) = super::idx::load(dir.path(), super::Part::Train, "mnist") {
            let culprit = if damage_images { "train-images-idx3-ubyte" } else { "train-labels-idx1-ubyte" };
            prop_assert!(error.to_string().contains(culprit), "{}", error);
        }
    }

    #[test]
    fn cifar_files_parse_or_name_the_file(records in 0usize..3, label in any::<u8>(), edits in edits()) {
        let mut valid = Vec::new();
        for _ in 0..records {
            valid.push(label);
            valid.extend(std::iter::repeat_n(128u8, 3 * 32 * 32));
        }
        let path = Path::new("data_batch_1.bin");
        for input in [&valid, &mutate(&valid, &edits)] {
            if let Err(error) = super::cifar::parse(input, 1, 10, path, "CIFAR-10") {
                prop_assert!(error.to_string().starts_with("data_batch_1.bin: "), "{}", error);
            }
        }
    }

    #[test]
    fn mnist_csv_parses_or_names_the_file(text in "\\PC{0,200}", label in 0u8..12, edits in edits()) {
        let row: Vec<String> = (0..28 * 28).map(|i| (i % 256).to_string()).chain([label.to_string()]).collect();
        let valid = format!("{}\n", row.join(","));
        let origin = Path::new("digits.csv");
        for input in [text.as_bytes(), &mutate(valid.as_bytes(), &edits)] {
            if let Err(error) = super::parse_mnist_csv(input, origin) {
                prop_assert!(error.to_string().starts_with("digits.csv: "), "{}", error);
            }
        }
    }
}

fn gzipped(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).and_then(|()| encoder.finish()).expect("gzip into memory")
}
