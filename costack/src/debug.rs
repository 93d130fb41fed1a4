//! Introspection of the calling thread's coroutines.

pub use crate::coroutine::CoroutineInfo;

/// Lists the calling thread's live coroutines (created, suspended, entered,
/// or finished with handles left).
///
/// ```
/// let co = costack::Coroutine::builder().name("lister").create(|| {}).unwrap();
/// assert!(costack::debug::coroutines()
///     .iter()
///     .any(|c| c.name.as_deref() == Some("lister") && c.state == "created"));
/// drop(co);
/// ```
pub fn coroutines() -> Vec<CoroutineInfo> {
    crate::coroutine::live_coroutines()
}
