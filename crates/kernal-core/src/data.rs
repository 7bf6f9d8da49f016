//! Training data: the built-in UCI digits set (embedded), the one
//! deterministic train/test split shared by trainer, hub and harness, the
//! specialty slices, and user CSV files.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use rand::seq::SliceRandom;
use rand::SeedableRng;

/// UCI "Optical Recognition of Handwritten Digits" (E. Alpaydin, C. Kaynak,
/// 1998; CC BY 4.0): 1797 rows of 64 pixel counts (0..16) and a label.
static DIGITS_CSV_GZ: &[u8] = include_bytes!("../../../data/digits.csv.gz");

/// Public tabular data sets shipped for the harness (see the README's
/// "Data and credit"), each with a header row: UCI Wine (178 rows, 13
/// features, 3 classes) and UCI Breast Cancer Wisconsin (Diagnostic) (569
/// rows, 30 features, 2 classes), both CC BY 4.0; UCI Iris (150 rows, 4
/// features, 3 classes; CC BY 4.0); Palmer penguins (342 rows, 4 features,
/// 3 species; CC0); Leptograpsus crabs (200 rows, 5 strongly correlated
/// measurements, 2 colour forms told apart by their ratios; R's MASS).
pub const BUILTIN_CSV: &[(&str, &str)] = &[
    ("wine", include_str!("../../../data/wine.csv")),
    (
        "breast_cancer",
        include_str!("../../../data/breast_cancer.csv"),
    ),
    ("iris", include_str!("../../../data/iris.csv")),
    ("penguins", include_str!("../../../data/penguins.csv")),
    ("crabs", include_str!("../../../data/crabs.csv")),
];

/// Seed of the shared split; changing it changes every published figure.
pub const SPLIT_SEED: u64 = 20_261_123;
pub const TEST_FRACTION: f64 = 0.2;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {message}")]
    Csv { path: String, message: String },
    /// A cell that parses but is no usable f32 (NaN, infinite, or beyond
    /// f32's range, which would become infinite): the data, not its layout,
    /// is wrong.
    #[error("{path}: line {line}, column {column}: {message}")]
    Value {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{0}")]
    Invalid(String),
}

/// Every feature cell of every CSV (trainer `--data`, harness data sets,
/// evaluation sets) goes through here: a finite f32 or why not. `1e39`
/// parses as a finite f64 but is infinite as f32, and scoring on it gave a
/// `null` loss.
pub fn f32_feature(v: f64) -> Result<f32, String> {
    if !v.is_finite() {
        return Err(format!("`{v}` is not a finite number"));
    }
    let f = v as f32;
    if !f.is_finite() {
        return Err(format!(
            "`{v}` is beyond the range of a 32-bit float (±{:e})",
            f32::MAX
        ));
    }
    Ok(f)
}

/// Row-major features with integer labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    pub features: Vec<f32>,
    pub labels: Vec<u32>,
    pub dim: usize,
    pub classes: usize,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    pub fn row(&self, i: usize) -> &[f32] {
        &self.features[i * self.dim..(i + 1) * self.dim]
    }

    pub fn subset(&self, idx: &[usize]) -> Dataset {
        let mut features = Vec::with_capacity(idx.len() * self.dim);
        let mut labels = Vec::with_capacity(idx.len());
        for &i in idx {
            features.extend_from_slice(self.row(i));
            labels.push(self.labels[i]);
        }
        Dataset {
            features,
            labels,
            dim: self.dim,
            classes: self.classes,
        }
    }

    /// Only the rows whose label is in `classes`.
    pub fn with_classes(&self, classes: &[u32]) -> Dataset {
        let idx: Vec<usize> = (0..self.len())
            .filter(|&i| classes.contains(&self.labels[i]))
            .collect();
        self.subset(&idx)
    }
}

impl Dataset {
    /// The rows as CSV in the `--data` format (no header).
    pub fn to_csv(&self) -> String {
        let mut out = String::new();
        for i in 0..self.len() {
            for v in self.row(i) {
                out.push_str(&v.to_string());
                out.push(',');
            }
            out.push_str(&self.labels[i].to_string());
            out.push('\n');
        }
        out
    }
}

/// Train and test parts of one data set.
#[derive(Debug, Clone)]
pub struct Split {
    pub train: Dataset,
    pub test: Dataset,
}

