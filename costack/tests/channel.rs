//! Channels where crossbeam's own suite cannot go: between coroutines of
//! one loop, across loops, between coroutines and plain threads, inside a
//! `CoFuture`, select in coroutines, many blocked coroutines, and
//! coroutines unwound while blocked.

#![cfg(any(unix, windows))]

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use costack::aio::{self, EventLoop, IoThread};
use costack::channel::{
    after, bounded, never, select, tick, unbounded, Receiver, RecvTimeoutError, Select, Sender,
    TryRecvError,
};
use costack::future::CoFuture;

/// Every kind of channel that carries messages.
fn kinds() -> Vec<(&'static str, Sender<u64>, Receiver<u64>)> {
    let mut v = Vec::new();
    for (name, (s, r)) in [
        ("rendezvous", bounded(0)),
        ("bounded(1)", bounded(1)),
        ("bounded(16)", bounded(16)),
        ("unbounded", unbounded()),
    ] {
        v.push((name, s, r));
    }
    v
}

#[test]
fn producer_and_consumer_coroutines_on_one_loop() {
    for (name, s, r) in kinds() {
        let sum = EventLoop::new().unwrap().block_on(move || {
            let producer = aio::spawn(move || {
                for i in 1..=1000 {
                    s.send(i).unwrap();
                }
            });
            let sum: u64 = r.iter().sum();
            producer.join().unwrap();
            sum
        });
        assert_eq!(sum, 500_500, "{name}");
    }
}

#[test]
fn a_blocked_coroutine_yields_and_the_loop_runs_others() {
    for (name, s, r) in kinds() {
        let ticks = EventLoop::new().unwrap().block_on(move || {
            let ticks = Rc::new(Cell::new(0u32));
            let t = ticks.clone();
            let ticker = aio::spawn(move || {
                for _ in 0..10 {
                    t.set(t.get() + 1);
                    aio::yield_now();
                }
            });
            let sender = aio::spawn(move || {
                aio::sleep(Duration::from_millis(5));
                s.send(7).unwrap();
            });
            assert_eq!(r.recv(), Ok(7)); // waited: the ticker ran meanwhile
            ticker.join().unwrap();
            sender.join().unwrap();
            ticks.get()
        });
        assert_eq!(ticks, 10, "{name}");
    }
}

#[test]
fn coroutines_on_two_io_threads() {
    for (name, s, r) in kinds() {
        let a = IoThread::spawn("producer").unwrap();
        let b = IoThread::spawn("consumer").unwrap();
        let consumer = b.handle().spawn(move || r.iter().sum::<u64>());
        let producer = a.handle().spawn(move || {
            for i in 1..=10_000 {
                s.send(i).unwrap();
            }
        });
        producer.join().unwrap();
        assert_eq!(consumer.join().unwrap(), 50_005_000, "{name}");
    }
}

#[test]
fn coroutine_and_plain_thread_both_ways() {
    for (name, s, r) in kinds() {
        let (back_s, back_r) = bounded::<u64>(0);
        let t = thread::spawn(move || {
            // A plain thread: blocks.
            for m in r.iter() {
                back_s.send(m * 2).unwrap();
            }
        });
        let total = EventLoop::new().unwrap().block_on(move || {
            let mut total = 0;
            for i in 1..=100 {
                s.send(i).unwrap();
                total += back_r.recv().unwrap();
            }
            total
        });
        t.join().unwrap();
        assert_eq!(total, 10_100, "{name}");
    }
}

#[test]
fn inside_a_cofuture_waits_through_the_pollers_waker() {
    for (name, s, r) in kinds() {
        let t = thread::spawn(move || {
            for i in 1..=100 {
                thread::sleep(Duration::from_micros(50));
                s.send(i).unwrap();
            }
        });
        let fut = CoFuture::new(move || r.iter().sum::<u64>());
        assert_eq!(futures::executor::block_on(fut), 5050, "{name}");
        t.join().unwrap();
    }
}

#[test]
fn select_in_a_coroutine_yields_while_others_progress() {
    EventLoop::new().unwrap().block_on(|| {
        let (s1, r1) = bounded::<u32>(0);
        let (_s2, r2) = unbounded::<u32>();
        let progressed = Rc::new(Cell::new(0));
        let p = progressed.clone();
        let other = aio::spawn(move || {
            for _ in 0..5 {
                p.set(p.get() + 1);
                aio::yield_now();
            }
            s1.send(9).unwrap();
        });
        let got = select! {
            recv(r1) -> m => m.unwrap(),
            recv(r2) -> _ => unreachable!(),
        };
        assert_eq!(got, 9);
        assert_eq!(progressed.get(), 5);
        other.join().unwrap();
    });
}

