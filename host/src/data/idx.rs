//! MNIST and Fashion-MNIST in the IDX format (LeCun et al.): big-endian header
//! `0x00 0x00 <type> <dims>` then one u32 per dimension, then the data. Files may be gzipped.
//!
//! IDX files can be large (millions of images) while an experiment may use a few hundred of
//! them (`--limit`), so the images file is streamed: [`IdxPart::read`] keeps only the images
//! asked for, and memory follows what is kept, not the file.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use super::{Augment, DataError, Dataset, ImageShape, Part, check_labels, find_maybe_gzipped as find, read_maybe_gzipped};

/// IDX type code for unsigned bytes, the only one these datasets use.
const UBYTE: u8 = 0x08;

/// A parsed IDX file: its dimensions and its bytes.
pub(super) struct Idx {
    dims: Vec<usize>,
    data: Vec<u8>,
}

/// Checks the header at the start of `bytes` (which may hold only the header) for
/// `want_dims` dimensions of unsigned bytes: its size in bytes, the dimensions, and the
/// number of data bytes they promise.
fn header(bytes: &[u8], want_dims: usize, path: &Path) -> Result<(usize, Vec<usize>, usize), DataError> {
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
    let size = 4 + 4 * want_dims;
    if bytes.len() < size {
        return Err(corrupt(format!("truncated header: {} bytes, expected at least {size}", bytes.len())));
    }
    let dims: Vec<usize> = bytes[4..size]
        .chunks_exact(4)
        .map(|d| u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize)
        .collect();
    let len = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or_else(|| corrupt(format!("dimensions {dims:?} overflow")))?;
    Ok((size, dims, len))
}

/// The error for `found` data bytes where the header promised `len`.
fn wrong_length(path: &Path, dims: &[usize], len: usize, found: usize) -> DataError {
    if found < len {
        DataError::corrupt(path, format!("truncated: header {dims:?} promises {len} data bytes, found {found}"))
    } else {
        DataError::corrupt(path, format!("{} unexpected bytes after the {len} the header {dims:?} describes", found - len))
    }
}

/// Parses an IDX file that must have `want_dims` dimensions of unsigned bytes.
pub(super) fn parse(bytes: &[u8], want_dims: usize, path: &Path) -> Result<Idx, DataError> {
    let (size, dims, len) = header(bytes, want_dims, path)?;
    let data = &bytes[size..];
    if data.len() != len {
        return Err(wrong_length(path, &dims, len, data.len()));
    }
    Ok(Idx { dims, data: data.to_vec() })
}

/// A file read front to back, gunzipped on the fly when it starts with the gzip magic;
/// counts the bytes it has handed out.
struct Stream {
    path: PathBuf,
    reader: Box<dyn Read>,
    gzipped: bool,
    consumed: usize,
    /// Where skipped bytes go.
    scratch: Vec<u8>,
}

impl Stream {
    fn open(path: &Path) -> Result<Stream, DataError> {
        let io = |source| DataError::Io { path: path.to_owned(), source };
        let mut file = BufReader::new(std::fs::File::open(path).map_err(io)?);
        let gzipped = file.fill_buf().map_err(io)?.starts_with(&[0x1f, 0x8b]);
        let reader: Box<dyn Read> = if gzipped { Box::new(flate2::bufread::MultiGzDecoder::new(file)) } else { Box::new(file) };
        Ok(Stream { path: path.to_owned(), reader, gzipped, consumed: 0, scratch: Vec::new() })
    }

    /// Fills `buf`, or as much of it as the file has left; returns the bytes read.
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize, DataError> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.reader.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if self.gzipped => {
                    return Err(DataError::corrupt(&self.path, format!("gzip data is truncated or corrupt ({e})")));
                }
                Err(source) => return Err(DataError::Io { path: self.path.clone(), source }),
            }
        }
        self.consumed += filled;
        Ok(filled)
    }

    /// Reads and drops `n` bytes, or what is left if fewer; returns the bytes dropped.
    fn skip(&mut self, n: usize) -> Result<usize, DataError> {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.resize(n.min(1 << 16), 0);
        let mut skipped = 0;
        while skipped < n {
            let want = (n - skipped).min(scratch.len());
            let got = self.fill(&mut scratch[..want]);
            let got = match got {
                Ok(got) => got,
                Err(error) => {
                    self.scratch = scratch;
                    return Err(error);
                }
            };
            skipped += got;
            if got < want {
                break;
            }
        }
        self.scratch = scratch;
        Ok(skipped)
    }
}

