//! Coroutine locks and queues (QEMU's qemu-coroutine-lock.c).
