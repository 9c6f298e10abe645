//! MNIST and Fashion-MNIST in the IDX format (LeCun et al.): big-endian header
//! `0x00 0x00 <type> <dims>` then one u32 per dimension, then the data. Files may be gzipped.

use std::path::Path;

use super::{Augment, DataError, Dataset, ImageShape, Part, find_maybe_gzipped as find, read_maybe_gzipped};

/// IDX type code for unsigned bytes, the only one these datasets use.
const UBYTE: u8 = 0x08;

/// A parsed IDX file: its dimensions and its bytes.
pub(super) struct Idx {
    dims: Vec<usize>,
    data: Vec<u8>,
}

/// Parses an IDX file that must have `want_dims` dimensions of unsigned bytes.
pub(super) fn parse(bytes: &[u8], want_dims: usize, path: &Path) -> Result<Idx, DataError> {
    let corrupt = |problem: String| DataError::corrupt(path, problem);
    if bytes.len() < 4 {
        return Err(corrupt(format!("file is {} bytes, too short for an IDX header", bytes.len())));
    }
    let magic = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let expected = u32::from(UBYTE) << 8 | want_dims as u32;
    if magic != expected {
        return Err(corrupt(format!(
            "bad magic number 0x{magic:08x}, expected 0x{expected:08x} (IDX, unsigned bytes, {want_dims} dimension(s))"
        )));
    }
    let header = 4 + 4 * want_dims;
    if bytes.len() < header {
        return Err(corrupt(format!("truncated header: {} bytes, expected at least {header}", bytes.len())));
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|d| u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize)
        .collect();
    let expected_len = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    let data = &bytes[header..];
    match expected_len {
        Some(len) if len == data.len() => Ok(Idx { dims, data: data.to_vec() }),
        Some(len) if len > data.len() => Err(corrupt(format!(
            "truncated: header {dims:?} promises {len} data bytes, found {}",
            data.len()
        ))),
        Some(len) => Err(corrupt(format!("{} unexpected bytes after the {len} the header {dims:?} describes", data.len() - len))),
        None => Err(corrupt(format!("dimensions {dims:?} overflow"))),
    }
}

/// Loads one part of an MNIST-layout folder.
pub(super) fn load(dir: &Path, part: Part, name: &str) -> Result<Dataset, DataError> {
    let prefix = match part {
        Part::Train => "train",
        Part::Test => "t10k",
    };
    let images_path = find(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let labels_path = find(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    let images = parse(&read_maybe_gzipped(&images_path)?, 3, &images_path)?;
    let labels = parse(&read_maybe_gzipped(&labels_path)?, 1, &labels_path)?;
    if images.dims[0] != labels.dims[0] {
        return Err(DataError::corrupt(
            &labels_path,
            format!("{} labels for {} images in {}", labels.dims[0], images.dims[0], images_path.display()),
        ));
    }
    let dataset = Dataset {
        name: name.to_owned(),
        shape: ImageShape { channels: 1, height: images.dims[1] as i64, width: images.dims[2] as i64 },
        num_classes: 10,
        augment: Augment::None,
        images: images.data,
        labels: labels.data,
        files: vec![images_path.clone(), labels_path.clone()],
    };
    dataset.validate(&labels_path)?;
    Ok(dataset)
}

/// Writes IDX files; used by tests to make fixtures.
#[cfg(test)]
pub(crate) fn encode(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, UBYTE, dims.len() as u8];
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8], gzip: bool) {
        if gzip {
            let file = std::fs::File::create(dir.join(format!("{name}.gz"))).unwrap();
            let mut enc = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
            enc.write_all(bytes).unwrap();
            enc.finish().unwrap();
        } else {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }

    fn fixture(gzip: bool, labels: &[u8]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let n = labels.len() as u32;
        let pixels: Vec<u8> = (0..n * 28 * 28).map(|i| (i % 251) as u8).collect();
        write(dir.path(), "train-images-idx3-ubyte", &encode(&[n, 28, 28], &pixels), gzip);
        write(dir.path(), "train-labels-idx1-ubyte", &encode(&[n], labels), gzip);
        dir
    }

    #[test]
    fn loads_plain_and_gzipped() {
        for gzip in [false, true] {
            let dir = fixture(gzip, &[1, 2, 3]);
            let data = load(dir.path(), Part::Train, "mnist").unwrap();
            assert_eq!(data.labels, vec![1, 2, 3]);
            assert_eq!(data.shape, ImageShape { channels: 1, height: 28, width: 28 });
            assert_eq!(data.images[..3], [0, 1, 2]);
        }
    }

    #[test]
    fn corrupt_files_are_named() {
        let dir = fixture(false, &[1, 2, 11]);
        let err = load(dir.path(), Part::Train, "mnist").unwrap_err().to_string();
        assert!(err.ends_with("train-labels-idx1-ubyte: label 11 of record 2 is out of range 0..10"), "{err}");

        let dir = fixture(false, &[1, 2, 3]);
        let images = dir.path().join("train-images-idx3-ubyte");
        let bytes = std::fs::read(&images).unwrap();
        std::fs::write(&images, &bytes[..bytes.len() - 10]).unwrap();
        let err = load(dir.path(), Part::Train, "mnist").unwrap_err().to_string();
        assert!(err.contains("train-images-idx3-ubyte: truncated: header [3, 28, 28] promises 2352 data bytes, found 2342"), "{err}");

        let mut bad = bytes.clone();
        bad[2] = 0x0d;
        std::fs::write(&images, &bad).unwrap();
        let err = load(dir.path(), Part::Train, "mnist").unwrap_err().to_string();
        assert!(err.contains("bad magic number 0x00000d03, expected 0x00000803"), "{err}");

        std::fs::write(&images, encode(&[2, 28, 28], &bytes[16..16 + 2 * 784])).unwrap();
        let err = load(dir.path(), Part::Train, "mnist").unwrap_err().to_string();
        assert!(err.contains("3 labels for 2 images"), "{err}");

        let err = load(dir.path(), Part::Test, "mnist").unwrap_err().to_string();
        assert!(err.contains("t10k-images-idx3-ubyte: not found"), "{err}");

        let dir = fixture(true, &[1, 2, 3]);
        let gz = dir.path().join("train-labels-idx1-ubyte.gz");
        let bytes = std::fs::read(&gz).unwrap();
        std::fs::write(&gz, &bytes[..bytes.len() / 2]).unwrap();
        let err = load(dir.path(), Part::Train, "mnist").unwrap_err().to_string();
        assert!(err.contains("train-labels-idx1-ubyte.gz: gzip data is truncated or corrupt"), "{err}");
    }
}
