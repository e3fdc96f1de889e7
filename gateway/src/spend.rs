//! `weir spend`: the ledger summed by key, team, model and day (UTC), as a table or JSON.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::state::ledger::Entry;

/// A column a report can group by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Group {
    Day,
    Key,
    Team,
    Model,
}

/// One row: the group's values and its totals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub day: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    pub cost_pico_usd: u64,
    /// The cost in dollars, exact (a decimal string, so no float rounds it).
    pub cost_usd: String,
}

/// The UTC day (`2026-11-25`) of a ledger timestamp.
pub fn day_of(ts_ms: u64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(ts_ms);
    humantime::format_rfc3339_seconds(time).to_string()[..10].to_owned()
}

/// Milliseconds since the epoch at the start of a UTC day written `YYYY-MM-DD`.
pub fn parse_day(day: &str) -> Result<u64, String> {
    let time = humantime::parse_rfc3339(&format!("{day}T00:00:00Z"))
        .map_err(|e| format!("{day:?} is not a date like 2026-11-25: {e}"))?;
    Ok(time.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64))
}

/// Sums `entries` from `since` (inclusive) to `until` (exclusive), in ms, grouped by `by`; rows in
/// the order of their group values, then a total row (every group value empty) last.
pub fn report(entries: &[Entry], by: &[Group], since: u64, until: u64) -> Vec<Row> {
    let mut groups: BTreeMap<[Option<String>; 4], Row> = BTreeMap::new();
    let mut total = empty_row([None, None, None, None]);
    for e in entries.iter().filter(|e| (since..until).contains(&e.ts_ms)) {
        let pick = |g: Group, value: &str| by.contains(&g).then(|| value.to_owned());
        let key = [
            pick(Group::Day, &day_of(e.ts_ms)),
            pick(Group::Key, &e.key_name),
            pick(Group::Team, &e.team),
            pick(Group::Model, &e.model),
        ];
        let row = groups.entry(key.clone()).or_insert_with(|| empty_row(key));
        add(row, e);
        add(&mut total, e);
    }
    let mut rows: Vec<Row> = groups.into_values().collect();
    rows.push(total);
    for row in &mut rows {
        row.cost_usd = usd(row.cost_pico_usd);
    }
    rows
}

fn empty_row([day, key, team, model]: [Option<String>; 4]) -> Row {
    Row {
        day,
        key,
        team,
        model,
        requests: 0,
        prompt_tokens: 0,
        completion_tokens: 0,
        cached_tokens: 0,
        cost_pico_usd: 0,
        cost_usd: String::new(),
    }
}

fn add(row: &mut Row, e: &Entry) {
    row.requests += 1;
    row.prompt_tokens += u64::from(e.prompt_tokens);
    row.completion_tokens += u64::from(e.completion_tokens);
    row.cached_tokens += u64::from(e.cached_tokens);
    row.cost_pico_usd = row.cost_pico_usd.saturating_add(e.cost_pico_usd);
}

/// Picodollars as an exact decimal number of dollars.
pub fn usd(pico: u64) -> String {
    const PICO: u64 = 1_000_000_000_000;
    let frac = pico % PICO;
    if frac == 0 {
        return (pico / PICO).to_string();
    }
    format!("{}.{}", pico / PICO, format!("{frac:012}").trim_end_matches('0'))
}

/// The rows as an aligned text table, with the columns of `by`.
pub fn table(rows: &[Row], by: &[Group]) -> String {
    let mut header: Vec<&str> = by
        .iter()
        .map(|g| match g {
            Group::Day => "day",
            Group::Key => "key",
            Group::Team => "team",
            Group::Model => "model",
        })
        .collect();
    header.extend(["requests", "prompt", "completion", "cached", "cost_usd"]);
    let mut lines: Vec<Vec<String>> = vec![header.iter().map(|s| (*s).to_owned()).collect()];
    let last = rows.len().saturating_sub(1);
    for (i, row) in rows.iter().enumerate() {
        let mut cells: Vec<String> = by
            .iter()
            .map(|g| {
                let value = match g {
                    Group::Day => &row.day,
                    Group::Key => &row.key,
                    Group::Team => &row.team,
                    Group::Model => &row.model,
                };
                value.clone().unwrap_or_default()
            })
            .collect();
        if i == last
            && let Some(first) = cells.first_mut()
        {
            *first = "total".to_owned();
        }
        cells.extend([
            row.requests.to_string(),
            row.prompt_tokens.to_string(),
            row.completion_tokens.to_string(),
            row.cached_tokens.to_string(),
            row.cost_usd.clone(),
        ]);
        lines.push(cells);
    }
    let widths: Vec<usize> =
        (0..lines[0].len()).map(|c| lines.iter().map(|l| l[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for line in lines {
        let cells: Vec<String> = line
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (cell, w))| if c < by.len() { format!("{cell:<w$}") } else { format!("{cell:>w$}") })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ts_ms: u64, key: &str, model: &str, cost: u64) -> Entry {
        Entry {
            ts_ms,
            request_id: "r".into(),
            key_name: key.into(),
            team: "t".into(),
            model: model.into(),
            target: "u/m".into(),
            prompt_tokens: 10,
            completion_tokens: 5,
            cached_tokens: 0,
            cost_pico_usd: cost,
            plugin: "cost".into(),
        }
    }

    #[test]
    fn reports_group_filter_and_total_exactly() {
        let day = parse_day("2026-11-25").unwrap();
        assert_eq!(day_of(day + 1), "2026-11-25");
        let entries = [
            entry(day - 1, "a", "m1", 1),
            entry(day + 5, "a", "m1", 250_000),
            entry(day + 6, "a", "m2", 1_000_000_000_000),
            entry(day + 7, "b", "m1", 3),
        ];
        let rows = report(&entries, &[Group::Key], day, u64::MAX);
        assert_eq!(rows.len(), 3);
        assert_eq!((rows[0].key.as_deref(), rows[0].requests, rows[0].cost_usd.as_str()), (Some("a"), 2, "1.00000025"));
        assert_eq!((rows[2].key.as_deref(), rows[2].requests, rows[2].cost_pico_usd), (None, 3, 1_000_000_250_003));
        let by_day = report(&entries, &[Group::Day, Group::Model], 0, u64::MAX);
        assert_eq!(by_day[0].day.as_deref(), Some("2026-11-24"));
        let text = table(&rows, &[Group::Key]);
        assert!(text.lines().last().unwrap().starts_with("total"), "{text}");
        assert!(parse_day("yesterday").is_err());
    }
}
