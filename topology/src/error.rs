use std::fmt;

/// Where in a YAML file something was written (1-based line and column).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Location {
    /// The file as the user named it.
    pub file: String,
    /// 1-based line; 0 when unknown.
    pub line: u64,
    /// 1-based column; 0 when unknown.
    pub column: u64,
}

impl Location {
    pub(crate) fn new(file: &str, at: &serde_saphyr::Location) -> Self {
        Location { file: file.to_string(), line: at.line(), column: at.column() }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// One problem found in a topology or policy file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopologyError {
    /// Where the offending value was written.
    pub location: Location,
    /// The offending name (a stage, policy, gate or config key), when there is one.
    pub name: Option<String>,
    /// What is wrong, in words.
    pub message: String,
}

impl fmt::Display for TopologyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: error: {}", self.location, self.message)
    }
}

/// Every problem of one or more files, in file order. Never empty.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<TopologyError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

/// Collects errors while a file is checked.
#[derive(Default)]
pub(crate) struct Errors {
    pub(crate) list: Vec<TopologyError>,
}

impl Errors {
    pub(crate) fn push(&mut self, location: Location, name: Option<&str>, message: String) {
        self.list.push(TopologyError { location, name: name.map(str::to_string), message });
    }

    pub(crate) fn finish<T>(mut self, value: T) -> Result<T, ValidationErrors> {
        if self.list.is_empty() {
            Ok(value)
        } else {
            self.list.sort_by_key(|e| (e.location.line, e.location.column));
            Err(ValidationErrors(self.list))
        }
    }
}

/// Turns a YAML syntax or shape error into a located [`TopologyError`].
pub(crate) fn yaml_error(file: &str, error: &serde_saphyr::Error) -> ValidationErrors {
    let location = error.location().map(|at| Location::new(file, &at)).unwrap_or_else(|| Location {
        file: file.to_string(),
        line: 0,
        column: 0,
    });
    ValidationErrors(vec![TopologyError { location, name: None, message: yaml_message(error) }])
}

/// serde-saphyr's message without what the location already says: it
/// renders `error: line L column C: ` into its text, and more lines after.
pub(crate) fn yaml_message(error: &serde_saphyr::Error) -> String {
    let text = error.to_string();
    let first = text.lines().next().unwrap_or("invalid YAML");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    let without_place = first
        .strip_prefix("line ")
        .and_then(|rest| rest.split_once(": "))
        .filter(|(place, _)| place.contains(" column "))
        .map_or(first, |(_, message)| message);
    without_place.to_string()
}
