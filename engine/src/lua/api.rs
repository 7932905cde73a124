//! What a recipe's `start(req, egress)` can call. Every method builds or drives GStreamer
//! pieces in Rust; Lua holds only handles (`egress`, sources' `video`/`audio`, encoders).

use mlua::{Function, LuaSerdeExt, Table, UserData, UserDataFields, UserDataMethods, Value};

use super::ctx::Command;
pub use super::ctx::{EVENTS, EgressCtx, EgressHandle, EncoderHandle, MediaHandle};
use crate::media::MediaKind;
use crate::media::outputs::parse_outputs;
use crate::media::testsrc::TestSourceOptions;
use crate::request::{EncodeSettings, FieldError};

fn field_error(e: FieldError) -> mlua::Error {
    mlua::Error::external(e)
}

fn runtime(e: anyhow::Error) -> mlua::Error {
    mlua::Error::runtime(format!("{e:#}"))
}

impl UserData for MediaHandle {
    fn add_fields<F: UserDataFields<Self>>(fields: &mut F) {
        fields.add_field_method_get("kind", |_, this| Ok(this.0.kind.name()));
    }
}

impl UserData for EgressHandle {
    fn add_fields<F: UserDataFields<Self>>(fields: &mut F) {
        fields.add_field_method_get("id", |_, this| Ok(this.0.id.clone()));
        fields.add_field_method_get("recipe", |_, this| Ok(this.0.recipe.clone()));
    }

    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        // egress:testsrc { video = true, audio = true, av_sync = false, tone = 440 }
        methods.add_method("testsrc", |lua, this, opts: Option<Table>| {
            let opts = opts.unwrap_or(lua.create_table()?);
            let options = TestSourceOptions {
                video: opts.get::<Option<bool>>("video")?.unwrap_or(true),
                audio: opts.get::<Option<bool>>("audio")?.unwrap_or(true),
                av_sync: opts.get::<Option<bool>>("av_sync")?.unwrap_or(false),
                tone_hz: opts.get::<Option<f64>>("tone")?.unwrap_or(440.0),
            };
            if !options.video && !options.audio {
                return Err(mlua::Error::runtime("testsrc: video and audio are both off"));
            }
            let pads = this.0.graph.lock().unwrap().add_testsrc(&options).map_err(runtime)?;
            let source = lua.create_table()?;
            for pad in pads {
                source.set(pad.kind.name(), MediaHandle(pad))?;
            }
            Ok(source)
        });

        // egress:encode { video = src.video, audio = src.audio [, preset = ..., advanced = ...] }
        methods.add_method("encode", |lua, this, opts: Table| {
            let mut inputs = Vec::new();
            for kind in [MediaKind::Video, MediaKind::Audio] {
                match opts.get::<Value>(kind.name())? {
                    Value::Nil | Value::Boolean(false) => {}
                    Value::UserData(ud) => {
                        let media = match ud.borrow::<super::room::SlotHandle>() {
                            Ok(slot) => slot.media.clone(),
                            Err(_) => ud.borrow::<MediaHandle>()?.clone(),
                        };
                        if media.0.kind != kind {
                            return Err(mlua::Error::runtime(format!(
                                "encode: `{}` was given {} media",
                                kind.name(),
                                media.0.kind.name()
                            )));
                        }
                        inputs.push(media.0.clone());
                    }
                    _ => {
                        return Err(mlua::Error::runtime(format!("encode: `{}` must be a source's {0}", kind.name())));
                    }
                }
            }
            if inputs.is_empty() {
                return Err(mlua::Error::runtime("encode: give `video`, `audio` or both"));
            }
            let settings = if opts.contains_key("preset")? || opts.contains_key("advanced")? {
                let preset: serde_json::Value = lua.from_value(opts.get::<Value>("preset")?)?;
                let advanced: serde_json::Value = lua.from_value(opts.get::<Value>("advanced")?)?;
                let only = serde_json::json!({ "preset": preset, "advanced": advanced });
                let only = crate::request::fields::snake_case_keys(strip_nulls(only));
                EncodeSettings::from_request(&only).map_err(field_error)?
            } else {
                this.0.request.settings.clone()
            };
            let mut settings = settings;
            if let Some(speed) = opts.get::<Option<String>>("speed")? {
                settings.x264_speed =
                    crate::request::encoding::X264_SPEEDS.iter().find(|s| **s == speed).ok_or_else(|| {
                        let known = crate::request::encoding::X264_SPEEDS.join(", ");
                        mlua::Error::runtime(format!("encode: speed must be one of {known}, not `{speed}`"))
                    })?;
            }
            let index = this.0.graph.lock().unwrap().add_encoder(settings, &inputs).map_err(runtime)?;
            Ok(EncoderHandle { ctx: this.0.clone(), index })
        });

