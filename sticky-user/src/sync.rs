//! Small helpers every module uses the same way: a poison-tolerant lock and the wall clock.

use std::{
    sync::{Mutex, MutexGuard, PoisonError},
    time::SystemTime,
};

/// Locks `mutex`, going on with its data if a thread panicked while holding it: the data
/// sticky keeps behind locks stays consistent between statements, and a loader that stopped
/// serving on a poisoned lock would fail every worker.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Now, in seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |since| since.as_secs())
}
