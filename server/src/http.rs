//! Plain HTTP routes of the two listeners.
//!
//! Internals stay inside: the public port (the one a Service, an Ingress or a load balancer
//! exposes) serves socket.io and, only when enabled, the demo page and the publish API. The
//! admin port serves the probes, the metrics and the publish API for in-cluster backends; no
//! Ingress routes to it.

use std::sync::Arc;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header},
    middleware::Next,
    response::{Html, IntoResponse, Response},
    routing::{get, post},
};
use serde_json::{json, value::RawValue};
use socketioxide::{SocketIo, adapter::Adapter};
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

use crate::{
    config::Cors,
    handlers::{App, Dest, NAMESPACE, client_room, deliver},
    health::{degradation, readiness},
    metrics::{self, OutKind},
    protocol,
};

/// The demo chat page, compiled into the binary.
const INDEX_HTML: &str = include_str!("../assets/index.html");

/// State of the HTTP routes.
pub struct HttpState<A: Adapter> {
    pub app: Arc<App>,
    pub io: SocketIo<A>,
    pub api_key: Option<String>,
    /// The cooldown of `POST /api/v1/shed`.
    pub shedder: Arc<crate::shed::Shedder>,
}

impl<A: Adapter> Clone for HttpState<A> {
    fn clone(&self) -> Self {
        Self {
            app: self.app.clone(),
            io: self.io.clone(),
            api_key: self.api_key.clone(),
            shedder: self.shedder.clone(),
        }
    }
}

/// What the public port serves besides socket.io.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublicRoutes {
    /// `GET /`: the demo chat page.
    pub demo_page: bool,
    /// `POST /api/v1/publish`.
    pub publish_api: bool,
}

/// Path of the publish API (on the admin port, and on the public port when enabled).
pub const PUBLISH_PATH: &str = "/api/v1/publish";
/// Path of the shed API (admin port only; see [`crate::shed`]).
pub const SHED_PATH: &str = "/api/v1/shed";

/// The public port's plain routes: none unless enabled (the socket.io layer and CORS are added
/// by the caller; everything else answers 404).
pub fn public_router<A: Adapter>(
    state: HttpState<A>,
    routes: PublicRoutes,
    max_body: usize,
) -> Router {
    let mut r = Router::new();
    if routes.demo_page {
        r = r.route("/", get(index));
    }
    if routes.publish_api {
        r = r.route(PUBLISH_PATH, publish_route::<A>(max_body));
    }
    r.with_state(state)
}

/// The admin port's routes: probes, metrics, the publish API and the shed API.
pub fn admin_router<A: Adapter>(state: HttpState<A>, max_body: usize) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz::<A>))
        .route("/metrics", get(metrics::<A>))
        .route(PUBLISH_PATH, publish_route::<A>(max_body))
        .route(
            SHED_PATH,
            post(api_shed::<A>).layer(DefaultBodyLimit::max(1024)),
        )
        .with_state(state)
}

/// `POST /api/v1/shed`: closes a bounded number of this pod's transports, spread over time, so
/// that their clients reconnect through the load balancer (the operator's rebalance). Answers
/// 202 with the granted plan, 400 for a bad body, 429 within the cooldown, 503 while draining.
async fn api_shed<A: Adapter>(State(st): State<HttpState<A>>, body: Bytes) -> Response {
    let req: crate::shed::ShedRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                &format!("body must be {{\"count\": n, \"overSeconds\": s}}: {e}"),
            );
        }
    };
    let Some(root) = st.io.of(NAMESPACE) else {
        return api_error(StatusCode::SERVICE_UNAVAILABLE, "server is shutting down");
    };
    let draining = st.app.health.snapshot().draining;
    if let Err(refused) = st.shedder.admit(std::time::Instant::now(), draining) {
        let code = match refused {
            crate::shed::Refused::Draining => StatusCode::SERVICE_UNAVAILABLE,
            crate::shed::Refused::TooSoon(_) => StatusCode::TOO_MANY_REQUESTS,
        };
        return api_error(code, &refused.to_string());
    }
    let sockets = root.sockets();
    let plan = crate::shed::plan(req, sockets.len());
    // Engine.io session ids (a restored socket keeps its old socket id on a new session).
    let sids: Vec<_> = sockets
        .iter()
        .take(plan.count)
        .map(|s| s.engine_sid())
        .collect();
    drop(sockets);
    tracing::info!(
        asked = req.count,
        granted = plan.count,
        interval = ?plan.interval,
        "shedding connections: their clients reconnect through the load balancer"
    );
    tokio::spawn(async move {
        let closed = engineioxide::drain::close_paced(sids, plan.interval).await;
        tracing::info!(closed, "shed done");
    });
    (StatusCode::ACCEPTED, axum::Json(plan)).into_response()
}

