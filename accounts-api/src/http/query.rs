//! Query strings: the refusal of undeclared parameters on every authenticated route, and the
//! parsers the listings share (comma lists, dates, several ids in one path segment).
//!
//! A misspelled filter (`?product=` for `?products=`) must not silently answer the unfiltered
//! listing, so a parameter a route does not declare is a 422 naming it with FastSpring's text
//! (`{"<name>": "Unrecognized Key"}`). What a route accepts is what its OpenAPI operation
//! declares (`params(("x" = …, Query))`): the document and the check cannot disagree, and a route
//! added later is covered without doing anything. [`mark_unrecognized`] (a router layer, where
//! the matched route is known) leaves the first undeclared name on the request; the
//! authentication extractors (`Caller`, `Mutation`) refuse it once the credentials are checked,
//! in the envelope of the handler's action. Only operations behind Basic auth are checked: the
//! customer's account pages are opened from emails, whose links collect tracking parameters
//! (`utm_source=…`), and a sign-in must not fail on them.

use crate::error::{ApiError, ErrorKind};
use axum::extract::{MatchedPath, Query, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// The query parameters each Basic-auth operation declares, by (lower-case method, path
/// template).
#[derive(Debug, Default)]
pub struct Declared(HashMap<(String, String), HashSet<String>>);

impl Declared {
    /// From the router's OpenAPI document (before `openapi::Finish`: the security each
    /// operation declares is its own).
    pub fn of(doc: &utoipa::openapi::OpenApi) -> Self {
        let mut out = HashMap::new();
        let Ok(doc) = serde_json::to_value(doc) else {
            return Self(out);
        };
        let Some(paths) = doc["paths"].as_object() else {
            return Self(out);
        };
        for (path, item) in paths {
            let Some(item) = item.as_object() else {
                continue;
            };
            for (method, op) in item {
                let op: &serde_json::Value = op;
                let basic = op["security"]
                    .as_array()
                    .is_some_and(|list| list.iter().any(|s| s.get("basic").is_some()));
                if !basic {
                    continue;
                }
                let names = op["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|p| p["in"] == "query")
                    .filter_map(|p| p["name"].as_str().map(str::to_owned))
                    .collect();
                out.insert((method.clone(), path.clone()), names);
            }
        }
        Self(out)
    }

    /// The declared names of an operation; `None`: not a checked operation.
    fn of_route(&self, method: &str, path: &str) -> Option<&HashSet<String>> {
        self.0.get(&(method.to_ascii_lowercase(), path.to_owned()))
    }
}

/// The first query parameter of a request that its route does not declare.
#[derive(Debug, Clone)]
pub struct Unrecognized(pub String);

impl Unrecognized {
    /// The 422 of `action` naming the parameter.
    pub fn refusal(&self, action: &'static str) -> ApiError {
        ApiError::new(
            action,
            ErrorKind::Invalid(vec![(self.0.clone(), "Unrecognized Key")]),
        )
    }
}

/// Router layer: marks a request that carries an undeclared query parameter (see the module
/// header). A query string that does not parse is left to the handler (its 422 `query`).
pub async fn mark_unrecognized(
    State(declared): State<Arc<Declared>>,
    mut req: Request,
    next: Next,
) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str());
    let allowed = route.and_then(|r| declared.of_route(req.method().as_str(), r));
    if let (Some(allowed), Some(_)) = (allowed, req.uri().query())
        && let Ok(Query(pairs)) = Query::<Vec<(String, String)>>::try_from_uri(req.uri())
        && let Some((name, _)) = pairs.iter().find(|(k, _)| !allowed.contains(k))
    {
        let mark = Unrecognized(name.clone());
        req.extensions_mut().insert(mark);
    }
    next.run(req).await
}

/// Most ids one multi-id read (`GET /orders/{a},{b}`, …) may name.
pub const MAX_IDS: usize = 100;

/// The ids of a path segment that may name several (`a,b,c`), in order, each once; more than
/// [`MAX_IDS`] is a 422 on `field`.
pub fn ids<'a>(
    segment: &'a str,
    field: &'static str,
    action: &'static str,
) -> Result<Vec<&'a str>, ApiError> {
    let mut out: Vec<&str> = Vec::new();
    for id in segment.split(',') {
        if !out.contains(&id) {
            out.push(id);
        }
    }
    if out.len() > MAX_IDS {
        return Err(ApiError::invalid(action, field, "names more than 100 ids"));
    }
    Ok(out)
}

