//! The internal listener: other nodes connect here, prove they know the
//! cluster secret, and send batches of asks; answers go back in batches.

use crate::wire::{self, Answer, Ask, Frame, Hello};
use crate::Node;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Accepts nodes until the runtime stops.
pub(crate) async fn serve(listener: TcpListener, node: Arc<Node>) {
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "internal listener: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let node = node.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, node).await {
                tracing::debug!(%from, error = %e, "internal connection ended");
            }
        });
    }
}

async fn connection(mut stream: TcpStream, node: Arc<Node>) -> Result<(), wire::WireError> {
    stream.set_nodelay(true)?;
    let mut buf = Vec::new();
    let nonce = wire::nonce();
    let challenge = Hello::Challenge {
        node: node.name().to_string(),
        nonce: nonce.clone(),
    };
    wire::write(&mut stream, &challenge).await?;
    let proved = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        wire::read::<_, Hello>(&mut stream, &mut buf),
    )
    .await
    .map_err(|_| wire::WireError::Unauthenticated)??;
    let Hello::Prove {
        node: client,
        nonce: theirs,
        mac,
    } = proved
    else {
        return Err(wire::WireError::Unauthenticated);
    };
    if !wire::check(node.secret(), "client", &nonce, &client, &mac) {
        tracing::warn!(claimed = %client, "a connection to the internal port did not know the cluster secret");
        return Err(wire::WireError::Unauthenticated);
    }
    let welcome = Hello::Welcome {
        mac: wire::prove(node.secret(), "server", &theirs, node.name()),
    };
    wire::write(&mut stream, &welcome).await?;
    let (mut reader, mut writer) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<(u64, Answer)>();
    let writing = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut answers = vec![first];
            while answers.len() < 4_096 {
                match rx.try_recv() {
                    Ok(a) => answers.push(a),
                    Err(_) => break,
                }
            }
            if wire::write(&mut writer, &Frame::Answers(answers))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let result = loop {
        let frame = match wire::read::<_, Frame>(&mut reader, &mut buf).await {
            Ok(frame) => frame,
            Err(e) => break Err(e),
        };
        match frame {
            Frame::Asks(asks) => {
                for (id, ask) in asks {
                    answer(&node, id, ask, &tx);
                }
            }
            Frame::Board(updates) => node.take_board(updates),
            Frame::Answers(_) => {}
        }
    };
    drop(tx);
    let _ = writing.await;
    result
}

fn answer(node: &Arc<Node>, id: u64, ask: Ask, tx: &mpsc::UnboundedSender<(u64, Answer)>) {
    if matches!(ask, Ask::Inventory { .. }) {
        node.stats
            .served
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    match ask {
        Ask::Inventory { shard, command } => match node.engine().local(shard) {
            None => drop(tx.send((id, Answer::NotHere))),
            Some(handle) => match handle.try_submit(command) {
                Err(_) => drop(tx.send((id, Answer::Busy))),
                Ok(rx) => {
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let reply = rx.await.unwrap_or(mall_inventory::Reply::Unavailable);
                        let _ = tx.send((id, Answer::Inventory(reply)));
                    });
                }
            },
        },
        Ask::Http(request) => {
            let (node, tx) = (node.clone(), tx.clone());
            tokio::spawn(async move {
                let answer = node.http(request).await;
                let _ = tx.send((id, Answer::Http(answer)));
            });
        }
        Ask::Dashboard => {
            let _ = tx.send((id, Answer::Json(node.dashboard())));
        }
        Ask::Open { shard } => {
            node.nudge(shard);
            let _ = tx.send((id, Answer::Done));
        }
    }
}
