//! `select!` and `select_biased!`, with crossbeam-channel's syntax. They
//! expand to a [`Select`](super::Select): every channel expression is
//! evaluated once, in order, and kept alive (temporaries included) until
//! the chosen arm's body has run; a send's message is evaluated only if
//! its arm is chosen.

/// The engine of [`select!`] and [`select_biased!`]: parses the arms
/// (`@list`), binds each channel expression and registers it (`@bind`),
/// then waits and runs the chosen arm (`@dispatch`).
#[doc(hidden)]
#[macro_export]
macro_rules! __costack_select {
    // --- parsing: arms become [case (args) (result) { body }] -----------
    (@list $b:tt () ($($arms:tt)*) ($($default:tt)*)) => {
        $crate::__costack_select!(@start $b ($($arms)*) ($($default)*))
    };
    (@list $b:tt (default => $($tail:tt)*) $arms:tt $default:tt) => {
        $crate::__costack_select!(@list $b (default() => $($tail)*) $arms $default)
    };
    (@list $b:tt (default $args:tt => $($tail:tt)*) $arms:tt ($($default:tt)+)) => {
        compile_error!("there can be only one `default` case in a `select!` block")
    };
    (@list $b:tt (default ($($args:tt)*) => { $($body:tt)* }, $($tail:tt)*) $arms:tt ()) => {
        $crate::__costack_select!(@list $b ($($tail)*) $arms (($($args)*) { $($body)* }))
    };
    (@list $b:tt (default ($($args:tt)*) => $body:expr, $($tail:tt)*) $arms:tt ()) => {
        $crate::__costack_select!(@list $b ($($tail)*) $arms (($($args)*) { $body }))
    };
    (@list $b:tt (default ($($args:tt)*) => { $($body:tt)* } $($tail:tt)*) $arms:tt ()) => {
        $crate::__costack_select!(@list $b ($($tail)*) $arms (($($args)*) { $($body)* }))
    };
    (@list $b:tt (default ($($args:tt)*) => $body:expr) $arms:tt ()) => {
        $crate::__costack_select!(@list $b () $arms (($($args)*) { $body }))
    };
    (@list $b:tt ($case:ident ($($args:tt)*) -> $res:pat => { $($body:tt)* }, $($tail:tt)*) ($($arms:tt)*) $default:tt) => {
        $crate::__costack_select!(@list $b ($($tail)*) ($($arms)* [$case ($($args)*) ($res) { $($body)* }]) $default)
    };
    (@list $b:tt ($case:ident ($($args:tt)*) -> $res:pat => $body:expr, $($tail:tt)*) ($($arms:tt)*) $default:tt) => {
        $crate::__costack_select!(@list $b ($($tail)*) ($($arms)* [$case ($($args)*) ($res) { $body }]) $default)
    };
    (@list $b:tt ($case:ident ($($args:tt)*) -> $res:pat => { $($body:tt)* } $($tail:tt)*) ($($arms:tt)*) $default:tt) => {
        $crate::__costack_select!(@list $b ($($tail)*) ($($arms)* [$case ($($args)*) ($res) { $($body)* }]) $default)
    };
    (@list $b:tt ($case:ident ($($args:tt)*) -> $res:pat => $body:expr $(,)?) ($($arms:tt)*) $default:tt) => {
        $crate::__costack_select!(@list $b () ($($arms)* [$case ($($args)*) ($res) { $body }]) $default)
    };
    (@list $b:tt ($case:ident ($($args:tt)*) => $($tail:tt)*) $arms:tt $default:tt) => {
        compile_error!(concat!("expected `->` after `", stringify!($case), "(..)` case, found `=>`"))
    };
    (@list $b:tt ($($tail:tt)*) $arms:tt $default:tt) => {
        compile_error!(concat!(
            "expected `recv(..) -> res => body`, `send(..) -> res => body` or `default => body` in `select!`, found: ",
            stringify!($($tail)*)
        ))
    };

    // --- binding: each channel expression once, kept alive --------------
    (@start $b:tt ($($arms:tt)*) $default:tt) => {{
        let mut __sel = $crate::channel::Select::__with_bias($b);
        $crate::__costack_select!(@bind __sel ($($arms)*) () $default)
    }};
    (@bind $sel:ident ([recv ($r:expr $(,)?) ($res:pat) $body:block] $($rest:tt)*) ($($done:tt)*) $default:tt) => {
        match $r {
            ref __h => {
                let __h: &$crate::channel::Receiver<_> = __h;
                let __i = $sel.recv(__h);
                $crate::__costack_select!(@bind $sel ($($rest)*) ($($done)* [recv __h __i () ($res) $body]) $default)
            }
        }
    };
    (@bind $sel:ident ([send ($s:expr, $m:expr $(,)?) ($res:pat) $body:block] $($rest:tt)*) ($($done:tt)*) $default:tt) => {
        match $s {
            ref __h => {
                let __h: &$crate::channel::Sender<_> = __h;
                let __i = $sel.send(__h);
                $crate::__costack_select!(@bind $sel ($($rest)*) ($($done)* [send __h __i ($m) ($res) $body]) $default)
            }
        }
    };
    (@bind $sel:ident ([$case:ident ($($args:tt)*) $($x:tt)*] $($rest:tt)*) $done:tt $default:tt) => {
        compile_error!(concat!(
            "expected `recv(receiver)`, `send(sender, message)` or `default(timeout)`, found `",
            stringify!($case), "(", stringify!($($args)*), ")`"
        ))
    };
    (@bind $sel:ident () $done:tt ()) => {{
        let __oper = $sel.select();
        $crate::__costack_select!(@dispatch __oper $done)
    }};
    (@bind $sel:ident () $done:tt (() $body:block)) => {
        match $sel.try_select() {
            ::std::result::Result::Ok(__oper) => $crate::__costack_select!(@dispatch __oper $done),
            ::std::result::Result::Err(_) => $body,
        }
    };
    (@bind $sel:ident () $done:tt (($timeout:expr $(,)?) $body:block)) => {
        match $sel.select_timeout($timeout) {
            ::std::result::Result::Ok(__oper) => $crate::__costack_select!(@dispatch __oper $done),
            ::std::result::Result::Err(_) => $body,
        }
    };

    // --- running the chosen arm -----------------------------------------
    (@dispatch $oper:ident ([recv $h:ident $i:ident () ($res:pat) $body:block] $($rest:tt)*)) => {
        if $oper.index() == $i {
            #[allow(unused_variables)]
            let $res = $oper.recv($h);
            $body
        } else {
            $crate::__costack_select!(@dispatch $oper ($($rest)*))
        }
    };
    (@dispatch $oper:ident ([send $h:ident $i:ident ($m:expr) ($res:pat) $body:block] $($rest:tt)*)) => {
        if $oper.index() == $i {
            #[allow(unused_variables)]
            let $res = $oper.send($h, $m);
            $body
        } else {
            $crate::__costack_select!(@dispatch $oper ($($rest)*))
        }
    };
    (@dispatch $oper:ident ()) => {
        ::std::unreachable!("select! picked an operation it did not add")
    };
}

