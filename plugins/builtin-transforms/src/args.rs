//! Parameter parsing shared by the transforms: unknown names are rejected, and every error
//! names the transform and the parameter.

use ssl_plugin_api::{Params, PluginError, Result};

/// Fails when `params` holds a name not in `known`, naming the offenders and the known names.
pub fn check_known(params: &Params, transform: &str, known: &[&str]) -> Result<()> {
    let Some(map) = params.as_json().as_object() else {
        return Err(PluginError::msg(format!(
            "{transform}: parameters must be a table"
        )));
    };
    let mut unknown: Vec<&str> = map
        .keys()
        .map(String::as_str)
        .filter(|k| !known.contains(k))
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    unknown.sort_unstable();
    let list = |names: &[&str]| {
        names
            .iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let known = if known.is_empty() {
        "it takes no parameters".to_string()
    } else {
        format!("known: {}", list(known))
    };
    Err(PluginError::msg(format!(
        "{transform}: unknown parameter{} {} ({known})",
        if unknown.len() == 1 { "" } else { "s" },
        list(&unknown),
    )))
}

fn err(transform: &str, name: &str, what: impl std::fmt::Display) -> PluginError {
    PluginError::msg(format!("{transform}: parameter `{name}` {what}"))
}

/// An output size: a positive integer `s` (square `s × s`, or shorter side for `Resize`) or
/// `[h, w]`. Returns `(h, w)`, `None` when absent; a single integer gives `(s, s)`.
pub fn size(params: &Params, transform: &str, name: &str) -> Result<Option<(usize, usize)>> {
    let Some(value) = params.as_json().get(name).filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let positive = |v: Option<u64>| -> Result<usize> {
        match v {
            Some(n) if n > 0 && n <= u32::MAX as u64 => Ok(n as usize),
            _ => Err(err(
                transform,
                name,
                format_args!("= {value}: expected a positive integer or [height, width]"),
            )),
        }
    };
    if let Some(list) = value.as_array() {
        match list.as_slice() {
            [s] => {
                let s = positive(s.as_u64())?;
                Ok(Some((s, s)))
            }
            [h, w] => Ok(Some((positive(h.as_u64())?, positive(w.as_u64())?))),
            _ => Err(err(
                transform,
                name,
                format_args!("= {value}: expected a positive integer or [height, width]"),
            )),
        }
    } else {
        let s = positive(value.as_u64())?;
        Ok(Some((s, s)))
    }
}

/// A range: `[lo, hi]` with `lo <= hi`, or a single number `x` turned into a range by
/// `from_scalar` (`None` when a single number is not allowed). Returns `default` when absent.
pub fn range(
    params: &Params,
    transform: &str,
    name: &str,
    default: (f64, f64),
    from_scalar: Option<&dyn Fn(f64) -> (f64, f64)>,
) -> Result<(f64, f64)> {
    let Some(value) = params.as_json().get(name).filter(|v| !v.is_null()) else {
        return Ok(default);
    };
    let expected = if from_scalar.is_some() {
        "a number or [min, max]"
    } else {
        "[min, max]"
    };
    let bad = || {
        err(
            transform,
            name,
            format_args!("= {value}: expected {expected}"),
        )
    };
    let (lo, hi) = if let Some(list) = value.as_array() {
        match list.as_slice() {
            [a, b] => (a.as_f64().ok_or_else(bad)?, b.as_f64().ok_or_else(bad)?),
            _ => return Err(bad()),
        }
    } else {
        let x = value.as_f64().ok_or_else(bad)?;
        match from_scalar {
            Some(f) => f(x),
            None => return Err(bad()),
        }
    };
    if !lo.is_finite() || !hi.is_finite() {
        return Err(bad());
    }
    if lo > hi {
        return Err(err(
            transform,
            name,
            format_args!("= {value}: min {lo} is greater than max {hi}"),
        ));
    }
    Ok((lo, hi))
}

/// A probability in [0, 1], `default` when absent.
pub fn probability(params: &Params, transform: &str, name: &str, default: f64) -> Result<f64> {
    let p: f64 = params
        .get_or(name, default)
        .map_err(|e| e.context(transform))?;
    if !(0.0..=1.0).contains(&p) {
        return Err(err(
            transform,
            name,
            format_args!("= {p}: must be a probability in [0, 1]"),
        ));
    }
    Ok(p)
}

/// Fails unless `lo <= x` for both ends of `range` (and `x <= hi` when `hi` is given).
pub fn check_bounds(
    transform: &str,
    name: &str,
    range: (f64, f64),
    lo: f64,
    hi: Option<f64>,
) -> Result<()> {
    let ok = |x: f64| x >= lo && hi.is_none_or(|h| x <= h);
    if ok(range.0) && ok(range.1) {
        return Ok(());
    }
    let allowed = match hi {
        Some(h) => format!("within [{lo}, {h}]"),
        None => format!(">= {lo}"),
    };
    Err(err(
        transform,
        name,
        format_args!("= [{}, {}]: values must be {allowed}", range.0, range.1),
    ))
}
