//! CPU seconds per pipeline stage, from Linux's `/proc`: this process's threads grouped by
//! name, the ClickHouse server process, and the whole machine. Elsewhere than Linux every
//! figure is zero.
//!
//! Times are in clock ticks of `USER_HZ`, which Linux fixes at 100 for user space.

use std::collections::BTreeMap;

const TICKS_PER_SEC: f64 = 100.0;

/// CPU ticks (user + system) at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CpuSnapshot {
    /// Per stage of this process (see [`stage_of`]).
    pub stages: BTreeMap<&'static str, u64>,
    /// This whole process, exited threads included.
    pub process: u64,
    /// The `clickhouse-server` processes: the one serving the benchmark when `clickhouse_pid`
    /// names it, else every one on the machine (0 when there is none).
    pub clickhouse: u64,
    /// The ClickHouse server measured, when it was found ([`clickhouse_pid`]); `None` counts
    /// every `clickhouse-server` process, another one's background work included.
    pub clickhouse_pid: Option<u32>,
    /// The whole machine: busy ticks (all but idle and iowait) and all ticks, over every core.
    pub machine_busy: u64,
    /// See `machine_busy`.
    pub machine_total: u64,
}

/// The stage a thread of this process belongs to, by its name: the services' threads are
/// named after them by the dev pipeline, librdkafka's threads (clients and the mock cluster)
/// start with `rdk:`, the benchmark's own async runtime (load generation) uses tokio's name.
pub fn stage_of(thread: &str) -> &'static str {
    if thread.starts_with("grouper") {
        "grouper"
    } else if thread.starts_with("writer") {
        "writer"
    } else if thread.starts_with("detector") {
        "detector"
    } else if thread.starts_with("rdk:mock") {
        "embedded broker (mock cluster)"
    } else if thread.starts_with("rdk:") || thread.starts_with("producer pollin") {
        // librdkafka's client threads (I/O, compression) and rust-rdkafka's threads that poll
        // producers for acknowledgements, of every client in the process.
        "kafka clients"
    } else if thread.starts_with("tokio-r") || thread.starts_with("tracefold") || thread.starts_with("loadgen") {
        // tokio names its workers "tokio-rt-worker" ("tokio-runtime-worker" before 1.44); the
        // main thread is named after the binary.
        // The command's own thread and runtime: generating and sending the load.
        "load generation"
    } else {
        "other"
    }
}

/// This process's threads now: thread id -> (name, user + system ticks). What a part of the
/// process started can be told from the rest by the threads that are new since a reading
/// before it (see `loadgen`'s producer).
pub fn threads() -> BTreeMap<u32, (String, u64)> {
    let mut out = BTreeMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for e in dir.flatten() {
            let Some(tid) = e.file_name().to_str().and_then(|t| t.parse::<u32>().ok()) else { continue };
            if let Some(x) = std::fs::read_to_string(e.path().join("stat")).ok().and_then(|x| stat_ticks(&x)) {
                out.insert(tid, x);
            }
        }
    }
    out
}

/// CPU seconds of the threads of `now` that are not in `before` and whose name starts with
/// `prefix`: what a part that started them between the two readings used.
pub fn new_threads_secs(
    before: &BTreeMap<u32, (String, u64)>,
    now: &BTreeMap<u32, (String, u64)>,
    prefix: &str,
) -> f64 {
    let ticks: u64 = now
        .iter()
        .filter(|(tid, (name, _))| !before.contains_key(tid) && name.starts_with(prefix))
        .map(|(_, (_, t))| t)
        .sum();
    ticks as f64 / TICKS_PER_SEC
}

/// User + system ticks of a `/proc/.../stat` line; its name (field 2, in parentheses, may hold
/// spaces and parentheses itself) ends at the last `)`.
pub fn stat_ticks(stat: &str) -> Option<(String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_owned();
    // After the name: state is field 3; utime and stime are fields 14 and 15.
    let rest: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some((name, utime + stime))
}

/// Busy and total ticks of the `cpu` line of `/proc/stat`.
pub fn machine_ticks(proc_stat: &str) -> Option<(u64, u64)> {
    let line = proc_stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest times are inside user already).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

impl CpuSnapshot {
    /// Reads the counters now, this process's threads grouped by [`stage_of`].
    pub fn now() -> Self {
        Self::now_by(stage_of)
    }

    /// Reads the counters now, this process's threads grouped by `stage` of their names, every
    /// `clickhouse-server` process counted.
    pub fn now_by(stage: fn(&str) -> &'static str) -> Self {
        Self::now_by_for(stage, None)
    }

