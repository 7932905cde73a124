//! The Lua side: a sandboxed state per recipe load and per egress, and the recipe declaration
//! (`return recipe { name, params, outputs, start }`) read out of a recipe file.

pub mod api;
pub mod budget;
mod canvas;
pub mod ctx;
mod page;
mod patterns;
pub mod room;

#[cfg(test)]
mod misuse_tests;
#[cfg(test)]
mod reference_tests;

use std::path::{Path, PathBuf};

use mlua::{Function, Lua, LuaOptions, LuaSerdeExt, StdLib, Table, Value};

use crate::request::ParamSpec;

/// What a recipe declares about itself; its `start` function is read again per egress.
#[derive(Debug, Clone)]
pub struct RecipeDecl {
    pub description: String,
    pub params: Vec<ParamSpec>,
    /// Whether the recipe takes LiveKit-style outputs + preset/advanced.
    pub outputs: bool,
}

/// A fresh Lua state with only safe libraries: no io, os.execute, debug, load of files or
/// bytecode; `require` reads modules from the recipes directory only.
pub fn sandbox(recipes_dir: &Path) -> mlua::Result<Lua> {
    let libs = StdLib::TABLE | StdLib::STRING | StdLib::MATH | StdLib::UTF8 | StdLib::COROUTINE;
    let lua = Lua::new_with(libs, LuaOptions::default())?;
    let globals = lua.globals();
    for unsafe_global in ["dofile", "loadfile", "load"] {
        globals.set(unsafe_global, Value::Nil)?;
    }
    globals.get::<Table>("string")?.set("dump", Value::Nil)?;
    patterns::guard(&lua)?;

    let os = lua.create_table()?;
    os.set("time", lua.create_function(|_, ()| Ok(crate::clock::now().floor() as i64))?)?;
    os.set("clock", lua.create_function(|_, ()| Ok(crate::clock::now()))?)?;
    os.set(
        "date",
        lua.create_function(|_, fmt: Option<String>| {
            use chrono::format::{Item, StrftimeItems};
            let fmt = fmt.unwrap_or("%Y-%m-%dT%H:%M:%SZ".into());
            // chrono panics on a bad specifier while formatting: refuse it first.
            if StrftimeItems::new(&fmt).any(|item| matches!(item, Item::Error)) || fmt.len() > 256 {
                return Err(mlua::Error::runtime(format!("os.date: `{fmt}` is not a valid strftime format")));
            }
            // Some specifiers parse but cannot be formatted (`%#z`): `to_string` would panic.
            let mut text = String::new();
            std::fmt::Write::write_fmt(&mut text, format_args!("{}", chrono::Utc::now().format(&fmt)))
                .map_err(|_| mlua::Error::runtime(format!("os.date: `{fmt}` cannot be formatted")))?;
            Ok(text)
        })?,
    )?;
    globals.set("os", os)?;

    let loaded = lua.create_table()?;
    let dir = recipes_dir.to_path_buf();
    let require = lua.create_function(move |lua, name: String| {
        if let Ok(Value::Table(t)) = loaded.get::<Value>(name.as_str()) {
            return Ok(Value::Table(t));
        }
        let path = module_path(&dir, &name).map_err(mlua::Error::runtime)?;
        let source = std::fs::read_to_string(&path)
            .map_err(|e| mlua::Error::runtime(format!("require `{name}`: {}: {e}", path.display())))?;
        let value: Value = lua.load(source).set_name(format!("@{}", chunk_name(&dir, &path))).eval()?;
        loaded.set(name.as_str(), value.clone())?;
        Ok(value)
    })?;
    globals.set("require", require)?;

    globals.set(
        "log",
        lua.create_function(|_, msg: mlua::Variadic<Value>| {
            let text: Vec<String> = msg.iter().map(|v| v.to_string().unwrap_or_else(|_| format!("{v:?}"))).collect();
            tracing::info!(target: "recipe", "{}", text.join(" "));
            Ok(())
        })?,
    )?;
    // json.encode(value) / json.decode(text)
    let json = lua.create_table()?;
    json.set(
        "encode",
        lua.create_function(|lua, value: Value| {
            check_depth(&value, JSON_DEPTH)?;
            let value: serde_json::Value = lua.from_value(value)?;
            Ok(value.to_string())
        })?,
    )?;
    json.set(
        "decode",
        lua.create_function(|lua, text: String| {
            let value: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| mlua::Error::runtime(format!("json.decode: {e}")))?;
            lua.to_value(&value)
        })?,
    )?;
    globals.set("json", json)?;
    // field_error("layout", "unknown layout"): a bad request field; the start is refused
    // (422 naming `params.layout`; invalid_argument for Twirp), like the engine's own checks.
    globals.set(
        "field_error",
        lua.create_function(|_, (field, message): (String, String)| -> mlua::Result<()> {
            Err(mlua::Error::external(crate::request::FieldError::new(&field, message)))
        })?,
    )?;
    // refuse_audio_only_files(req): a recipe whose source has a picture (unless `audio_only`)
    // refuses MP3 and OGG file outputs by field before it starts a browser or joins a room,
    // with the engine's own file type rules (LiveKit: no codec compatible with all outputs).
    globals.set(
        "refuse_audio_only_files",
        lua.create_function(|lua, req: Value| -> mlua::Result<()> {
            let req: serde_json::Value = lua.from_value(req)?;
            if req.get("audio_only").and_then(|v| v.as_bool()) == Some(true) {
                return Ok(());
            }
            match crate::media::outputs::file::first_audio_only(&req) {
                Some((field, container)) => Err(mlua::Error::external(crate::request::FieldError::new(
                    &field,
                    format!("{container} holds audio only: set audio_only"),
                ))),
                None => Ok(()),
            }
        })?,
    )?;
    // `recipe { ... }` checks the declaration's shape early, so mistakes point at the file.
    globals.set(
        "recipe",
        lua.create_function(|_, decl: Table| {
            if !decl.contains_key("start")? {
                return Err(mlua::Error::runtime("recipe: `start` function is required"));
            }
            Ok(decl)
        })?,
    )?;
    lua.load(
        "function table.contains(t, x) for _, v in ipairs(t) do if v == x then return true end end return false end",
    )
    .set_name("=egret")
    .exec()?;
    budget::install(&lua)?;
    Ok(lua)
}

