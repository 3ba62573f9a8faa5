//! The internal protocol: length-prefixed JSON frames over TCP.
//!
//! After the handshake each side sends [`Frame`]s. A frame carries many
//! messages, so a hop between nodes costs one write and one read for a
//! whole batch of requests, not one per request.
//!
//! The handshake authenticates both ends with the cluster secret: each
//! side proves it knows the secret by an HMAC-SHA256 over the other
//! side's fresh nonce, so a recorded handshake cannot be replayed and a
//! stranger can neither submit commands (they claim to be authorised
//! already) nor pose as a node to answer them.

use hmac::{Hmac, Mac};
use mall_core::{Item, Sku};
use mall_inventory::{Command, Reply};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A frame larger than this closes the connection.
pub const FRAME_MAX: usize = 16 << 20;

/// A request from one node to another.
#[derive(Debug, Serialize, Deserialize)]
pub enum Ask {
    /// A command for a shard the receiver runs.
    Inventory { shard: usize, command: Command },
    /// A public request for whatever the receiver alone serves (payments:
    /// they run where the ledger runs).
    Http(HttpAsk),
    /// A planned handover just passed this shard's lease to the receiver:
    /// open it now rather than at the next heartbeat.
    Open { shard: i32 },
    /// The receiver's own dashboard figures (JSON).
    Dashboard,
}

/// The answer to an [`Ask`].
#[derive(Debug, Serialize, Deserialize)]
pub enum Answer {
    Inventory(Reply),
    /// The shard does not run on the receiver (not yet, or no longer):
    /// nothing was applied, ask its owner.
    NotHere,
    /// The shard's queue is full.
    Busy,
    Http(HttpAnswer),
    Done,
    Json(String),
}

/// A public HTTP request carried to another node.
#[derive(Debug, Serialize, Deserialize)]
pub struct HttpAsk {
    pub method: String,
    /// Path and query.
    pub uri: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// The client's address as the first node saw it.
    pub client: std::net::SocketAddr,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct HttpAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// An item's counters (and the item itself when new or changed) as its
/// owner publishes them to the other nodes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BoardUpdate {
    pub shard: usize,
    pub sku: Sku,
    pub item: Option<Item>,
    pub available: u32,
    pub held: u32,
    pub sold: u32,
    /// New buyers of the SKU (shoppers with an order of it), the first
    /// being the owner's buyer number `buyers_from`.
    pub buyers_from: usize,
    pub buyers: Vec<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Frame {
    Asks(Vec<(u64, Ask)>),
    Answers(Vec<(u64, Answer)>),
    Board(Vec<BoardUpdate>),
}

/// The handshake's messages, in order.
#[derive(Debug, Serialize, Deserialize)]
pub enum Hello {
    /// Server → client.
    Challenge { node: String, nonce: String },
    /// Client → server.
    Prove {
        node: String,
        nonce: String,
        mac: String,
    },
    /// Server → client.
    Welcome { mac: String },
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("bad frame: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("frame of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("the other side does not know the cluster secret")]
    Unauthenticated,
}

pub async fn write<W: AsyncWriteExt + Unpin, T: Serialize>(
    w: &mut W,
    value: &T,
) -> Result<(), WireError> {
    let body = serde_json::to_vec(value)?;
    if body.len() > FRAME_MAX {
        return Err(WireError::TooLarge(body.len()));
    }
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    w.write_all(&out).await?;
    Ok(())
}

pub async fn read<R: AsyncReadExt + Unpin, T: for<'de> Deserialize<'de>>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> Result<T, WireError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > FRAME_MAX {
        return Err(WireError::TooLarge(len));
    }
    buf.resize(len, 0);
    r.read_exact(buf).await?;
    Ok(serde_json::from_slice(buf)?)
}

pub fn nonce() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("the OS gives random bytes");
    hex(&b)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn mac_of(secret: &[u8], role: &str, nonce: &str, node: &str) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(b"mall-cluster-v1\0");
    mac.update(role.as_bytes());
    mac.update(b"\0");
    mac.update(nonce.as_bytes());
    mac.update(b"\0");
    mac.update(node.as_bytes());
    mac
}

/// The proof that `node`, playing `role`, knows the secret, over the
/// other side's `nonce`.
pub fn prove(secret: &[u8], role: &str, nonce: &str, node: &str) -> String {
    hex(&mac_of(secret, role, nonce, node).finalize().into_bytes())
}

/// Checks a proof in constant time.
pub fn check(secret: &[u8], role: &str, nonce: &str, node: &str, proof: &str) -> bool {
    let Some(bytes) = unhex(proof) else {
        return false;
    };
    mac_of(secret, role, nonce, node)
        .verify_slice(&bytes)
        .is_ok()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_hold_only_for_the_same_secret_role_nonce_and_node() {
        let p = prove(b"s3cret", "client", "abcd", "n1");
        assert!(check(b"s3cret", "client", "abcd", "n1", &p));
        assert!(!check(b"other", "client", "abcd", "n1", &p));
        assert!(!check(b"s3cret", "server", "abcd", "n1", &p));
        assert!(!check(b"s3cret", "client", "abce", "n1", &p));
        assert!(!check(b"s3cret", "client", "abcd", "n2", &p));
        assert!(!check(b"s3cret", "client", "abcd", "n1", "zz"));
        assert!(!check(b"s3cret", "client", "abcd", "n1", ""));
    }

    #[tokio::test]
    async fn frames_round_trip_and_oversized_ones_are_refused() {
        let (mut a, mut b) = tokio::io::duplex(1 << 20);
        let frame = Frame::Asks(vec![(7, Ask::Open { shard: 3 })]);
        write(&mut a, &frame).await.unwrap();
        let mut buf = Vec::new();
        let got: Frame = read(&mut b, &mut buf).await.unwrap();
        assert!(matches!(got, Frame::Asks(v) if v.len() == 1 && v[0].0 == 7));
        a.write_all(&((FRAME_MAX as u32) + 1).to_be_bytes())
            .await
            .unwrap();
        let err = read::<_, Frame>(&mut b, &mut buf).await.unwrap_err();
        assert!(matches!(err, WireError::TooLarge(_)));
    }
}
