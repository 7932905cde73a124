//! egret: an egress engine. Lua recipes describe egresses; Rust runs them as supervised
//! GStreamer pipelines, started over HTTP.

mod always_on;
mod auth;
mod cli;
mod clock;
mod config;
mod egress;
mod errors;
mod http;
mod http_client;
mod livekit;
mod lua;
mod media;
mod metrics;
mod proto;
mod recipes;
mod reload;
mod request;
mod storage;
mod twirp;
mod webhooks;
mod worker;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

const USAGE: &str =
    "usage: egret [--config egress.toml] [--url URL] [serve | token [--ttl SECONDS] | check | repair FILE…
             | start … | list | show ID | stop ID | watch]
  serve   run the engine (default)
  token   print a roomRecord access token for this config's API key
  check   validate the config and every recipe, then exit
  repair  make crash-safe MP4s that a crash cut off playable, in place (egret repairs the
          ones it was writing itself at its next start)";

/// How long SIGTERM/SIGINT waits for running egresses before exiting regardless.
const DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut config_path = PathBuf::from("egress.toml");
    let mut command = String::from("serve");
    let mut ttl = 3600u64;
    let mut files = Vec::new();
    let mut url = None;
    let mut client_args: Vec<String> = Vec::new();
    while let Some(arg) = args.next() {
        if cli::COMMANDS.contains(&command.as_str()) {
            client_args.push(arg); // everything after a client command is its own
            continue;
        }
        match arg.as_str() {
            "--config" | "-c" => config_path = args.next().map(PathBuf::from).unwrap_or_default(),
            "--ttl" => match args.next().and_then(|v| v.parse::<u64>().ok()).filter(|t| *t > 0) {
                Some(seconds) => ttl = seconds,
                None => {
                    eprintln!("--ttl takes a whole number of seconds above 0\n{USAGE}");
                    return ExitCode::from(2);
                }
            },
            "--url" => url = args.next(),
            "serve" | "token" | "check" | "repair" => command = arg,
            client if cli::COMMANDS.contains(&client) => command = arg,
            file if command == "repair" && !file.starts_with('-') => files.push(PathBuf::from(file)),
            "-h" | "--help" => {
                // A reader that closes early (`egret --help | head -1`) is not an error.
                let _ = writeln!(std::io::stdout(), "{USAGE}\n{}", cli::USAGE);
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("unknown argument `{other}`\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    if command == "repair" {
        return repair(&files);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,chromiumoxide=error".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = match config::Config::load(&config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: {e}", config_path.display());
            return ExitCode::from(2);
        }
    };
    if cli::COMMANDS.contains(&command.as_str()) {
        return cli::run(&config, &command, &client_args, url);
    }
    let result = match command.as_str() {
        "token" => {
            println!(
                "{}",
                auth::Verifier::new(&config.server.api_key, &config.server.api_secret).mint("egret-cli", ttl)
            );
            Ok(())
        }
        "check" => check(&config),
        _ => tokio::runtime::Builder::new_multi_thread()
            // At least 4 threads even on 2 cores: a recipe's Lua holds a thread while it runs
            // (up to its budget), and the other egresses must go on meanwhile.
            .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get()).max(4))
            .enable_all()
            .build()
            .map_err(Into::into)
            .and_then(|rt| {
                let served = rt.block_on(serve(config, config_path));
                // Everything is finalized and saved by now. Dropping the runtime would wait
                // for every blocking task, and one stuck in GStreamer (a retired webrtcbin
                // going to NULL) kept egret alive after "bye": bounded instead.
                rt.shutdown_timeout(std::time::Duration::from_secs(3));
                served
            }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("egret: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn repair(files: &[PathBuf]) -> ExitCode {
    if files.is_empty() {
        eprintln!("repair: name the MP4 files to repair\n{USAGE}");
        return ExitCode::from(2);
    }
    let mut failed = false;
    for file in files {
        match media::outputs::repair_mp4(file) {
            Ok(Some(seconds)) => println!("{}: repaired, {seconds:.3} s of media", file.display()),
            Ok(None) => println!("{}: nothing to repair", file.display()),
            Err(e) => {
                eprintln!("{}: {e:#}", file.display());
                failed = true;
            }
        }
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

fn check(config: &config::Config) -> Result<()> {
    let recipes = recipes::Recipes::load(&config.recipes.dir);
    let broken: Vec<String> = recipes
        .to_json()
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["last_error"].as_str().map(str::to_string))
        .collect();
    if broken.is_empty() {
        println!("config and recipes OK");
        Ok(())
    } else {
        anyhow::bail!("{} recipe(s) failed to load:\n  {}", broken.len(), broken.join("\n  "))
    }
}

async fn serve(mut config: config::Config, config_path: PathBuf) -> Result<()> {
    // As the file says it: a reload compares the file's new text against this.
    let as_written = config.clone();
    gstreamer::init().context("GStreamer could not start")?;
    let missing = media::preload_plugins();
    livekit::prepare_dtls_certificate();
    if !missing.is_empty() {
        tracing::warn!(?missing, "GStreamer elements missing: outputs needing them will fail (run tests/setup.sh)");
    }
    std::fs::create_dir_all(&config.storage.dir)
        .with_context(|| format!("storage dir {}", config.storage.dir.display()))?;
    // Absolute paths: file watcher events and output paths are compared against them.
    config.storage.dir = config.storage.dir.canonicalize()?;
    config.recipes.dir =
        config.recipes.dir.canonicalize().with_context(|| format!("recipes dir {}", config.recipes.dir.display()))?;
    // Bound first: the room composite recipe hands Chrome this server's /layouts/ URL.
    let listener = TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("listening on {}", config.server.listen))?;
    let mut local = listener.local_addr()?;
    if local.ip().is_unspecified() {
        local.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    config.recipes.layouts_url = format!("http://{local}/layouts/");
    match config.recipes.layouts.canonicalize() {
        Ok(dir) => config.recipes.layouts = dir,
        Err(e) => {
            tracing::warn!("layouts dir {}: {e} (room composite pages unavailable)", config.recipes.layouts.display())
        }
    }
    let config = Arc::new(config);

    media::chrome::pool::refill();
    let recipes = recipes::Recipes::load(&config.recipes.dir);
    let _watcher = recipes.watch().context("watching the recipes directory")?;
    let manager = egress::manager::Manager::new(config.clone(), recipes);
    let store = egress::store::Store::open(&config.server.state_dir).context("[server] state_dir")?;
    manager.observe(store.observer());
    // Webhooks follow every egress as an observer (so does the worker mode below).
    {
        let webhooks = webhooks::Notifier::start(&config);
        let storage = config.storage.dir.clone();
        manager.observe(Arc::new(move |record| {
            let storage = storage.clone();
            webhooks.follow(record.clone(), move |r| egress::livekit::info_of(r, &storage));
        }));
    }
    manager.observe(Arc::new(metrics::follow));
    // Before anything starts: the worker reports every egress to livekit-server.
    let worker = match &config.worker {
        Some(w) => {
            let worker = worker::Worker::start(w, manager.clone()).await.context("worker mode (redis)")?;
            manager.observe(worker.observer());
            Some(worker)
        }
        None => None,
    };
    manager.restore(store.restore(&config.storage.dir));
    let always_on = always_on::AlwaysOn::new(manager.clone());
    let problems = always_on.check(&config.always_on);
    if !problems.is_empty() {
        anyhow::bail!("always-on entries are invalid:\n  {}", problems.join("\n  "));
    }
    always_on.apply(config.always_on.clone());
    let verifier =
        Arc::new(std::sync::RwLock::new(auth::Verifier::new(&config.server.api_key, &config.server.api_secret)));
    let reloader = reload::Reloader::new(as_written, always_on.clone(), verifier.clone());
    let _config_watcher = reloader.watch(&config_path).context("watching the config file")?;
    let metrics = metrics::Metrics::new(manager.clone(), worker.as_ref().map(|w| w.admission()));
    let api = Arc::new(http::Api {
        manager: manager.clone(),
        verifier,
        layouts: config.recipes.layouts.clone(),
        metrics,
        metrics_public: config.server.metrics_public,
        always_on: always_on.clone(),
    });
    tracing::info!(listen = %config.server.listen, storage = %config.storage.dir.display(), "egret ready");

    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    // The API gets threads of its own: while a recipe's Lua runs, it holds an engine thread,
    // and requests (above all /healthz) must not queue behind it.
    let api_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("egret-api")
        .enable_all()
        .build()
        .context("starting the API's runtime")?;
    let listener = listener.into_std()?;
    let engine = tokio::runtime::Handle::current();
    let server = api_runtime.spawn(async move {
        match TcpListener::from_std(listener) {
            Ok(listener) => http::serve(api, listener, shutdown_rx, engine).await,
            Err(e) => tracing::error!("the API cannot listen: {e}"),
        }
    });
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = int.recv() => tracing::info!("SIGINT: draining"),
    }
    // Drain: no new egresses, every running one finalized, then exit.
    always_on.stop_all();
    // Outputs get 10 s to finalize, uploads their retries; a pipeline wedged in a state
    // change would hold the drain (and the runtime's shutdown) forever, so give up after this.
    if tokio::time::timeout(DRAIN_LIMIT, manager.drain()).await.is_err() {
        tracing::error!(seconds = DRAIN_LIMIT.as_secs(), "egresses did not finalize in time; exiting anyway");
        std::process::exit(1);
    }
    // Every record as it ended, on disk before the process goes (the store's own followers
    // may not have run since the last change).
    for record in manager.list().iter().filter(|r| !r.is_restored()) {
        store.save(record);
    }
    if let Some(worker) = &worker {
        worker.flush().await;
    }
    media::chrome::pool::clear().await;
    let _ = shutdown_tx.send(true);
    let _ = server.await;
    api_runtime.shutdown_background();
    tracing::info!("all egresses finalized; bye");
    Ok(())
}