fn publish_route<A: Adapter>(max_body: usize) -> axum::routing::MethodRouter<HttpState<A>> {
    post(api_publish::<A>).layer(DefaultBodyLimit::max(max_body))
}

/// The CORS layer for the configured policy; `None` for same-origin only.
pub fn cors_layer(cors: &Cors) -> Option<CorsLayer> {
    let base = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION]);
    match cors {
        Cors::SameOrigin => None,
        Cors::Any => Some(base.allow_origin(Any)),
        Cors::List(origins) => {
            // Validated at start (config), so every origin is a valid header value.
            let values: Vec<HeaderValue> = origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect();
            // socket.io-client sends cookies with `withCredentials: true`; exact origins allow it.
            Some(
                base.allow_origin(AllowOrigin::list(values))
                    .allow_credentials(true),
            )
        }
    }
}

/// What [`session_gate`] needs: the socket.io path, the session cap and where the count is.
#[derive(Clone)]
pub struct SessionGate {
    /// socket.io's request path on the public port (no trailing slash).
    pub path: Arc<str>,
    /// MAX_CONNECTIONS in force (`limits::session_cap`); `None`: no cap.
    pub cap: Option<u64>,
    pub app: Arc<App>,
}

/// Whether `uri` opens an engine.io session on `path` (no `sid` yet).
fn opens_session(uri: &Uri, path: &str) -> bool {
    uri.path().starts_with(path)
        && !uri
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv.starts_with("sid=")))
}

/// Middleware for the socket.io path, on requests that open a session:
/// - past the session cap the request gets 503 (`Retry-After: 1`): the client retries and,
///   behind a Service or an Ingress, lands on another node; the sessions already open are not
///   touched. The cap keeps descriptors free for the admin port (see `limits`);
/// - otherwise the request is slimmed down to what the session needs, in buffers of its own.
///
/// engineioxide keeps the request parts (URI, headers, extensions) of every session for its
/// lifetime. hyper parses them as slices of the connection's read buffer (8–16 KiB), so without
/// a copy each connected client pins a whole read buffer (measured with massif: 16 KiB of the
/// 39 KiB of heap per idle websocket client); and a browser's dozen headers, copied, still
/// take ~0.6 KiB per client although nothing reads them after the handshake.
pub async fn session_gate(
    State(gate): State<SessionGate>,
    mut req: Request,
    next: Next,
) -> Response {
    if opens_session(req.uri(), &gate.path) {
        let held = u64::try_from(gate.app.metrics.connected.get()).unwrap_or(0);
        if gate.cap.is_some_and(|cap| held >= cap) {
            gate.app.metrics.sessions_refused.inc();
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "1")],
                "this node holds its maximum of connections\n",
            )
                .into_response();
        }
        detach_parts(&mut req);
    }
    next.run(req).await
}

/// The request headers a session keeps: engineioxide answers the websocket handshake with
/// the key. Nothing in this server reads request headers after the handshake (auth travels
/// in the socket.io handshake payload, CORS is decided before this middleware); a handler that
/// starts reading one (e.g. `x-forwarded-for`) must add it here.
const SESSION_HEADERS: [header::HeaderName; 1] = [header::SEC_WEBSOCKET_KEY];

/// Replaces the URI with a copy that shares no buffer with the connection, keeps only the
/// [`SESSION_HEADERS`] (copied likewise), and of the extensions only hyper's upgrade handle
/// (axum's copy of the URI and its route parameters are for routes this request never reaches).
fn detach_parts(req: &mut Request) {
    if let Ok(uri) = req.uri().to_string().parse::<Uri>() {
        *req.uri_mut() = uri;
    }
    let old = std::mem::take(req.headers_mut());
    let mut fresh = HeaderMap::new();
    for name in &SESSION_HEADERS {
        for value in old.get_all(name) {
            // A value that was valid stays valid: the copy cannot fail.
            if let Ok(v) = HeaderValue::from_bytes(value.as_bytes()) {
                fresh.append(name.clone(), v);
            }
        }
    }
    *req.headers_mut() = fresh;
    let upgrade = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>();
    *req.extensions_mut() = axum::http::Extensions::new();
    if let Some(upgrade) = upgrade {
        req.extensions_mut().insert(upgrade);
    }
}

async fn index() -> Html<&'static str> {
    Html(INDEX_HTML)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz<A: Adapter>(State(st): State<HttpState<A>>) -> Response {
    let snap = st.app.health.snapshot();
    let result = readiness(&snap);
    st.app.metrics.ready.set(i64::from(result.is_ok()));
    match result {
        Ok(()) => {
            let degraded = degradation(&snap);
            let body = if degraded.is_empty() {
                json!({"ready": true, "node": st.app.node})
            } else {
                json!({"ready": true, "node": st.app.node, "degraded": degraded})
            };
            (StatusCode::OK, Json(body)).into_response()
        }
        Err(reasons) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "node": st.app.node, "reasons": reasons})),
        )
            .into_response(),
    }
}