#[test]
fn select_timeouts_and_timers_in_coroutines() {
    EventLoop::new().unwrap().block_on(|| {
        let (_s, r) = unbounded::<u32>();
        let t0 = Instant::now();
        select! {
            recv(r) -> _ => unreachable!(),
            default(Duration::from_millis(20)) => {}
        }
        assert!(t0.elapsed() >= Duration::from_millis(20));

        let t0 = Instant::now();
        let timer = after(Duration::from_millis(10));
        select! {
            recv(r) -> _ => unreachable!(),
            recv(timer) -> at => assert!(at.unwrap() >= t0 + Duration::from_millis(10)),
        }

        let ticker = tick(Duration::from_millis(2));
        for _ in 0..3 {
            ticker.recv().unwrap();
        }
        assert_eq!(
            never::<u32>().recv_timeout(Duration::from_millis(1)),
            Err(RecvTimeoutError::Timeout)
        );
        assert_eq!(
            r.recv_timeout(Duration::from_millis(1)),
            Err(RecvTimeoutError::Timeout)
        );
    });
}

#[test]
fn select_over_a_send_and_a_receive_on_one_rendezvous_channel() {
    // A select must not pair with itself; two coroutines do pair.
    EventLoop::new().unwrap().block_on(|| {
        let (s, r) = bounded::<u32>(0);
        let (s2, r2) = (s.clone(), r.clone());
        let peer = aio::spawn(move || r2.recv().unwrap());
        let mut sel = Select::new();
        let send = sel.send(&s);
        let recv = sel.recv(&r);
        let oper = sel.select();
        assert_eq!(oper.index(), send, "only the peer's receive can pair");
        oper.send(&s, 5).unwrap();
        assert_eq!(peer.join().unwrap(), 5);
        let _ = (recv, s2);
    });
}

#[test]
fn ten_thousand_coroutines_blocked_on_one_channel() {
    const N: usize = 10_000;
    let got = EventLoop::new().unwrap().block_on(|| {
        let (s, r) = bounded::<usize>(0);
        let sum = Rc::new(Cell::new(0));
        let waiting: Vec<_> = (0..N)
            .map(|_| {
                let (r, sum) = (r.clone(), sum.clone());
                aio::spawn(move || {
                    let m = r.recv().unwrap();
                    sum.set(sum.get() + m);
                })
            })
            .collect();
        aio::yield_now(); // all of them block
        for i in 0..N {
            s.send(i).unwrap();
        }
        waiting.into_iter().for_each(|w| w.join().unwrap());
        sum.get()
    });
    assert_eq!(got, N * (N - 1) / 2);
}

/// Runs `ev` until `done` says so (or fails after a while).
fn run_until(ev: &EventLoop, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "the loop made no progress");
        ev.poll(false);
    }
}

#[test]
fn a_receiver_unwound_after_a_hand_off_reached_it_passes_the_message_on() {
    // The loop is dropped between the hand-off and the receiver's next
    // run: the message must reach another receiver.
    for (name, s, r) in kinds() {
        let ev = EventLoop::new().unwrap();
        let blocked = Arc::new(AtomicUsize::new(0));
        let b = blocked.clone();
        let r2 = r.clone();
        let h = ev.spawn(move || {
            b.store(1, Ordering::SeqCst);
            let m = r2.recv();
            b.store(2, Ordering::SeqCst);
            m
        });
        run_until(&ev, || blocked.load(Ordering::SeqCst) == 1);
        ev.poll(false);
        // From outside the loop: fills the waiting receiver's hand-off (or
        // buffers it and notifies), without letting it run.
        s.try_send(41).unwrap();
        drop(h);
        drop(ev); // the receiver unwinds
        assert_eq!(
            blocked.load(Ordering::SeqCst),
            1,
            "{name}: it never ran again"
        );
        assert_eq!(
            r.try_recv(),
            Ok(41),
            "{name}: the message went back to the channel"
        );
        assert_eq!(
            r.try_recv(),
            Err(TryRecvError::Empty),
            "{name}: exactly once"
        );
        drop(s);
        assert_eq!(r.try_recv(), Err(TryRecvError::Disconnected), "{name}");
    }
}

#[test]
fn a_select_unwound_after_a_hand_off_reached_it_passes_the_message_on() {
    let (s, r) = bounded::<u32>(0);
    let (_s2, r2) = bounded::<u32>(0);
    let ev = EventLoop::new().unwrap();
    let blocked = Arc::new(AtomicUsize::new(0));
    let b = blocked.clone();
    let (ra, rb) = (r.clone(), r2.clone());
    let h = ev.spawn(move || {
        b.store(1, Ordering::SeqCst);
        select! {
            recv(ra) -> m => m.unwrap(),
            recv(rb) -> m => m.unwrap(),
        }
    });
    run_until(&ev, || blocked.load(Ordering::SeqCst) == 1);
    ev.poll(false);
    s.try_send(8).unwrap(); // the select's receive arm takes it over
    drop(h);
    drop(ev);
    assert_eq!(r.try_recv(), Ok(8));
    assert_eq!(r.try_recv(), Err(TryRecvError::Empty));
}