/// How deep `json.encode` goes (json.decode's parser stops at 128): deeper nesting would
/// overflow the engine's stack, taking every egress down with it.
const JSON_DEPTH: usize = 100;

/// Refuses tables nested deeper than `max`, walking them without recursion.
fn check_depth(value: &Value, max: usize) -> mlua::Result<()> {
    let mut stack: Vec<(Table, usize)> = match value {
        Value::Table(t) => vec![(t.clone(), 1)],
        _ => return Ok(()),
    };
    // The deepest each table was reached at: a table shared by two paths is walked again only
    // from a deeper one (and a cycle ends as too deep).
    let mut deepest = std::collections::HashMap::new();
    while let Some((table, depth)) = stack.pop() {
        if depth > max {
            return Err(mlua::Error::runtime(format!("json.encode: nested deeper than {max} levels")));
        }
        let seen = deepest.entry(table.to_pointer() as usize).or_insert(0);
        if *seen >= depth {
            continue;
        }
        *seen = depth;
        for pair in table.pairs::<Value, Value>() {
            if let (_, Value::Table(inner)) = pair? {
                stack.push((inner, depth + 1));
            }
        }
    }
    Ok(())
}

/// `require "lib.util"` → `<recipes>/lib/util.lua`; nothing outside the recipes directory.
fn module_path(dir: &Path, name: &str) -> Result<PathBuf, String> {
    let valid = !name.is_empty()
        && name.split('.').all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
    if !valid {
        return Err(format!(
            "require `{name}`: module names are dotted words (lib.util), inside the recipes directory"
        ));
    }
    let path = dir.join(format!("{}.lua", name.replace('.', "/")));
    // A link inside the recipes directory must not lead a recipe to read files elsewhere.
    if let (Ok(real), Ok(real_dir)) = (path.canonicalize(), dir.canonicalize())
        && !real.starts_with(&real_dir)
    {
        return Err(format!("require `{name}`: {} leads outside the recipes directory", path.display()));
    }
    Ok(path)
}

/// The chunk name shown in errors: `scripts/x.lua:3: ...`.
pub fn chunk_name(dir: &Path, path: &Path) -> String {
    let dir_name = dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let rel = path.strip_prefix(dir).unwrap_or(path).to_string_lossy().to_string();
    if dir_name.is_empty() { rel } else { format!("{dir_name}/{rel}") }
}

/// Runs a recipe's source in `lua` and returns its declaration table.
pub fn eval_recipe(lua: &Lua, source: &str, chunk: &str) -> mlua::Result<Table> {
    budget::enter(lua);
    match lua.load(source).set_name(format!("@{chunk}")).eval::<Value>()? {
        Value::Table(t) => Ok(t),
        _ => Err(mlua::Error::runtime(format!("{chunk}: must end with `return recipe {{ ... }}`"))),
    }
}

