//! Coroutine file I/O: positional reads and writes that yield to the loop.