/// The built-in digits set, features scaled to [0, 1] by dividing the pixel
/// counts by 16.
pub fn digits() -> Result<Dataset, DataError> {
    let mut text = String::new();
    flate2::read::GzDecoder::new(DIGITS_CSV_GZ)
        .read_to_string(&mut text)
        .map_err(|e| DataError::Invalid(format!("embedded digits data: {e}")))?;
    let (features, labels, dim) = parse_csv(&text, "embedded digits")?;
    Ok(Dataset {
        features: features.into_iter().map(|v| v / 16.0).collect(),
        labels,
        dim,
        classes: 10,
    })
}

/// The shared split of the built-in set.
pub fn digits_split() -> Result<Split, DataError> {
    Ok(stratified_split(&digits()?, TEST_FRACTION, SPLIT_SEED))
}

/// Deterministic stratified split: within each class, rows are shuffled with
/// a fixed seed and the first `test_fraction` go to test.
pub fn stratified_split(ds: &Dataset, test_fraction: f64, seed: u64) -> Split {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut by_class: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (i, l) in ds.labels.iter().enumerate() {
        by_class.entry(*l).or_default().push(i);
    }
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for (_, mut idx) in by_class {
        idx.shuffle(&mut rng);
        let n_test = ((idx.len() as f64) * test_fraction).round() as usize;
        test.extend_from_slice(&idx[..n_test]);
        train.extend_from_slice(&idx[n_test..]);
    }
    train.sort_unstable();
    test.sort_unstable();
    Split {
        train: ds.subset(&train),
        test: ds.subset(&test),
    }
}

/// Stable 64-bit FNV-1a, so shards do not depend on Rust's hasher.
pub fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// Number of shards an unknown specialty's data is cut into.
pub const SHARDS: u64 = 4;

/// What a specialty sees: its configured classes, or for an unknown name a
/// deterministic quarter of all rows (row `i` where `i % 4 == fnv(name) % 4`).
pub fn specialty_slice(
    ds: &Dataset,
    specialty: &str,
    table: &BTreeMap<String, Vec<u32>>,
) -> Dataset {
    match table.get(specialty) {
        Some(classes) => ds.with_classes(classes),
        None => {
            let shard = fnv1a(specialty) % SHARDS;
            let idx: Vec<usize> = (0..ds.len())
                .filter(|i| (*i as u64) % SHARDS == shard)
                .collect();
            ds.subset(&idx)
        }
    }
}

/// A user CSV: numeric features, integer class label in the last column,
/// optional header row (detected when the first row does not parse).
/// Features are returned as they are in the file: the learner scales them,
/// with the model's shared statistics when it has them (see
/// [`crate::protocol::normalisation`]), else with the file's own.
pub fn load_csv(path: &Path) -> Result<Dataset, DataError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| DataError::Csv {
        path: name.clone(),
        message: e.to_string(),
    })?;
    parse_dataset(&text, &name)
}

/// [`load_csv`] on text already read (an uploaded evaluation set).
pub fn parse_dataset(text: &str, name: &str) -> Result<Dataset, DataError> {
    let (features, labels, dim) = parse_csv(text, name)?;
    let classes = labels.iter().max().map(|m| *m as usize + 1).unwrap_or(0);
    Ok(Dataset {
        features,
        labels,
        dim,
        classes,
    })
}

pub fn standardise(features: &mut [f32], dim: usize) {
    if dim == 0 {
        return;
    }
    let n = features.len() / dim;
    if n == 0 {
        return;
    }
    for j in 0..dim {
        let mean = (0..n).map(|i| features[i * dim + j] as f64).sum::<f64>() / n as f64;
        let var = (0..n)
            .map(|i| (features[i * dim + j] as f64 - mean).powi(2))
            .sum::<f64>()
            / n as f64;
        let std = var.sqrt();
        for i in 0..n {
            let v = &mut features[i * dim + j];
            *v = if std > 1e-12 {
                ((*v as f64 - mean) / std) as f32
            } else {
                0.0
            };
        }
    }
}

