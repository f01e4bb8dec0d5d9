//! The data service over real HTTP on 127.0.0.1:0.

use std::path::Path as FsPath;
use std::time::Duration;

use mlmesh_testkit::{TestServer, eventually, get_json, http};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use super::*;

struct Service {
    server: TestServer,
    dir: tempfile::TempDir,
}

async fn start(config: Config) -> Service {
    let dir = tempfile::tempdir().unwrap();
    let state = crate::open(config, dir.path()).await.unwrap();
    let server = TestServer::start(router(state, &ServerConfig::default())).await;
    Service { server, dir }
}

fn shared(path: &str) -> Vec<u8> {
    std::fs::read(mlmesh_testkit::shared_data(&format!("tabular/{path}"))).unwrap()
}

async fn post(url: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let response = http().post(url).body(body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

fn leftovers(dir: &FsPath) -> usize {
    std::fs::read_dir(dir.join("tmp")).map_or(0, |d| d.count())
}

#[tokio::test]
async fn upload_read_download_and_delete_with_events() {
    let svc = start(Config::default()).await;
    let url = &svc.server.url;
    let wine = shared("wine_quality/winequality-red.csv");

    let (status, first) = post(
        &format!("{url}/v1/datasets/wine?target=quality"),
        wine.clone(),
    )
    .await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(
        (first["rows"].as_u64(), first["number"].as_u64()),
        (Some(1599), Some(1))
    );
    assert_eq!(
        first["columns"][11],
        serde_json::json!({"name": "quality", "type": "integer"})
    );
    // The same bytes and options again: the same version, not a new one.
    let (status, again) = post(
        &format!("{url}/v1/datasets/wine?target=quality"),
        wine.clone(),
    )
    .await;
    assert_eq!(
        (status, &again["version"], &again["created"]),
        (200, &first["version"], &Value::Bool(false))
    );
    // Other options make another version.
    let (status, second) = post(&format!("{url}/v1/datasets/wine?target=alcohol"), wine).await;
    assert_eq!((status, second["number"].as_u64()), (201, Some(2)));

    let (_, list) = get_json(&format!("{url}/v1/datasets")).await;
    assert_eq!(list["datasets"][0]["versions"], 2);
    assert_eq!(list["datasets"][0]["latest_version"], second["version"]);
    let (_, detail) = get_json(&format!("{url}/v1/datasets/wine")).await;
    assert_eq!(detail["versions"].as_array().unwrap().len(), 2);
    assert_eq!(detail["latest"]["target"], "alcohol");
    assert_eq!(detail["latest"]["columns"][11]["stats"]["min"], 3.0);
    let version = first["version"].as_str().unwrap();
    for which in [version, "1"] {
        let (status, info) = get_json(&format!("{url}/v1/datasets/wine/versions/{which}")).await;
        assert_eq!((status, info["target"].as_str()), (200, Some("quality")));
    }

    let (status, page) = get_json(&format!(
        "{url}/v1/datasets/wine/versions/1/rows?offset=1597&limit=5"
    ))
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            page["total"].as_u64(),
            page["rows"].as_array().unwrap().len()
        ),
        (Some(1599), 2)
    );
    assert_eq!(page["rows"][1][10], 11.0);

    let csv = http()
        .get(format!(
            "{url}/v1/datasets/wine/versions/1/download?format=csv"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
    let csv = csv.text().await.unwrap();
    assert_eq!(csv.lines().count(), 1600);
    assert!(csv.starts_with("fixed acidity,volatile acidity"));
    let parquet = http()
        .get(format!("{url}/v1/datasets/wine/versions/latest/download"))
        .send()
        .await
        .unwrap();
    assert!(parquet.bytes().await.unwrap().starts_with(b"PAR1"));

    let response = http()
        .delete(format!("{url}/v1/datasets/wine"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let (status, _) = get_json(&format!("{url}/v1/datasets/wine")).await;
    assert_eq!(status, 404);
    assert!(!svc.dir.path().join("blobs/wine").exists());
    let (_, feed) = get_json(&format!("{url}/v1/events")).await;
    let kinds: Vec<&str> = feed["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "dataset.created",
            "dataset.version_added",
            "dataset.version_added",
            "dataset.deleted"
        ]
    );
    assert_eq!(feed["last"], 4);
    assert_eq!(leftovers(svc.dir.path()), 0);
}

#[tokio::test]
async fn every_bad_upload_is_a_clear_4xx_that_changes_nothing() {
    let svc = start(Config {
        max_upload_bytes: 10_000,
        max_columns: 5,
        ..Config::default()
    })
    .await;
    let url = &svc.server.url;
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("", b"a,b\n1,2\n3\n".to_vec(), 400, "line 3"),
        ("", Vec::new(), 400, "empty"),
        ("", b"a,b,c\n".to_vec(), 400, "no rows"),
        ("", b"a,b\n1,\xc3\x28\n".to_vec(), 400, "UTF-8"),
        ("", vec![0, 159, 146, 150, 0, 1, 2, 3], 400, "binary"),
        ("", b"a,a\n1,2\n".to_vec(), 400, "twice"),
        ("", b"a,,c\nx,y,z\n".to_vec(), 400, "empty name"),
        (
            "?target=nope",
            b"a,b\n1,2\n".to_vec(),
            400,
            "unknown target",
        ),
        (
            "?types=b:integer",
            b"a,b\n1,2\n3,x7\n".to_vec(),
            400,
            "\"x7\"",
        ),
        (
            "",
            b"a,b,c,d,e,f\n1,2,3,4,5,6\n".to_vec(),
            400,
            "limit is 5",
        ),
        ("", vec![b'1'; 20_000], 413, "larger than"),
        ("?delimiter=ab", b"a\n1\n".to_vec(), 400, "delimiter"),
        ("?types=a:complex", b"a\n1\n".to_vec(), 400, "unknown type"),
        ("?format=xls", b"a\n1\n".to_vec(), 400, "unknown format"),
        ("?colour=red", b"a\n1\n".to_vec(), 400, "colour"),
        (
            "?format=parquet",
            b"not parquet at all".to_vec(),
            400,
            "Parquet",
        ),
    ];
    for (query, body, want, needle) in cases {
        let (status, answer) = post(&format!("{url}/v1/datasets/bad{query}"), body).await;
        let message = answer["error"].as_str().unwrap_or_default();
        assert_eq!(status, want, "{query}: {answer}");
        assert!(
            message.contains(needle),
            "{query}: {message:?} lacks {needle:?}"
        );
    }
    for name in ["has%20space", "-dash", "a%2Fb", &"n".repeat(65)] {
        let (status, _) = post(&format!("{url}/v1/datasets/{name}"), "a\n1\n").await;
        assert_eq!(status, 400, "{name}");
    }
    let (_, list) = get_json(&format!("{url}/v1/datasets")).await;
    assert_eq!(list["datasets"], serde_json::json!([]));
    let (_, feed) = get_json(&format!("{url}/v1/events")).await;
    assert_eq!(feed["events"], serde_json::json!([]));
    assert_eq!(leftovers(svc.dir.path()), 0);
    assert!(!svc.dir.path().join("blobs/bad").exists());

    // Reads of what is not there.
    post(&format!("{url}/v1/datasets/ok"), "a\n1\n").await;
    for (path, want) in [
        ("/v1/datasets/none", 404),
        ("/v1/datasets/ok/versions/9", 404),
        ("/v1/datasets/ok/versions/ffff/rows", 404),
        ("/v1/datasets/ok/versions/1/rows?limit=100000", 400),
        ("/v1/datasets/ok/versions/1/rows?offset=-1", 400),
        ("/v1/datasets/ok/versions/1/download?format=xlsx", 400),
        ("/v1/events?after=-5", 400),
    ] {
        let (status, body) = get_json(&format!("{url}{path}")).await;
        assert_eq!(status, want, "{path}: {body}");
    }
    let response = http()
        .delete(format!("{url}/v1/datasets/none"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

/// Opens a raw connection and sends an upload's headers and part of its body.
async fn partial_upload(url: &str, name: &str) -> tokio::net::TcpStream {
    let addr = url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/datasets/{name} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 1000000\r\n\r\na,b\n1,2\n3,4\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.flush().await.unwrap();
    stream
}

#[tokio::test]
async fn a_client_that_disconnects_mid_upload_leaves_nothing() {
    let svc = start(Config {
        max_concurrent_uploads: 1,
        ..Config::default()
    })
    .await;
    let url = &svc.server.url;
    let (status, _) = post(&format!("{url}/v1/datasets/before"), "a\n1\n").await;
    assert_eq!(status, 201);
    let stream = partial_upload(url, "gone").await;
    eventually(
        Duration::from_secs(5),
        "the upload is receiving",
        || async { (leftovers(svc.dir.path()) == 1).then_some(()) },
    )
    .await;
    // Reads answer while an upload is in flight.
    for path in [
        "/v1/datasets",
        "/v1/datasets/before",
        "/v1/datasets/before/versions/1/rows",
        "/v1/events",
    ] {
        let (status, _) =
            tokio::time::timeout(Duration::from_secs(2), get_json(&format!("{url}{path}")))
                .await
                .expect("a read waited on the upload");
        assert_eq!(status, 200, "{path}");
    }
    // While it holds the only upload slot, another upload is turned away with 429.
    let response = http()
        .post(format!("{url}/v1/datasets/other"))
        .body("a\n1\n")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));

    drop(stream);
    eventually(
        Duration::from_secs(5),
        "temporary files removed",
        || async { (leftovers(svc.dir.path()) == 0).then_some(()) },
    )
    .await;
    let (status, _) = get_json(&format!("{url}/v1/datasets/gone")).await;
    assert_eq!(status, 404);
    let (status, _) = post(&format!("{url}/v1/datasets/other"), "a\n1\n").await;
    assert_eq!(status, 201, "the slot is free again");
}

#[tokio::test]
async fn the_event_feed_long_polls() {
    let svc = start(Config::default()).await;
    let url = svc.server.url.clone();
    let waiter = tokio::spawn({
        let url = url.clone();
        async move { get_json(&format!("{url}/v1/events?after=0&wait_ms=20000")).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = std::time::Instant::now();
    post(&format!("{url}/v1/datasets/fresh"), "a\n1\n").await;
    let (status, feed) = waiter.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(feed["events"][0]["kind"], "dataset.created");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "answered on the change"
    );
}

#[tokio::test]
async fn jsonl_and_parquet_uploads() {
    let svc = start(Config::default()).await;
    let url = &svc.server.url;
    let (status, answer) = post(
        &format!("{url}/v1/datasets/j"),
        "{\"x\": 1, \"y\": \"a\"}\n{\"x\": 2}\n",
    )
    .await;
    assert_eq!(
        (status, answer["rows"].as_u64()),
        (201, Some(2)),
        "{answer}"
    );
    let parquet = http()
        .get(format!("{url}/v1/datasets/j/versions/1/download"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let (status, answer) = post(&format!("{url}/v1/datasets/p"), parquet).await;
    assert_eq!(
        (status, answer["rows"].as_u64()),
        (201, Some(2)),
        "{answer}"
    );
    assert_eq!(
        answer["columns"][1],
        serde_json::json!({"name": "y", "type": "string"})
    );
}

#[tokio::test]
async fn leftovers_of_a_crash_are_swept_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let state = crate::open(Config::default(), dir.path()).await.unwrap();
    let server = TestServer::start(router(state, &ServerConfig::default())).await;
    post(&format!("{}/v1/datasets/kept", server.url), "a\n1\n").await;
    server.stop();
    // What a crash could leave: a half-received upload, and a blob whose row never committed.
    std::fs::write(dir.path().join("tmp/x.upload"), b"half").unwrap();
    std::fs::create_dir_all(dir.path().join("blobs/ghost")).unwrap();
    std::fs::write(dir.path().join("blobs/ghost/0123.parquet"), b"PAR1").unwrap();
    let state = crate::open(Config::default(), dir.path()).await.unwrap();
    assert_eq!(leftovers(dir.path()), 0);
    assert!(!dir.path().join("blobs/ghost").exists());
    let server = TestServer::start(router(state, &ServerConfig::default())).await;
    let (status, _) = get_json(&format!("{}/v1/datasets/kept/versions/1/rows", server.url)).await;
    assert_eq!(status, 200);
}
