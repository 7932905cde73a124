//! Runaway recipes: every Lua state runs under a CPU budget and a memory limit, so a recipe
//! that loops for ever or allocates without end fails its own call (and its egress) instead of
//! holding a runtime thread, the API or SIGTERM hostage.
//!
//! The budget counts one uninterrupted stretch of Lua execution (a "slice"): the top level of a
//! recipe file, a `start` between two waits, one handler. Time a recipe spends suspended in a
//! wait (a page loading, a participant joining) is not Lua running and does not count.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mlua::{HookTriggers, Lua, VmState};

/// How long Lua may run without a break. Recipes describe and react; none needs this long.
pub const SLICE_BUDGET: Duration = Duration::from_secs(2);

/// Memory one Lua state may hold (its tables and strings; media never goes through Lua).
pub const MEMORY_LIMIT: usize = 256 * 1024 * 1024;

/// The hook runs every this many VM instructions (tens of microseconds of Lua).
const CHECK_EVERY: u32 = 10_000;

/// A gap longer than this between two checks means Lua was not running in between (it waited,
/// or it returned and was called again): a new slice starts.
const PAUSE: Duration = Duration::from_millis(50);

/// The error a call over budget fails with (typed, so the engine can tell it from a recipe's
/// own error and fail the egress rather than only log a handler's failure).
#[derive(Debug, Clone)]
pub struct BudgetExceeded(pub String);

impl std::fmt::Display for BudgetExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BudgetExceeded {}

/// One stretch of Lua running, as the hook sees it.
struct Slice {
    last_check: Instant,
    started: Instant,
    /// The budget ran out in this slice: every later check fails too.
    over: bool,
}

impl Slice {
    /// Brings the slice up to `now`: a pause since the last check starts a new one.
    fn at(&mut self, now: Instant) {
        if now.duration_since(self.last_check) > PAUSE {
            (self.started, self.over) = (now, false);
        }
        self.last_check = now;
    }
}

/// The slice of one Lua state, kept as its app data for the engine's entry points and waits.
struct SliceHandle(Arc<Mutex<Slice>>);

/// The engine is about to call into Lua (a recipe's top level, `start`, a handler, a timer):
/// a new slice starts.
pub fn enter(lua: &Lua) {
    if let Some(handle) = lua.app_data_ref::<SliceHandle>() {
        let now = Instant::now();
        let mut slice = handle.0.lock().unwrap_or_else(|p| p.into_inner());
        (slice.started, slice.last_check, slice.over) = (now, now, false);
    }
}

/// A host function's future (a page loading, a participant joining): the time it waits is not
/// Lua running; each poll starts a new slice.
pub fn paused<F: std::future::Future>(lua: Lua, future: F) -> impl std::future::Future<Output = F::Output> {
    let mut future = Box::pin(future);
    std::future::poll_fn(move |cx| {
        enter(&lua);
        let polled = future.as_mut().poll(cx);
        enter(&lua);
        polled
    })
}

