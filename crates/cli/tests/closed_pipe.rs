//! Output commands end quietly when their reader goes away (`tracefold gen | head -1`): exit
//! status 0, nothing on stderr, no panic.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// Runs `tracefold ARGS`, reads one line of its output, closes the pipe, and returns the exit
/// status and stderr.
fn first_line_then_close(args: &[&str]) -> (std::process::ExitStatus, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tracefold"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tracefold runs");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line).expect("a first line");
    // The reader (and the pipe's read end) is dropped here.
    let out = child.wait_with_output().expect("tracefold ends");
    (out.status, line, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn gen_and_fingerprint_end_quietly_when_the_reader_goes_away() {
    let (status, line, stderr) = first_line_then_close(&["gen", "--events", "200000", "--seed", "3"]);
    assert!(line.starts_with('{'), "an event first: {line}");
    assert!(status.success(), "gen: {status}, stderr: {stderr}");
    assert!(stderr.is_empty(), "gen wrote to stderr: {stderr}");

    // `fingerprint` prints a line per event through the output macros.
    let dir = std::env::temp_dir().join(format!("tracefold-closed-pipe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let events = dir.join("events.ndjson");
    let gen = Command::new(env!("CARGO_BIN_EXE_tracefold"))
        .args(["gen", "--events", "20000", "--seed", "3"])
        .output()
        .expect("gen runs");
    assert!(gen.status.success());
    std::fs::write(&events, gen.stdout).unwrap();
    let (status, line, stderr) = first_line_then_close(&["fingerprint", events.to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(line.contains("fingerprint") || line.starts_with('{'), "a result first: {line}");
    assert!(status.success(), "fingerprint: {status}, stderr: {stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "fingerprint: {stderr}");
}

/// `tracefold migrate --print-for VERSION | head` (the schema for a review, or the first
/// statements): the statements went through `println!`, which panics on a closed pipe. The
/// reader here is gone before the command writes anything, so the outcome does not depend on
/// how much of the output was written before it went away.
#[test]
fn migrate_print_for_ends_quietly_when_the_reader_is_gone() {
    for args in [&["migrate", "--print-for", "23.8"][..], &["migrate", "--print-for", "18.16.1", "--cluster", "c"][..]]
    {
        let (reader, writer) = std::io::pipe().expect("a pipe");
        drop(reader);
        let out = Command::new(env!("CARGO_BIN_EXE_tracefold"))
            .args(args)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .expect("tracefold runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {}, stderr: {stderr}", out.status);
        assert!(stderr.is_empty(), "{args:?} wrote to stderr: {stderr}");
    }
}
