//! The writer's work per record, once, for instruction counts (stable on a noisy machine,
//! unlike wall time): decoding the aggregates topic's records, the replay check, the rows, and
//! the INSERTs (RowBinary, LZ4 and HTTP, to a local sink that reads and drops them).
//!
//! ```sh
//! cargo build --release -p tracefold-writer --example writer_once
//! for m in decode admit rows insert; do
//!   valgrind --tool=callgrind --toggle-collect='writer_once::run' \
//!     --callgrind-out-file=/tmp/cg.$m target/release/examples/writer_once $m 20000
//! done
//! callgrind_annotate --inclusive=yes /tmp/cg.insert | head -60
//! ```
//!
//! Only `run` is counted (making the records is not); every mode prints the records it
//! handled: divide the instructions by that. Modes, each a step more than the one before:
//!
//! - `decode`: each record's JSON decoded as the writer's loop does, in batches of 5,000
//!   ([`tracefold_writer::batch::Batch`], its buffers reused from one batch to the next as
//!   the writer does);
//! - `admit`: + the replay watermarks' check of every record;
//! - `rows`: + the batch's `AggregateRow`s;
//! - `insert`: + `tracefold_store::aggregates::insert` of them (samples table first).
//!
//! The records are `tracefold bench-writer`'s: 2,000 issues over three projects, `i % 7`
//! users, a sample in one record of twenty (the first event of benches/fixtures/events.ndjson,
//! 1.9 KB, an escaped string in the record).

use std::hint::black_box;
use std::io::{BufRead, BufReader, Read, Write};
use std::time::Duration;
use tracefold_store::aggregates::Watermarks;
use tracefold_store::rows::AggregateRow;
use tracefold_writer::batch::Batch;

const BATCH: usize = 5_000;
const SAMPLE_EVENTS: &str = include_str!("../../../benches/fixtures/events.ndjson");

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map_or("insert", String::as_str);
    let n: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(20_000);
    let sample = SAMPLE_EVENTS.lines().next().expect("a fixture event");
    let payloads: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            serde_json::to_vec(&tracefold_writer::bench::record(i, 1_795_671_540, "tracefold.events", sample))
                .expect("encodes")
        })
        .collect();
    let bytes: usize = payloads.iter().map(Vec::len).sum();
    let url = sink();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let cfg = tracefold_runtime::config::ClickHouseConfig { url, ..Default::default() };
    let client = tracefold_store::client::database_client(&cfg).expect("client");
    let done = run(mode, &payloads, &rt, &client);
    println!("{mode}: {done} records, {} bytes on average", bytes / payloads.len().max(1));
}

#[inline(never)]
fn run(mode: &str, payloads: &[Vec<u8>], rt: &tokio::runtime::Runtime, client: &tracefold_store::Client) -> usize {
    let mut wm = Watermarks::new();
    let mut batch = Batch::default();
    let mut done = 0;
    for (c, chunk) in payloads.chunks(BATCH).enumerate() {
        batch.clear();
        for (i, p) in chunk.iter().enumerate() {
            batch.push(p, 0, (c * BATCH + i) as i64).expect("decodes");
        }
        if mode == "decode" {
            done += black_box(&batch).len();
            continue;
        }
        let keep: Vec<usize> = (0..batch.len()).filter(|&i| batch.admit(i, &mut wm)).collect();
        if mode == "admit" {
            done += black_box(&keep).len();
            continue;
        }
        let rows: Vec<AggregateRow<'_>> = keep.iter().map(|&i| batch.row(i, "tracefold.aggregates")).collect();
        if mode == "rows" {
            done += black_box(&rows).len();
            continue;
        }
        rt.block_on(tracefold_store::aggregates::insert(client, "aggregates", &rows, Duration::from_secs(60), None))
            .expect("the sink takes every insert");
        done += rows.len();
    }
    done
}

/// A local HTTP server that reads every request's body and answers 200: the INSERTs' bytes
/// go nowhere. Returns its URL.
fn sink() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || serve(conn));
        }
    });
    url
}

fn serve(conn: std::net::TcpStream) -> Option<()> {
    let mut w = conn.try_clone().ok()?;
    let mut r = BufReader::new(conn);
    loop {
        let (mut line, mut chunked, mut length) = (String::new(), false, 0usize);
        loop {
            line.clear();
            if r.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let l = line.trim_end().to_ascii_lowercase();
            if l.is_empty() {
                break;
            }
            chunked |= l.starts_with("transfer-encoding:") && l.contains("chunked");
            if let Some(v) = l.strip_prefix("content-length:") {
                length = v.trim().parse().ok()?;
            }
        }
        if chunked {
            loop {
                line.clear();
                r.read_line(&mut line).ok()?;
                let size = usize::from_str_radix(line.trim_end().split(';').next()?, 16).ok()?;
                std::io::copy(&mut (&mut r).take(size as u64 + 2), &mut std::io::sink()).ok()?;
                if size == 0 {
                    break;
                }
            }
        } else {
            std::io::copy(&mut (&mut r).take(length as u64), &mut std::io::sink()).ok()?;
        }
        w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").ok()?;
    }
}