fn parse_csv(text: &str, name: &str) -> Result<(Vec<f32>, Vec<u32>, usize), DataError> {
    let err = |message: String| DataError::Csv {
        path: name.to_string(),
        message,
    };
    let mut features = Vec::new();
    let mut labels = Vec::new();
    let mut dim: Option<usize> = None;
    for (lineno, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let cells: Vec<&str> = line.split(',').map(|c| c.trim()).collect();
        if cells.len() < 2 {
            return Err(err(format!(
                "line {}: needs at least one feature and a label",
                lineno + 1
            )));
        }
        let parsed: Result<Vec<f64>, _> = cells.iter().map(|c| c.parse::<f64>()).collect();
        let values = match parsed {
            Ok(v) => v,
            Err(_) if labels.is_empty() && dim.is_none() => {
                // A header row: remember its width, skip it.
                dim = Some(cells.len() - 1);
                continue;
            }
            Err(e) => return Err(err(format!("line {}: not a number ({e})", lineno + 1))),
        };
        let d = cells.len() - 1;
        match dim {
            None => dim = Some(d),
            Some(x) if x != d => {
                return Err(err(format!(
                    "line {}: {} features, earlier rows have {x}",
                    lineno + 1,
                    d
                )))
            }
            _ => {}
        }
        let label = values[d];
        if label < 0.0 || label.fract() != 0.0 || label > 1e6 {
            return Err(err(format!(
                "line {}: label `{}` is not a class number (0, 1, 2, ...)",
                lineno + 1,
                cells[d]
            )));
        }
        for (j, v) in values[..d].iter().enumerate() {
            let f = f32_feature(*v).map_err(|message| DataError::Value {
                path: name.to_string(),
                line: lineno + 1,
                column: j + 1,
                message,
            })?;
            features.push(f);
        }
        labels.push(label as u32);
    }
    let dim = dim.ok_or_else(|| err("no data rows".into()))?;
    if labels.is_empty() {
        return Err(err("no data rows".into()));
    }
    Ok((features, labels, dim))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_load_and_split_deterministically() {
        let ds = digits().unwrap();
        assert_eq!(ds.len(), 1797);
        assert_eq!(ds.dim, 64);
        assert!(ds.features.iter().all(|v| (0.0..=1.0).contains(v)));
        let a = digits_split().unwrap();
        let b = digits_split().unwrap();
        assert_eq!(a.test, b.test);
        assert_eq!(a.train.len() + a.test.len(), 1797);
        assert!((350..=370).contains(&a.test.len()), "{}", a.test.len());
    }

    #[test]
    fn specialties_slice() {
        let s = digits_split().unwrap();
        let mut table = BTreeMap::new();
        table.insert("graphics".to_string(), vec![4, 5, 6]);
        let g = specialty_slice(&s.train, "graphics", &table);
        assert!(g.labels.iter().all(|l| (4..=6).contains(l)));
        let other = specialty_slice(&s.train, "bakery", &table);
        let again = specialty_slice(&s.train, "bakery", &table);
        assert_eq!(other, again);
        assert!(other.len() * 4 >= s.train.len() - 4);
        let classes: std::collections::BTreeSet<_> = other.labels.iter().collect();
        assert_eq!(classes.len(), 10);
    }

    #[test]
    fn csv_with_header_loads_raw_and_standardises() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.csv");
        std::fs::write(&p, "a,b,label\n1000,5,0\n3000,5,1\n2000,5,1\n").unwrap();
        let mut ds = load_csv(&p).unwrap();
        assert_eq!(ds.dim, 2);
        assert_eq!(ds.labels, vec![0, 1, 1]);
        assert_eq!(ds.classes, 2);
        assert_eq!(ds.features[0], 1000.0);
        standardise(&mut ds.features, ds.dim);
        assert!((ds.features[0] + 1.2247).abs() < 1e-3);
        assert_eq!(ds.features[1], 0.0);
        std::fs::write(&p, "1,2,0\n1,2\n").unwrap();
        assert!(load_csv(&p).is_err());
    }

    #[test]
    fn values_beyond_f32_are_refused_naming_line_and_column() {
        for (cell, what) in [
            ("1e39", "beyond the range"),
            ("-1e39", "beyond the range"),
            ("1e308", "beyond the range"),
            ("NaN", "not a finite"),
            ("inf", "not a finite"),
        ] {
            let csv = format!("a,b,label\n1,2,0\n3,{cell},1\n");
            match parse_dataset(&csv, "e.csv") {
                Err(DataError::Value {
                    line,
                    column,
                    message,
                    ..
                }) => {
                    assert_eq!((line, column), (3, 2), "{cell}");
                    assert!(message.contains(what), "{cell}: {message}");
                }
                other => panic!("{cell}: {other:?}"),
            }
        }
        // The largest f32 itself is a value.
        let ok = parse_dataset("3.4028234e38,0\n", "e.csv").unwrap();
        assert_eq!(ok.features, vec![f32::MAX]);
    }
}