    /// [`Self::now_by`] with only the ClickHouse server `clickhouse` counted, when given (from
    /// [`clickhouse_pid`]): another server on the machine, such as a developer's beside a
    /// scratch one, then stays out of the figure.
    pub fn now_by_for(stage: fn(&str) -> &'static str, clickhouse: Option<u32>) -> Self {
        let mut s = Self { clickhouse_pid: clickhouse, ..Self::default() };
        if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
            for e in dir.flatten() {
                if let Some((name, t)) =
                    std::fs::read_to_string(e.path().join("stat")).ok().and_then(|x| stat_ticks(&x))
                {
                    *s.stages.entry(stage(&name)).or_default() += t;
                }
            }
        }
        s.process = std::fs::read_to_string("/proc/self/stat").ok().and_then(|x| stat_ticks(&x)).map_or(0, |x| x.1);
        if let Some(pid) = clickhouse {
            s.clickhouse = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|x| stat_ticks(&x))
                .map_or(0, |x| x.1);
        } else {
            for (_, t) in clickhouse_processes() {
                s.clickhouse += t;
            }
        }
        if let Some((busy, total)) = std::fs::read_to_string("/proc/stat").ok().and_then(|x| machine_ticks(&x)) {
            (s.machine_busy, s.machine_total) = (busy, total);
        }
        s
    }

    /// CPU seconds spent between `start` and `self`, as JSON: per stage, this process, the
    /// ClickHouse server, and the machine's busy share over all cores (0 to 1).
    ///
    /// Threads that exited in between are counted in the process total only (as "exited
    /// threads"), since their own counters are gone.
    pub fn since(&self, start: &Self) -> serde_json::Value {
        let secs = |t: u64| t as f64 / TICKS_PER_SEC;
        let mut stages = serde_json::Map::new();
        let mut named = 0u64;
        for (stage, t) in &self.stages {
            // A thread that started after `start` counts from zero.
            let d = t.saturating_sub(start.stages.get(stage).copied().unwrap_or(0));
            named += d;
            stages.insert((*stage).to_owned(), secs(d).into());
        }
        let process = self.process.saturating_sub(start.process);
        stages.insert("exited threads".into(), secs(process.saturating_sub(named)).into());
        let (busy, total) = (
            self.machine_busy.saturating_sub(start.machine_busy),
            self.machine_total.saturating_sub(start.machine_total),
        );
        let measured = match self.clickhouse_pid {
            Some(pid) => format!("the server of the benchmark (pid {pid})"),
            None => "every clickhouse-server process on the machine".to_owned(),
        };
        serde_json::json!({
            "stages": stages,
            "process_seconds": secs(process),
            "clickhouse_seconds": secs(self.clickhouse.saturating_sub(start.clickhouse)),
            "clickhouse_measured": measured,
            "machine_busy_share": if total == 0 { 0.0 } else { busy as f64 / total as f64 },
        })
    }
}

/// The `clickhouse-server` processes of the machine (pid, user + system ticks).
fn clickhouse_processes() -> Vec<(u32, u64)> {
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
            if let Some((name, t)) = std::fs::read_to_string(e.path().join("stat")).ok().and_then(|x| stat_ticks(&x)) {
                // The kernel cuts names to 15 bytes: "clickhouse-serv".
                if name.starts_with("clickhouse-serv") {
                    out.push((pid, t));
                }
            }
        }
    }
    out
}

/// The port of `url` when its host is this machine (`localhost`, `127.x.y.z`, `::1`).
pub fn local_port(url: &str) -> Option<u16> {
    let u = reqwest::Url::parse(url).ok()?;
    let host = u.host_str()?;
    let local = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback());
    if local {
        u.port_or_known_default()
    } else {
        None
    }
}

/// The inodes of the sockets listening on TCP `port` in a `/proc/net/tcp` or `tcp6` table
/// (lines `sl local_address rem_address st ... uid timeout inode`, addresses `HEX:PORT` in
/// hexadecimal, state `0A` listening).
pub fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local_port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
            (local_port == port && *f.get(3)? == "0A").then(|| f.get(9)?.parse().ok())?
        })
        .collect()
}

/// The `clickhouse-server` process that listens on `url`'s port, when `url` is on this machine
/// and the process's open files can be read; `None` otherwise (the CPU figures then count every
/// `clickhouse-server` process).
pub fn clickhouse_pid(url: &str) -> Option<u32> {
    let port = local_port(url)?;
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        inodes.extend(std::fs::read_to_string(table).map(|t| listening_inodes(&t, port)).unwrap_or_default());
    }
    let sockets: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    clickhouse_processes().into_iter().map(|(pid, _)| pid).find(|pid| {
        std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
            fds.flatten().any(|fd| {
                std::fs::read_link(fd.path()).is_ok_and(|l| sockets.iter().any(|s| l.as_os_str() == s.as_str()))
            })
        })
    })
}

