//! The operations guide (`docs/operations.md`) documents exactly the rejection reasons of the
//! model: its "Rejection reasons" table lists every code once, and the metric labels its metrics
//! table names are codes of the model.

use std::collections::BTreeSet;
use tracefold_model::Reason;

fn operations_guide() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/operations.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The rows of the first table after the line that starts with `marker`, as cells.
fn table_after(text: &str, marker: &str) -> Vec<Vec<String>> {
    let start = text
        .lines()
        .position(|l| l.starts_with(marker))
        .unwrap_or_else(|| panic!("no {marker:?} in docs/operations.md"));
    text.lines()
        .skip(start)
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2) // header and separator
        .map(|l| l.trim().trim_matches('|').split('|').map(|c| c.trim().to_owned()).collect())
        .collect()
}

/// The `code` of a cell written as `` `code` ``.
fn code(cell: &str) -> &str {
    cell.strip_prefix('`').and_then(|c| c.strip_suffix('`')).unwrap_or_else(|| panic!("{cell:?} is not `code`"))
}

#[test]
fn the_operations_guide_table_lists_exactly_the_reason_codes() {
    let text = operations_guide();
    let rows = table_after(&text, "**Rejection reasons.**");
    let listed: Vec<&str> = rows.iter().map(|r| code(&r[0])).collect();
    let known: Vec<&str> = Reason::ALL.iter().map(|r| r.code()).collect();
    assert_eq!(listed, known, "docs/operations.md rejection reasons table, in the model's order");
    // Reasons the producer answers with have a 4xx status; the others are never answered.
    for row in &rows {
        let reason = Reason::from_code(code(&row[0])).unwrap();
        let status = row[2].as_str();
        assert!(
            status == "never" || status.parse::<u16>().is_ok_and(|s| (400..500).contains(&s)),
            "{reason}: {status}"
        );
    }
}

#[test]
fn the_metric_labels_in_the_operations_guide_are_reason_codes() {
    let text = operations_guide();
    let metrics = table_after(&text, "## Metrics");
    let labels = |name: &str| -> BTreeSet<String> {
        let row = metrics
            .iter()
            .find(|r| r[0] == format!("`{name}`"))
            .unwrap_or_else(|| panic!("{name} in docs/operations.md"));
        let cell = &row[2];
        let after = &cell[cell.find("reason").unwrap_or_else(|| panic!("{name}: no reason label"))..];
        let list = &after[after.find('(').or_else(|| after.find('=')).unwrap() + 1..];
        let list = list.split(')').next().unwrap();
        list.split(',').map(|c| c.trim().trim_matches('`').to_owned()).filter(|c| !c.is_empty()).collect()
    };
    let all: BTreeSet<String> = Reason::ALL.iter().map(|r| r.code().to_owned()).collect();
    assert_eq!(labels("tracefold_grouper_dlq_total"), all, "the grouper can send every reason to the DLQ");
    // The producer's invalid events: exactly the reasons the table says it answers with.
    let answered: BTreeSet<String> = table_after(&text, "**Rejection reasons.**")
        .iter()
        .filter(|r| r[2] != "never")
        .map(|r| code(&r[0]).to_owned())
        .collect();
    assert_eq!(labels("tracefold_producer_events_total"), answered);
}
