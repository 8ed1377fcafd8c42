//! The browser client as the server hands it out: embedded files, the invite landing page with
//! the invite looked up (never used), and the headers that keep the page to its own code.

use reqwest::StatusCode;
use serde_json::{Value, json};
use stoa_tests::TestServer;

/// The JSON the page carries for the client, from `/i/{code}` or `/`.
fn invite_data(html: &str) -> Value {
    let start = html
        .find(r#"<script type="application/json" id="stoa-invite">"#)
        .expect("the invite data block");
    let rest = &html[start..];
    let body = &rest[rest.find('>').unwrap() + 1..rest.find("</script>").unwrap()];
    serde_json::from_str(body).expect("valid JSON")
}

async fn get(t: &TestServer, path: &str) -> reqwest::Response {
    stoa::http_client::client()
        .get(t.url(path))
        .send()
        .await
        .expect("request")
}

#[tokio::test]
async fn the_landing_page_names_the_room_without_using_the_invite() {
    let t = TestServer::start().await;
    let room = t
        .create_room("</script><script>alert(1)</script> & friends")
        .await;
    let invite = t
        .create_invite(
            &room,
            "speaker",
            json!({ "max_uses": 1, "expires_in_secs": 3600 }),
        )
        .await;
    let code = invite["code"].as_str().unwrap();

    for _ in 0..3 {
        let page = get(&t, &format!("/i/{code}")).await;
        assert_eq!(page.status(), StatusCode::OK);
        let csp = page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
        assert!(
            page.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        let html = page.text().await.unwrap();
        assert!(
            !html.contains("<script>alert"),
            "the title cannot open a script"
        );
        let data = invite_data(&html);
        assert_eq!(data["valid"], true);
        assert_eq!(
            data["room_title"],
            "</script><script>alert(1)</script> & friends"
        );
        assert_eq!(data["role"], "speaker");
        // The page forgets the code when the invite expires (client-web/storage.js).
        assert_eq!(data["expires_at"], invite["expires_at"]);
    }
    // Looking did not use it: the one use is still there.
    t.join(code, "Ada").await.expect(200);
    let used = get(&t, &format!("/i/{code}")).await;
    assert_eq!(used.status(), StatusCode::GONE);
    assert_eq!(
        invite_data(&used.text().await.unwrap())["reason"],
        "invite_used_up"
    );
}

#[tokio::test]
async fn bad_links_get_a_page_that_says_why() {
    let t = TestServer::start().await;
    let room = t.create_room("Gone soon").await;
    let invite = t.create_invite(&room, "listener", json!({})).await;
    let code = invite["code"].as_str().unwrap().to_owned();

    // Unknown and malformed codes look the same as revoked ones.
    for path in ["/i/AAAAAAAAAAAAAAAAAAAAAA".to_owned(), "/i/nope".to_owned()] {
        let page = get(&t, &path).await;
        assert_eq!(page.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(
            invite_data(&page.text().await.unwrap())["reason"],
            "invite_invalid"
        );
    }
    t.op(
        reqwest::Method::DELETE,
        &format!(
            "/api/v1/rooms/{room}/invites/{}",
            invite["id"].as_str().unwrap()
        ),
        None,
    )
    .await
    .expect(204);
    let revoked = get(&t, &format!("/i/{code}")).await;
    assert_eq!(revoked.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        invite_data(&revoked.text().await.unwrap())["reason"],
        "invite_invalid"
    );

    let other = t.create_invite(&room, "listener", json!({})).await;
    t.op(
        reqwest::Method::DELETE,
        &format!("/api/v1/rooms/{room}"),
        None,
    )
    .await
    .expect(204);
    let ended = get(&t, &format!("/i/{}", other["code"].as_str().unwrap())).await;
    assert_eq!(ended.status(), StatusCode::GONE);
    assert_eq!(
        invite_data(&ended.text().await.unwrap())["reason"],
        "room_ended"
    );

    let home = get(&t, "/").await;
    assert_eq!(home.status(), StatusCode::OK);
    assert_eq!(
        invite_data(&home.text().await.unwrap())["reason"],
        "no_invite"
    );
}

#[tokio::test]
async fn the_client_files_are_served_with_their_types() {
    let t = TestServer::start().await;
    let names: Vec<&str> = stoa::api::web::asset_names().collect();
    assert!(
        names.contains(&"index.html") && names.contains(&"app.js"),
        "{names:?}"
    );
    for name in names {
        let file = get(&t, &format!("/app/{name}")).await;
        assert_eq!(file.status(), StatusCode::OK, "{name}");
        let kind = file.headers()["content-type"].to_str().unwrap().to_owned();
        let expected = match name.rsplit_once('.').unwrap().1 {
            "js" => "text/javascript",
            "json" => "application/json",
            "css" => "text/css",
            "html" => "text/html",
            "svg" => "image/svg+xml",
            _ => "",
        };
        assert!(kind.starts_with(expected), "{name}: {kind}");
        assert_eq!(file.headers()["x-content-type-options"], "nosniff");
    }
    let missing = get(&t, "/app/nothing.js").await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let escape = get(&t, "/app/..%2FCargo.toml").await;
    assert_eq!(escape.status(), StatusCode::NOT_FOUND);
}
