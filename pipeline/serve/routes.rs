//! `serve`'s HTTP routes: civic.band's webhook with the application's exact contract
//! (CIVIC_OBSERVER.md, "How the application is refreshed today"), `/healthz` and
//! `/metrics`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use stages::store::webhook::{self, MuniUpdate};
use subtle::ConstantTimeEq;
use tracing::{info, warn};

use super::App;

/// The largest webhook body accepted.
pub const MAX_BODY: usize = 64 * 1024;

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/munis/api/update/{subdomain}/", post(update).put(update))
        .route("/munis/api/update/{subdomain}", post(update).put(update))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(app)
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// The webhook: authenticate, validate, upsert and queue a refresh in one transaction,
/// then answer. Nothing is changed unless the answer is 2xx.
async fn update(
    State(app): State<Arc<App>>,
    Path(subdomain): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let response = handle(&app, &subdomain, &headers, body).await;
    app.metrics.webhook_answered(response.status().as_u16());
    response
}

async fn handle(app: &App, subdomain: &str, headers: &HeaderMap, body: Body) -> Response {
    if app.draining.load(Ordering::Relaxed) {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down; retry later",
        );
    }
    if !authorized(app, headers) {
        return error(StatusCode::UNAUTHORIZED, "Invalid webhook secret");
    }
    let too_large = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|n| n > MAX_BODY);
    if too_large {
        return error(
            StatusCode::BAD_REQUEST,
            "Request body too large (over 64 KB)",
        );
    }
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        return error(
            StatusCode::BAD_REQUEST,
            "Request body too large (over 64 KB)",
        );
    };
    let Some(subdomain) = valid_subdomain(subdomain) else {
        return error(StatusCode::BAD_REQUEST, "Invalid subdomain");
    };
    let update = match parse_body(&bytes, subdomain) {
        Ok(u) => u,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    let observer = app.target.observer().map(|o| o.generation);
    if let Some(why) = observer.and_then(|_| unfit_for_observer(&update)) {
        return error(StatusCode::BAD_REQUEST, &why);
    }
    let muni = match webhook::upsert_and_queue(&app.pool, &update, observer).await {
        Ok(m) => m,
        Err(e) => {
            warn!(subdomain = %update.subdomain, error = %e, "Could not record a webhook; answered 503 so the sender retries.");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "database unavailable; retry later",
            );
        }
    };
    app.wake.notify_waiters();
    let (status, action) = if muni.created {
        (StatusCode::CREATED, "created")
    } else {
        (StatusCode::OK, "updated")
    };
    info!(subdomain = %muni.subdomain, action, "Webhook: municipality upserted, refresh queued.");
    let mut body = serde_json::to_value(&muni).unwrap_or_else(|_| json!({}));
    body["action"] = Value::from(action);
    (status, Json(body)).into_response()
}

/// What of the municipality civic-observer's `municipalities_muni` cannot hold (a 400:
/// nothing is truncated).
fn unfit_for_observer(u: &webhook::MuniUpdate) -> Option<String> {
    let site = stages::store::municipalities::Site {
        subdomain: u.subdomain.clone(),
        name: Some(u.name.clone()),
        state: u.state.clone(),
        country: u.country.clone(),
        kind: u.kind.clone(),
        pages: u.pages,
        last_updated: u.last_updated,
    };
    let unfit = stages::store::observer::municipalities::unfit_sites(&[site]);
    if let Some((_, why)) = unfit.into_iter().next() {
        return Some(why);
    }
    u.pages
        .is_some_and(|p| i32::try_from(p).is_err())
        .then(|| "pages is larger than municipalities_muni.pages holds".into())
}

/// `Authorization: Bearer <secret>`, compared in constant time (over digests, so the
/// secret's length does not show either).
fn authorized(app: &App, headers: &HeaderMap) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let given = Sha256::digest(given.trim().as_bytes());
    bool::from(given.as_slice().ct_eq(app.secret_digest.as_slice()))
}

