//! Channels touched from several threads at once, small enough to run
//! under Miri (data races, use-after-free and leaks in the waiter lists,
//! the ring and the rendezvous hand-off; `.ci/backends.sh miri`) and
//! ThreadSanitizer (`.ci/backends.sh tsan`). crossbeam's own suite
//! (`scripts/crossbeam-suite.sh`) covers the API at full size.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use costack::channel::{
    bounded, select, unbounded, Receiver, RecvTimeoutError, Select, Sender, TryRecvError,
};

/// Fewer messages under Miri, where every step is interpreted.
const N: usize = if cfg!(miri) { 30 } else { 2000 };

fn kinds() -> Vec<(&'static str, Sender<usize>, Receiver<usize>)> {
    [
        ("rendezvous", bounded(0)),
        ("bounded(1)", bounded(1)),
        ("bounded(3)", bounded(3)),
        ("unbounded", unbounded()),
    ]
    .into_iter()
    .map(|(n, (s, r))| (n, s, r))
    .collect()
}

#[test]
fn two_senders_two_receivers() {
    for (name, s, r) in kinds() {
        let got = Arc::new(AtomicUsize::new(0));
        let mut threads = Vec::new();
        for k in 0..2 {
            let s = s.clone();
            threads.push(thread::spawn(move || {
                for i in 0..N {
                    s.send(k * N + i).unwrap();
                }
            }));
        }
        drop(s);
        for _ in 0..2 {
            let (r, got) = (r.clone(), got.clone());
            threads.push(thread::spawn(move || {
                for m in r.iter() {
                    got.fetch_add(m, Ordering::Relaxed);
                }
            }));
        }
        drop(r);
        threads.into_iter().for_each(|t| t.join().unwrap());
        let n = 2 * N;
        assert_eq!(got.load(Ordering::Relaxed), n * (n - 1) / 2, "{name}");
    }
}

#[test]
fn select_across_threads_takes_each_message_once() {
    let (s1, r1) = bounded::<usize>(0);
    let (s2, r2) = unbounded::<usize>();
    let t1 = thread::spawn(move || (0..N).for_each(|i| s1.send(i).unwrap()));
    let t2 = thread::spawn(move || (0..N).for_each(|i| s2.send(N + i).unwrap()));
    let mut sum = 0;
    let mut open = 2;
    let (mut r1, mut r2) = (Some(r1), Some(r2));
    let never = costack::channel::never();
    while open > 0 {
        select! {
            recv(r1.as_ref().unwrap_or(&never)) -> m => match m {
                Ok(m) => sum += m,
                Err(_) => { r1 = None; open -= 1; }
            },
            recv(r2.as_ref().unwrap_or(&never)) -> m => match m {
                Ok(m) => sum += m,
                Err(_) => { r2 = None; open -= 1; }
            },
        }
    }
    t1.join().unwrap();
    t2.join().unwrap();
    let n = 2 * N;
    assert_eq!(sum, n * (n - 1) / 2);
}

#[test]
fn select_send_and_receive_arms_on_rendezvous_channels() {
    // Selects on both sides: every hand-off is select against select.
    // Each side also waits on a channel nobody serves.
    let (s, r) = bounded::<usize>(0);
    let (_idle_in_s, idle_in_r) = bounded::<usize>(0); // nobody sends
    let (idle_out_s, _idle_out_r) = bounded::<usize>(0); // nobody receives
    let t = thread::spawn(move || {
        let mut got = 0;
        for _ in 0..N {
            select! {
                recv(r) -> m => got += m.unwrap(),
                recv(idle_in_r) -> _ => unreachable!(),
            }
        }
        got
    });
    for i in 0..N {
        let mut sel = Select::new();
        let send = sel.send(&s);
        sel.send(&idle_out_s);
        let oper = sel.select();
        assert_eq!(oper.index(), send, "nobody receives on the idle channel");
        oper.send(&s, i).unwrap();
    }
    assert_eq!(t.join().unwrap(), N * (N - 1) / 2);
}

#[test]
fn disconnection_wakes_blocked_receivers_and_senders() {
    for (name, s, r) in kinds() {
        let r2 = r.clone();
        let waiting = thread::spawn(move || r2.recv());
        thread::sleep(Duration::from_millis(5));
        drop(s);
        assert!(waiting.join().unwrap().is_err(), "{name}");
        assert_eq!(r.try_recv(), Err(TryRecvError::Disconnected), "{name}");
    }
    let (s, r) = bounded::<u8>(0);
    let blocked = thread::spawn(move || s.send(1));
    thread::sleep(Duration::from_millis(5));
    drop(r);
    assert!(blocked.join().unwrap().is_err());
}

#[test]
fn timeouts_race_with_sends() {
    for (name, s, r) in kinds() {
        let t = thread::spawn(move || {
            for i in 0..5 {
                thread::sleep(Duration::from_millis(1));
                if s.send_timeout(i, Duration::from_millis(2)).is_err() {
                    // Timed out: nobody was receiving then; fine.
                }
            }
        });
        let mut got = Vec::new();
        loop {
            match r.recv_timeout(Duration::from_millis(3)) {
                Ok(m) => got.push(m),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        t.join().unwrap();
        let mut sorted = got.clone();
        sorted.dedup();
        assert_eq!(sorted, got, "{name}: each message once, in order");
    }
}

#[test]
fn dropped_selected_operations_give_back_across_threads() {
    for (name, s, r) in kinds() {
        let t = thread::spawn(move || {
            for i in 0..5 {
                s.send(i).unwrap();
            }
        });
        let mut got = Vec::new();
        while got.len() < 5 {
            let mut sel = Select::new();
            sel.recv(&r);
            let oper = sel.select();
            if got.len() % 2 == 0 {
                // Give it back once: the message must come again.
                let gave_back =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(oper)));
                assert!(gave_back.is_err(), "{name}");
                got.push(r.recv().unwrap());
            } else {
                got.push(oper.recv(&r).unwrap());
            }
        }
        t.join().unwrap();
        got.sort();
        assert_eq!(got, [0, 1, 2, 3, 4], "{name}");
    }
}