/// Waits on several channel operations and runs the arm of the one that
/// proceeds (crossbeam-channel's `select!`, same syntax). When several are
/// ready, one is picked at random. In a coroutine the wait yields.
///
/// ```text
/// select! {
///     recv(receiver) -> result => body,
///     send(sender, message) -> result => body,
///     default => body,              // or default(timeout) => body; at most one
/// }
/// ```
///
/// `recv` arms bind `Result<T, RecvError>`, `send` arms `Result<(),
/// SendError<T>>`. Without `default` it waits for ever; `default` runs if
/// nothing is ready now, `default(timeout)` if nothing became ready in
/// time. A body that is a block needs no comma after it.
///
/// ```
/// use costack::aio::{self, EventLoop};
/// use costack::channel::{after, select, unbounded};
/// use std::time::Duration;
///
/// EventLoop::new().unwrap().block_on(|| {
///     let (s, r) = unbounded();
///     aio::spawn(move || {
///         aio::sleep(Duration::from_millis(5));
///         s.send(42).unwrap();
///     });
///     let timeout = after(Duration::from_secs(5));
///     select! {
///         recv(r) -> msg => assert_eq!(msg, Ok(42)),
///         recv(timeout) -> _ => panic!("timed out"),
///     }
/// });
/// ```
#[macro_export]
macro_rules! select {
    ($($tokens:tt)*) => {
        $crate::__costack_select!(@list false ($($tokens)*) () ())
    };
}

/// As [`select!`](crate::select!), but when several operations are ready the first one
/// (in the order written) is picked.
///
/// ```
/// use costack::channel::{select_biased, unbounded};
///
/// let (s1, r1) = unbounded();
/// let (s2, r2) = unbounded();
/// s1.send(1).unwrap();
/// s2.send(2).unwrap();
/// let got = select_biased! {
///     recv(r1) -> m => m.unwrap(),
///     recv(r2) -> m => m.unwrap(),
/// };
/// assert_eq!(got, 1);
/// ```
#[macro_export]
macro_rules! select_biased {
    ($($tokens:tt)*) => {
        $crate::__costack_select!(@list true ($($tokens)*) () ())
    };
}

/// crossbeam-channel's internal macro under its name, for code that calls
/// it directly (as std's mpsc tests ported to crossbeam do): `select!`
/// syntax, biased if a `const _IS_BIASED: bool` in scope says so.
#[doc(hidden)]
#[macro_export]
macro_rules! crossbeam_channel_internal {
    ($($tokens:tt)*) => {
        $crate::__costack_select!(@list (_IS_BIASED) ($($tokens)*) () ())
    };
}
