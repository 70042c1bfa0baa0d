//! CelebA-style attribute files (`list_attr_celeba.txt`, as yunjey/stargan reads them): a line
//! with the image count, a line of attribute names, then one line per image, `file v1 v2 ...`,
//! each value `1` (has it) or `-1` (has not; `0` is read the same way). StarGAN trains on the
//! columns `--attrs` names, in that order.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};

/// An attribute file as read.
#[derive(Debug, Clone, PartialEq)]
pub struct AttributeTable {
    pub names: Vec<String>,
    /// Per image: its file name and whether it has each attribute.
    pub rows: Vec<(String, Vec<bool>)>,
}

impl AttributeTable {
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read attribute file {}", path.display()))?;
        Self::parse(&text, path)
    }

    /// Parses the file's text; errors name `path`, the line and what was expected.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let mut lines = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty());
        let (_, count_line) = lines
            .next()
            .with_context(|| format!("{}: empty attribute file", path.display()))?;
        let count: usize = count_line.trim().parse().with_context(|| {
            format!(
                "{}: line 1 should be the image count, found {count_line:?}",
                path.display()
            )
        })?;
        let (_, names_line) = lines.next().with_context(|| {
            format!(
                "{}: line 2 should name the attributes; the file ends",
                path.display()
            )
        })?;
        let names: Vec<String> = names_line.split_whitespace().map(str::to_string).collect();
        ensure!(
            !names.is_empty(),
            "{}: line 2 names no attributes",
            path.display()
        );
        // Line 1 is only a claim: sized by it, a file saying 2^64 images would ask for that
        // much memory before the count is checked against the lines that are there.
        let mut rows = Vec::new();
        for (i, line) in lines {
            let fields: Vec<&str> = line.split_whitespace().collect();
            ensure!(
                fields.len() == names.len() + 1,
                "{}: line {} has {} columns; expected {} (a file name and {} attribute values)",
                path.display(),
                i + 1,
                fields.len(),
                names.len() + 1,
                names.len()
            );
            let values = fields[1..]
                .iter()
                .map(|v| match *v {
                    "1" => Ok(true),
                    "-1" | "0" => Ok(false),
                    other => bail!(
                        "{}: line {}: attribute value {other:?} is not 1, -1 or 0",
                        path.display(),
                        i + 1
                    ),
                })
                .collect::<Result<Vec<bool>>>()?;
            rows.push((fields[0].to_string(), values));
        }
        ensure!(
            rows.len() == count,
            "{}: line 1 says {count} images, the file lists {}",
            path.display(),
            rows.len()
        );
        Ok(Self { names, rows })
    }

    /// The columns named in `wanted`, in that order, as 0/1 per image; an unknown name is an
    /// error that lists the file's names.
    pub fn select(&self, wanted: &[String], path: &Path) -> Result<Vec<Vec<f32>>> {
        ensure!(
            !wanted.is_empty(),
            "{}: name the attributes to train on (--attrs Black_Hair,Blond_Hair,...)",
            path.display()
        );
        let columns = wanted
            .iter()
            .map(|w| {
                self.names.iter().position(|n| n == w).with_context(|| {
                    format!(
                        "{}: unknown attribute `{w}`; the file has: {}",
                        path.display(),
                        self.names.join(", ")
                    )
                })
            })
            .collect::<Result<Vec<usize>>>()?;
        Ok(self
            .rows
            .iter()
            .map(|(_, v)| columns.iter().map(|&c| f32::from(u8::from(v[c]))).collect())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "3\nBlack_Hair Blond_Hair Male\n000001.jpg -1  1 -1\n000002.jpg  1 -1  1\n000003.jpg -1 -1  1\n";

    #[test]
    fn reads_the_celeba_layout_and_selects_columns_by_name() -> Result<()> {
        let p = Path::new("list_attr_celeba.txt");
        let t = AttributeTable::parse(FILE, p)?;
        assert_eq!(t.names, ["Black_Hair", "Blond_Hair", "Male"]);
        assert_eq!(t.rows[1].0, "000002.jpg");
        let v = t.select(&["Male".into(), "Blond_Hair".into()], p)?;
        assert_eq!(v, vec![vec![0.0, 1.0], vec![1.0, 0.0], vec![1.0, 0.0]]);
        Ok(())
    }

    /// A huge image count on line 1 (found by tests/fuzz_loaders.rs) is an error about the
    /// count, not a capacity overflow or an allocation of that many rows.
    #[test]
    fn a_huge_image_count_is_checked_not_allocated() {
        let p = Path::new("attrs.txt");
        for count in ["18446744073709551615", "1000000000000"] {
            let text = format!("{count}\nA B\nx.jpg 1 -1\n");
            let e = format!("{:#}", AttributeTable::parse(&text, p).unwrap_err());
            assert!(
                e.contains(&format!(
                    "attrs.txt: line 1 says {count} images, the file lists 1"
                )),
                "{e}"
            );
        }
    }

    #[test]
    fn bad_files_name_the_file_the_line_and_what_was_expected() {
        let p = Path::new("attrs.txt");
        let err = |text: &str| format!("{:#}", AttributeTable::parse(text, p).unwrap_err());
        let e = err("3\nA B\nx.jpg 1\n");
        assert!(
            e.contains("attrs.txt: line 3 has 2 columns; expected 3"),
            "{e}"
        );
        let e = err("2\nA B\nx.jpg 1 -1\n");
        assert!(e.contains("says 2 images, the file lists 1"), "{e}");
        let e = err("many\nA\n");
        assert!(e.contains("line 1 should be the image count"), "{e}");
        let e = err("1\nA\nx.jpg yes\n");
        assert!(e.contains("\"yes\" is not 1, -1 or 0"), "{e}");
        let t = AttributeTable::parse(FILE, p).unwrap();
        let e = format!("{:#}", t.select(&["Red_Hair".into()], p).unwrap_err());
        assert!(
            e.contains("unknown attribute `Red_Hair`")
                && e.contains("Black_Hair, Blond_Hair, Male"),
            "{e}"
        );
    }
}
