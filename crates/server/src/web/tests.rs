use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::http::Request;
use sluice_hub::{Claim, Hub, Presentation};
use tower::ServiceExt;

use super::*;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::http::HttpContext;

const SDP: &str = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nt=0 0\r\n\
    m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n\
    m=audio 0 RTP/AVP 97\r\na=rtpmap:97 opus/48000/2\r\n";

/// A router with the page's routes over a hub where `cams/door` and `b x` are live and
/// `waiting` is published but not ready.
fn router(toml: &str) -> axum::Router {
    let c = Config::from_toml(toml).unwrap();
    let auth = Arc::new(Authenticator::new(&c.users, c.auth.clone()).unwrap());
    let hub = Arc::new(Hub::default());
    for (name, ready) in [("cams/door", true), ("b x", true), ("waiting", false)] {
        let s = hub.create_stream(name, Presentation::from_sdp(SDP.as_bytes()).unwrap());
        hub.publish(hub.new_owner(), Claim::Exclusive, &s).unwrap();
        if ready {
            hub.set_ready(&s);
        }
    }
    let mut ctx = HttpContext::new(&c, auth);
    Web::new(hub.clone(), 8554)
        .add_routes(ctx.routes())
        .unwrap();
    ctx.hub(hub);
    ctx.into_router(Vec::new()).0
}

struct Got {
    status: u16,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

async fn get(r: &axum::Router, uri: &str, headers: &[(&str, &str)]) -> Got {
    let mut b = Request::get(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let mut req = b.body(Body::empty()).unwrap();
    req.extensions_mut().insert(Peer {
        addr: SocketAddr::from(([127, 0, 0, 1], 1)),
        tls: false,
    });
    let res = r.clone().oneshot(req).await.unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = axum::body::to_bytes(res.into_body(), 4 << 20)
        .await
        .unwrap()
        .to_vec();
    Got {
        status,
        headers,
        body,
    }
}

fn names(g: &Got) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_slice(&g.body).unwrap();
    v["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect()
}

const JSON: (&str, &str) = ("accept", "application/json");

#[tokio::test]
async fn the_list_holds_the_ready_paths_with_their_codecs_and_urls() {
    let r = router("");
    let g = get(&r, "/", &[JSON]).await;
    assert_eq!(g.status, 200);
    assert_eq!(
        names(&g),
        ["b x", "cams/door"],
        "not-ready paths are not listed"
    );
    let v: serde_json::Value = serde_json::from_slice(&g.body).unwrap();
    assert_eq!(v["rtsp_port"], 8554);
    let b = &v["paths"][0];
    assert_eq!(b["page"], "/b%20x/");
    assert_eq!(b["whep"], "/b%20x/whep");
    assert_eq!(b["hls"], "/b%20x/index.m3u8");
    assert_eq!(b["tracks"][0]["codec"], "H264");
    assert_eq!(b["tracks"][1]["codec"], "opus");
    assert_eq!(b["readers"], 0);
    // A browser's navigation gets the page, with a policy allowing only this origin.
    let page = get(&r, "/", &[("accept", "text/html,application/json;q=0.9")]).await;
    assert_eq!(page.status, 200);
    assert!(page.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"));
    assert!(csp.contains("frame-ancestors 'self'"));
    let html = String::from_utf8(page.body).unwrap();
    assert!(html.contains("/assets/index.js"), "{html}");
    assert!(!html.contains("http://") && !html.contains("https://"));
}

#[tokio::test]
async fn the_player_page_and_assets_are_served_and_embeddable() {
    let r = router("");
    let g = get(&r, "/cams/door/", &[]).await;
    assert_eq!(g.status, 200);
    let csp = g.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("frame-ancestors *") && csp.contains("media-src 'self' blob:"));
    let html = String::from_utf8(g.body).unwrap();
    assert!(html.contains("/assets/player.js"));
    // Not live yet: the page is served anyway and waits.
    assert_eq!(get(&r, "/waiting/", &[]).await.status, 200);
    for (asset, kind) in [
        ("/assets/player.js", "text/javascript"),
        ("/assets/index.js", "text/javascript"),
        ("/assets/sluice.css", "text/css"),
        ("/assets/hls.min.js", "text/javascript"),
        ("/assets/favicon.svg", "image/svg+xml"),
    ] {
        let g = get(&r, asset, &[]).await;
        assert_eq!(g.status, 200, "{asset}");
        let ct = g.headers["content-type"].to_str().unwrap();
        assert!(ct.starts_with(kind), "{asset}: {ct}");
        assert!(!g.body.is_empty());
    }
    let hls = get(&r, "/assets/hls.min.js", &[]).await;
    assert_eq!(hls.body.len(), HLS_JS.len());
    assert_eq!(get(&r, "/assets/nope.js", &[]).await.status, 404);
}

#[tokio::test]
async fn with_users_anonymous_visitors_are_asked_and_users_see_only_their_paths() {
    let toml = r#"
        [[users]]
        user = "door"
        pass = "pw"
        permissions = [{ action = "read", path = "cams/door" }]
        [[users]]
        user = "admin"
        pass = "pw2"
        permissions = [{ action = "read" }]
    "#;
    let r = router(toml);
    for accept in ["text/html", "application/json"] {
        let g = get(&r, "/", &[("accept", accept)]).await;
        assert_eq!(g.status, 401, "{accept}");
        let challenges: Vec<_> = g
            .headers
            .get_all("www-authenticate")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        assert!(
            challenges.iter().any(|c| c.starts_with("Basic")),
            "{challenges:?}"
        );
    }
    // door:pw
    let g = get(&r, "/", &[JSON, ("authorization", "Basic ZG9vcjpwdw==")]).await;
    assert_eq!(g.status, 200);
    assert_eq!(names(&g), ["cams/door"]);
    // admin:pw2
    let g = get(&r, "/", &[JSON, ("authorization", "Basic YWRtaW46cHcy")]).await;
    assert_eq!(names(&g), ["b x", "cams/door"]);
    // Wrong password: 401 again.
    let g = get(&r, "/", &[JSON, ("authorization", "Basic ZG9vcjp4")]).await;
    assert_eq!(g.status, 401);
    // The player page checks read on its path like RTSP.
    assert_eq!(get(&r, "/cams/door/", &[]).await.status, 401);
    let g = get(
        &r,
        "/cams/door/",
        &[("authorization", "Basic ZG9vcjpwdw==")],
    )
    .await;
    assert_eq!(g.status, 200);
    let g = get(&r, "/b%20x/", &[("authorization", "Basic ZG9vcjpwdw==")]).await;
    assert_eq!(g.status, 403);
}

#[tokio::test]
async fn an_anonymous_reader_sees_what_anonymous_may_read() {
    let toml = r#"
        [[users]]
        user = "any"
        permissions = [{ action = "read", path = "b x" }]
        [[users]]
        user = "admin"
        pass = "pw2"
        permissions = [{ action = "read" }]
    "#;
    let r = router(toml);
    let g = get(&r, "/", &[JSON]).await;
    assert_eq!(g.status, 200);
    assert_eq!(names(&g), ["b x"]);
    let g = get(&r, "/", &[JSON, ("authorization", "Basic YWRtaW46cHcy")]).await;
    assert_eq!(names(&g), ["b x", "cams/door"]);
}

#[test]
fn names_are_percent_encoded_per_segment() {
    assert_eq!(list::url_path("cams/front"), "cams/front");
    assert_eq!(list::url_path("a b/c?d#e"), "a%20b/c%3Fd%23e");
    assert_eq!(list::url_path("é"), "%C3%A9");
}
