//! The admin pages (`/metrics`, `/cluster`) are not for strangers: a peer
//! that is not loopback (here: loopback not trusted) gets FORBIDDEN without
//! the admin token, and the pages with it.

mod common;

use common::{start_node, url};

async fn get(url: &str, token: Option<&str>) -> reqwest::StatusCode {
    let mut rb = reqwest::Client::new().get(url);
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    rb.send().await.expect("answer").status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_pages_need_loopback_or_the_token() {
    // Default: loopback peers (every test peer) see the pages.
    let (node, _clock, _dir) = start_node(|_| {}).await;
    let u = url(&node);
    for page in ["/metrics", "/cluster"] {
        assert!(get(&format!("{u}{page}"), None).await.is_success());
    }
    node.stop().await;

    const TOKEN: &str = "admin-token-for-the-test";
    let (node, _clock, _dir) = start_node(|c| {
        c.gateway.admin_loopback = false;
        c.gateway.admin_token = Some(TOKEN.into());
    })
    .await;
    let u = url(&node);
    for page in ["/metrics", "/cluster"] {
        let page = format!("{u}{page}");
        assert_eq!(get(&page, None).await, reqwest::StatusCode::FORBIDDEN);
        assert_eq!(
            get(&page, Some("admin-token-for-the-tesT")).await,
            reqwest::StatusCode::FORBIDDEN
        );
        assert!(get(&page, Some(TOKEN)).await.is_success());
    }
    // Client endpoints are not admin pages.
    assert!(get(&format!("{u}/healthz"), None).await.is_success());
    node.stop().await;
}
