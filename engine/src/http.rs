//! The native HTTP API (JSON):
//! `POST /v1/egress`, `GET /v1/egress`, `GET /v1/egress/{id}`, `POST /v1/egress/{id}/stop`,
//! `GET /v1/recipes`, `GET /healthz`, and the room composite pages under `GET /layouts/`.
//! Every route but /healthz and /layouts needs a roomRecord token.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::auth::{AuthError, Verifier};
use crate::egress::manager::Manager;
use crate::errors::{Error, ErrorKind};

const MAX_BODY: usize = 1 << 20;

pub struct Api {
    pub manager: Arc<Manager>,
    /// Replaced when egress.toml's key pair changes (see `reload`).
    pub verifier: Arc<std::sync::RwLock<Verifier>>,
    /// Served without auth: Chrome loads them, and they hold no secret (the token is in the URL).
    pub layouts: std::path::PathBuf,
    pub metrics: crate::metrics::Metrics,
    pub always_on: Arc<crate::always_on::AlwaysOn>,
    /// `GET /metrics` needs no token (`[server] metrics_public`).
    pub metrics_public: bool,
}

type Reply = Response<Full<Bytes>>;

fn reply(status: u16, body: Value) -> Reply {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("valid response")
}

fn error(status: u16, message: impl Into<String>, field: Option<&str>) -> Reply {
    reply(status, json!({ "error": message.into(), "field": field.filter(|f| !f.is_empty()) }))
}

/// A client must send a request's whole header within this (slow or half-sent requests
/// would otherwise hold a connection and its task for ever).
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A request's body must arrive within this once its header has.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// A request body, bounded in size and time (a client trickling its body would hold its
/// connection for ever).
async fn read_body(req: Request<Incoming>) -> Result<Bytes, String> {
    match tokio::time::timeout(BODY_TIMEOUT, Limited::new(req.into_body(), MAX_BODY).collect()).await {
        Ok(Ok(body)) => Ok(body.to_bytes()),
        Ok(Err(_)) => Err(format!("body larger than {MAX_BODY} bytes")),
        Err(_) => Err(format!("body not received within {} s", BODY_TIMEOUT.as_secs())),
    }
}

/// Connections served at once; more are closed as they come, before anything is read.
const MAX_CONNECTIONS: usize = 512;

/// Serves until `shutdown` turns true; then stops accepting connections.
///
/// Runs on a runtime of its own (see main): connections, header and body reading and
/// /healthz never wait for the engine's threads, which a recipe's Lua holds while it runs.
/// Each request is handled on the `engine` runtime, entering it through its shared queue,
/// which any free engine thread takes from.
pub async fn serve(
    api: Arc<Api>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
    engine: tokio::runtime::Handle,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => { tracing::warn!("accept failed: {e}"); continue; }
            },
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "{MAX_CONNECTIONS} connections open already: closing a new one");
            continue;
        };
        let api = api.clone();
        let engine = engine.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let api = api.clone();
                let engine = engine.clone();
                async move {
                    if req.uri().path().trim_end_matches('/') == "/healthz" {
                        return Ok::<_, Infallible>(reply(200, json!({ "ok": true })));
                    }
                    let handled = engine.spawn(async move { api.handle(req).await }).await;
                    Ok(handled.unwrap_or_else(|e| {
                        tracing::error!("request handler failed: {e}");
                        error(500, "internal error (see egret's log)", None)
                    }))
                }
            });
            let connection = http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = connection.await {
                tracing::debug!("connection ended: {e}");
            }
            drop(slot);
        });
    }
}

