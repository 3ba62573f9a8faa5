//! The connection from this node to one other node: asks go out in
//! batches (everything queued while the previous frame was written goes in
//! the next one), answers come back in batches and are matched by id.

use crate::wire::{self, Answer, Ask, BoardUpdate, Frame, Hello, WireError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

/// Messages one frame carries at most.
const BATCH_MAX: usize = 4_096;

enum Out {
    Ask(Box<Ask>, oneshot::Sender<Answer>),
    Board(Vec<BoardUpdate>),
}

/// What became of an ask.
#[derive(Debug)]
pub enum Asked {
    Answered(Answer),
    /// It never left this node (the peer is unreachable): nothing was
    /// applied, it may go elsewhere.
    Unsent,
    /// It was sent and the connection died before the answer: it may or
    /// may not have been applied.
    Lost,
}

pub struct Peer {
    pub name: String,
    pub addr: String,
    tx: mpsc::UnboundedSender<Out>,
    /// Connections made so far (frames queued while disconnected are lost).
    pub connects: AtomicU64,
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Answer>>>>;

impl Peer {
    /// A peer connected lazily (and again after a failure) by a task on
    /// `runtime`; it ends when the `Peer` is dropped.
    pub fn start(
        runtime: &tokio::runtime::Handle,
        me: String,
        name: String,
        addr: String,
        secret: Arc<[u8]>,
    ) -> Arc<Peer> {
        let (tx, rx) = mpsc::unbounded_channel();
        let peer = Arc::new(Peer {
            name,
            addr,
            tx,
            connects: AtomicU64::new(0),
        });
        runtime.spawn(run(Arc::downgrade(&peer), me, secret, rx));
        peer
    }

    /// Sends `ask` (batched with whatever else is queued) and waits for its answer.
    pub async fn ask(&self, ask: Ask) -> Asked {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Out::Ask(Box::new(ask), tx)).is_err() {
            return Asked::Unsent;
        }
        match rx.await {
            Ok(answer) => Asked::Answered(answer),
            Err(_) => Asked::Lost,
        }
    }

    /// Queues board updates for the peer (dropped if it is unreachable:
    /// the next full publication brings it up to date).
    pub fn publish(&self, updates: Vec<BoardUpdate>) {
        let _ = self.tx.send(Out::Board(updates));
    }
}

async fn connect(me: &str, addr: &str, secret: &[u8]) -> Result<TcpStream, WireError> {
    let mut stream = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    let mut buf = Vec::new();
    let Hello::Challenge { node, nonce } = wire::read(&mut stream, &mut buf).await? else {
        return Err(WireError::Unauthenticated);
    };
    let mine = wire::nonce();
    let prove = Hello::Prove {
        node: me.to_string(),
        nonce: mine.clone(),
        mac: wire::prove(secret, "client", &nonce, me),
    };
    wire::write(&mut stream, &prove).await?;
    match wire::read(&mut stream, &mut buf).await? {
        Hello::Welcome { mac } if wire::check(secret, "server", &mine, &node, &mac) => Ok(stream),
        _ => Err(WireError::Unauthenticated),
    }
}

/// Answers every queued ask "not here": it never left, so nothing was
/// applied and it may be asked again (the peer cannot be reached now).
fn refuse_queued(rx: &mut mpsc::UnboundedReceiver<Out>) {
    while let Ok(out) = rx.try_recv() {
        if let Out::Ask(_, tx) = out {
            let _ = tx.send(Answer::NotHere);
        }
    }
}

async fn run(
    peer: std::sync::Weak<Peer>,
    me: String,
    secret: Arc<[u8]>,
    mut rx: mpsc::UnboundedReceiver<Out>,
) {
    let mut backoff = Duration::from_millis(20);
    // Wait for the first thing to send before connecting.
    let mut first = match rx.recv().await {
        Some(out) => Some(out),
        None => return,
    };
    loop {
        let Some(addr) = peer.upgrade().map(|p| p.addr.clone()) else {
            return;
        };
        let stream = match connect(&me, &addr, &secret).await {
            Ok(stream) => stream,
            Err(e) => {
                tracing::debug!(peer = %addr, error = %e, "cannot reach a node");
                if let Some(Out::Ask(_, tx)) = first.take() {
                    let _ = tx.send(Answer::NotHere);
                }
                refuse_queued(&mut rx);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
                // Asks that came while we slept are refused at the next failure.
                first = match rx.recv().await {
                    Some(out) => Some(out),
                    None => return,
                };
                continue;
            }
        };
        backoff = Duration::from_millis(20);
        if let Some(p) = peer.upgrade() {
            p.connects.fetch_add(1, Ordering::Relaxed);
        }
        let (mut reader, mut writer) = stream.into_split();
        let pending: Pending = Arc::default();
        let (ended, mut reader_ended) = oneshot::channel::<()>();
        let reading = {
            let pending = pending.clone();
            tokio::spawn(async move {
                let _ended = ended;
                let mut buf = Vec::new();
                loop {
                    match wire::read::<_, Frame>(&mut reader, &mut buf).await {
                        Ok(Frame::Answers(answers)) => {
                            let mut pending = pending.lock().unwrap_or_else(|p| p.into_inner());
                            for (id, answer) in answers {
                                if let Some(tx) = pending.remove(&id) {
                                    let _ = tx.send(answer);
                                }
                            }
                        }
                        Ok(_) => {}
                        Err(_) => return,
                    }
                }
            })
        };
        let mut next_id = 0u64;
        let ok = 'conn: loop {
            let out = match first.take() {
                Some(out) => out,
                None => tokio::select! {
                    out = rx.recv() => match out { Some(out) => out, None => break 'conn true },
                    _ = &mut reader_ended => break 'conn false,
                },
            };
            let mut asks = Vec::new();
            let mut board = Vec::new();
            let mut take = |out: Out, asks: &mut Vec<(u64, Ask)>| match out {
                Out::Ask(ask, tx) => {
                    next_id += 1;
                    pending
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(next_id, tx);
                    asks.push((next_id, *ask));
                }
                Out::Board(updates) => board.extend(updates),
            };
            take(out, &mut asks);
            while asks.len() < BATCH_MAX {
                match rx.try_recv() {
                    Ok(out) => take(out, &mut asks),
                    Err(_) => break,
                }
            }
            if !asks.is_empty() && wire::write(&mut writer, &Frame::Asks(asks)).await.is_err() {
                break false;
            }
            if !board.is_empty()
                && wire::write(&mut writer, &Frame::Board(board))
                    .await
                    .is_err()
            {
                break false;
            }
        };
        reading.abort();
        // Asks sent and not answered are lost (dropping their senders says so).
        pending.lock().unwrap_or_else(|p| p.into_inner()).clear();
        if ok {
            return;
        }
        tracing::warn!(peer = %addr, "connection to a node lost; reconnecting");
        first = match rx.recv().await {
            Some(out) => Some(out),
            None => return,
        };
    }
}
