//! A loom model of the channels' hand-off: every interleaving (up to a
//! preemption bound) of the real channel code (claims, withdrawals,
//! wakes, the rendezvous packets, select's registration), run on loom's
//! atomics, locks and threads. loom also checks that every `Arc` (waiters,
//! packets, the channel) is freed at the end of each execution.
//!
//! ```text
//! RUSTFLAGS="--cfg costack_loom" LOOM_MAX_PREEMPTIONS=2 \
//!     cargo test -p costack --release --test channel_loom
//! ```
//!
//! (`.ci/backends.sh loom` runs it.)

#![cfg(costack_loom)]

use costack::channel::{bounded, select, unbounded, Select};
use loom::thread;

#[test]
fn rendezvous_send_meets_recv() {
    loom::model(|| {
        let (s, r) = bounded::<u32>(0);
        let t = thread::spawn(move || s.send(7).unwrap());
        assert_eq!(r.recv(), Ok(7));
        t.join().unwrap();
    });
}

#[test]
fn bounded_one_blocks_and_wakes_both_ways() {
    loom::model(|| {
        let (s, r) = bounded::<u32>(1);
        let t = thread::spawn(move || {
            s.send(1).unwrap();
            s.send(2).unwrap();
        });
        assert_eq!(r.recv(), Ok(1));
        assert_eq!(r.recv(), Ok(2));
        assert!(r.recv().is_err());
        t.join().unwrap();
    });
}

#[test]
fn unbounded_recv_sees_the_message_or_disconnection() {
    loom::model(|| {
        let (s, r) = unbounded::<u32>();
        let t = thread::spawn(move || {
            s.send(3).unwrap();
        });
        assert_eq!(r.recv(), Ok(3));
        assert!(r.recv().is_err());
        t.join().unwrap();
    });
}

#[test]
fn select_takes_exactly_one_of_two() {
    loom::model(|| {
        let (s1, r1) = bounded::<u32>(0);
        let (s2, r2) = bounded::<u32>(0);
        let t = thread::spawn(move || {
            // Offered on both; the select pairs with one of them, and the
            // other send is then taken by the plain receive below.
            let mut sel = Select::new();
            let a = sel.send(&s1);
            let b = sel.send(&s2);
            let oper = sel.select();
            let i = oper.index();
            if i == a {
                oper.send(&s1, 1).unwrap();
            } else {
                assert_eq!(i, b);
                oper.send(&s2, 2).unwrap();
            }
        });
        let got = select! {
            recv(r1) -> m => m.unwrap(),
            recv(r2) -> m => m.unwrap(),
        };
        assert!(got == 1 || got == 2);
        t.join().unwrap();
        // Exactly one hand-off happened.
        assert!(r1.try_recv().is_err() && r2.try_recv().is_err());
    });
}

#[test]
fn disconnection_wakes_a_blocked_receiver() {
    loom::model(|| {
        let (s, r) = bounded::<u32>(0);
        let t = thread::spawn(move || drop(s));
        assert!(r.recv().is_err());
        t.join().unwrap();
    });
}
