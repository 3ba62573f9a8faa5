//! The shard's command queue: bounded, FIFO, many producers, one consumer.
//!
//! A mutex and two condition variables rather than a lock-free channel:
//! the consumer takes everything waiting in one lock (a batch), and an idle
//! consumer parks at once instead of spinning, which matters on a 2-core
//! machine where a spinning shard thread takes CPU from the HTTP workers.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Yields of an idle consumer before it parks.
const SPINS_BEFORE_PARKING: usize = 16;

struct Inner<T> {
    items: VecDeque<T>,
    /// Live senders; the queue is disconnected when none are left.
    senders: usize,
    /// The consumer is parked waiting for items.
    consumer_waiting: bool,
    /// Blocking producers parked waiting for room.
    producers_waiting: usize,
}

pub(crate) struct Queue<T> {
    inner: Mutex<Inner<T>>,
    /// Signals the consumer: items arrived, or the last sender left.
    ready: Condvar,
    /// Signals blocking producers: room freed.
    room: Condvar,
    capacity: usize,
}

pub(crate) enum Received {
    Items,
    Timeout,
    Disconnected,
}

impl<T> Queue<T> {
    pub(crate) fn new(capacity: usize) -> Queue<T> {
        assert!(capacity > 0);
        Queue {
            inner: Mutex::new(Inner {
                items: VecDeque::new(),
                senders: 1,
                consumer_waiting: false,
                producers_waiting: 0,
            }),
            ready: Condvar::new(),
            room: Condvar::new(),
            capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner<T>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Enqueues, or hands the item back when the queue is full.
    pub(crate) fn try_send(&self, item: T) -> Result<(), T> {
        let mut inner = self.lock();
        if inner.items.len() >= self.capacity {
            return Err(item);
        }
        inner.items.push_back(item);
        if inner.consumer_waiting {
            inner.consumer_waiting = false;
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Enqueues, waiting for room.
    pub(crate) fn send(&self, item: T) {
        let mut inner = self.lock();
        while inner.items.len() >= self.capacity {
            inner.producers_waiting += 1;
            inner = self.room.wait(inner).unwrap_or_else(|p| p.into_inner());
            inner.producers_waiting -= 1;
        }
        inner.items.push_back(item);
        if inner.consumer_waiting {
            inner.consumer_waiting = false;
            self.ready.notify_one();
        }
    }

    /// Moves up to `max` waiting items into `out`, parking up to `timeout`
    /// when there are none.
    pub(crate) fn recv_batch(&self, out: &mut Vec<T>, max: usize, timeout: Duration) -> Received {
        let mut inner = self.lock();
        // Under load the next item is usually microseconds away: yield a
        // few times before parking, to spare a futex sleep and wake-up.
        for _ in 0..SPINS_BEFORE_PARKING {
            if !inner.items.is_empty() || inner.senders == 0 {
                break;
            }
            drop(inner);
            std::thread::yield_now();
            inner = self.lock();
        }
        if inner.items.is_empty() {
            if inner.senders == 0 {
                return Received::Disconnected;
            }
            inner.consumer_waiting = true;
            inner = self
                .ready
                .wait_timeout(inner, timeout)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            inner.consumer_waiting = false;
            if inner.items.is_empty() {
                return if inner.senders == 0 {
                    Received::Disconnected
                } else {
                    Received::Timeout
                };
            }
        }
        let n = inner.items.len().min(max);
        out.extend(inner.items.drain(..n));
        if inner.producers_waiting > 0 {
            self.room.notify_all();
        }
        Received::Items
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().items.len()
    }

    pub(crate) fn add_sender(&self) {
        self.lock().senders += 1;
    }

    pub(crate) fn remove_sender(&self) {
        let mut inner = self.lock();
        inner.senders -= 1;
        if inner.senders == 0 {
            self.ready.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn bounded_fifo_batches_and_disconnects() {
        let q = Queue::new(3);
        for i in 0..3 {
            assert!(q.try_send(i).is_ok());
        }
        assert_eq!(q.try_send(9), Err(9), "full");
        let mut out = Vec::new();
        assert!(matches!(
            q.recv_batch(&mut out, 2, Duration::ZERO),
            Received::Items
        ));
        assert_eq!(out, vec![0, 1]);
        assert!(matches!(
            q.recv_batch(&mut out, 10, Duration::ZERO),
            Received::Items
        ));
        assert_eq!(out, vec![0, 1, 2]);
        assert!(matches!(
            q.recv_batch(&mut out, 10, Duration::from_millis(1)),
            Received::Timeout
        ));
        q.remove_sender();
        assert!(matches!(
            q.recv_batch(&mut out, 10, Duration::from_secs(5)),
            Received::Disconnected
        ));
    }

    #[test]
    fn blocking_senders_wait_for_room_and_wake_the_consumer() {
        let q = Arc::new(Queue::new(2));
        let producer = {
            let q = q.clone();
            q.add_sender();
            std::thread::spawn(move || {
                for i in 0..100 {
                    q.send(i);
                }
                q.remove_sender();
            })
        };
        q.remove_sender(); // the test's own handle
        let mut got = Vec::new();
        loop {
            match q.recv_batch(&mut got, 7, Duration::from_secs(5)) {
                Received::Items => {}
                Received::Timeout => panic!("stalled"),
                Received::Disconnected => break,
            }
        }
        producer.join().unwrap();
        assert_eq!(got, (0..100).collect::<Vec<_>>(), "all, in order");
    }
}
