//! Config errors that name the file, the line and the key.

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line, when the key could be located.
    pub line: Option<usize>,
    /// Dotted key path, such as `routes[2].upstream`.
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(file: &Path, line: Option<usize>, key: &str, message: String) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            line,
            key: key.to_string(),
            message,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": `{}`", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in one file (validation does not stop at the first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn one(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// 1-based line of a byte offset.
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

/// serde's messages name the offending field (`unknown field `x``, `missing field `y``);
/// surface it as the key when there is one.
pub(super) fn key_from_toml_message(msg: &str) -> String {
    for marker in ["unknown field `", "missing field `", "duplicate key `"] {
        if let Some(start) = msg.find(marker) {
            let rest = &msg[start + marker.len()..];
            if let Some(end) = rest.find('`') {
                return rest[..end].to_string();
            }
        }
    }
    String::new()
}

/// Finds the line of a key path like `routes[2].upstream` in the original text.
pub(super) struct Locator<'a> {
    text: &'a str,
    doc: Option<toml_edit::ImDocument<&'a str>>,
}

impl<'a> Locator<'a> {
    pub(super) fn new(text: &'a str) -> Self {
        Locator {
            text,
            doc: toml_edit::ImDocument::parse(text).ok(),
        }
    }

    /// The line of the deepest part of `key` that exists in the document.
    pub(super) fn line_of_key(&self, key: &str) -> Option<usize> {
        let doc = self.doc.as_ref()?;
        let mut item: &toml_edit::Item = doc.as_item();
        let mut best = None;
        for seg in split_key(key) {
            let next = match seg {
                Seg::Field(name) => item.get(name),
                Seg::Index(i) => item.get(i),
            };
            match next {
                Some(n) => {
                    item = n;
                    if let Some(span) = n.span() {
                        best = Some(span.start);
                    }
                }
                None => break,
            }
        }
        best.map(|off| line_of(self.text, off))
    }
}

enum Seg<'k> {
    Field(&'k str),
    Index(usize),
}

fn split_key(key: &str) -> Vec<Seg<'_>> {
    let mut out = Vec::new();
    for part in key.split('.') {
        let (name, mut idx) = match part.find('[') {
            Some(p) => (&part[..p], &part[p..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            out.push(Seg::Field(name));
        }
        while let Some(end) = idx.find(']') {
            if let Ok(i) = idx[1..end].parse() {
                out.push(Seg::Index(i));
            }
            idx = &idx[end + 1..];
        }
    }
    out
}
