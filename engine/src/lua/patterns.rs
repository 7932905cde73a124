//! Lua patterns under a cost limit. The budget hook counts VM instructions, and a pattern
//! match runs inside one C call: `("a"):rep(30) .. "b"` matched by thirty `a*` backtracks for
//! hours without the hook ever running, holding an engine thread. `string.find`, `match`,
//! `gmatch` and `gsub` first bound the work a pattern can take on its subject and refuse the
//! hopeless: every start position, times (length + 1) for each `*`, `+`, `-` or `%b` (each
//! may try every position), times 2 for each `?`.

use mlua::{Function, Lua, MultiValue, Table, Value};

/// Above this many steps a match could run for seconds (Lua matches ~10^8 a second); typical
/// recipe patterns stay far below (`(.-)=(.-)` anchored on a 1 KB line: 10^6).
const MAX_STEPS: f64 = 1e9;

/// Wraps the pattern functions of `string` (also what `s:find(...)` calls).
pub fn guard(lua: &Lua) -> mlua::Result<()> {
    let string: Table = lua.globals().get("string")?;
    for name in ["find", "match", "gmatch", "gsub"] {
        let original: Function = string.get(name)?;
        let guarded = lua.create_function(move |_, args: MultiValue| {
            let subject = match args.front() {
                Some(Value::String(s)) => s.as_bytes().len(),
                // Numbers are matched as their text.
                Some(Value::Integer(i)) => i.to_string().len(),
                Some(Value::Number(n)) => n.to_string().len() + 2,
                _ => 0,
            };
            let plain = name == "find" && args.get(3).is_some_and(|v| !matches!(v, Value::Nil | Value::Boolean(false)));
            if let (Some(Value::String(pattern)), false) = (args.get(1), plain) {
                let shape = shape(&pattern.as_bytes());
                let positions = if shape.anchored { 1.0 } else { (subject + 1) as f64 };
                let steps = positions
                    * ((subject + 1) as f64).powi(shape.repetitions as i32)
                    * 2f64.powi(shape.optionals as i32);
                if shape.repetitions + shape.optionals > 0 && steps > MAX_STEPS {
                    return Err(mlua::Error::runtime(format!(
                        "string.{name}: a pattern with {} repetitions over a {subject}-byte string \
                         could run for hours; match smaller pieces",
                        shape.repetitions + shape.optionals
                    )));
                }
            }
            original.call::<MultiValue>(args)
        })?;
        string.set(name, guarded)?;
    }
    Ok(())
}

/// What makes a Lua pattern's work grow.
#[derive(Debug, PartialEq)]
struct Shape {
    anchored: bool,
    /// `*`, `+`, `-` and `%b`: each may try every position.
    repetitions: u32,
    /// `?`: each tries two ways.
    optionals: u32,
}

fn shape(pattern: &[u8]) -> Shape {
    let anchored = pattern.first() == Some(&b'^');
    let (mut count, mut optionals) = (0, 0);
    let mut i = usize::from(anchored);
    while i < pattern.len() {
        let single = match pattern[i] {
            b'(' | b')' => {
                i += 1;
                false
            }
            b'%' => match pattern.get(i + 1) {
                Some(b'b') => {
                    i += 4;
                    count += 1;
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
            optionals += 1;
            i += 1;
        }
    }
    Shape { anchored, repetitions: count, optionals }
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
        let reps = |p: &[u8]| {
            let s = shape(p);
            (s.repetitions, s.optionals)
        };
        assert_eq!(reps(b"^(%w+)=(%w+)$"), (2, 0));
        assert!(shape(b"^a").anchored && !shape(b"a^").anchored);
        assert_eq!(reps(b"%*%+[*+-]"), (0, 0));
        assert_eq!(reps(b"[]*]*.-x?"), (2, 1));
        assert_eq!(reps(b"%b()*%f[%w]a*"), (2, 0));
        assert_eq!(reps(&b"a*".repeat(30)), (30, 0));
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
        for hopeless in [
            r#"return ("a"):rep(40):match("^" .. ("a?"):rep(40) .. ("a"):rep(40) .. "$")"#,
            r#"return string.find(1111111111111111111, ("1*"):rep(12) .. "c")"#,
            r#"return ("a"):rep(60000):find("a*c")"#,
            r#"return ("("):rep(120000):find("%b()")"#,
        ] {
            let err = lua.load(hopeless).exec().unwrap_err().to_string();
            assert!(err.contains("could run for hours"), "{hopeless}: {err}");
        }
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