impl Api {
    async fn handle(&self, req: Request<Incoming>) -> Reply {
        let path = req.uri().path().trim_end_matches('/').to_string();
        // HEAD is GET without the body (hyper leaves the body out): uptime checks use it.
        let method = if req.method() == Method::HEAD { Method::GET } else { req.method().clone() };
        if path == "/healthz" {
            return reply(200, json!({ "ok": true }));
        }
        if method == Method::GET && (path.is_empty() || path == "/index.html") {
            // The status page holds no data: it asks the API with the token the user gives it.
            return Response::builder()
                .status(200)
                .header("content-type", "text/html; charset=utf-8")
                .header("cache-control", "no-store")
                .body(Full::new(Bytes::from_static(include_bytes!("status_page.html"))))
                .expect("static response parts");
        }
        if method == Method::GET && (path == "/layouts" || path.starts_with("/layouts/")) {
            return layout_file(&self.layouts, path.trim_start_matches("/layouts").trim_start_matches('/')).await;
        }
        if let Some(twirp_method) = path.strip_prefix("/twirp/livekit.Egress/") {
            return self.twirp(twirp_method.to_string(), req).await;
        }
        if method == Method::GET && path == "/metrics" && self.metrics_public {
            return self.metrics_reply();
        }
        let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok());
        let verified = self.verifier.read().unwrap().check_header(auth);
        match verified {
            Ok(_) => {}
            Err(AuthError::Unauthenticated(m)) => {
                return error(ErrorKind::Unauthenticated.http_status(), m, Some("authorization"));
            }
            Err(AuthError::PermissionDenied(m)) => {
                return error(ErrorKind::PermissionDenied.http_status(), m, Some("authorization"));
            }
        }
        if method == Method::GET && path == "/metrics" {
            return self.metrics_reply();
        }
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (&method, segments.as_slice()) {
            (&Method::POST, ["v1", "egress"]) => self.start(req).await,
            (&Method::GET, ["v1", "egress"]) => {
                reply(200, json!({ "egresses": self.manager.list().iter().map(|e| e.to_json()).collect::<Vec<_>>() }))
            }
            (&Method::GET, ["v1", "egress", id]) => match self.manager.get(id) {
                Some(e) => reply(200, e.to_json()),
                None => error(404, crate::errors::Error::egress_not_found(id).message, Some("egress_id")),
            },
            (&Method::POST, ["v1", "egress", id, "stop"]) => {
                match self.manager.stop(id, crate::egress::reason::STOPPED_BY_API).await {
                    Ok(e) => reply(200, e.to_json()),
                    Err(e) => error(e.kind.http_status(), e.message, Some("egress_id")),
                }
            }
            (&Method::GET, ["v1", "recipes"]) => reply(200, json!({ "recipes": self.manager.recipes().to_json() })),
            (&Method::GET, ["v1", "always_on"]) => reply(200, json!({ "entries": self.always_on.states() })),
            (&Method::GET, ["v1", "egress", id, "picture.jpg"]) => {
                let width = query_number(req.uri().query(), "width").unwrap_or(320.0).clamp(16.0, 1920.0) as u32;
                match self.manager.picture(id, width).await {
                    Ok(jpeg) => Response::builder()
                        .status(200)
                        .header("content-type", "image/jpeg")
                        .header("cache-control", "no-store")
                        .body(Full::new(Bytes::from(jpeg)))
                        .expect("static response parts"),
                    Err(e) => error(e.kind.http_status(), e.message, Some("egress_id")),
                }
            }
            (
                _,
                ["v1", "egress"]
                | ["v1", "egress", _]
                | ["v1", "egress", _, "stop" | "picture.jpg"]
                | ["v1", "recipes" | "always_on"],
            ) => error(405, format!("{method} is not allowed on {path}"), None),
            _ => error(404, format!("no route {method} {path}"), None),
        }
    }

    fn metrics_reply(&self) -> Reply {
        Response::builder()
            .status(200)
            .header("content-type", crate::metrics::CONTENT_TYPE)
            .body(Full::new(Bytes::from(self.metrics.render())))
            .expect("static response parts")
    }

    async fn twirp(&self, method: String, req: Request<Incoming>) -> Reply {
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let (content_type, auth) = (header("content-type").unwrap_or_default(), header("authorization"));
        let body = match read_body(req).await {
            Ok(b) => b,
            Err(message) => {
                let e = Error::new(ErrorKind::Malformed, "", message);
                return crate::twirp::error_reply(&e);
            }
        };
        let verifier = self.verifier.read().unwrap().clone();
        crate::twirp::handle(&self.manager, &verifier, &method, &content_type, auth.as_deref(), &body).await
    }

    async fn start(&self, req: Request<Incoming>) -> Reply {
        let body = match read_body(req).await {
            Ok(b) => b,
            Err(message) if message.contains("larger") => return error(413, message, None),
            Err(message) => return error(408, message, None),
        };
        let body: Value = match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => return error(ErrorKind::Malformed.http_status(), format!("malformed JSON: {e}"), Some("body")),
        };
        let Some(object) = body.as_object() else {
            return error(ErrorKind::Malformed.http_status(), "body must be a JSON object", Some("body"));
        };
        if let Some(unknown) = object.keys().find(|k| !["recipe", "params"].contains(&k.as_str())) {
            return error(
                ErrorKind::InvalidArgument.http_status(),
                "unknown field (expected `recipe` and `params`)",
                Some(unknown),
            );
        }
        let Some(recipe) = object.get("recipe").and_then(Value::as_str) else {
            return error(ErrorKind::InvalidArgument.http_status(), "required: the name of a recipe", Some("recipe"));
        };
        let params = object.get("params").cloned().unwrap_or(json!({}));
        match self.manager.start(recipe, params).await {
            Ok(record) => reply(201, record.to_json()),
            Err(e) => {
                let field = if e.error.field.is_empty() { None } else { Some(format!("params.{}", e.error.field)) };
                let field = if e.error.field == "recipe" { Some("recipe".to_string()) } else { field };
                let mut body = json!({ "error": e.error.to_string(), "field": field });
                if let Some(egress) = e.egress {
                    body["egress"] = egress;
                }
                reply(e.error.kind.http_status(), body)
            }
        }
    }
}

