//! Helpers shared by the integration tests.
#![allow(dead_code)]

use mall_forecast::history::GenerateParams;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// A directory under the system's temp dir, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "mall-forecast-test-{}-{name}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn write(&self, name: &str, text: &str) {
        std::fs::write(self.0.join(name), text).unwrap();
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A small world: fast in debug builds, yet enough shoppers per hot item
/// for the forecast to be judged.
pub fn small(seed: u64) -> GenerateParams {
    GenerateParams {
        days: 10,
        items: 200,
        shoppers: 20_000,
        seed,
        ..GenerateParams::default()
    }
}

/// A tiny world for tests that only need a valid history.
pub fn tiny(seed: u64) -> GenerateParams {
    GenerateParams {
        days: 5,
        items: 50,
        shoppers: 3_000,
        seed,
        ..GenerateParams::default()
    }
}
