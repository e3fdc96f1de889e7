//! Weir embedded in a tiny hyper service: the application's own `GET /hello`, and every OpenAI
//! route of Weir under `/ai/` (`/ai/v1/chat/completions`, `/ai/v1/models`, `/ai/healthz` …), served
//! in the same process with no second port and no sidecar.
//!
//! ```text
//! cargo run -p weir --example embed                 # every model to $WEIR_UPSTREAM (default: Ollama's port)
//! cargo run -p weir --example embed -- weir.toml    # or a configuration file of your own
//! curl localhost:3000/hello
//! curl localhost:3000/ai/v1/chat/completions -d '{"model":"llama3.2","messages":[{"role":"user","content":"hi"}]}'
//! ```

use std::convert::Infallible;

use http::{Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use weir::embed::{RateLimit, Upstream, Weir};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let weir = match std::env::args().nth(1) {
        Some(path) => Weir::from_file(path).await?,
        // Without one, a gateway configured in code: every model name to one OpenAI-compatible
        // upstream, each caller at most 60 requests a minute.
        None => {
            let endpoint = std::env::var("WEIR_UPSTREAM").unwrap_or_else(|_| "http://127.0.0.1:11434/v1".to_owned());
            let key = std::env::var("WEIR_UPSTREAM_KEY").unwrap_or_default();
            Weir::builder()
                .upstream(Upstream::openai("upstream", &endpoint).api_key(&key))
                .model("*", ["upstream"])
                .rate_limit(RateLimit::global().requests_per_minute(60))
                .start()
                .await?
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    #[expect(clippy::print_stdout, reason = "the example's output")]
    {
        println!("listening on http://{}: /hello, and Weir under /ai/", listener.local_addr()?);
    }
    loop {
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = tokio::signal::ctrl_c() => break,
        };
        let weir = weir.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let weir = weir.clone();
                async move { Ok::<_, Infallible>(route(&weir, request).await) }
            });
            // A connection's error (a client gone mid-request) ends that connection only.
            let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(tcp), service).await;
        });
    }
    // Model requests arriving from now on get a 503; those in flight finish.
    weir.shutdown().await;
    Ok(())
}

async fn route(weir: &Weir, request: Request<Incoming>) -> Response<weir::Body> {
    if request.uri().path() == "/hello" {
        return Response::new(weir::body::full("hello from the application\n"));
    }
    // `/ai/v1/chat/completions?x` becomes `/v1/chat/completions?x` for Weir.
    let inner = request.uri().path_and_query().and_then(|p| p.as_str().strip_prefix("/ai")).map(str::to_owned);
    match inner.filter(|rest| rest.starts_with('/')).and_then(|rest| rest.parse::<Uri>().ok()) {
        Some(uri) => {
            let (mut parts, body) = request.into_parts();
            parts.uri = uri;
            weir.handle(Request::from_parts(parts, body)).await
        }
        None => {
            let mut response = Response::new(weir::body::full("not found\n"));
            *response.status_mut() = StatusCode::NOT_FOUND;
            response
        }
    }
}
