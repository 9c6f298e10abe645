//! Published tabular benchmarks: NAS-Bench-201's results and any table like it, one JSON
//! object per line with an `arch` (NB201 string or index) and an accuracy.
//!
//! A table is a yardstick. `knas correlate --table` ranks measures against it and
//! `knas search --table` shows where each candidate stands in it; neither a score nor a
//! policy ever reads it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::space::Arch;

/// Field names taken as the accuracy when the caller names none, in this order.
pub const ACCURACY_FIELDS: [&str; 7] = ["acc", "accuracy", "test_accuracy", "test-accuracy", "test_acc", "val_acc", "valid_acc"];

/// Why a table was rejected. Every variant names the file; line errors name the line.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{path}:{line}: {message}")]
    Line { path: PathBuf, line: usize, message: String },
}

/// A benchmark table in memory.
#[derive(Debug, Clone)]
pub struct BenchmarkTable {
    path: PathBuf,
    /// The accuracy field read from each line.
    field: String,
    /// Rows in file order.
    rows: Vec<(Arch, f64)>,
    by_arch: HashMap<Arch, f64>,
    /// Accuracies sorted from best to worst (for standings).
    sorted: Vec<f64>,
}

/// Where an accuracy stands in a table.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Standing {
    /// 1 = the best row; rows with a strictly higher accuracy, plus one.
    pub rank: usize,
    /// Rows in the table.
    pub of: usize,
    /// Share of the table's rows with a strictly higher accuracy, in percent ("top x %").
    pub top_percent: f64,
}

/// The most a gzipped table may inflate to: 256 MiB, over a hundred times NAS-Bench-201's
/// 15,625 rows.
const MAX_INFLATED_TABLE: u64 = 256 << 20;

impl BenchmarkTable {
    /// Reads `path` (gzipped or not). `field` names the accuracy field; `None` takes the
    /// first of [`ACCURACY_FIELDS`] present on the first line.
    pub fn load(path: &Path, field: Option<&str>) -> Result<BenchmarkTable, TableError> {
        let file_error = |message: String| TableError::File { path: path.to_owned(), message };
        let raw = std::fs::read(path).map_err(|e| file_error(e.to_string()))?;
        let raw = if raw.starts_with(&[0x1f, 0x8b]) { crate::data::gunzip_at_most(&raw, MAX_INFLATED_TABLE).map_err(file_error)? } else { raw };
        let text = String::from_utf8(raw).map_err(|e| file_error(format!("not UTF-8 text ({e})")))?;
        Self::parse(&text, path, field)
    }