        // egress:join(room), egress:copy { video = track }, egress:slot(kind)
        super::room::add_egress_methods(methods);

        // egress:chrome { url = ..., video = true, audio = true }: a page captured with its sound.
        methods.add_async_method("chrome", |lua, this, opts: Table| {
            crate::lua::budget::paused(lua.clone(), async move { super::page::open(this.0.clone(), opts).await })
        });

        // egress:fail(reason): ends the egress as failed; what was recorded is finalized.
        methods.add_method("fail", |_, this, reason: String| {
            let _ = this.0.commands.send(Command::Fail { reason });
            Ok(())
        });

        // egress:stop(reason): ends the egress; files are finalized.
        methods.add_method("stop", |_, this, reason: Option<String>| {
            let reason = reason.unwrap_or_else(|| "stopped by recipe".into());
            let _ = this.0.commands.send(Command::Stop { reason });
            Ok(())
        });

        // egress:on("stop", fn)
        methods.add_method("on", |lua, this, (event, f): (String, Function)| {
            if !EVENTS.contains(&event.as_str()) {
                return Err(mlua::Error::runtime(format!(
                    "on: unknown event `{event}` (known: {})",
                    EVENTS.join(", ")
                )));
            }
            this.0.add_handler(lua, &event, None, f)
        });

        // egress:after(seconds, fn): runs fn once, later, unless the egress ended.
        methods.add_method("after", |lua, this, (seconds, f): (f64, Function)| {
            if !(seconds.is_finite() && seconds >= 0.0) {
                return Err(mlua::Error::runtime("after: seconds must be a non-negative number"));
            }
            let id = this.0.add_timer(lua, f)?;
            let commands = this.0.commands.clone();
            tokio::spawn(async move {
                tokio::time::sleep(crate::clock::seconds(seconds)).await;
                let _ = commands.send(Command::Timer { id });
            });
            Ok(id)
        });

        // egress:set_var("room_name", "lobby"): a value for `{room_name}` in output paths.
        methods.add_method("set_var", |_, this, (name, value): (String, String)| {
            this.0.graph.lock().unwrap().template.set(&name, &value);
            Ok(())
        });
    }
}

impl UserData for EncoderHandle {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        // encoder:output(req): every output the table names (file_outputs, stream_outputs...).
        methods.add_method("output", |lua, this, spec: Table| {
            let json: serde_json::Value = lua.from_value(Value::Table(spec))?;
            let json = crate::request::fields::snake_case_keys(strip_nulls(json));
            let mut graph = this.ctx.graph.lock().unwrap();
            let settings = graph.encoder_settings(this.index);
            let outputs = parse_outputs(&json, &settings).map_err(field_error)?;
            graph.add_outputs(this.index, &outputs).map_err(field_error)?;
            Ok(this.clone())
        });
    }
}

fn strip_nulls(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => serde_json::Value::Object(
            m.into_iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k, strip_nulls(v))).collect(),
        ),
        serde_json::Value::Array(a) => serde_json::Value::Array(a.into_iter().map(strip_nulls).collect()),
        other => other,
    }
}

/// Finds a request-field error inside a Lua error (raised by a primitive during `start`).
/// mlua's `source()` stops at callback errors, so the variants are walked here.
pub fn find_field_error(err: &mlua::Error) -> Option<FieldError> {
    match err {
        mlua::Error::CallbackError { cause, .. } | mlua::Error::WithContext { cause, .. } => find_field_error(cause),
        mlua::Error::ExternalError(inner) => inner.downcast_ref::<FieldError>().cloned(),
        _ => None,
    }
}
