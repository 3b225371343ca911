//! `tracefold migrate --print-for` checks the names it formats into the statements as
//! `tracefold migrate` does: a database or cluster name that is not an identifier is an error
//! naming it, and no statement is printed.

use std::process::Command;

#[test]
fn print_for_refuses_names_that_are_not_identifiers_and_prints_nothing() {
    for (args, named) in [
        (&["--database", "my-db"][..], "clickhouse.database"),
        (&["--database", "x; DROP DATABASE tracefold"][..], "clickhouse.database"),
        (&["--cluster", "c ON CLUSTER d"][..], "--cluster"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_tracefold"))
            .args(["migrate", "--print-for", "23.8"])
            .args(args)
            .output()
            .expect("tracefold runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: exit {}", out.status);
        assert!(stderr.contains(named), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}: printed {}", String::from_utf8_lossy(&out.stdout));
    }
    let ok = Command::new(env!("CARGO_BIN_EXE_tracefold"))
        .args(["migrate", "--print-for", "23.8", "--database", "tf_1", "--cluster", "prod_1"])
        .output()
        .expect("tracefold runs");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("CREATE TABLE IF NOT EXISTS tf_1."));
}
