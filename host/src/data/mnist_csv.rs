//! MNIST as CSV rows: 784 pixel values (0–255, row-major 28×28), then the label (0–9).
//! This is the layout of the embedded `mnist_5k.csv.gz`.

use std::path::Path;

use super::{Augment, DataError, Dataset, ImageShape, gunzip_if_needed};

const PIXELS: usize = 28 * 28;
const NUM_CLASSES: usize = 10;

/// Parses MNIST CSV bytes (gzipped or not); `origin` names the data in errors.
pub fn parse_mnist_csv(bytes: &[u8], origin: &Path) -> Result<Dataset, DataError> {
    let text = gunzip_if_needed(bytes.to_vec(), origin)?;
    let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(&text[..]);
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for (row, record) in reader.records().enumerate() {
        // The reader skips blank lines, so the row count is not the line number.
        let line_of = |position: Option<&csv::Position>| position.map_or(row + 1, |p| line_at(&text, p.byte()));
        let record = record.map_err(|e| DataError::corrupt(origin, format!("line {}: {e}", line_of(e.position()))))?;
        let line = || line_of(record.position());
        if record.len() != PIXELS + 1 {
            return Err(DataError::corrupt(
                origin,
                format!("line {}: expected {} values (784 pixels and a label), found {}", line(), PIXELS + 1, record.len()),
            ));
        }
        for (column, field) in record.iter().enumerate() {
            let value: u8 = field.trim().parse().map_err(|_| {
                DataError::corrupt(origin, format!("line {}, column {}: {field:?} is not an integer in 0..=255", line(), column + 1))
            })?;
            if column < PIXELS {
                images.push(value);
            } else if usize::from(value) < NUM_CLASSES {
                labels.push(value);
            } else {
                return Err(DataError::corrupt(origin, format!("line {}: label {value} is out of range 0..{NUM_CLASSES}", line())));
            }
        }
    }
    if labels.is_empty() {
        return Err(DataError::corrupt(origin, "no rows"));
    }
    let dataset = Dataset {
        name: "mnist5k".into(),
        shape: ImageShape { channels: 1, height: 28, width: 28 },
        num_classes: NUM_CLASSES,
        augment: Augment::None,
        images,
        labels,
        files: vec![],
    };
    dataset.validate(origin)?;
    Ok(dataset)
}

/// The 1-based line of the record the reader places at `byte`. Only errors ask, so the
/// count from the start costs nothing on good data. The reader places a record after
/// blank lines at the first of them, so line breaks right at `byte` are skipped.
fn line_at(text: &[u8], byte: u64) -> usize {
    let at = usize::try_from(byte).map_or(text.len(), |b| b.min(text.len()));
    let start = at + text[at..].iter().take_while(|b| matches!(b, b'\n' | b'\r')).count();
    text[..start].iter().filter(|&&b| b == b'\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(label: &str) -> String {
        let mut fields = vec!["0".to_string(); PIXELS];
        fields[5] = "255".into();
        fields.push(label.into());
        fields.join(",")
    }

    fn parse(text: &str) -> Result<Dataset, DataError> {
        parse_mnist_csv(text.as_bytes(), Path::new("digits.csv"))
    }

    #[test]
    fn parses_rows() {
        let data = parse(&format!("{}\n{}\n", row("3"), row("9"))).unwrap();
        assert_eq!(data.labels, vec![3, 9]);
        assert_eq!(data.images.len(), 2 * PIXELS);
        assert_eq!(data.images[5], 255);
    }

    #[test]
    fn corrupt_input_names_the_file_and_line() {
        let err = parse(&format!("{}\n{}\n", row("3"), row("12"))).unwrap_err().to_string();
        assert!(err.starts_with("digits.csv: line 2: label 12 is out of range 0..10"), "{err}");
        // Blank lines count: the reader skips them, the line numbers do not.
        let err = parse(&format!("\n{}\n\n{}\n", row("3"), row("3").replacen("255", "256", 1))).unwrap_err().to_string();
        assert!(err.contains("digits.csv: line 4, column 6"), "{err}");

        let short = row("1").rsplitn(3, ',').nth(2).unwrap().to_owned();
        let err = parse(&format!("{}\n{short}\n", row("3"))).unwrap_err().to_string();
        assert!(err.contains("digits.csv: line 2: expected 785 values"), "{err}");

        let err = parse(&row("3").replacen("255", "256", 1)).unwrap_err().to_string();
        assert!(err.contains("line 1, column 6: \"256\" is not an integer in 0..=255"), "{err}");

        let err = parse("").unwrap_err().to_string();
        assert!(err.contains("no rows"), "{err}");
    }

    #[test]
    fn truncated_gzip_is_reported() {
        let embedded = super::super::MNIST_5K;
        let err = parse_mnist_csv(&embedded[..embedded.len() / 2], Path::new("cut.csv.gz")).unwrap_err().to_string();
        assert!(err.starts_with("cut.csv.gz: gzip data is truncated or corrupt"), "{err}");
    }
}