/// Puts `lua` (and every coroutine it creates) under the budget and the memory limit.
pub fn install(lua: &Lua) -> mlua::Result<()> {
    lua.set_memory_limit(MEMORY_LIMIT)?;
    let now = Instant::now();
    let slice = Arc::new(Mutex::new(Slice { last_check: now, started: now, over: false }));
    lua.set_app_data(SliceHandle(slice.clone()));
    let in_hook = slice.clone();
    let triggers = HookTriggers { every_nth_instruction: Some(CHECK_EVERY), ..HookTriggers::new() };
    lua.set_global_hook(triggers, move |_, debug| {
        let now = Instant::now();
        let mut slice = in_hook.lock().unwrap_or_else(|p| p.into_inner());
        slice.at(now);
        if !slice.over && now.duration_since(slice.started) <= SLICE_BUDGET {
            return Ok(VmState::Continue);
        }
        slice.over = true;
        crate::metrics::budget_hit();
        let source = debug.source();
        let at = match source.short_src.as_deref() {
            Some(file) => format!(" at {file}:{}", debug.current_line().unwrap_or(0)),
            None => String::new(),
        };
        Err(exceeded(&at))
    })?;
    // `pcall`, `xpcall` and `coroutine.resume` hand a runaway's error back at once: catching it
    // does not buy the loop around them more time. (Wrapped in Lua, so they stay yieldable.)
    let check = lua.create_function(move |_, results: mlua::MultiValue| {
        let mut slice = slice.lock().unwrap_or_else(|p| p.into_inner());
        slice.at(Instant::now());
        if slice.over { Err(exceeded("")) } else { Ok(results) }
    })?;
    lua.load(
        r#"
        local check, pcall, xpcall, resume = ...
        _G.pcall = function(...) return check(pcall(...)) end
        _G.xpcall = function(...) return check(xpcall(...)) end
        if coroutine then coroutine.resume = function(...) return check(resume(...)) end end
        "#,
    )
    .set_name("=egret")
    .call::<()>((
        check,
        lua.globals().get::<mlua::Function>("pcall")?,
        lua.globals().get::<mlua::Function>("xpcall")?,
        lua.globals()
            .get::<mlua::Table>("coroutine")
            .and_then(|c| c.get::<mlua::Value>("resume"))
            .unwrap_or(mlua::Value::Nil),
    ))
}

fn exceeded(at: &str) -> mlua::Error {
    let text = format!("recipe exceeded its {} ms budget{at}", SLICE_BUDGET.as_millis());
    mlua::Error::external(BudgetExceeded(text))
}

/// The budget or memory failure inside `err`, if that is what it is: such a recipe cannot go on.
pub fn runaway(err: &mlua::Error) -> Option<String> {
    match err {
        mlua::Error::CallbackError { cause, .. } | mlua::Error::WithContext { cause, .. } => runaway(cause),
        mlua::Error::ExternalError(inner) => inner.downcast_ref::<BudgetExceeded>().map(|b| b.0.clone()),
        mlua::Error::MemoryError(_) => {
            Some(format!("recipe exceeded its memory limit ({} MB)", MEMORY_LIMIT / (1024 * 1024)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> Lua {
        let lua = Lua::new();
        install(&lua).unwrap();
        lua
    }

    #[test]
    fn an_endless_loop_fails_with_its_location() {
        let lua = state();
        let began = Instant::now();
        let err =
            lua.load("local n = 0\nwhile true do n = n + 1 end").set_name("@scripts/loop.lua").exec().unwrap_err();
        assert!(began.elapsed() < SLICE_BUDGET * 3, "took {:?}", began.elapsed());
        let text = runaway(&err).expect("a budget error");
        assert!(text.starts_with("recipe exceeded its 2000 ms budget at scripts/loop.lua:2"), "{text}");
    }

    #[test]
    fn pcall_does_not_save_a_runaway_loop() {
        let lua = state();
        for guarded in [
            "pcall(function() while true do end end)",
            "xpcall(function() while true do end end, tostring)",
            "coroutine.resume(coroutine.create(function() while true do end end))",
        ] {
            let err = lua.load(format!("while true do {guarded} end")).exec().unwrap_err();
            assert!(runaway(&err).is_some(), "{guarded}: {err}");
            std::thread::sleep(PAUSE * 2); // the next test call is a new slice
        }
    }

    #[test]
    fn a_huge_allocation_fails_and_the_state_stays_usable() {
        let lua = state();
        let err = lua.load("local s = string.rep('x', 1e9)").exec().unwrap_err();
        assert!(runaway(&err).is_some_and(|t| t.contains("memory limit")), "{err}");
        assert_eq!(lua.load("return 1 + 1").eval::<i32>().unwrap(), 2);
    }

    #[test]
    fn short_calls_in_a_row_never_add_up() {
        let lua = state();
        let f: mlua::Function =
            lua.load("return function() local n = 0 for i = 1, 200000 do n = n + i end end").eval().unwrap();
        let began = Instant::now();
        while began.elapsed() < SLICE_BUDGET + Duration::from_millis(500) {
            f.call::<()>(()).unwrap();
            std::thread::sleep(PAUSE * 2);
        }
    }
}
