//! The web configuration in force, and its reload on SIGHUP: the file is
//! read again (certificates, keys and hashes too); a bad one leaves the
//! previous policy in force, with one line saying why.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use anyhow::Context as _;
use tokio::signal::unix::Signal;

use super::webconfig::{self, Policy};

pub struct Web {
    path: Option<PathBuf>,
    current: Mutex<Arc<Policy>>,
}

impl Web {
    /// Plain HTTP, nobody asked for credentials.
    pub fn none() -> Self {
        Self {
            path: None,
            current: Mutex::new(Arc::new(Policy::default())),
        }
    }

    /// `--web-config PATH`, with the errors naming the file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let policy =
            webconfig::load(path).with_context(|| format!("--web-config {}", path.display()))?;
        Ok(Self {
            path: Some(path.to_owned()),
            current: Mutex::new(Arc::new(policy)),
        })
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The policy for a new connection or request.
    pub fn current(&self) -> Arc<Policy> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads the file again; keeps the policy in force if it is bad.
    pub fn reload(&self) -> anyhow::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let policy = webconfig::load(path).with_context(|| format!("{}", path.display()))?;
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(policy);
        Ok(())
    }

    /// Reloads on every SIGHUP, forever.
    pub async fn reload_on(self: Arc<Self>, mut hangups: Signal) {
        while hangups.recv().await.is_some() {
            match self.reload() {
                Ok(()) => eprintln!(
                    "tcptrace: reloaded the web configuration from {}",
                    self.path.as_deref().unwrap_or(Path::new("?")).display()
                ),
                Err(e) => eprintln!(
                    "tcptrace: warning: keeping the web configuration in force: {}",
                    format!("{e:#}").replace('\n', " ")
                ),
            }
        }
    }
}
