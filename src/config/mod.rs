//! Configuration: the TOML files ([`file`]), how they are read ([`load`]), compiled
//! ([`compile`], one file per section) into the runtime [`Snapshot`] the request path reads
//! ([`model`]). Loading validates everything and either yields a whole snapshot or a
//! [`ConfigError`] naming the file and the field path (`routes[2].upstream: unknown upstream
//! "cdnn"`).

pub mod compact;
mod compile;
pub mod file;
mod load;
mod model;

use std::fmt;
use std::path::{Path, PathBuf};

pub use compile::compile;
pub use file::GroupStatus;
pub use load::{check_tenants_for_push, load, load_from_str, read_tenants_file, tenants_url};
pub use model::*;

/// The state directory (`state_dir`, relative to the config file; default `state` beside it).
pub fn state_dir(config_path: &Path, file: &file::ConfigFile) -> PathBuf {
    config_path
        .parent()
        .unwrap_or(Path::new("."))
        .join(file.state_dir.as_deref().unwrap_or("state"))
}

/// A config or tenants file that cannot be used, with where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// Field path such as `routes[2].upstream`; empty when the whole file is at fault.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}: {}: {}",
                self.file.display(),
                self.field,
                self.message
            )
        }
    }
}

impl std::error::Error for ConfigError {}

pub(crate) fn err(
    file: &Path,
    field: impl Into<String>,
    message: impl Into<String>,
) -> ConfigError {
    ConfigError {
        file: file.to_path_buf(),
        field: field.into(),
        message: message.into(),
    }
}
