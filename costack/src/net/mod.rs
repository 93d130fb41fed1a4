//! Coroutine networking: calls that look blocking and yield to the loop.