/// One part of an MNIST-layout folder, opened: its labels read and checked, its images
/// file's header checked. The pixels are read by [`IdxPart::read`].
pub(super) struct IdxPart {
    name: String,
    images_path: PathBuf,
    labels_path: PathBuf,
    labels: Vec<u8>,
    /// Images, rows, columns.
    dims: Vec<usize>,
}

/// Opens one part of an MNIST-layout folder.
pub(super) fn open(dir: &Path, part: Part, name: &str) -> Result<IdxPart, DataError> {
    let prefix = match part {
        Part::Train => "train",
        Part::Test => "t10k",
    };
    let images_path = find(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let labels_path = find(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    let (_, dims) = read_header(&mut Stream::open(&images_path)?)?;
    let labels = parse(&read_maybe_gzipped(&labels_path)?, 1, &labels_path)?;
    if dims[0] != labels.dims[0] {
        return Err(DataError::corrupt(
            &labels_path,
            format!("{} labels for {} images in {}", labels.dims[0], dims[0], images_path.display()),
        ));
    }
    check_labels(&labels.data, 10, &labels_path)?;
    Ok(IdxPart { name: name.to_owned(), images_path, labels_path, labels: labels.data, dims })
}

/// Deflate shrinks data at most about 1032 to 1, so a gzip file inflates to at most this
/// many times its size.
const MAX_GZIP_RATIO: u64 = 1032;

/// Reads and checks the header of a 3-dimensional images file; returns the data bytes it
/// promises and its dimensions. A header that promises more than the file can hold is
/// refused here, before anything is allocated for it: a damaged header would otherwise
/// ask for terabytes.
fn read_header(stream: &mut Stream) -> Result<(usize, Vec<usize>), DataError> {
    let mut prefix = [0u8; 16];
    let got = stream.fill(&mut prefix)?;
    let (size, dims, len) = header(&prefix[..got], 3, &stream.path)?;
    if dims[1] == 0 || dims[2] == 0 {
        return Err(DataError::corrupt(&stream.path, format!("header {dims:?} describes images of {}×{} pixels", dims[1], dims[2])));
    }
    // Nothing to train on, and with no image the size check below would pass any sides:
    // one image of them is allocated before the first is read.
    if dims[0] == 0 {
        return Err(DataError::corrupt(&stream.path, format!("header {dims:?} describes no images")));
    }
    let file_len = std::fs::metadata(&stream.path).map_err(|source| DataError::Io { path: stream.path.clone(), source })?.len();
    if stream.gzipped {
        if len as u64 > file_len.saturating_mul(MAX_GZIP_RATIO) {
            return Err(DataError::corrupt(
                &stream.path,
                format!("header {dims:?} promises {len} data bytes, more than a gzip file of {file_len} bytes can hold"),
            ));
        }
    } else {
        let data_len = file_len.saturating_sub(size as u64);
        if len as u64 > data_len {
            return Err(wrong_length(&stream.path, &dims, len, usize::try_from(data_len).unwrap_or(usize::MAX)));
        }
    }
    Ok((len, dims))
}

impl IdxPart {
    /// Number of images.
    pub(super) fn len(&self) -> usize {
        self.labels.len()
    }

    /// The images at each list of `wanted` indices, in that order: one pass over the file,
    /// keeping only those. The whole file is read, so a file shorter or longer than its
    /// header says is refused as when it is read whole.
    pub(super) fn read(&self, wanted: &[&[usize]]) -> Result<Vec<Dataset>, DataError> {
        let image_len = self.dims[1] * self.dims[2];
        let shape = ImageShape { channels: 1, height: self.dims[1] as i64, width: self.dims[2] as i64 };
        // (index in the file, which list, place in it), in file order.
        let mut targets: Vec<(usize, usize, usize)> =
            wanted.iter().enumerate().flat_map(|(list, indices)| indices.iter().enumerate().map(move |(place, &i)| (i, list, place))).collect();
        targets.sort_unstable();
        if let Some(&(i, _, _)) = targets.iter().find(|t| t.0 >= self.len()) {
            return Err(DataError::Invalid(format!("image {i} asked of {}, which has {}", self.images_path.display(), self.len())));
        }
        let mut images: Vec<Vec<u8>> = wanted.iter().map(|w| vec![0u8; w.len() * image_len]).collect();

        let mut stream = Stream::open(&self.images_path)?;
        let (len, dims) = read_header(&mut stream)?;
        if dims != self.dims {
            return Err(DataError::corrupt(&self.images_path, format!("changed while it was read: header {dims:?}, was {:?}", self.dims)));
        }
        let start = stream.consumed;
        let mut image = vec![0u8; image_len];
        let mut next = 0; // the next image of the file to be read
        let mut last = None;
        for (i, list, place) in targets {
            if last != Some(i) {
                let offset = (i - next) * image_len;
                let complete = stream.skip(offset)? == offset && stream.fill(&mut image)? == image_len;
                if !complete {
                    return Err(wrong_length(&self.images_path, &dims, len, stream.consumed - start));
                }
                next = i + 1;
                last = Some(i);
            }
            images[list][place * image_len..(place + 1) * image_len].copy_from_slice(&image);
        }
        // The rest of the file, to hold it to its header.
        stream.skip(usize::MAX)?;
        if stream.consumed - start != len {
            return Err(wrong_length(&self.images_path, &dims, len, stream.consumed - start));
        }
        Ok(wanted
            .iter()
            .zip(images)
            .map(|(indices, images)| Dataset {
                name: self.name.clone(),
                shape,
                num_classes: 10,
                augment: Augment::None,
                images,
                labels: indices.iter().map(|&i| self.labels[i]).collect(),
                files: vec![self.images_path.clone(), self.labels_path.clone()],
            })
            .collect())
    }
}

/// Loads one part of an MNIST-layout folder whole.
pub(super) fn load(dir: &Path, part: Part, name: &str) -> Result<Dataset, DataError> {
    let opened = open(dir, part, name)?;
    let all: Vec<usize> = (0..opened.len()).collect();
    let mut read = opened.read(&[&all])?;
    Ok(read.remove(0))
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

        // The images file is streamed: its faults are found as when it was read whole.
        let dir = fixture(true, &[1, 2, 3]);
        let gz = dir.path().join("train-images-idx3-ubyte.gz");
        let bytes = std::fs::read(&gz).unwrap();
        std::fs::write(&gz, &bytes[..bytes.len() / 2]).unwrap();
        let err = load(dir.path(), Part::Train, "mnist").unwrap_err().to_string();
        assert!(err.contains("train-images-idx3-ubyte.gz: gzip data is truncated or corrupt"), "{err}");
        let dir = fixture(false, &[1, 2, 3]);
        let images = dir.path().join("train-images-idx3-ubyte");
        let mut bytes = std::fs::read(&images).unwrap();
        bytes.extend_from_slice(&[0; 5]);
        std::fs::write(&images, &bytes).unwrap();
        let opened = open(dir.path(), Part::Train, "mnist").unwrap();
        let err = opened.read(&[&[0]]).unwrap_err().to_string();
        assert!(err.contains("train-images-idx3-ubyte: 5 unexpected bytes after the 2352 the header [3, 28, 28] describes"), "{err}");
        let err = opened.read(&[&[3]]).unwrap_err().to_string();
        assert!(err.contains("image 3 asked of"), "{err}");
    }

    #[test]
    fn a_header_promising_more_than_the_file_holds_is_refused_before_anything_is_allocated() {
        // 2^64 − 2^33 + 1 bytes: no overflow in the header's product, but no allocation
        // could hold one such image.
        let huge = encode(&[1, u32::MAX, u32::MAX], &[0; 784]);
        for gzip in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            write(dir.path(), "train-images-idx3-ubyte", &huge, gzip);
            write(dir.path(), "train-labels-idx1-ubyte", &encode(&[1], &[4]), gzip);
            let err = load(dir.path(), Part::Train, "mnist").unwrap_err().to_string();
            let expected = if gzip {
                "train-images-idx3-ubyte.gz: header [1, 4294967295, 4294967295] promises 18446744065119617025 data bytes, more than a gzip file of"
            } else {
                "train-images-idx3-ubyte: truncated: header [1, 4294967295, 4294967295] promises 18446744065119617025 data bytes, found 784"
            };
            assert!(err.contains(expected), "{err}");
        }
        // No image at all: the size check passes any sides, so the count is refused.
        let empty = encode(&[0, u32::MAX, u32::MAX], &[]);
        for gzip in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            write(dir.path(), "train-images-idx3-ubyte", &empty, gzip);
            write(dir.path(), "train-labels-idx1-ubyte", &encode(&[0], &[]), gzip);
            let err = load(dir.path(), Part::Train, "mnist").unwrap_err().to_string();
            assert!(err.contains("train-images-idx3-ubyte") && err.ends_with("header [0, 4294967295, 4294967295] describes no images"), "{err}");
        }
    }
}
