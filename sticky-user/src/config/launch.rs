//! What `sticky run` was given, kept as it runs: a reload reads the configuration file again,
//! and an upgrade hands it to the next image unchanged.

use std::{path::PathBuf, sync::Mutex};

use serde::{Deserialize, Serialize};

use super::{RunConfig, RunOptions};
use crate::sync::lock;

/// What `sticky run` was given: the validated configuration, and the options it came from (a
/// reload reads their file again). An upgrade hands it on unchanged.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Launch {
    /// The configuration.
    pub config: RunConfig,
    options: RunOptions,
    /// `options.config`, which the options' serde form leaves out.
    config_file: Option<PathBuf>,
}

impl Launch {
    /// `config`, validated from `options`.
    pub fn new(config: RunConfig, options: RunOptions) -> Self {
        Self { config, config_file: options.config.clone(), options }
    }

    /// With a configuration file: reads the worker count again at each reload, and applies it
    /// only if it changed there (so a reload does not undo a `sticky scale`).
    pub(crate) fn reconfigure(&self) -> Option<Reconfigure> {
        let file = self.config_file.clone()?;
        let options = RunOptions { config: Some(file), ..self.options.clone() };
        let configured = Mutex::new(self.config.workers);
        Some(Box::new(move || {
            let workers = options.clone().validate().map_err(|err| err.to_string())?.workers;
            let mut configured = lock(&configured);
            let changed = *configured != workers;
            *configured = workers;
            Ok(changed.then_some(workers))
        }))
    }
}

/// Returns the worker count the configuration asks for now if it changed since the last call, or
/// why the configuration cannot be read.
pub type Reconfigure = Box<dyn Fn() -> Result<Option<u32>, String> + Send + Sync>;
