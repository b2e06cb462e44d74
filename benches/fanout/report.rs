//! The results: a Markdown table with every value as a ratio to the
//! baseline and to the raw limit, the targets of issue 8 checked, and an
//! SVG chart of deliveries/s and p99 latency against client count.

use std::fmt::Write as _;
use std::time::Duration;

use crate::Run;

pub(crate) struct Meta {
    pub(crate) window: u64,
    pub(crate) repeat: usize,
    pub(crate) quick: bool,
    pub(crate) cpus: usize,
    pub(crate) elapsed: Duration,
    pub(crate) skipped: Vec<String>,
}

const LOAD: [&str; 2] = ["load-1k", "load-10k"];
const PACED: [&str; 2] = ["paced-1k", "paced-10k"];
/// Streams over a few HTTP/2 connections (crate and baseline only).
const H2: [&str; 1] = ["h2-1k"];
/// The memory scenarios: just connected, after the first heartbeat, and
/// the most connections one process may hold.
const IDLE: [&str; 3] = ["idle-10k", "idle-10k-beat", "scale"];
const ALL: [&str; 8] = [
    "load-1k",
    "load-10k",
    "paced-1k",
    "paced-10k",
    "idle-10k",
    "idle-10k-beat",
    "scale",
    "h2-1k",
];
const KINDS: [&str; 7] = [
    "crate",
    "crate-metrics",
    "crate-presence",
    "crate-users",
    "crate-users-presence",
    "baseline",
    "raw",
];

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// The median over the repeats of `scenario` × `kind`: over the clean
/// runs when there are any, else over all.
fn med(runs: &[Run], scenario: &str, kind: &str, f: impl Fn(&Run) -> f64) -> Option<f64> {
    let cell: Vec<&Run> = runs
        .iter()
        .filter(|r| r.scenario == scenario && r.kind == kind)
        .collect();
    let clean: Vec<&Run> = cell.iter().copied().filter(|r| !r.noisy).collect();
    let pick = if clean.is_empty() { cell } else { clean };
    median(pick.into_iter().map(f).collect())
}

/// The total over every run of `scenario` × `kind`, noisy ones included.
fn sum(runs: &[Run], scenario: &str, kind: &str, f: impl Fn(&Run) -> u64) -> u64 {
    runs.iter()
        .filter(|r| r.scenario == scenario && r.kind == kind)
        .map(f)
        .sum()
}

/// The smallest and largest value over the runs the median is taken of,
/// in thousands.
fn range(runs: &[Run], scenario: &str, kind: &str, f: impl Fn(&Run) -> f64) -> String {
    let cell: Vec<&Run> = runs
        .iter()
        .filter(|r| r.scenario == scenario && r.kind == kind)
        .collect();
    let clean: Vec<&Run> = cell.iter().copied().filter(|r| !r.noisy).collect();
    let pick = if clean.is_empty() { cell } else { clean };
    let v: Vec<f64> = pick.into_iter().map(f).collect();
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(0.0, f64::max);
    if v.is_empty() {
        "–".to_owned()
    } else {
        format!("{:.0}k–{:.0}k", lo / 1e3, hi / 1e3)
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "–".to_owned(),
    }
}

fn num(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("{v:.digits$}"))
}