/// `VmRSS` and `VmHWM` (the peak so far) of this process, bytes (0 where /proc is not there).
pub fn rss() -> (u64, u64) {
    let f = super::procs::proc_figures("self");
    (f.rss_bytes, f.peak_rss_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_line_with_a_hostile_name() {
        let line = "42 (rdk:ma) in (x)) S 1 2 3 4 5 6 7 8 9 10 250 30 0 0 20 0 1 0";
        assert_eq!(stat_ticks(line), Some(("rdk:ma) in (x)".to_owned(), 280)));
        assert_eq!(stat_ticks("garbage"), None);
    }

    #[test]
    fn new_threads_are_those_absent_before_with_the_prefix() {
        let m = |v: &[(u32, &str, u64)]| -> BTreeMap<u32, (String, u64)> {
            v.iter().map(|(t, n, x)| (*t, ((*n).to_owned(), *x))).collect()
        };
        let before = m(&[(1, "grouper", 10), (2, "rdk:main", 20)]);
        let now = m(&[
            (1, "grouper", 90),
            (2, "rdk:main", 70),
            (3, "rdk:broker1", 95),
            (4, "writer", 40),
            (5, "rdk:main", 5),
        ]);
        // Threads 3 and 5 started in between under librdkafka's names; 2 is older, 4 another's.
        assert!((new_threads_secs(&before, &now, "rdk:") - 1.0).abs() < 1e-9);
        assert_eq!(new_threads_secs(&now, &now, "rdk:"), 0.0);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_started_thread_is_seen_with_its_name() {
        let before = threads();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (ready_tx, ready) = std::sync::mpsc::channel::<()>();
        // The thread names itself once it runs: read after it said so.
        let t = std::thread::Builder::new()
            .name("rdk:probe".into())
            .spawn(move || {
                ready_tx.send(()).unwrap();
                rx.recv()
            })
            .unwrap();
        ready.recv().unwrap();
        let now = threads();
        assert!(now.iter().any(|(tid, (name, _))| !before.contains_key(tid) && name == "rdk:probe"), "{now:?}");
        drop(tx);
        t.join().unwrap().unwrap_err();
    }

    #[test]
    fn machine_busy_excludes_idle_and_iowait() {
        let s = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n";
        assert_eq!(machine_ticks(s), Some((150, 1000)));
    }

    #[test]
    fn the_listening_socket_of_a_port() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
                   \x20  0: 0100007F:1FBC 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0 100 0 0 10 0\n\
                   \x20  1: 0100007F:1FBC 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0 20 4 30 10 -1\n\
                   \x20  2: 00000000:1FBD 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4444 1 0 100 0 0 10 0\n";
        assert_eq!(listening_inodes(tcp, 8124), vec![4242], "a connection on the port is not its listener");
        assert_eq!(listening_inodes(tcp, 8125), vec![4444]);
        assert_eq!(listening_inodes(tcp, 8123), Vec::<u64>::new());
        let tcp6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
                    \x20  0: 00000000000000000000000001000000:1FBC 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77 1 0 100 0 0 10 0\n";
        assert_eq!(listening_inodes(tcp6, 8124), vec![77]);
        assert_eq!(listening_inodes("garbage\nmore garbage", 8124), Vec::<u64>::new());
    }

    #[test]
    fn only_a_server_on_this_machine_has_a_local_port() {
        assert_eq!(local_port("http://127.0.0.1:8124"), Some(8124));
        assert_eq!(local_port("http://localhost/"), Some(80));
        assert_eq!(local_port("http://[::1]:8123/x"), Some(8123));
        assert_eq!(local_port("http://ch.example:8123"), None);
        assert_eq!(local_port("not a url"), None);
    }

    #[test]
    fn stages_by_thread_name() {
        assert_eq!(stage_of("grouper"), "grouper");
        assert_eq!(stage_of("rdk:broker1"), "kafka clients");
        assert_eq!(stage_of("producer pollin"), "kafka clients");
        assert_eq!(stage_of("rdk:mock"), "embedded broker (mock cluster)");
        assert_eq!(stage_of("tracefold"), "load generation");
        assert_eq!(stage_of("tokio-rt-worker"), "load generation");
        assert_eq!(stage_of("main"), "other");
    }

    #[test]
    fn since_counts_exited_threads_in_the_process_total() {
        let start = CpuSnapshot { process: 100, ..Default::default() };
        assert_eq!(start.since(&start)["clickhouse_measured"], "every clickhouse-server process on the machine");
        let mut end = CpuSnapshot { process: 400, machine_busy: 50, machine_total: 100, ..Default::default() };
        end.stages.insert("writer", 100);
        let j = end.since(&start);
        assert_eq!(j["process_seconds"], 3.0);
        assert_eq!(j["stages"]["writer"], 1.0);
        assert_eq!(j["stages"]["exited threads"], 2.0);
        assert_eq!(j["machine_busy_share"], 0.5);
    }
}
