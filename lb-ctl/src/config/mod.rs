//! The controller's configuration: listeners, server groups and options as docs/config.md
//! describes them, read from YAML and validated in one pass.
//!
//! Reading happens in two steps. The YAML text becomes a `serde_yaml::Value` (a syntax
//! error stops here, with its line and column); `walk` turns the tree into a typed
//! `Config`, reporting every type error, unknown field and out-of-range value; `validate`
//! then checks the rules that relate fields (uniqueness, references, the backend-port
//! rule) on the typed config. `Config::validate` runs that second step alone, for configs
//! the runtime API builds in code. Nothing partial is returned: `Ok` means no error at all.

mod advice;
mod error;
mod model;
mod net;
mod validate;
mod walk;

use std::path::Path;

use serde_yaml::Value;

pub use advice::ConfigWarning;
pub use error::{ConfigError, ConfigErrors, Location};
pub use model::*;
pub use walk::field_paths;

/// Reads and validates a config file. A file that cannot be read is one error with an
/// empty path naming the file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(
            "",
            format!("cannot read config file {}: {e}", path.display()),
        )
    })?;
    parse(&text)
}

/// Parses and validates YAML text, reporting every error at once.
pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
    let mut value: Value = serde_yaml::from_str(text).map_err(|e| syntax_error(&e))?;
    // Merge keys (`<<: *common`) let a file share listener settings; serde_yaml leaves
    // them as literal `<<` fields unless asked to apply them.
    value.apply_merge().map_err(|e| syntax_error(&e))?;
    parse_value(&value)
}

/// Validates a YAML tree that is already parsed (merge keys, if any, already applied).
pub fn parse_value(value: &Value) -> Result<Config, ConfigErrors> {
    let (config, mut errors, taint) = walk::read(value);
    errors.extend(validate::check(&config, &taint));
    error::sort_by_document_order(&mut errors, walk::TOP_FIELDS);
    ConfigErrors::from_vec(errors).map_or(Ok(config), Err)
}

fn syntax_error(e: &serde_yaml::Error) -> ConfigErrors {
    let location = e.location().map(|l| Location {
        line: l.line(),
        column: l.column(),
    });
    // serde_yaml appends the position to its message; it is shown once, from `location`.
    let mut message = e.to_string();
    if let Some(Location { line, column }) = location {
        message = message.replacen(&format!(" at line {line} column {column}"), "", 1);
    }
    ConfigError {
        location,
        ..ConfigError::new("", format!("YAML syntax error: {message}"))
    }
    .into()
}

#[cfg(test)]
mod tests;