    /// Parses table text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path, field: Option<&str>) -> Result<BenchmarkTable, TableError> {
        let line_error = |line: usize, message: String| TableError::Line { path: path.to_owned(), line, message };
        let mut field: Option<String> = field.map(str::to_owned);
        let mut rows = Vec::new();
        let mut first_line: HashMap<Arch, usize> = HashMap::new();
        // A byte-order mark some editors write is not part of the first line's JSON.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for (number, line) in text.lines().enumerate() {
            let number = number + 1;
            if line.trim().is_empty() {
                continue;
            }
            let value: serde_json::Value =
                serde_json::from_str(line).map_err(|e| line_error(number, format!("not a JSON object: {}", json_problem(&e))))?;
            let Some(object) = value.as_object() else {
                return Err(line_error(number, format!("expected a JSON object, found {}", kind(&value))));
            };
            let arch = match object.get("arch") {
                Some(serde_json::Value::String(text)) => {
                    text.parse::<Arch>().map_err(|e| line_error(number, format!("unknown architecture: {e}")))?
                }
                Some(serde_json::Value::Number(n)) => n
                    .as_u64()
                    .and_then(|i| Arch::from_index(i as usize).ok())
                    .ok_or_else(|| line_error(number, format!("unknown architecture: index {n} is not a whole number in 0..=15624")))?,
                Some(other) => return Err(line_error(number, format!("`arch` must be a string or an index, found {}", kind(other)))),
                None => return Err(line_error(number, "no `arch` field".into())),
            };
            let name = match &field {
                Some(name) => name.clone(),
                None => {
                    let found = ACCURACY_FIELDS.iter().find(|f| object.contains_key(**f)).ok_or_else(|| {
                        line_error(
                            number,
                            format!(
                                "no accuracy field: looked for {} (name another field with --table-field)",
                                ACCURACY_FIELDS.join(", ")
                            ),
                        )
                    })?;
                    field = Some((*found).to_owned());
                    (*found).to_owned()
                }
            };
            let accuracy = match object.get(&name) {
                Some(serde_json::Value::Number(n)) => n.as_f64().filter(|v| v.is_finite()),
                Some(other) => {
                    return Err(line_error(number, format!("accuracy field `{name}` must be a number, found {}", kind(other))));
                }
                None => return Err(line_error(number, format!("missing the accuracy field `{name}`"))),
            }
            .ok_or_else(|| line_error(number, format!("accuracy field `{name}` is not a finite number")))?;
            if let Some(previous) = first_line.insert(arch, number) {
                return Err(line_error(number, format!("duplicate architecture {arch} (first on line {previous})")));
            }
            rows.push((arch, accuracy));
        }
        let Some(field) = field.filter(|_| !rows.is_empty()) else {
            return Err(TableError::File { path: path.to_owned(), message: "the table has no rows".into() });
        };
        let by_arch = rows.iter().copied().collect();
        let mut sorted: Vec<f64> = rows.iter().map(|r| r.1).collect();
        sorted.sort_by(|a, b| b.total_cmp(a));
        Ok(BenchmarkTable { path: path.to_owned(), field, rows, by_arch, sorted })
    }

    /// The file the table was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The accuracy field.
    pub fn field(&self) -> &str {
        &self.field
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the table has no rows (never true for a loaded table).
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The published accuracy of `arch`, if the table has it.
    pub fn accuracy(&self, arch: &Arch) -> Option<f64> {
        self.by_arch.get(arch).copied()
    }

    /// The rows, in file order.
    pub fn rows(&self) -> &[(Arch, f64)] {
        &self.rows
    }

    /// `n` distinct architectures of the table, a seeded uniform sample (a smaller sample is
    /// not a prefix of a larger one; use the same `n` to repeat a sample).
    pub fn sample(&self, n: usize, seed: u64) -> Result<Vec<Arch>, TableError> {
        if n > self.rows.len() {
            return Err(TableError::File {
                path: self.path.clone(),
                message: format!("cannot sample {n} architectures from a table of {}", self.rows.len()),
            });
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x7ab1e);
        let mut archs: Vec<Arch> = self.rows.iter().map(|r| r.0).collect();
        archs.sort();
        let (picked, _) = archs.partial_shuffle(&mut rng, n);
        Ok(picked.to_vec())
    }

    /// Where `accuracy` stands among the table's rows.
    pub fn standing(&self, accuracy: f64) -> Standing {
        let better = self.sorted.partition_point(|&a| a > accuracy);
        Standing { rank: better + 1, of: self.sorted.len(), top_percent: 100.0 * better as f64 / self.sorted.len().max(1) as f64 }
    }

    /// The best accuracy in the table.
    pub fn best(&self) -> f64 {
        self.sorted.first().copied().unwrap_or(f64::NAN)
    }

    /// The median accuracy of the table.
    pub fn median(&self) -> f64 {
        crate::stats::median(&self.sorted).unwrap_or(f64::NAN)
    }
}

/// serde_json's message with the column alone: each line is parsed on its own, so the
/// "line 1" it would name contradicts the file line the error gives.
fn json_problem(error: &serde_json::Error) -> String {
    let text = error.to_string();
    let message = text.rsplit_once(" at line ").map_or(text.as_str(), |(message, _)| message);
    format!("{message} at column {}", error.column())
}

