//! A waker that lets a task poll some of its futures only after one of them woke it: what
//! keeps a busy connection's watchdog timer and shutdown signal from being re-polled at every
//! wake-up of the connection's task (`connection.rs`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Wake, Waker};

use futures_util::task::AtomicWaker;

/// Lets a task poll some futures (a connection's watchdog timer and the shutdown signal) only
/// after one of them woke it.
///
/// `select!` polls every branch at every wake-up of its task, and a busy connection's task
/// wakes two or three times per request: polling the timer and the shutdown signal each time
/// cost about 570 instructions per proxied request (of ~30k), nearly all of it re-registering
/// wakers with futures that had not fired. Behind the gate they are polled with a waker of
/// its own, which notes that one of them fired and then wakes the task.
pub(super) struct Gate {
    flag: Arc<GateFlag>,
    waker: Waker,
}

struct GateFlag {
    /// Whether a future behind the gate woke since they were last polled.
    woken: AtomicBool,
    /// The task to wake then.
    task: AtomicWaker,
}

impl Wake for GateFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl Gate {
    /// A gate open for the first poll, which registers the futures behind it.
    pub(super) fn new() -> Gate {
        let flag = Arc::new(GateFlag {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        Gate {
            waker: Waker::from(flag.clone()),
            flag,
        }
    }

    /// Registers `cx`'s task to be woken through the gate. When a future behind it woke since
    /// they were last polled (or `open` was called), returns the context to poll them with.
    pub(super) fn poll_open(&self, cx: &Context<'_>) -> Option<Context<'_>> {
        self.flag.task.register(cx.waker());
        self.flag
            .woken
            .swap(false, Ordering::AcqRel)
            .then(|| Context::from_waker(&self.waker))
    }

    /// Has the futures behind the gate polled at the next `poll_open`: after one of them
    /// completed, so that it is polled again (an interval re-arms only when polled).
    pub(super) fn open(&self) {
        self.flag.woken.store(true, Ordering::Release);
    }
}
