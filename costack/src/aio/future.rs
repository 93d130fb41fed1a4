//! Driving a `std::future::Future` from a coroutine.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake};

use super::budget::yield_to_loop;
use super::turn::Inner;
use super::waker::Waker;
use crate::coroutine::wait::wait_until;

struct FutureWaker {
    woken: AtomicBool,
    co: Waker,
}

impl Wake for FutureWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        // Woken from inside its own poll: the coroutine sees the flag when
        // poll returns; waking it too would only re-enter it at once.
        if !self.co.is_current() {
            self.co.wake();
        }
    }
}

/// Polls `future` to completion in the calling coroutine, yielding to the
/// loop while it is pending. Its `std::task::Waker` is `Send`: waking it
/// from any thread re-enters the coroutine on its own loop. A wait point:
/// cancelled, the coroutine unwinds from here, dropping the future as an
/// executor drops a future at its `.await`.
pub(crate) fn block_on_future<F: Future>(inner: &Inner, future: F) -> F::Output {
    let me = crate::current().expect("checked by the caller");
    inner.adopt(&me);
    let fw = Arc::new(FutureWaker {
        woken: AtomicBool::new(false),
        co: Waker::for_coroutine(&me),
    });
    let waker = std::task::Waker::from(fw.clone());
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        fw.woken.store(false, Ordering::Release);
        if let Poll::Ready(v) = future.as_mut().poll(&mut cx) {
            return v;
        }
        #[cfg(feature = "tokio")]
        refuse_undriven_tokio_runtime();
        if fw.woken.load(Ordering::Acquire) {
            // It woke itself (a yielding future): let the loop run the
            // rest of its work once before polling again.
            yield_to_loop(me.clone());
            continue;
        }
        wait_until("aio::wait_future", || {
            fw.woken.load(Ordering::Acquire).then_some(())
        });
    }
}

/// Panics if a tokio `current_thread` runtime is entered on this thread.
///
/// Such a runtime drives its timers, sockets and tasks only inside its own
/// `block_on`, on this very thread, which costack's loop occupies: a tokio
/// future waiting on it is never woken, and the coroutine would hang
/// without a word. A multi-thread runtime drives them on its own workers,
/// so entering its handle here is the pattern that works.
#[cfg(feature = "tokio")]
fn refuse_undriven_tokio_runtime() {
    use tokio::runtime::{Handle, RuntimeFlavor};
    if let Ok(rt) = Handle::try_current() {
        if rt.runtime_flavor() == RuntimeFlavor::CurrentThread {
            panic!(
                "costack: aio::wait_future on an event loop with a tokio current_thread \
                 runtime entered on its thread: that runtime cannot run while the loop \
                 does, so its timers, sockets and tasks would never wake this coroutine; \
                 enter a multi-thread runtime's handle instead, or run the coroutine as a \
                 costack::future::CoFuture on the current_thread runtime"
            );
        }
    }
}