/// A subdomain like `oakland.ca`: lowercase letters, digits and hyphens in dot-separated
/// labels, at most 100 characters (the application's column).
pub fn valid_subdomain(raw: &str) -> Option<String> {
    let s = raw.trim().to_ascii_lowercase();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    };
    (s.len() <= 100 && s.contains('.') && s.split('.').all(label_ok)).then_some(s)
}

/// The body's municipality fields: `name` required, unknown keys ignored, the path's
/// subdomain wins.
pub fn parse_body(bytes: &[u8], subdomain: String) -> Result<MuniUpdate, String> {
    let value: Value = serde_json::from_slice(bytes).map_err(|_| "Invalid JSON".to_string())?;
    let Value::Object(o) = value else {
        return Err("Invalid JSON".into());
    };
    let name = match o.get("name") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        _ => return Err("name field is required".into()),
    };
    Ok(MuniUpdate {
        subdomain,
        name,
        state: text(&o, "state")?,
        country: text(&o, "country")?,
        kind: text(&o, "kind")?,
        pages: match o.get("pages") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_i64()
                    .filter(|n| *n >= 0)
                    .ok_or("pages must be a non-negative integer")?,
            ),
        },
        last_updated: match text(&o, "last_updated")? {
            None => None,
            Some(t) => Some(
                stages::store::municipalities::parse_last_updated(&t)
                    .ok_or("last_updated must be a YYYY-MM-DD date or a timestamp")?,
            ),
        },
        latitude: number(&o, "latitude")?,
        longitude: number(&o, "longitude")?,
        popup_data: match o.get("popup_data") {
            None | Some(Value::Null) => None,
            Some(v @ Value::Object(_)) => Some(v.clone()),
            Some(_) => return Err("popup_data must be an object".into()),
        },
    })
}

fn text(o: &Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(format!("{key} must be a string")),
    }
}

fn number(o: &Map<String, Value>, key: &str) -> Result<Option<f64>, String> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| format!("{key} must be a number")),
    }
}

/// 200 when the database answers and every worker is alive; 503 otherwise.
async fn healthz(State(app): State<Arc<App>>) -> Response {
    let db = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        stages::store::refresh::queue_stats(&app.pool),
    )
    .await;
    let db_ok = matches!(db, Ok(Ok(_)));
    let workers = app.workers_alive.load(Ordering::Relaxed);
    let draining = app.draining.load(Ordering::Relaxed);
    let ok = db_ok && workers == app.workers && !draining;
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if ok { "ok" } else { "unavailable" },
        "database": db_ok,
        "workers_alive": workers,
        "workers": app.workers,
        "stopping": draining,
    });
    (status, Json(body)).into_response()
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let queue = stages::store::refresh::queue_stats(&app.pool)
        .await
        .unwrap_or_default();
    let text = app.metrics.render(&queue, app.client.usage());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subdomains_are_checked() {
        assert_eq!(valid_subdomain("Oakland.CA").as_deref(), Some("oakland.ca"));
        assert_eq!(
            valid_subdomain("new-paltz-usd.ny").as_deref(),
            Some("new-paltz-usd.ny")
        );
        for bad in [
            "oakland",
            "a..b",
            "-a.ca",
            "a b.ca",
            "a/b.ca",
            "x.ca;drop",
            "",
        ] {
            assert_eq!(valid_subdomain(bad), None, "{bad}");
        }
    }

    #[test]
    fn bodies_follow_the_application() {
        let sub = || "x.ca".to_string();
        assert_eq!(parse_body(b"{", sub()).unwrap_err(), "Invalid JSON");
        assert_eq!(parse_body(b"[]", sub()).unwrap_err(), "Invalid JSON");
        assert_eq!(
            parse_body(b"{\"pages\": 3}", sub()).unwrap_err(),
            "name field is required"
        );
        let u = parse_body(
            br#"{"name": "X", "subdomain": "other.ca", "pages": 7, "last_updated": "2026-11-30", "extra": 1}"#,
            sub(),
        )
        .unwrap();
        assert_eq!((u.subdomain.as_str(), u.pages), ("x.ca", Some(7)));
        assert!(u.last_updated.is_some());
        assert!(parse_body(br#"{"name": "X", "pages": "many"}"#, sub()).is_err());
    }
}