async fn metrics<A: Adapter>(State(st): State<HttpState<A>>) -> Response {
    let m = &st.app.metrics;
    let snap = st.app.health.snapshot();
    m.ready.set(i64::from(readiness(&snap).is_ok()));
    m.draining.set(i64::from(snap.draining));
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], m.render()).into_response()
}

fn api_error(status: StatusCode, error: &str) -> Response {
    (status, Json(json!({"ok": false, "error": error}))).into_response()
}

/// Compares without an early exit, so response timing does not reveal the key prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks `Authorization: Bearer <key>`.
pub fn bearer_ok(headers: &HeaderMap, key: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .is_some_and(|token| constant_time_eq(token.as_bytes(), key.as_bytes()))
}

/// `POST /api/v1/publish` `{room?, event, data}`: a backend publishes like a client would.
async fn api_publish<A: Adapter>(
    State(st): State<HttpState<A>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(key) = &st.api_key else {
        return api_error(
            StatusCode::NOT_FOUND,
            "the publish API is disabled: start the server with API_KEY",
        );
    };
    if !bearer_ok(&headers, key) {
        let mut r = api_error(StatusCode::UNAUTHORIZED, "missing or wrong bearer API key");
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    let raw: &RawValue = match std::str::from_utf8(&body)
        .ok()
        .and_then(|t| serde_json::from_str(t).ok())
    {
        Some(raw) => raw,
        None => return api_error(StatusCode::BAD_REQUEST, "body must be a JSON object"),
    };
    let p = match protocol::parse_publish(Some(raw), "body") {
        Ok(p) => p,
        Err(e) => return api_error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let Some(root) = st.io.of(NAMESPACE) else {
        return api_error(StatusCode::SERVICE_UNAVAILABLE, "server is shutting down");
    };
    let dest = match &p.room {
        Some(r) => Dest::Room(client_room(r)),
        None => Dest::All,
    };
    let partial = deliver(&st.app, &root, &dest, &p.event, p.data).await;
    st.app.metrics.event_out(OutKind::ApiPublish);
    let body = if partial {
        json!({"ok": true, "partial": true})
    } else {
        json!({"ok": true})
    };
    (StatusCode::OK, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::OriginalUri;

    #[test]
    fn bearer_key_check() {
        let mut h = HeaderMap::new();
        assert!(!bearer_ok(&h, "k1234567890abcdef"));
        h.insert(
            header::AUTHORIZATION,
            "Bearer k1234567890abcdef".parse().unwrap(),
        );
        assert!(bearer_ok(&h, "k1234567890abcdef"));
        h.insert(
            header::AUTHORIZATION,
            "bearer  k1234567890abcdef ".parse().unwrap(),
        );
        assert!(bearer_ok(&h, "k1234567890abcdef"));
        h.insert(
            header::AUTHORIZATION,
            "Bearer k1234567890abcdeX".parse().unwrap(),
        );
        assert!(!bearer_ok(&h, "k1234567890abcdef"));
        h.insert(
            header::AUTHORIZATION,
            "Basic k1234567890abcdef".parse().unwrap(),
        );
        assert!(!bearer_ok(&h, "k1234567890abcdef"));
        h.insert(header::AUTHORIZATION, "Bearer k123".parse().unwrap());
        assert!(!bearer_ok(&h, "k1234567890abcdef"));
    }

    #[test]
    fn detached_parts_share_no_buffer_with_the_connection_and_keep_only_the_ws_key() {
        let buffer = Bytes::from(b"dGhlIHNhbXBsZSBub25jZQ== 10.0.0.1 /socket.io/?EIO=4".to_vec());
        let mut req = Request::new(axum::body::Body::empty());
        let key = HeaderValue::from_maybe_shared(buffer.slice(0..24)).unwrap();
        req.headers_mut().insert(header::SEC_WEBSOCKET_KEY, key);
        let ip = HeaderValue::from_maybe_shared(buffer.slice(25..33)).unwrap();
        req.headers_mut().insert("x-forwarded-for", ip);
        *req.uri_mut() = Uri::from_maybe_shared(buffer.slice(34..)).unwrap();
        let as_received = OriginalUri(req.uri().clone());
        req.extensions_mut().insert(as_received);
        let range = buffer.as_ptr_range();
        let inside = |p: *const u8| range.contains(&p);
        assert!(inside(
            req.headers()[header::SEC_WEBSOCKET_KEY].as_bytes().as_ptr()
        ));

        detach_parts(&mut req);
        assert_eq!(req.headers().len(), 1);
        let key = &req.headers()[header::SEC_WEBSOCKET_KEY];
        assert_eq!(key, "dGhlIHNhbXBsZSBub25jZQ==");
        assert!(!inside(key.as_bytes().as_ptr()));
        assert_eq!(req.uri(), "/socket.io/?EIO=4");
        assert!(!inside(req.uri().path().as_ptr()));
        assert!(req.extensions().is_empty());
    }

    #[test]
    fn cors_policy() {
        assert!(cors_layer(&Cors::SameOrigin).is_none());
        assert!(cors_layer(&Cors::Any).is_some());
        assert!(cors_layer(&Cors::List(vec!["https://a.example".into()])).is_some());
    }

    mod routes {
        use super::super::*;
        use crate::{
            health::{Health, Mode},
            metrics::Metrics,
        };
        use axum::body::Body;
        use tower::ServiceExt as _;

        const KEY: &str = "0123456789abcdef-key";

        fn state() -> HttpState<socketioxide::adapter::LocalAdapter> {
            let (_layer, io) = SocketIo::new_layer();
            io.ns(NAMESPACE, async || {});
            HttpState {
                app: Arc::new(App {
                    route: None,
                    node: "n1".into(),
                    metrics: Arc::new(Metrics::new("n1", "memory")),
                    health: Arc::new(Health::new(Mode::Memory)),
                    verifier: None,
                    recovery: None,
                }),
                io,
                api_key: Some(KEY.into()),
                shedder: Default::default(),
            }
        }

        /// Status of `method path` on `router` (a publish without the bearer key: 401 means
        /// the route exists).
        async fn status(router: &Router, method: Method, path: &str) -> u16 {
            let req = Request::builder()
                .method(method)
                .uri(path)
                .body(Body::from(r#"{"event":"e","data":1}"#))
                .unwrap();
            router.clone().oneshot(req).await.unwrap().status().as_u16()
        }

        async fn statuses(router: &Router) -> [u16; 5] {
            [
                status(router, Method::GET, "/").await,
                status(router, Method::GET, "/healthz").await,
                status(router, Method::GET, "/readyz").await,
                status(router, Method::GET, "/metrics").await,
                status(router, Method::POST, PUBLISH_PATH).await,
            ]
        }

        #[tokio::test]
        async fn the_public_port_serves_nothing_but_socketio_by_default() {
            let r = public_router(state(), PublicRoutes::default(), 1 << 20);
            assert_eq!(statuses(&r).await, [404; 5]);
        }

        #[tokio::test]
        async fn the_public_port_serves_what_is_enabled() {
            let demo = PublicRoutes {
                demo_page: true,
                publish_api: false,
            };
            let r = public_router(state(), demo, 1 << 20);
            assert_eq!(statuses(&r).await, [200, 404, 404, 404, 404]);
            let api = PublicRoutes {
                demo_page: false,
                publish_api: true,
            };
            let r = public_router(state(), api, 1 << 20);
            assert_eq!(statuses(&r).await, [404, 404, 404, 404, 401]);
        }

        #[tokio::test]
        async fn the_admin_port_serves_probes_metrics_and_the_publish_api() {
            let r = admin_router(state(), 1 << 20);
            assert_eq!(statuses(&r).await, [404, 200, 200, 200, 401]);
        }

        async fn shed(router: &Router, body: &str) -> u16 {
            let req = Request::builder()
                .method(Method::POST)
                .uri(SHED_PATH)
                .body(Body::from(body.to_string()))
                .unwrap();
            router.clone().oneshot(req).await.unwrap().status().as_u16()
        }

        #[tokio::test]
        async fn shedding_is_admin_only_bounded_and_rate_limited() {
            let r = public_router(
                state(),
                PublicRoutes {
                    demo_page: true,
                    publish_api: true,
                },
                1 << 20,
            );
            assert_eq!(
                shed(&r, r#"{"count":1}"#).await,
                404,
                "not on the public port"
            );
            let r = admin_router(state(), 1 << 20);
            assert_eq!(shed(&r, "{}").await, 400);
            assert_eq!(
                shed(
                    &r,
                    &format!(r#"{{"count":1,"pad":"{}"}}"#, "x".repeat(2000))
                )
                .await,
                413
            );
            assert_eq!(shed(&r, r#"{"count":1}"#).await, 202);
            assert_eq!(shed(&r, r#"{"count":1}"#).await, 429, "cooldown");
        }
    }

    #[test]
    fn demo_page_is_embedded() {
        assert!(INDEX_HTML.contains("<title>"));
        assert!(INDEX_HTML.contains("/socket.io/?EIO=4&transport=websocket"));
    }
}