fn thousands(v: Option<f64>) -> String {
    let Some(v) = v else {
        return "–".to_owned();
    };
    let s = format!("{:.0}", v);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub(crate) fn render(runs: &[Run], meta: &Meta) -> (String, String) {
    let mut md = String::new();
    let kernel = crate::sys::sysctl("/proc/sys/kernel/osrelease");
    let _ = writeln!(md, "# Fan-out benchmark results\n");
    let _ = writeln!(
        md,
        "`cargo bench --bench fanout`{}: {} CPUs (servers pinned to CPU 0, clients to CPU 1), \
         Linux {kernel}, publish window {} messages, median of {} run(s) per load cell, {:.0} s in all. \
         tcp_rmem `{}`, tcp_wmem `{}`.\n",
        if meta.quick { " -- --quick" } else { "" },
        meta.cpus,
        meta.window,
        meta.repeat,
        meta.elapsed.as_secs_f64(),
        crate::sys::sysctl("/proc/sys/net/ipv4/tcp_rmem"),
        crate::sys::sysctl("/proc/sys/net/ipv4/tcp_wmem"),
    );

    let _ = writeln!(md, "Measured: {}.\n", source_state());
    let _ = writeln!(md, "## Load: deliveries, latency, CPU\n");
    let _ = writeln!(
        md,
        "| scenario | server | deliveries/s | (min–max) | × baseline | × raw | p50 ms | p99 ms | p99 × baseline | p99 × raw | max ms | lost / expected | closed by server | CPU µs/delivery | × baseline | × raw | server CPU | client CPU | deliveries/write | wire B/msg |"
    );
    let _ = writeln!(md, "|{}", "---|".repeat(20));
    for sc in LOAD.into_iter().chain(PACED).chain(H2) {
        for kind in KINDS {
            let m = |f: &dyn Fn(&Run) -> f64| med(runs, sc, kind, f);
            let b = |f: &dyn Fn(&Run) -> f64| med(runs, sc, "baseline", f);
            let r = |f: &dyn Fn(&Run) -> f64| med(runs, sc, "raw", f);
            let dps = |x: &Run| x.deliveries_per_s();
            let p99 = |x: &Run| x.p99_us as f64 / 1e3;
            let cpu = |x: &Run| x.cpu_us_per_delivery();
            if m(&dps).is_none() {
                continue;
            }
            let _ = writeln!(
                md,
                "| {sc} | {kind} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                thousands(m(&dps)),
                range(runs, sc, kind, dps),
                ratio(m(&dps), b(&dps)),
                ratio(m(&dps), r(&dps)),
                num(m(&|x| x.p50_us as f64 / 1e3), 2),
                num(m(&p99), 2),
                ratio(m(&p99), b(&p99)),
                ratio(m(&p99), r(&p99)),
                num(m(&|x| x.max_us as f64 / 1e3), 2),
                sum(runs, sc, kind, |x| x.lost),
                sum(runs, sc, kind, |x| x.expected),
                sum(runs, sc, kind, |x| x.closed),
                num(m(&cpu), 2),
                ratio(m(&cpu), b(&cpu)),
                ratio(m(&cpu), r(&cpu)),
                num(m(&|x| x.server_util() * 100.0), 0) + " %",
                num(m(&|x| x.client_util() * 100.0), 0) + " %",
                num(m(&|x| x.deliveries_per_write()), 2),
                num(m(&|x| x.wire_bytes_per_msg()), 0),
            );
        }
    }

    if runs.iter().any(|r| r.kind == "crate-metrics") {
        let _ = writeln!(
            md,
            "\n## Metrics on ÷ off (`htmx_sse::metrics` registered, issue 18: ≤ 1.03× CPU per delivery)\n"
        );
        let _ = writeln!(
            md,
            "| scenario | CPU µs/delivery off | on | on ÷ off | deliveries/s on ÷ off | p99 on ÷ off |"
        );
        let _ = writeln!(md, "|{}", "---|".repeat(6));
        for sc in LOAD.into_iter().chain(PACED) {
            let off = |f: &dyn Fn(&Run) -> f64| med(runs, sc, "crate", f);
            let on = |f: &dyn Fn(&Run) -> f64| med(runs, sc, "crate-metrics", f);
            let cpu = |x: &Run| x.cpu_us_per_delivery();
            if on(&cpu).is_none() {
                continue;
            }
            let _ = writeln!(
                md,
                "| {sc} | {} | {} | {} | {} | {} |",
                num(off(&cpu), 3),
                num(on(&cpu), 3),
                match (on(&cpu), off(&cpu)) {
                    (Some(a), Some(b)) if b > 0.0 => format!("{:.3}×", a / b),
                    _ => "–".to_owned(),
                },
                ratio(
                    on(&|x| x.deliveries_per_s()),
                    off(&|x| x.deliveries_per_s())
                ),
                ratio(on(&|x| x.p99_us as f64), off(&|x| x.p99_us as f64)),
            );
        }
    }

    if runs
        .iter()
        .any(|r| r.kind == "crate-presence" || r.kind == "crate-users-presence")
    {
        let _ = writeln!(
            md,
            "\n## Presence watched ÷ not (`watch_presence(Everyone)`, issue 18: not paid when off)\n"
        );
        let _ = writeln!(
            md,
            "| scenario | connections | RSS KiB/conn off | on | on − off KiB/conn | on ÷ off |"
        );
        let _ = writeln!(md, "|{}", "---|".repeat(6));
        for sc in IDLE {
            for (who, off_kind, on_kind) in [
                ("anonymous", "crate", "crate-presence"),
                ("a user each", "crate-users", "crate-users-presence"),
            ] {
                let per = |x: &Run| x.rss_per_conn_kib();
                let (Some(off), Some(on)) =
                    (med(runs, sc, off_kind, per), med(runs, sc, on_kind, per))
                else {
                    continue;
                };
                let _ = writeln!(
                    md,
                    "| {sc} | {who} | {off:.2} | {on:.2} | {:.2} | {:.3}× |",
                    on - off,
                    on / off
                );
            }
        }
    }

    let _ = writeln!(md, "\n## Memory: idle connections held\n");
    let _ = writeln!(
        md,
        "| scenario | server | held / asked | connect s | RSS before MiB | RSS held MiB | RSS KiB/conn | × baseline | × raw | kernel slab KiB/conn (both ends) | TCP buffer KiB/conn |"
    );
    let _ = writeln!(md, "|{}", "---|".repeat(11));
    for sc in ALL {
        for kind in KINDS {
            let m = |f: &dyn Fn(&Run) -> f64| med(runs, sc, kind, f);
            let per = |x: &Run| x.rss_per_conn_kib();
            if m(&per).is_none() {
                continue;
            }
            let _ = writeln!(
                md,
                "| {sc} | {kind} | {} / {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                thousands(m(&|x| x.connected as f64)),
                thousands(m(&|x| x.conns as f64)),
                num(m(&|x| x.connect_ms as f64 / 1e3), 1),
                num(m(&|x| x.rss_start_kib as f64 / 1024.0), 1),
                num(m(&|x| x.rss_held_kib as f64 / 1024.0), 1),
                num(m(&per), 2),
                ratio(m(&per), med(runs, sc, "baseline", per)),
                // The raw loop keeps next to nothing per connection in user
                // space: a ratio to it says nothing.
                match med(runs, sc, "raw", per) {
                    Some(r) if r >= 0.1 => ratio(m(&per), Some(r)),
                    Some(_) => "(raw ≈ 0)".to_owned(),
                    None => "–".to_owned(),
                },
                num(m(&|x| x.slab_per_conn_kib()), 2),
                num(m(&|x| x.tcp_mem_per_conn_kib()), 2),
            );
        }
    }

    let _ = writeln!(
        md,
        "\n## Targets (issue 8), the crate against the baseline\n"
    );
    for line in targets(runs) {
        let _ = writeln!(md, "- {line}");
    }

    let _ = writeln!(md, "\n## Every run\n");
    let _ = writeln!(
        md,
        "| scenario | server | connected | deliveries/s | p50 ms | p99 ms | max ms | lost | closed | forced | timed out | server CPU ms | CPU µs/delivery | server CPU | client CPU | other processes | deliveries/write | RSS KiB/conn | RSS after MiB |"
    );
    let _ = writeln!(md, "|{}", "---|".repeat(19));
    for r in runs {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} | {:.0} | {:.2} | {:.0} % | {:.0} % | {:.0} %{} | {:.2} | {:.2} | {:.1} |",
            r.scenario,
            r.kind,
            r.connected,
            r.deliveries_per_s(),
            r.p50_us as f64 / 1e3,
            r.p99_us as f64 / 1e3,
            r.max_us as f64 / 1e3,
            r.lost,
            r.closed,
            r.forced,
            r.timed_out,
            r.server_cpu_ns as f64 / 1e6,
            r.cpu_us_per_delivery(),
            r.server_util() * 100.0,
            r.client_util() * 100.0,
            r.foreign() * 100.0,
            if r.noisy { " (noisy)" } else { "" },
            r.deliveries_per_write(),
            r.rss_per_conn_kib(),
            r.rss_after_kib as f64 / 1024.0,
        );
    }
    if !meta.skipped.is_empty() {
        let _ = writeln!(md, "\nNot run or failed: {}", meta.skipped.join("; "));
    }
    (md, svg(runs))
}

