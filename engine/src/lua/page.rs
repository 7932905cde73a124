//! `egress:chrome { ... }` and the page handle it returns: `page.video`, `page.audio`,
//! `page:wait_console(text, { timeout = s })`, `page:on_console(text, fn)`.

use std::sync::Arc;
use std::time::Duration;

use mlua::{Function, Table, UserData, UserDataFields, UserDataMethods};

use super::ctx::Command;
use super::ctx::{EgressCtx, MediaHandle};
use crate::media::chrome::{ChromeOptions, ChromeSession, Console, PageEvents};
use crate::media::{MediaKind, MediaPad};

pub struct PageHandle {
    ctx: Arc<EgressCtx>,
    console: Arc<Console>,
    pads: Vec<MediaPad>,
}

/// Launches chromium on `opts.url`; its size and rate follow the request's encoding.
pub async fn open(ctx: Arc<EgressCtx>, opts: Table) -> mlua::Result<PageHandle> {
    let settings = &ctx.request.settings;
    let options = ChromeOptions {
        url: opts.get::<String>("url").map_err(|_| mlua::Error::runtime("chrome: `url` is required"))?,
        width: opts.get::<Option<u32>>("width")?.unwrap_or(settings.width),
        height: opts.get::<Option<u32>>("height")?.unwrap_or(settings.height),
        framerate: opts.get::<Option<u32>>("framerate")?.unwrap_or(settings.framerate),
        video: opts.get::<Option<bool>>("video")?.unwrap_or(true),
        audio: opts.get::<Option<bool>>("audio")?.unwrap_or(true),
        load_timeout: crate::clock::seconds(opts.get::<Option<f64>>("load_timeout")?.unwrap_or(30.0)),
    };
    if !options.video && !options.audio {
        return Err(mlua::Error::runtime("chrome: video and audio are both off"));
    }
    if !(options.url.starts_with("http://") || options.url.starts_with("https://")) {
        return Err(mlua::Error::runtime(format!("chrome: `{}` is not an http(s) URL", options.url)));
    }
    // Launching chromium takes a few seconds on top of the page's own load time.
    // (Named without its query: a layout page's carries an access token.)
    let page = options.url.split(['?', '#']).next().unwrap_or_default();
    ctx.waiting_for(format!("the page {page} to load"), options.load_timeout + Duration::from_secs(15));
    let (console_commands, crash_commands) = (ctx.commands.clone(), ctx.commands.clone());
    let events = PageEvents {
        on_console: Box::new(move |text| {
            let _ = console_commands.send(Command::Console { text });
        }),
        on_crash: Box::new(move |reason| {
            let _ = crash_commands.send(Command::Fail { reason });
        }),
    };
    let session =
        ChromeSession::launch(&ctx.id, &options, events).await.map_err(|e| mlua::Error::runtime(format!("{e:#}")))?;
    let pads = {
        let graph = ctx.graph.lock().unwrap();
        session.capture(&graph.pipeline, &options).map_err(|e| mlua::Error::runtime(format!("{e:#}")))?
    };
    let console = session.console.clone();
    tracing::debug!(egress = %ctx.id, pid = ?session.pid, url = %options.url, "capturing");
    ctx.keep(Box::new(session));
    Ok(PageHandle { ctx, console, pads })
}

impl UserData for PageHandle {
    fn add_fields<F: UserDataFields<Self>>(fields: &mut F) {
        for kind in [MediaKind::Video, MediaKind::Audio] {
            fields.add_field_method_get(kind.name(), move |_, this| {
                Ok(this.pads.iter().find(|p| p.kind == kind).cloned().map(MediaHandle))
            });
        }
    }

    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        // page:wait_console("START_RECORDING", { timeout = 30 }) -> true, or false on timeout
        methods.add_async_method("wait_console", |lua, this, (pattern, opts): (String, Option<Table>)| {
            crate::lua::budget::paused(lua.clone(), async move {
                let timeout = match &opts {
                    Some(o) => o.get::<Option<f64>>("timeout")?.unwrap_or(30.0),
                    None => 30.0,
                };
                let wait = crate::clock::seconds(timeout.min(3600.0));
                this.ctx.waiting_for(format!("the page's console message `{pattern}`"), wait);
                Ok(this.console.wait_for(&pattern, wait).await)
            })
        });

        // page:on_console("END_RECORDING", fn): fn(text) for each matching console message
        methods.add_method("on_console", |lua, this, (pattern, f): (String, Function)| {
            this.ctx.add_handler(lua, "console", Some(pattern), f)
        });
    }
}
