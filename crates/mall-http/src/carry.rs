//! Payments on a cluster: they run on the node that runs the ledger. A
//! payment request (paying an order or a checkout, cancelling, refunding, the wallet, a
//! provider's callback, delivery and collection) that reaches another node
//! is carried there whole, over the cluster's internal connections, and its
//! answer comes back as it was given. The node that runs it authenticates
//! and limits it like any request; the client's address travels with it.

use crate::error::ApiError;
use crate::listener::Peer;
use crate::AppState;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use mall_cluster::wire::{HttpAnswer, HttpAsk};
use tower::ServiceExt;

/// Marks a request carried here from another node (never carried again).
#[derive(Clone, Copy)]
struct Carried;

/// Does this request need the payment service?
pub fn needs_payments(path: &str) -> bool {
    const SUFFIXES: [&str; 5] = [
        "/cancel",
        "/payments",
        "/refunds",
        "/deliver",
        "/cod-collected",
    ];
    path.starts_with("/v1/wallet")
        || path.starts_with("/v1/channels/")
        || path == "/v1/admin/channels"
        || ((path.starts_with("/v1/orders/") || path.starts_with("/v1/admin/orders/"))
            && SUFFIXES.iter().any(|s| path.ends_with(s)))
        || (path.starts_with("/v1/checkouts/") && path.ends_with("/payments"))
}

/// The middleware: carries payment requests to the ledger's node.
pub async fn carry(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(node) = state.cluster.get() else {
        return next.run(request).await;
    };
    let mut response = if request.extensions().get::<Carried>().is_none()
        && needs_payments(request.uri().path())
        && node.payments_elsewhere()
    {
        carry_to_ledger(&state, node, request).await
    } else {
        next.run(request).await
    };
    if node.is_draining() {
        // Clients move to the other nodes while this one drains.
        response.headers_mut().insert(
            axum::http::header::CONNECTION,
            HeaderValue::from_static("close"),
        );
    }
    response
}

async fn carry_to_ledger(
    state: &AppState,
    node: &mall_cluster::Node,
    request: Request,
) -> Response {
    let client = request
        .extensions()
        .get::<ConnectInfo<Peer>>()
        .map(|c| c.0.addr)
        .unwrap_or_else(|| ([0, 0, 0, 0], 0).into());
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, state.config.body_bytes_max).await else {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "the request body is over the limit",
        )
        .into_response();
    };
    let Ok(body) = String::from_utf8(body.to_vec()) else {
        return ApiError::invalid("the body is not UTF-8").into_response();
    };
    let ask = HttpAsk {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        headers: parts
            .headers
            .iter()
            .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
            .collect(),
        body,
        client,
    };
    match node.forward_http(ask).await {
        Some(answer) => answer_response(answer),
        None => ApiError::store(
            "carrying a payment request",
            mall_engine::StoreError::Unavailable(
                "the payment service is moving to another node".into(),
            ),
        )
        .into_response(),
    }
}

fn answer_response(answer: HttpAnswer) -> Response {
    let mut response = Response::new(Body::from(answer.body));
    *response.status_mut() = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
    for (k, v) in answer.headers {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k), HeaderValue::try_from(v)) {
            response.headers_mut().append(k, v);
        }
    }
    response
}

/// Runs a request another node carried here through `router` (the
/// shoppers' API) and gives back its answer.
pub async fn run_carried(router: axum::Router, ask: HttpAsk) -> HttpAnswer {
    let failed = |status: u16, message: &str| HttpAnswer {
        status,
        headers: vec![("content-type".into(), "application/json".into())],
        body: serde_json::json!({"error": {"code": "bad_carried_request", "message": message}})
            .to_string(),
    };
    let mut builder = Request::builder().method(ask.method.as_str()).uri(&ask.uri);
    for (k, v) in &ask.headers {
        builder = builder.header(k, v);
    }
    let Ok(mut request) = builder.body(Body::from(ask.body)) else {
        return failed(400, "a carried request could not be rebuilt");
    };
    request.extensions_mut().insert(Carried);
    request.extensions_mut().insert(ConnectInfo(Peer {
        addr: ask.client,
        conn: None,
    }));
    let Ok(response) = router.oneshot(request).await;
    let (parts, body) = response.into_parts();
    let Ok(body) = axum::body::to_bytes(body, 16 << 20).await else {
        return failed(502, "the answer could not be read");
    };
    HttpAnswer {
        status: parts.status.as_u16(),
        headers: parts
            .headers
            .iter()
            .filter(|(k, _)| *k != axum::http::header::CONTENT_LENGTH)
            .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
            .collect(),
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::needs_payments;

    #[test]
    fn payment_paths_are_carried_and_others_are_not() {
        for p in [
            "/v1/orders/12/payments",
            "/v1/orders/12/cancel",
            "/v1/orders/12/refunds",
            "/v1/wallet",
            "/v1/wallet/top-ups",
            "/v1/channels/alipay/callback",
            "/v1/admin/orders/9/deliver",
            "/v1/admin/orders/9/cod-collected",
            "/v1/admin/channels",
            "/v1/checkouts/7/payments",
        ] {
            assert!(needs_payments(p), "{p}");
        }
        for p in [
            "/v1/orders",
            "/v1/orders/12",
            "/v1/items/3",
            "/healthz",
            "/v1/admin/items",
            "/v1/checkouts",
            "/v1/checkouts/7",
        ] {
            assert!(!needs_payments(p), "{p}");
        }
    }
}
