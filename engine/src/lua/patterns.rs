//! Lua patterns under a cost limit. The budget hook counts VM instructions, and a pattern
//! match runs inside one C call: `("a"):rep(30) .. "b"` matched by thirty `a*` backtracks for
//! hours without the hook ever running, holding an engine thread. `string.find`, `match`,
//! `gmatch` and `gsub` first bound the work a pattern can take on its subject (each
//! repetition may try every position: (length + 1) ^ repetitions) and refuse the hopeless.

use mlua::{Function, Lua, MultiValue, Table, Value};

/// Above this many steps a match could run for minutes; typical recipe patterns stay far
/// below (two repetitions over a 10 KB string: 10^8).
const MAX_STEPS: f64 = 1e10;

/// Wraps the pattern functions of `string` (also what `s:find(...)` calls).
pub fn guard(lua: &Lua) -> mlua::Result<()> {
    let string: Table = lua.globals().get("string")?;
    for name in ["find", "match", "gmatch", "gsub"] {
        let original: Function = string.get(name)?;
        let guarded = lua.create_function(move |_, args: MultiValue| {
            let subject = match args.front() {
                Some(Value::String(s)) => s.as_bytes().len(),
                _ => 0,
            };
            let plain = name == "find" && args.get(3).is_some_and(|v| !matches!(v, Value::Nil | Value::Boolean(false)));
            if let (Some(Value::String(pattern)), false) = (args.get(1), plain) {
                let repetitions = repetitions(&pattern.as_bytes());
                let steps = ((subject + 1) as f64).powi(repetitions as i32);
                if repetitions >= 2 && steps > MAX_STEPS {
                    return Err(mlua::Error::runtime(format!(
                        "string.{name}: a pattern with {repetitions} repetitions over a {subject}-byte string \
                         could run for hours; match smaller pieces"
                    )));
                }
            }
            original.call::<MultiValue>(args)
        })?;
        string.set(name, guarded)?;
    }
    Ok(())
}

/// How many `*`, `+` or `-` repetitions a Lua pattern has (`?` tries at most two ways).
fn repetitions(pattern: &[u8]) -> u32 {
    let mut count = 0;
    let mut i = usize::from(pattern.first() == Some(&b'^'));
    while i < pattern.len() {
        let single = match pattern[i] {
            b'(' | b')' => {
                i += 1;
                false
            }
            b'%' => match pattern.get(i + 1) {
                Some(b'b') => {
                    i += 4;
                    false
                }
                Some(b'f') => {
                    i = end_of_set(pattern, i + 2);
                    false
                }
                _ => {
                    i += 2;
                    true
                }
            },
            b'[' => {
                i = end_of_set(pattern, i);
                true
            }
            _ => {
                i += 1;
                true
            }
        };
        if single && matches!(pattern.get(i), Some(b'*' | b'+' | b'-')) {
            count += 1;
            i += 1;
        } else if single && pattern.get(i) == Some(&b'?') {
            i += 1;
        }
    }
    count
}

/// The index after the set `[...]` starting at `start`.
fn end_of_set(pattern: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    if pattern.get(i) == Some(&b'^') {
        i += 1;
    }
    // A `]` first in the set is a member, not its end.
    if pattern.get(i) == Some(&b']') {
        i += 1;
    }
    while i < pattern.len() {
        match pattern[i] {
            b'%' => i += 2,
            b']' => return i + 1,
            _ => i += 1,
        }
    }
    pattern.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repetitions_are_counted_outside_escapes_and_sets() {
        assert_eq!(repetitions(b"^(%w+)=(%w+)$"), 2);
        assert_eq!(repetitions(b"%*%+[*+-]"), 0);
        assert_eq!(repetitions(b"[]*]*.-x?"), 2);
        assert_eq!(repetitions(b"%b()*%f[%w]a*"), 1);
        assert_eq!(repetitions(&b"a*".repeat(30)), 30);
    }

    #[test]
    fn a_hopeless_pattern_errors_at_once_and_ordinary_ones_work() {
        let lua = Lua::new();
        guard(&lua).unwrap();
        let err = lua
            .load(r#"local s = string.rep("a", 30) .. "b"; return s:find(string.rep("a*", 30) .. "c")"#)
            .exec()
            .unwrap_err()
            .to_string();
        assert!(err.contains("30 repetitions over a 31-byte string"), "{err}");
        let (k, v): (String, String) = lua.load(r#"return ("key=value"):match("^(%w+)=(%w+)$")"#).eval().unwrap();
        assert_eq!((k.as_str(), v.as_str()), ("key", "value"));
        let n: i64 =
            lua.load(r#"local n = 0; for _ in ("a,b,c"):gmatch("[^,]+") do n = n + 1 end; return n"#).eval().unwrap();
        assert_eq!(n, 3);
        let s: String = lua.load(r#"return (string.gsub("a.b", "%.", "/"))"#).eval().unwrap();
        assert_eq!(s, "a/b");
        let plain: i64 = lua.load(r#"return (("x*y"):find("*", 1, true))"#).eval().unwrap();
        assert_eq!(plain, 2);
    }
}
