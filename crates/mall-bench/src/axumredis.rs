//! What a team would build instead of mall's request path: a plain axum
//! handler for `POST /v1/orders` in front of Redis, the bearer token taken
//! as the user id (no other authentication), one multiplexed Redis
//! connection (commands pipelined: everything queued goes in one write),
//! and one Lua script that checks the item's per-user set, checks the
//! stock, then runs DECRBY and SADD and writes an order hash with INCR for
//! the id. Redis runs with `appendfsync always` ([`crate::peers::RedisServer`]).

use crate::peers::{PeerError, Resp, RespValue};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::sync::{mpsc, oneshot};

pub const LUA: &str = r#"
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then return -2 end
local left = tonumber(redis.call('GET', KEYS[1]) or '0')
if left < tonumber(ARGV[2]) then return -1 end
redis.call('DECRBY', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
local id = redis.call('INCR', KEYS[3])
redis.call('HSET', 'order:' .. id, 'user', ARGV[1], 'item', KEYS[1], 'quantity', ARGV[2])
return id
"#;

type Call = (Vec<Vec<u8>>, oneshot::Sender<Result<RespValue, PeerError>>);

/// One Redis connection shared by every request: calls queued meanwhile
/// are written together and their replies read in order.
#[derive(Clone)]
pub struct Multiplexed(mpsc::UnboundedSender<Call>);

impl Multiplexed {
    pub async fn connect(addr: &str) -> Result<Multiplexed, PeerError> {
        let mut conn = Resp::connect(addr).await?;
        let (tx, mut rx) = mpsc::unbounded_channel::<Call>();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut calls = vec![first];
                while calls.len() < 512 {
                    match rx.try_recv() {
                        Ok(c) => calls.push(c),
                        Err(_) => break,
                    }
                }
                let commands: Vec<&[Vec<u8>]> = calls.iter().map(|(c, _)| c.as_slice()).collect();
                match conn.pipeline(&commands).await {
                    Ok(replies) => {
                        for ((_, tx), reply) in calls.into_iter().zip(replies) {
                            let _ = tx.send(reply);
                        }
                    }
                    Err(e) => {
                        let text = e.to_string();
                        for (_, tx) in calls {
                            let _ = tx.send(Err(PeerError::Redis(text.clone())));
                        }
                        return;
                    }
                }
            }
        });
        Ok(Multiplexed(tx))
    }

    pub async fn call(&self, args: Vec<Vec<u8>>) -> Result<RespValue, PeerError> {
        let (tx, rx) = oneshot::channel();
        self.0
            .send((args, tx))
            .map_err(|_| PeerError::Redis("the connection is gone".into()))?;
        rx.await
            .map_err(|_| PeerError::Redis("the connection is gone".into()))?
    }
}

#[derive(Clone)]
struct Service {
    redis: Multiplexed,
    sha: String,
}

#[derive(serde::Deserialize)]
struct Order {
    sku: u64,
    quantity: u32,
}

fn error(status: StatusCode, code: &str) -> Response {
    (
        status,
        axum::Json(serde_json::json!({"error": {"code": code}})),
    )
        .into_response()
}

async fn order(State(s): State<Service>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let Some(user) = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|t| t.parse::<u64>().ok())
    else {
        return error(StatusCode::UNAUTHORIZED, "unauthenticated");
    };
    let Ok(o) = serde_json::from_slice::<Order>(&body) else {
        return error(StatusCode::BAD_REQUEST, "invalid_body");
    };
    let args = vec![
        b"EVALSHA".to_vec(),
        s.sha.as_bytes().to_vec(),
        b"3".to_vec(),
        format!("stock:{}", o.sku).into_bytes(),
        format!("buyers:{}", o.sku).into_bytes(),
        b"orders:seq".to_vec(),
        user.to_string().into_bytes(),
        o.quantity.to_string().into_bytes(),
    ];
    match s.redis.call(args).await {
        Ok(RespValue::Int(id)) if id > 0 => (
            StatusCode::CREATED,
            axum::Json(serde_json::json!({"id": id, "sku": o.sku, "user_id": user})),
        )
            .into_response(),
        Ok(RespValue::Int(-1)) => error(StatusCode::CONFLICT, "sold_out"),
        Ok(RespValue::Int(-2)) => error(StatusCode::CONFLICT, "limit_reached"),
        _ => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
    }
}

/// The service's router over Redis at `addr` (the script loaded).
pub async fn router(addr: &str) -> Result<axum::Router, PeerError> {
    let redis = Multiplexed::connect(addr).await?;
    let sha = match redis
        .call(vec![
            b"SCRIPT".to_vec(),
            b"LOAD".to_vec(),
            LUA.as_bytes().to_vec(),
        ])
        .await?
    {
        RespValue::Bulk(Some(s)) => String::from_utf8_lossy(&s).to_string(),
        other => return Err(PeerError::Redis(format!("SCRIPT LOAD: {other:?}"))),
    };
    Ok(axum::Router::new()
        .route("/v1/orders", axum::routing::post(order))
        .with_state(Service { redis, sha }))
}