#[test]
fn a_sender_unwound_while_blocked_sends_nothing() {
    for (name, (s, r)) in [("rendezvous", bounded(0)), ("bounded(1)", bounded(1))] {
        if name == "bounded(1)" {
            s.send(0u32).unwrap(); // full
        }
        let ev = EventLoop::new().unwrap();
        let s2 = s.clone();
        let h = ev.spawn(move || s2.send(1).unwrap());
        ev.poll(false);
        ev.poll(false);
        drop(h);
        drop(ev); // unwound while blocked
        if name == "bounded(1)" {
            assert_eq!(r.try_recv(), Ok(0));
        }
        assert_eq!(
            r.try_recv(),
            Err(TryRecvError::Empty),
            "{name}: nothing was sent"
        );
        // And the channel works on.
        let t = thread::spawn(move || r.recv().unwrap());
        s.send(2).unwrap();
        assert_eq!(t.join().unwrap(), 2, "{name}");
    }
}

#[test]
#[should_panic(expected = "dropped `SelectedOperation` without completing the operation")]
fn dropping_a_selected_operation_panics() {
    let (s, r) = unbounded::<u32>();
    s.send(1).unwrap();
    let mut sel = Select::new();
    sel.recv(&r);
    let oper = sel.select();
    drop(oper);
}

#[test]
fn a_dropped_selected_operation_gives_its_reservation_back() {
    for (name, s, r) in kinds() {
        let s2 = s.clone();
        let t = thread::spawn(move || s2.send(3).unwrap());
        {
            let mut sel = Select::new();
            sel.recv(&r);
            let oper = sel.select();
            let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(oper)));
            assert!(dropped.is_err(), "{name}");
        }
        assert_eq!(
            r.recv_timeout(Duration::from_secs(5)),
            Ok(3),
            "{name}: not lost"
        );
        t.join().unwrap();
        // A send reservation given back leaves no message behind.
        if name != "rendezvous" {
            let mut sel = Select::new();
            sel.send(&s);
            let oper = sel.select();
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(oper)));
            assert_eq!(r.try_recv(), Err(TryRecvError::Empty), "{name}");
            s.send(4).unwrap();
            assert_eq!(r.recv(), Ok(4), "{name}: the channel works on");
        }
    }
}

#[test]
#[should_panic(expected = "passed a receiver that wasn't selected")]
fn completing_with_another_receiver_panics() {
    let (s, r) = unbounded::<u32>();
    let r2 = r.clone();
    s.send(1).unwrap();
    let mut sel = Select::new();
    sel.recv(&r);
    let oper = sel.select();
    let _ = oper.recv(&r2);
}

#[test]
fn handles_are_send_and_sync_for_send_messages() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Sender<u64>>();
    send_sync::<Receiver<u64>>();
    send_sync::<Receiver<std::sync::Mutex<u8>>>();
    send_sync::<Select<'static>>();
    // Messages need not be Sync (crossbeam's bounds: T: Send).
    send_sync::<Sender<Cell<u8>>>();
}

#[test]
fn timeouts_around_blocked_operations_lose_nothing() {
    EventLoop::new().unwrap().block_on(|| {
        for (name, s, r) in kinds() {
            // A receive that times out takes nothing.
            let got = aio::timeout(Duration::from_millis(2), || r.recv());
            assert!(got.is_err(), "{name}");
            // A send that times out (on a full or rendezvous channel) sends
            // nothing.
            if s.capacity() != Some(usize::MAX) && s.capacity().is_some() {
                while s.try_send(0).is_ok() {}
                let sent = aio::timeout(Duration::from_millis(2), || s.send(99));
                assert!(sent.is_err(), "{name}");
                while r.try_recv().is_ok() {}
                assert!(
                    r.try_recv().is_err(),
                    "{name}: the timed-out message arrived"
                );
            }
            // A select that times out has no effect either.
            let picked = aio::timeout(Duration::from_millis(2), || {
                let mut sel = Select::new();
                sel.recv(&r);
                let op = sel.select();
                op.recv(&r)
            });
            assert!(picked.is_err(), "{name}");
            // The channel works on.
            let s2 = s.clone();
            let h = aio::spawn(move || s2.send(7).unwrap());
            assert_eq!(r.recv(), Ok(7), "{name}");
            h.join().unwrap();
        }
    });
}

#[test]
fn a_cancelled_receiver_leaves_the_message_to_the_next() {
    use costack::aio::Cancelled;
    EventLoop::new().unwrap().block_on(|| {
        let (s, r) = bounded::<u32>(0);
        let r1 = r.clone();
        let first = aio::spawn(move || r1.recv());
        let second = aio::spawn(move || r.recv());
        aio::yield_now(); // both blocked
        first.cancel();
        assert!(first.join().unwrap_err().is::<Cancelled>());
        s.send(42).unwrap();
        assert_eq!(second.join().unwrap(), Ok(42));
    });
}