/// Which crate source was measured: the commit, and whether `src/` had
/// uncommitted changes (read-only `git` queries; "unknown" without git).
fn source_state() -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(head) => {
            let dirty = git(&["status", "--porcelain", "--", "src"]).is_some_and(|s| !s.is_empty());
            format!(
                "the crate at commit {head}{}",
                if dirty {
                    " with uncommitted changes in src/"
                } else {
                    ""
                }
            )
        }
        None => "the crate (commit unknown)".to_owned(),
    }
}

fn targets(runs: &[Run]) -> Vec<String> {
    let mut out = Vec::new();
    let verdict = |ok: bool| if ok { "MET" } else { "MISSED" };
    for sc in LOAD {
        let c = med(runs, sc, "crate", Run::deliveries_per_s);
        let b = med(runs, sc, "baseline", Run::deliveries_per_s);
        if let (Some(c), Some(b)) = (c, b) {
            let r = c / b;
            out.push(format!(
                "{sc}: deliveries/s {:.2}× baseline (target ≥ 1.20×): {}",
                r,
                verdict(r >= 1.2)
            ));
        }
        let p = |k| med(runs, sc, k, |x: &Run| x.p99_us as f64);
        if let (Some(c), Some(b)) = (p("crate"), p("baseline")) {
            let r = c / b.max(1.0);
            out.push(format!(
                "{sc}: p99 latency {:.2}× baseline (target ≤ 1.00×): {}",
                r,
                verdict(r <= 1.0)
            ));
        }
        let lost = sum(runs, sc, "crate", |x| x.lost);
        let closed = sum(runs, sc, "crate", |x| x.closed);
        if sum(runs, sc, "crate", |x| x.expected) == 0 {
            continue;
        }
        out.push(format!(
            "{sc}: the crate lost {lost} messages and closed {closed} connections (lagging)"
        ));
    }
    for sc in PACED {
        let p = |k| med(runs, sc, k, |x: &Run| x.p99_us as f64);
        if let (Some(c), Some(b)) = (p("crate"), p("baseline")) {
            out.push(format!(
                "{sc} (not a target, for reading the p99 above): p99 of one unloaded fan-out {:.2} ms = {:.2}× baseline ({:.2} ms)",
                c / 1e3,
                c / b.max(1.0),
                b / 1e3
            ));
        }
    }
    for sc in IDLE {
        let p = |k| med(runs, sc, k, Run::rss_per_conn_kib);
        if let (Some(c), Some(b)) = (p("crate"), p("baseline")) {
            let r = c / b;
            out.push(format!(
                "{sc}: RSS per idle connection {c:.2} KiB = {:.2}× baseline ({b:.2} KiB) (target ≤ 1.00×): {}",
                r,
                verdict(r <= 1.0)
            ));
        }
    }
    if let Some(held) = med(runs, "scale", "crate", |x| x.connected as f64) {
        let asked = med(runs, "scale", "crate", |x| x.conns as f64).unwrap_or(0.0);
        out.push(format!(
            "scale: the crate held {held:.0} of {asked:.0} idle connections on one process (target about 19,500): {}",
            verdict(held >= 19_500.0)
        ));
    }
    let cpu = |sc| med(runs, sc, "crate", Run::cpu_us_per_delivery);
    if let (Some(a), Some(b)) = (cpu("load-1k"), cpu("load-10k")) {
        let r = b / a;
        out.push(format!(
            "CPU per delivery at 10k clients {b:.2} µs = {r:.2}× that at 1k ({a:.2} µs) (target ≤ 1.30×): {}",
            verdict(r <= 1.3)
        ));
    }
    out
}

