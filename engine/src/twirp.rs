//! LiveKit's Egress API as a drop-in: `POST /twirp/livekit.Egress/<Method>`, protobuf or
//! proto3 JSON (camelCase or snake_case), answered in the request's encoding. The transport
//! only: which recipe serves a request and how an egress reads back as EgressInfo is the
//! egress's LiveKit face (`egress::livekit`).

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use livekit_protocol as lk;
use prost::Message;
use serde::Serialize;
use serde_json::{Value, json};

use crate::auth::{AuthError, Verifier};
use crate::egress::EgressRecord;
use crate::egress::livekit::{self as face, Body};
use crate::egress::manager::{Manager, StartOptions};
use crate::errors::{Error, ErrorKind};

type Reply = Response<Full<Bytes>>;

/// A Twirp error: `{"code": "...", "msg": "..."}` with the code's HTTP status.
pub fn error_reply(e: &Error) -> Reply {
    // The recipe's file:line is for its author (egret's log and /v1), not LiveKit's clients.
    let msg = face::without_recipe_location(&e.to_string());
    Response::builder()
        .status(e.kind.twirp_status())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(json!({ "code": e.kind.twirp_code(), "msg": msg }).to_string())))
        .expect("valid response")
}

fn bad_route(method: &str) -> Reply {
    Response::builder()
        .status(404)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            json!({ "code": "bad_route", "msg": format!("no method livekit.Egress/{method}") }).to_string(),
        )))
        .expect("valid response")
}

pub async fn handle(
    manager: &Manager,
    verifier: &Verifier,
    method: &str,
    content_type: &str,
    auth: Option<&str>,
    body: &[u8],
) -> Reply {
    let body = if content_type.starts_with("application/protobuf") {
        Body::Protobuf(body)
    } else if content_type.starts_with("application/json") {
        Body::Json(body)
    } else {
        let e = Error::new(ErrorKind::Malformed, "", format!("unsupported content type `{content_type}`"));
        return error_reply(&e);
    };
    match verifier.check_header(auth) {
        Ok(_) => {}
        Err(AuthError::Unauthenticated(m)) => return error_reply(&Error::new(ErrorKind::Unauthenticated, "", m)),
        Err(AuthError::PermissionDenied(m)) => return error_reply(&Error::new(ErrorKind::PermissionDenied, "", m)),
    }
    let info = |record: &EgressRecord| face::info_of(record, &manager.storage_dir());
    let result = match method {
        _ if face::by_method(method).is_some() || method == face::UNIFIED_METHOD => {
            match face::start_request(method, body) {
                Ok(request) => {
                    let options = StartOptions { livekit_request: Some(request.original), ..Default::default() };
                    match manager.start_with(request.recipe, request.params, options).await {
                        Ok(record) => Ok(encode(body, &face::start_answer(&record, &manager.storage_dir()))),
                        Err(e) => Err(e.error),
                    }
                }
                Err(e) => Err(e),
            }
        }
        "ListEgress" => body.decode::<lk::ListEgressRequest>().and_then(|req| {
            let mut listed: Vec<_> = manager
                .list()
                .into_iter()
                .filter(|e| req.egress_id.is_empty() || e.id == req.egress_id)
                .filter(|e| {
                    req.room_name.is_empty()
                        || e.params.get("room_name").and_then(Value::as_str) == Some(&req.room_name)
                })
                .filter(|e| !req.active || !e.status().is_terminal())
                .collect();
            listed.sort_by(|a, b| a.created_at.total_cmp(&b.created_at).then_with(|| a.id.cmp(&b.id)));
            let keyed = listed.iter().map(|e| (Cursor::of(e.created_at, &e.id), e)).collect();
            let (page, next_page_token) = page(keyed, req.page_token.as_ref())?;
            let items = page.into_iter().map(|e| info(e)).collect();
            Ok(encode(body, &lk::ListEgressResponse { items, next_page_token }))
        }),
        "StopEgress" => match body.decode::<lk::StopEgressRequest>() {
            Ok(req) => manager
                .stop(&req.egress_id, crate::egress::reason::STOPPED_BY_API)
                .await
                .map(|e| encode(body, &info(&e))),
            Err(e) => Err(e),
        },
        "UpdateStream" => match body.decode::<lk::UpdateStreamRequest>() {
            Ok(req) => manager
                .update_stream(&req.egress_id, req.add_output_urls, req.remove_output_urls)
                .await
                .map(|e| encode(body, &info(&e))),
            Err(e) => Err(e),
        },
        "UpdateLayout" => match body.decode::<lk::UpdateLayoutRequest>() {
            Ok(req) => manager.update_layout(&req.egress_id, req.layout).await.map(|e| encode(body, &info(&e))),
            Err(e) => Err(e),
        },
        other => return bad_route(other),
    };
    match result {
        Ok(reply) => reply,
        Err(e) => error_reply(&e),
    }
}

