//! The ledger survives `kill -9` in the middle of load, with either backend: a real `weir serve`
//! child is killed with SIGKILL while eight clients keep it busy; every request a client saw
//! answered has its record in the file, `weir spend` reads the file's totals before and after a
//! restart, and the restarted gateway's budgets start from the same spending (with Redis: from
//! Redis's totals, which the restarted replica completes from its file).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weir::state::ledger::Ledger;
use weir_bench::mock::MockUpstream;

use crate::processes::{RedisServer, WeirProcess, free_port, spend, temp_dir};
use crate::support::state_dir;

const ALICE: &str = "alice-key-0123456789abcdef";

fn config(mock: &MockUpstream, listen: SocketAddr, ledger: &std::path::Path, redis: Option<&RedisServer>) -> String {
    let backend = match redis {
        Some(redis) => format!("backend = \"redis\"\n\n[state.redis]\nurl = \"{}\"\ntimeout = \"1s\"\n", redis.url()),
        None => "backend = \"embedded\"\n".to_owned(),
    };
    format!(
        r#"
[server]
listen = "{listen}"

[log]
level = "warn"

[[upstreams]]
name = "mock"
endpoint = "{mock}"

[[models]]
name = "m"
targets = [{{ upstream = "mock", model = "x" }}]

[[keys]]
name = "alice"
team = "red"
key = "{ALICE}"

[prices."mock/x"]
input = 2.0
output = 8.0

[[plugins]]
name = "cost"
source = "builtin:cost"
on_error = "closed"
deadline = "3s"
# A budget no ordinary request reaches; a request asking for a million tokens is refused, and the
# refusal says how much was spent.
config = {{ budgets = [{{ key = "alice", usd = 1.0, period = "day" }}] }}

[state]
ledger = "{ledger}"
plugin_cache = "{cache}"
{backend}"#,
        mock = mock.base_url(),
        ledger = ledger.display(),
        cache = state_dir().join(".weir-cache").display(),
    )
}

/// What the restarted gateway says alice spent, from its refusal of a request too large for her
/// budget.
async fn spent_as_seen_by(weir: &WeirProcess) -> String {
    let body = r#"{"model":"m","max_tokens":1000000,"messages":[{"role":"user","content":"hi"}]}"#;
    let response = reqwest::Client::new()
        .post(weir.url("/v1/chat/completions"))
        .bearer_auth(ALICE)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 429);
    let body: serde_json::Value = response.json().await.expect("json");
    let message = body["error"]["message"].as_str().expect("message").to_owned();
    // "… over its budget of $1 per day: $X spent, and …"
    message.split(": $").nth(1).and_then(|rest| rest.split(' ').next()).expect("spent in the message").to_owned()
}

fn usd(pico: u64) -> String {
    let (whole, frac) = (pico / 1_000_000_000_000, pico % 1_000_000_000_000);
    if frac == 0 { whole.to_string() } else { format!("{whole}.{}", format!("{frac:012}").trim_end_matches('0')) }
}

async fn survives_kill_9(redis: Option<&RedisServer>) {
    let mock = MockUpstream::builder().latency(Duration::from_millis(10)).start().await;
    let dir = temp_dir("kill9");
    let ledger = dir.join("ledger.jsonl");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let mut weir = WeirProcess::start(&dir, "weir", addr, &config(&mock, addr, &ledger, redis)).await;

    // Eight clients send back to back; each answered request's id is remembered.
    let answered = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let url = weir.url("/v1/chat/completions");
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (answered, stop, url) = (answered.clone(), stop.clone(), url.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let body = r#"{"model":"m","max_tokens":10,"messages":[{"role":"user","content":"count me"}]}"#;
                // Bounded: the kill below ends it long before.
                for _ in 0..2000 {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let sent = client
                        .post(&url)
                        .bearer_auth(ALICE)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await;
                    let Ok(response) = sent else { return };
                    let id = response.headers().get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
                    if response.status() == 200 && response.bytes().await.is_ok() {
                        answered.lock().unwrap().push(id.expect("x-request-id"));
                    }
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while answered.lock().unwrap().len() < 150 {
        assert!(Instant::now() < deadline, "the load did not get going");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Mid-load: requests are in flight on every connection.
    weir.kill9();
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.expect("client");
    }

    let records = Ledger::read(&ledger).expect("ledger");
    let ids: std::collections::HashSet<&str> = records.iter().map(|e| e.request_id.as_str()).collect();
    let answered = answered.lock().unwrap().clone();
    let missing: Vec<_> = answered.iter().filter(|id| !ids.contains(id.as_str())).collect();
    assert!(
        missing.is_empty(),
        "{} of {} answered requests have no record: {missing:?}",
        missing.len(),
        answered.len()
    );
    assert!(records.len() >= answered.len());
    let total: u64 = records.iter().map(|e| e.cost_pico_usd).sum();
    assert!(total > 0);
    let rows = spend(&[&ledger]);
    let reported = rows.last().expect("total row");
    assert_eq!(
        (reported["requests"].as_u64(), reported["cost_pico_usd"].as_u64()),
        (Some(records.len() as u64), Some(total))
    );

    // A restart reads the same totals: `weir spend`, and the budget the cost plugin enforces.
    weir.restart().await;
    assert_eq!(spend(&[&ledger]), rows, "the file is unchanged by the restart");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // With Redis the restarted replica first sends what Redis did not get before the kill.
        let seen = spent_as_seen_by(&weir).await;
        if seen == usd(total) {
            break;
        }
        assert!(Instant::now() < deadline, "the restarted gateway sees ${seen} spent, the ledger ${}", usd(total));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "kill -9 after {} answers: {} records, ${} (redis: {})",
        answered.len(),
        records.len(),
        usd(total),
        redis.is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_ledger_survives_kill_9_mid_load() {
    survives_kill_9(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_survives_kill_9_mid_load_with_redis() {
    let redis = RedisServer::start().await;
    survives_kill_9(Some(&redis)).await;
}