/// Reads the declaration of a recipe; `file_stem` is its default name.
pub fn declaration(table: &Table, file_stem: &str, chunk: &str) -> Result<RecipeDecl, String> {
    let name: Option<String> = table.get("name").map_err(|e| format!("{chunk}: name: {e}"))?;
    let name = name.unwrap_or_else(|| file_stem.to_string());
    if name != file_stem {
        return Err(format!("{chunk}: name `{name}` must match the file name `{file_stem}.lua`"));
    }
    let description: Option<String> = table.get("description").map_err(|e| format!("{chunk}: description: {e}"))?;
    let outputs: Option<bool> =
        table.get("outputs").map_err(|e| format!("{chunk}: outputs must be true or false: {e}"))?;
    let _: Function = table.get("start").map_err(|_| format!("{chunk}: `start` must be a function"))?;
    let mut params = Vec::new();
    if let Some(decls) =
        table.get::<Option<Table>>("params").map_err(|e| format!("{chunk}: params must be a table: {e}"))?
    {
        for pair in decls.pairs::<String, String>() {
            let (key, decl) = pair.map_err(|e| format!("{chunk}: params: each entry is name = \"type\": {e}"))?;
            params.push(ParamSpec::parse(&key, &decl).map_err(|e| format!("{chunk}: {e}"))?);
        }
    }
    params.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(RecipeDecl { description: description.unwrap_or_default(), params, outputs: outputs.unwrap_or(false) })
}

/// A Lua error as one readable line with its `file:line`, without Rust internals.
pub fn error_text(err: &mlua::Error) -> String {
    match err {
        // Errors from coroutines (async `start`) carry Lua's traceback: keep the message only.
        mlua::Error::RuntimeError(msg) | mlua::Error::SyntaxError { message: msg, .. } => {
            msg.split("\nstack traceback:").next().unwrap_or(msg).to_string()
        }
        mlua::Error::CallbackError { traceback, cause } => {
            let at = traceback
                .lines()
                .map(str::trim)
                .find(|l| l.contains(".lua:"))
                .map(|l| l.split(": in ").next().unwrap_or(l));
            match at {
                Some(at) => format!("{}: {}", at.trim_end_matches(':'), error_text(cause)),
                None => error_text(cause),
            }
        }
        mlua::Error::ExternalError(e) => e.to_string(),
        mlua::Error::WithContext { context, cause } => format!("{context}: {}", error_text(cause)),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn require_does_not_follow_a_link_out_of_the_recipes_dir() {
        let dir = std::env::temp_dir().join(format!("egret-require-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("lib")).unwrap();
        std::fs::write(dir.join("lib/ok.lua"), "return 1").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.join("lib/out.lua")).unwrap();
        assert!(module_path(&dir, "lib.ok").is_ok());
        assert!(module_path(&dir, "lib.out").unwrap_err().contains("outside the recipes directory"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn os_date_refuses_a_bad_format_instead_of_panicking() {
        let lua = sandbox(Path::new("scripts")).unwrap();
        let err = lua.load("return os.date('%Q')").exec().unwrap_err().to_string();
        assert!(err.contains("not a valid strftime format"), "{err}");
        let err = lua.load("return os.date('%#z')").exec().unwrap_err().to_string();
        assert!(err.contains("cannot be formatted"), "{err}");
        let year: String = lua.load("return os.date('%Y')").eval().unwrap();
        assert_eq!(year.len(), 4);
    }

    #[test]
    fn json_encode_refuses_what_would_overflow_the_stack() {
        let lua = sandbox(Path::new("scripts")).unwrap();
        let deep = "local t = {} for i = 1, 200000 do t = { t } end return json.encode(t)";
        let err = lua.load(deep).exec().unwrap_err().to_string();
        assert!(err.contains("nested deeper than 100 levels"), "{err}");
        let ok: String = lua.load("local t = {} for i = 1, 50 do t = { t } end return json.encode(t)").eval().unwrap();
        assert!(ok.starts_with("[[[["));
    }

    #[test]
    fn sandbox_has_no_io_or_os_execute() {
        let dir = std::env::temp_dir();
        let lua = sandbox(&dir).unwrap();
        for expr in ["io", "os.execute", "loadfile", "dofile", "load", "debug", "package", "string.dump"] {
            let v: Value = lua.load(format!("return {expr}")).eval().unwrap();
            assert!(v.is_nil(), "{expr} must be absent");
        }
        let err = lua.load("return require('../etc/passwd')").eval::<Value>().unwrap_err();
        assert!(error_text(&err).contains("dotted words"), "{}", error_text(&err));
    }

    #[test]
    fn declaration_reads_params() {
        let lua = sandbox(&std::env::temp_dir()).unwrap();
        let src = "return recipe { params = { url = 'url', n = 'number?' }, outputs = true, start = function() end }";
        let t = eval_recipe(&lua, src, "scripts/web.lua").unwrap();
        let d = declaration(&t, "web", "scripts/web.lua").unwrap();
        assert_eq!(d.params.len(), 2);
        assert!(d.outputs);
        let err = eval_recipe(&lua, "return recipe {\n params = {} }", "scripts/x.lua").unwrap_err();
        assert!(error_text(&err).contains("`start` function is required"), "{}", error_text(&err));
        let err = eval_recipe(&lua, "x = = 1", "scripts/x.lua").unwrap_err();
        assert!(error_text(&err).contains("scripts/x.lua:1:"), "{}", error_text(&err));
    }
}