/// Egresses per ListEgress page, when the caller pages (sends a `page_token`, empty for the
/// first page); a caller that does not page gets every egress, as before pagination existed.
const LIST_PAGE: usize = 100;

/// Where a page ends: the creation time (µs) and id of its last egress. Egresses are listed
/// oldest first, so the next page starts after this point even when that egress has ended or
/// been forgotten between calls, or others started meanwhile.
#[derive(Debug, Clone, PartialEq, PartialOrd)]
struct Cursor {
    created_us: i64,
    id: String,
}

impl Cursor {
    fn of(created_at: f64, id: &str) -> Self {
        Cursor { created_us: (created_at * 1e6) as i64, id: id.to_string() }
    }

    fn token(&self) -> String {
        format!("{}.{}", self.created_us, self.id)
    }

    fn parse(token: &str) -> Option<Self> {
        let (created, id) = token.split_once('.')?;
        Some(Cursor { created_us: created.parse().ok()?, id: id.to_string() })
    }
}

/// One page of `items` (sorted by their cursors); a token egret did not give is refused.
fn page<T>(
    items: Vec<(Cursor, T)>,
    token: Option<&lk::TokenPagination>,
) -> Result<(Vec<T>, Option<lk::TokenPagination>), Error> {
    let Some(token) = token else { return Ok((items.into_iter().map(|(_, item)| item).collect(), None)) };
    let after = match token.token.as_str() {
        "" => None,
        given => Some(Cursor::parse(given).ok_or_else(|| {
            Error::new(ErrorKind::InvalidArgument, "page_token", "not a token from an earlier ListEgress")
        })?),
    };
    let mut rest: Vec<(Cursor, T)> =
        items.into_iter().filter(|(cursor, _)| after.as_ref().is_none_or(|after| cursor > after)).collect();
    let more = rest.len() > LIST_PAGE;
    rest.truncate(LIST_PAGE);
    let next = rest.last().filter(|_| more).map(|(cursor, _)| lk::TokenPagination { token: cursor.token() });
    Ok((rest.into_iter().map(|(_, item)| item).collect(), next))
}

fn encode<T: Message + Serialize>(body: Body, message: &T) -> Reply {
    let (content_type, bytes) = match body {
        Body::Protobuf(_) => ("application/protobuf", message.encode_to_vec()),
        Body::Json(_) => ("application/json", serde_json::to_vec(message).expect("serializable")),
    };
    Response::builder()
        .status(200)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(bytes)))
        .expect("valid")
}

#[cfg(test)]
mod page_tests {
    use super::*;

    fn infos(n: usize) -> Vec<(Cursor, String)> {
        (0..n).map(|i| (Cursor::of(1000.0 + i as f64, &format!("EG_{i}")), format!("EG_{i}"))).collect()
    }

    #[test]
    fn list_egress_pages_only_when_asked() {
        assert_eq!(page(infos(250), None).unwrap().0.len(), 250);
        let first = lk::TokenPagination { token: String::new() };
        let (items, next) = page(infos(250), Some(&first)).unwrap();
        assert_eq!((items.len(), items[0].as_str()), (100, "EG_0"));
        let (items, next) = page(infos(250), next.as_ref()).unwrap();
        assert_eq!((items.len(), items[0].as_str()), (100, "EG_100"));
        // The last egress of the page ended and is no longer listed: the next page is unchanged.
        let mut fewer = infos(250);
        fewer.remove(199);
        let (items, next) = page(fewer, next.as_ref()).unwrap();
        assert_eq!((items.len(), items[0].as_str(), next), (50, "EG_200", None));
        let forged = lk::TokenPagination { token: "EG_gone".into() };
        assert_eq!(page(infos(3), Some(&forged)).unwrap_err().field, "page_token");
    }
}
