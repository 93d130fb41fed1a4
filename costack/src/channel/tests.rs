//! Cancellation of blocked channel operations (`JoinHandle::cancel`): a
//! blocked
//! operation that is cancelled has no effect, and one whose hand-off had
//! completed returns normally (the cancellation comes at the next wait
//! point).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use crate::aio::{self, Cancelled, EventLoop};
use crate::channel::{bounded, select, unbounded, TryRecvError};

/// Runs `ev` until the job has finished.
fn run<T>(ev: &EventLoop, job: &aio::JoinHandle<T>) {
    for _ in 0..10_000 {
        if job.is_finished() {
            return;
        }
        ev.poll(false);
    }
    panic!("the job did not finish");
}

fn is_cancelled<T: std::fmt::Debug>(r: std::thread::Result<T>) -> bool {
    match r {
        Err(p) => p.is::<Cancelled>(),
        Ok(v) => panic!("not cancelled: {v:?}"),
    }
}

#[test]
fn a_cancelled_receive_takes_nothing() {
    for cap in [0, 1, 8] {
        let ev = EventLoop::new().unwrap();
        let (s, r) = bounded::<u32>(cap);
        let r2 = r.clone();
        let job = ev.spawn(move || r2.recv());
        ev.poll(false);
        ev.poll(false);
        assert!(!job.is_finished(), "blocked");
        job.cancel();
        run(&ev, &job);
        assert!(is_cancelled(job.join()), "cap {cap}");
        // Nothing was consumed and the channel works on.
        let t = std::thread::spawn(move || s.send(5).unwrap());
        assert_eq!(r.recv(), Ok(5), "cap {cap}");
        t.join().unwrap();
    }
}

#[test]
fn a_cancelled_send_sends_nothing() {
    for cap in [0, 1] {
        let ev = EventLoop::new().unwrap();
        let (s, r) = bounded::<u32>(cap);
        if cap == 1 {
            s.send(1).unwrap();
        }
        let s2 = s.clone();
        let job = ev.spawn(move || s2.send(2));
        ev.poll(false);
        ev.poll(false);
        job.cancel();
        run(&ev, &job);
        assert!(is_cancelled(job.join()), "cap {cap}");
        if cap == 1 {
            assert_eq!(r.try_recv(), Ok(1));
        }
        assert_eq!(
            r.try_recv(),
            Err(TryRecvError::Empty),
            "cap {cap}: not sent"
        );
    }
}

#[test]
fn a_hand_off_that_landed_first_is_returned_then_the_cancellation_comes() {
    for cap in [0, 1] {
        let ev = EventLoop::new().unwrap();
        let (s, r) = bounded::<u32>(cap);
        let got = Rc::new(RefCell::new(Vec::new()));
        let g = got.clone();
        let job = ev.spawn(move || {
            let first = r.recv();
            g.borrow_mut().push(first);
            let second = r.recv(); // the next wait point: cancelled here
            g.borrow_mut().push(second);
        });
        ev.poll(false);
        ev.poll(false);
        // The message reaches the blocked receiver, then the cancellation,
        // before it runs again.
        s.try_send(9).unwrap();
        job.cancel();
        run(&ev, &job);
        assert!(is_cancelled(job.join()));
        assert_eq!(*got.borrow(), [Ok(9)], "cap {cap}: received, not lost");
    }
}

#[test]
fn a_cancelled_select_has_no_effect() {
    let ev = EventLoop::new().unwrap();
    let (s1, r1) = bounded::<u32>(0);
    let (s2, r2) = unbounded::<u32>();
    let (a, b) = (r1.clone(), r2.clone());
    let job = ev.spawn(move || {
        select! {
            recv(a) -> m => m,
            recv(b) -> m => m,
            default(Duration::from_secs(60)) => Ok(0),
        }
    });
    ev.poll(false);
    ev.poll(false);
    job.cancel();
    run(&ev, &job);
    assert!(is_cancelled(job.join()));
    s2.send(2).unwrap();
    assert_eq!(r2.try_recv(), Ok(2));
    let t = std::thread::spawn(move || s1.send(1).unwrap());
    assert_eq!(r1.recv(), Ok(1));
    t.join().unwrap();
}