/// A chart panel: title, unit, the value, and the x positions.
type Panel<'a> = (&'a str, &'a str, fn(&Run) -> f64, &'a [(&'a str, f64)]);

/// Three panels, deliveries/s and p99 latency against client count, for the
/// crate, the baseline and (dashed) the raw limit.
fn svg(runs: &[Run]) -> String {
    let series: [(&str, &str, &str); 3] = [
        ("crate", "#1f77b4", ""),
        ("baseline", "#ff7f0e", ""),
        ("raw", "#7f7f7f", " stroke-dasharray=\"6 4\""),
    ];
    // The client counts of the scenarios that ran, in scenario order.
    let counts = |scenarios: &[&'static str]| -> Vec<(&'static str, f64)> {
        scenarios
            .iter()
            .filter_map(|sc| {
                runs.iter()
                    .find(|r| r.scenario == *sc)
                    .map(|r| (*sc, r.conns as f64))
            })
            .collect()
    };
    let xs = counts(&LOAD);
    let xs_paced = counts(&PACED);
    let p99 = |r: &Run| r.p99_us as f64 / 1e3;
    let panels: [Panel<'_>; 3] = [
        (
            "deliveries/s, publishing flat out",
            "deliveries/s",
            Run::deliveries_per_s,
            &xs,
        ),
        ("p99 latency, publishing flat out", "ms", p99, &xs),
        ("p99 latency of one fan-out (paced)", "ms", p99, &xs_paced),
    ];
    let (w, h) = (1260.0, 420.0);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    for (pi, (title, unit, f, xs)) in panels.iter().enumerate() {
        let x0 = 75.0 + pi as f64 * (w / 3.0);
        let (pw, ph, y0) = (w / 3.0 - 110.0, h - 120.0, 50.0);
        let mut ymax: f64 = 0.0;
        for (k, _, _) in &series {
            for (sc, _) in xs.iter() {
                if let Some(v) = med(runs, sc, k, f) {
                    ymax = ymax.max(v);
                }
            }
        }
        let ymax = nice(ymax * 1.1);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="28" text-anchor="middle" font-size="15" font-weight="bold">{title}</text>"#,
            x0 + pw / 2.0
        );
        let _ = writeln!(
            s,
            r##"<rect x="{x0}" y="{y0}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##
        );
        for i in 0..=5 {
            let v = ymax * f64::from(i) / 5.0;
            let y = y0 + ph - ph * f64::from(i) / 5.0;
            let _ = writeln!(
                s,
                r##"<line x1="{x0}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                x0 + pw,
                x0 - 6.0,
                y + 4.0,
                short(v)
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle" transform="rotate(-90 {} {})">{unit}</text>"#,
            x0 - 52.0,
            y0 + ph / 2.0,
            x0 - 52.0,
            y0 + ph / 2.0
        );
        let n = xs.len().max(1) as f64;
        let xpos = |i: usize| x0 + pw * (i as f64 + 0.5) / n;
        for (i, (_, c)) in xs.iter().enumerate() {
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{}" text-anchor="middle">{} clients</text>"#,
                xpos(i),
                y0 + ph + 18.0,
                thousands(Some(*c))
            );
        }
        for (si, (k, color, dash)) in series.iter().enumerate() {
            let pts: Vec<(f64, f64, f64)> = xs
                .iter()
                .enumerate()
                .filter_map(|(i, (sc, _))| {
                    med(runs, sc, k, f).map(|v| (xpos(i), y0 + ph - ph * v / ymax, v))
                })
                .collect();
            if pts.len() > 1 {
                let path: Vec<String> = pts
                    .iter()
                    .map(|(x, y, _)| format!("{x:.1},{y:.1}"))
                    .collect();
                let _ = writeln!(
                    s,
                    r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2.5"{dash}/>"#,
                    path.join(" ")
                );
            }
            for (x, y, v) in &pts {
                let _ = writeln!(
                    s,
                    r#"<circle cx="{x:.1}" cy="{y:.1}" r="4" fill="{color}"/><text x="{:.1}" y="{:.1}" fill="{color}">{}</text>"#,
                    x + 8.0,
                    // Staggered by series, so close values stay readable.
                    y + 4.0 + (si as f64 - 1.0) * 13.0,
                    short(*v)
                );
            }
        }
    }
    // Legend.
    for (i, (k, color, dash)) in series.iter().enumerate() {
        let x = 75.0 + i as f64 * 300.0;
        let y = h - 30.0;
        let label = match *k {
            "crate" => "htmx-sse (setup_broadcast_routes)",
            "crate-metrics" => "htmx-sse with htmx_sse::metrics registered",
            "crate-presence" => "htmx-sse with presence watched",
            "crate-users" => "htmx-sse, a user per connection",
            "crate-users-presence" => "htmx-sse, a user per connection, presence watched",
            "baseline" => "axum Sse + tokio broadcast",
            _ => "raw socket loop (limit)",
        };
        let _ = writeln!(
            s,
            r#"<line x1="{x}" y1="{y}" x2="{}" y2="{y}" stroke="{color}" stroke-width="2.5"{dash}/><text x="{}" y="{}">{label}</text>"#,
            x + 24.0,
            x + 30.0,
            y + 4.0
        );
    }
    let _ = writeln!(s, "</svg>");
    s
}

/// A round axis maximum: 1, 2 or 5 times a power of ten.
fn nice(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if v <= m * p {
            return m * p;
        }
    }
    10.0 * p
}

fn short(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}