fn kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|";
    const B: &str = "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|";

    fn parse(text: &str) -> Result<BenchmarkTable, TableError> {
        BenchmarkTable::parse(text, Path::new("t.jsonl"), None)
    }

    #[test]
    fn reads_rows_detects_the_field_and_ranks() {
        let text = format!("{{\"arch\": \"{A}\", \"acc\": 94.37}}\n\n{{\"arch\": \"{B}\", \"acc\": 10.0, \"extra\": 1}}\n{{\"arch\": 7, \"acc\": 50}}\n");
        let table = parse(&text).unwrap();
        assert_eq!((table.len(), table.field()), (3, "acc"));
        assert_eq!(table.accuracy(&A.parse().unwrap()), Some(94.37));
        assert_eq!(table.accuracy(&Arch::from_index(7).unwrap()), Some(50.0));
        assert_eq!(table.best(), 94.37);
        assert_eq!(table.median(), 50.0);
        assert_eq!(table.standing(94.37), Standing { rank: 1, of: 3, top_percent: 0.0 });
        assert_eq!(table.standing(50.0).rank, 2);
        assert_eq!(table.standing(5.0).rank, 4);
        let sample = table.sample(2, 1).unwrap();
        assert_eq!(sample, table.sample(2, 1).unwrap(), "seeded");
        assert_ne!(sample[0], sample[1]);
        assert!(table.sample(4, 1).unwrap_err().to_string().contains("cannot sample 4 architectures from a table of 3"));
        let named = BenchmarkTable::parse(&format!("{{\"arch\": \"{A}\", \"acc\": 1, \"val\": 0.5}}"), Path::new("t"), Some("val")).unwrap();
        assert_eq!(named.accuracy(&A.parse().unwrap()), Some(0.5));
    }

    #[test]
    fn bad_lines_are_named_with_their_problem() {
        let err = |text: String| parse(&text).unwrap_err().to_string();
        let e = err(format!("{{\"arch\": \"{A}\", \"acc\": 1}}\n{{\"arch\": \"{A}\""));
        assert!(e.starts_with("t.jsonl:2: not a JSON object: EOF while parsing an object at column ") && !e.contains("line 1"), "{e}");
        assert!(err("{\"arch\": 7.0, \"acc\": 1}".into()).contains("t.jsonl:1: unknown architecture: index 7.0 is not a whole number"));
        let marked = parse(&format!("\u{feff}{{\"arch\": \"{A}\", \"acc\": 1}}")).unwrap();
        assert_eq!(marked.len(), 1, "a byte-order mark is not part of the first line");
        let e = err(format!("{{\"arch\": \"{A}\", \"acc\": 1}}\n{{\"arch\": \"|conv~0|\", \"acc\": 1}}"));
        assert!(e.starts_with("t.jsonl:2: unknown architecture: column 2: unknown operation \"conv\""), "{e}");
        assert!(err("{\"arch\": 99999, \"acc\": 1}".into()).contains("t.jsonl:1: unknown architecture: index 99999"));
        let e = err(format!("{{\"arch\": \"{A}\", \"acc\": 1}}\n{{\"arch\": \"{B}\", \"accuracy\": 1}}"));
        assert_eq!(e, "t.jsonl:2: missing the accuracy field `acc`");
        let e = err(format!("{{\"arch\": \"{A}\", \"top1\": 1}}"));
        assert!(e.starts_with("t.jsonl:1: no accuracy field: looked for acc, accuracy"), "{e}");
        let e = err(format!("{{\"arch\": \"{A}\", \"acc\": \"high\"}}"));
        assert_eq!(e, "t.jsonl:1: accuracy field `acc` must be a number, found a string");
        let e = err(format!("{{\"arch\": \"{A}\", \"acc\": 1}}\n{{\"arch\": \"{B}\", \"acc\": 2}}\n{{\"arch\": \"{A}\", \"acc\": 3}}"));
        assert!(e.starts_with("t.jsonl:3: duplicate architecture |nor_conv_3x3~0|") && e.ends_with("(first on line 1)"), "{e}");
        assert_eq!(err("[1, 2]".into()), "t.jsonl:1: expected a JSON object, found an array");
        assert_eq!(err("{\"acc\": 1}".into()), "t.jsonl:1: no `arch` field");
        assert_eq!(err("\n\n".into()), "t.jsonl: the table has no rows");
    }

    #[test]
    fn reads_gzipped_files() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl.gz");
        let mut encoder = flate2::write::GzEncoder::new(std::fs::File::create(&path).unwrap(), flate2::Compression::fast());
        writeln!(encoder, "{{\"arch\": \"{A}\", \"acc\": 94.0}}").unwrap();
        let mut raw = encoder.finish().unwrap();
        // A second gzip member, as `cat a.gz b.gz` makes: its rows are read too.
        let mut second = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        writeln!(second, "{{\"arch\": \"{B}\", \"acc\": 10.0}}").unwrap();
        raw.write_all(&second.finish().unwrap()).unwrap();
        drop(raw);
        assert_eq!(BenchmarkTable::load(&path, None).unwrap().len(), 2);
        std::fs::write(&path, &std::fs::read(&path).unwrap()[..15]).unwrap();
        let e = BenchmarkTable::load(&path, None).unwrap_err().to_string();
        assert!(e.contains("t.jsonl.gz: gzip data is truncated"), "{e}");
        let e = BenchmarkTable::load(&dir.path().join("missing.jsonl"), None).unwrap_err().to_string();
        assert!(e.contains("missing.jsonl: No such file"), "{e}");
    }
}