/// A comma-separated list parameter (`products=a,b`): its non-empty entries; `None` when
/// absent. Given but empty is a 422.
pub fn list(
    q: &HashMap<String, String>,
    name: &'static str,
    action: &'static str,
) -> Result<Vec<String>, ApiError> {
    let Some(v) = q.get(name) else {
        return Ok(Vec::new());
    };
    let items: Vec<String> = v
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if items.is_empty() || items.iter().any(|s| s.len() > 255) {
        return Err(ApiError::invalid(
            action,
            name,
            "must be a comma-separated list",
        ));
    }
    Ok(items)
}

/// A date as FastSpring takes them — `yyyy-mm-dd`, or `M/D/YY` (`M/D/YYYY`) as its order
/// listings show them — as the ms of its midnight UTC.
pub fn date_ms(v: &str) -> Option<i64> {
    let (y, m, d) = if let Some((y, rest)) = v.split_once('-') {
        let (m, d) = rest.split_once('-')?;
        (y.len() == 4).then_some(())?;
        (
            y.parse::<i32>().ok()?,
            m.parse::<u8>().ok()?,
            d.parse::<u8>().ok()?,
        )
    } else {
        let mut parts = v.split('/');
        let (m, d, y) = (parts.next()?, parts.next()?, parts.next()?);
        parts.next().is_none().then_some(())?;
        let year = match y.len() {
            2 => 2000 + y.parse::<i32>().ok()?,
            4 => y.parse::<i32>().ok()?,
            _ => return None,
        };
        (year, m.parse::<u8>().ok()?, d.parse::<u8>().ok()?)
    };
    let all_digits = v
        .bytes()
        .all(|b| b.is_ascii_digit() || b == b'-' || b == b'/');
    let month = time::Month::try_from(m).ok()?;
    let date = time::Date::from_calendar_date(y, month, d).ok()?;
    all_digits.then(|| date.midnight().assume_utc().unix_timestamp() * 1000)
}

/// The `begin`/`end` dates of a listing as `[begin, end)` in ms: `end`'s day is not included
/// ("before the specified end date"), so `begin` must be an earlier day. 422s name the field
/// with FastSpring's texts.
pub fn date_range(
    q: &HashMap<String, String>,
    action: &'static str,
) -> Result<(Option<i64>, Option<i64>), ApiError> {
    let parse = |name: &'static str, text: &'static str| {
        q.get(name)
            .map(|v| date_ms(v).ok_or_else(|| ApiError::invalid(action, name, text)))
            .transpose()
    };
    let begin = parse("begin", "Invalid begin date")?;
    let end = parse("end", "Invalid end date")?;
    if let (Some(b), Some(e)) = (begin, end)
        && b >= e
    {
        return Err(ApiError::invalid(
            action,
            "end",
            "End date must be after begin date",
        ));
    }
    Ok((begin, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_read_in_both_of_fastsprings_formats_as_midnight_utc() {
        assert_eq!(date_ms("2016-06-01"), Some(1_464_739_200_000));
        assert_eq!(date_ms("6/1/16"), Some(1_464_739_200_000));
        assert_eq!(date_ms("06/01/2016"), Some(1_464_739_200_000));
        for bad in [
            "2016-13-01",
            "2016-02-30",
            "16-06-01",
            "6/1",
            "x",
            "",
            "2016-6-1 ",
            "+2016-06-01",
        ] {
            assert_eq!(date_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_multi_id_segment_keeps_order_and_drops_repeats() {
        assert_eq!(
            ids("a,b,a,c", "id", "x.get").ok(),
            Some(vec!["a", "b", "c"])
        );
        assert_eq!(ids("a", "id", "x.get").ok(), Some(vec!["a"]));
        let many = vec!["i"; 101]
            .iter()
            .enumerate()
            .map(|(n, _)| n.to_string())
            .collect::<Vec<_>>()
            .join(",");
        assert!(ids(&many, "id", "x.get").is_err());
    }
}