/// A file of the layouts directory; `""` is its index page. Hidden files, `..` and the
/// build tools' `node_modules` are never served.
async fn layout_file(dir: &std::path::Path, relative: &str) -> Reply {
    let relative = if relative.is_empty() { "index.html" } else { relative };
    let refused = relative
        .split('/')
        .any(|part| part.is_empty() || part.starts_with('.') || part == "node_modules" || part.contains('\\'));
    if refused {
        return error(404, format!("no layout file `{relative}`"), None);
    }
    let content_type = match relative.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "woff2" => "font/woff2",
        _ => "application/octet-stream",
    };
    match tokio::fs::read(dir.join(relative)).await {
        Ok(bytes) => Response::builder()
            .status(200)
            .header("content-type", content_type)
            .header("cache-control", "no-cache")
            .body(Full::new(Bytes::from(bytes)))
            .expect("valid response"),
        Err(_) => {
            error(404, format!("no layout file `{relative}` (is the layouts bundle built? run tests/setup.sh)"), None)
        }
    }
}

/// `name=<number>` from a query string.
fn query_number(query: Option<&str>, name: &str) -> Option<f64> {
    query?.split('&').filter_map(|pair| pair.split_once('=')).find(|(k, _)| *k == name)?.1.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn layout_files_stay_inside_the_folder() {
        let dir = std::env::temp_dir().join(format!("egret-layouts-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("node_modules")).unwrap();
        std::fs::write(dir.join("index.html"), "<html>").unwrap();
        std::fs::write(dir.join("node_modules/x.js"), "x").unwrap();
        let index = layout_file(&dir, "").await;
        assert_eq!(index.status(), 200);
        assert_eq!(index.headers()["content-type"], "text/html; charset=utf-8");
        for refused in ["../etc/passwd", "node_modules/x.js", ".git/config", "a//b", "missing.js"] {
            assert_eq!(layout_file(&dir, refused).await.status(), 404, "{refused}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
