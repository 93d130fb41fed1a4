//! With the `tracing` feature, create/enter/yield/terminate emit events
//! (QEMU's coroutine trace points). Run with `--features tracing`.
#![cfg(feature = "tracing")]

use std::sync::{Arc, Mutex};

use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

#[derive(Default)]
struct Collect(Arc<Mutex<Vec<String>>>);

impl Subscriber for Collect {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.target() == "costack::coroutine"
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, e: &Event<'_>) {
        struct Msg(String);
        impl tracing::field::Visit for Msg {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                if f.name() == "message" {
                    self.0 = format!("{v:?}");
                }
            }
        }
        let mut m = Msg(String::new());
        e.record(&mut m);
        self.0.lock().unwrap().push(m.0);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

#[test]
fn life_cycle_points_are_traced() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sub = Collect(seen.clone());
    tracing::subscriber::with_default(sub, || {
        let co = costack::Coroutine::builder()
            .name("traced")
            .create(costack::yield_now)
            .unwrap();
        co.enter();
        co.enter();
    });
    let seen = seen.lock().unwrap();
    assert_eq!(*seen, ["create", "enter", "yield", "enter", "terminate"]);
}
