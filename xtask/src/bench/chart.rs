//! The benchmark's picture, `latest.svg`: one small panel per measure (connections per second,
//! p99 latency, server CPU per connection), each with its own axis, one bar per mode, coloured
//! by what picks the worker. Drawn with plotters' SVG backend, whose text needs no font files.

use plotters::{
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

use super::report::{Report, Sample};

const WIDTH: u32 = 1000;
/// Above the panels: title, what was run, legend.
const HEADER: u32 = 108;
/// One mode's row.
const ROW: u32 = 26;
/// Below the rows: the x axis' labels.
const FOOTER: u32 = 30;
/// The mode names' column, left of the first panel.
const NAMES: u32 = 118;
const FONT: &str = "sans-serif";

/// One panel: its title, the median per mode of one figure, and how a value is written.
struct Panel {
    title: &'static str,
    figure: fn(&Sample) -> f64,
    format: fn(f64) -> String,
}

const PANELS: [Panel; 3] = [
    Panel {
        title: "connections per second (more is better)",
        figure: |s| s.conn_per_s,
        format: thousands,
    },
    Panel { title: "p99 latency, µs (less is better)", figure: |s| s.p99_us, format: whole },
    Panel {
        title: "server CPU per connection, µs (less is better)",
        figure: |s| s.cpu_ms_per_1000,
        format: tenths,
    },
];

/// Whether `mode` runs Node workers (sticky-session's seed is Node's own master).
fn node(mode: &str) -> bool {
    mode.ends_with("-node") || mode == "seed"
}

/// What picks the worker in `mode`, and its colour.
fn family(mode: &str) -> usize {
    match mode {
        "kernel" | "kernel-node" | "udp-kernel" | "quic-kernel" | "quic-handshakes" => 0,
        "userspace" => 1,
        "reuseport" | "reuseport-node" | "udp-reuseport" | "quic-handshakes-reuseport" => 2,
        _ => 3,
    }
}

const FAMILIES: [(&str, RGBColor); 4] = [
    ("sticky, kernel dispatch (eBPF)", RGBColor(0x2b, 0x64, 0xa8)),
    ("sticky, userspace dispatch", RGBColor(0x8c, 0xb4, 0xdc)),
    ("plain SO_REUSEPORT: not sticky", RGBColor(0xa8, 0xa8, 0xa8)),
    ("a proxy or master process in front (nginx, haproxy, seed)", RGBColor(0xe8, 0x86, 0x3a)),
];

/// The picture of `report`, as SVG text.
pub fn svg(report: &Report) -> anyhow::Result<String> {
    let modes: Vec<&str> = report.modes.iter().map(|m| m.mode.as_str()).collect();
    let height = HEADER + ROW * modes.len() as u32 + FOOTER;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE)?;
        header(&root, report)?;
        let body = root.margin(HEADER, 0, 0, 10);
        let panel = (WIDTH - NAMES - 10) / 3;
        let (first, rest) = body.split_horizontally(NAMES + panel);
        let (second, third) = rest.split_horizontally(panel);
        for (area, panel, names) in
            [(&first, &PANELS[0], NAMES), (&second, &PANELS[1], 14), (&third, &PANELS[2], 14)]
        {
            let values: Vec<f64> =
                modes.iter().map(|mode| report.median_of(mode, panel.figure)).collect();
            draw_panel(area, panel, &modes, &values, names)?;
        }
        root.present()?;
    }
    Ok(svg)
}

/// The title, what was measured and how, and the colours' legend.
fn header<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    report: &Report,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let runs = report.modes.iter().map(|m| m.samples.len()).max().unwrap_or(0);
    let title = (FONT, 18).into_font().style(FontStyle::Bold);
    root.draw(&Text::new("sticky: every dispatch mode, same workers, same load", (12, 8), title))?;
    let how = format!(
        "{} workers · {} concurrent connections from {} client addresses, a new connection per \
         request · median of {runs} run{}{} · {} CPUs, Linux {}",
        report.workers,
        report.concurrency,
        report.clients,
        if runs == 1 { "" } else { "s" },
        if report.quick { " (quick)" } else { "" },
        report.machine.cpus,
        report.machine.kernel,
    );
    let grey = (FONT, 13).into_font().color(&RGBColor(80, 80, 80));
    root.draw(&Text::new(how, (12, 34), grey.clone()))?;
    let workers =
        "The workers: sticky's Rust demo server above the dashed line, node's http below it.";
    root.draw(&Text::new(workers, (12, 52), grey))?;
    let mut x = 12;
    for (label, colour) in FAMILIES {
        root.draw(&Rectangle::new([(x, 76), (x + 12, 88)], colour.filled()))?;
        root.draw(&Text::new(label, (x + 17, 76), (FONT, 12)))?;
        x += 17 + text_width(label) + 28;
    }
    Ok(())
}

/// One measure: a bar per mode (the first at the top), its value at its end, an x axis from 0.
fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    panel: &Panel,
    modes: &[&str],
    values: &[f64],
    names: u32,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let rows = modes.len() as f64;
    let max = values.iter().copied().filter(|v| v.is_finite()).fold(0.0, f64::max);
    // Room right of the longest bar for its value.
    let x_end = if max > 0.0 { max * 1.22 } else { 1.0 };
    let mut chart = ChartBuilder::on(area)
        .margin_right(12)
        .margin_top(4)
        .x_label_area_size(FOOTER - 4)
        .y_label_area_size(names)
        .caption(panel.title, (FONT, 13).into_font().style(FontStyle::Bold))
        .build_cartesian_2d(0.0..x_end, 0.0..rows)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(0)
        .x_labels(5)
        .x_label_formatter(&|v| (panel.format)(*v))
        .x_label_style((FONT, 11))
        .light_line_style(WHITE)
        .bold_line_style(BLACK.mix(0.1))
        .axis_style(BLACK.mix(0.6))
        .draw()?;
    // Row i (from the top) spans y in [rows - i - 1, rows - i].
    let middle = |i: usize| rows - i as f64 - 0.5;
    chart.draw_series(modes.iter().zip(values).enumerate().map(|(i, (mode, &value))| {
        let value = if value.is_finite() { value } else { 0.0 };
        let colour = FAMILIES[family(mode)].1;
        Rectangle::new([(0.0, middle(i) - 0.34), (value, middle(i) + 0.34)], colour.filled())
    }))?;
    // The line between the Rust and the Node workers' modes.
    if let Some(first) = modes.iter().position(|mode| node(mode)).filter(|&first| first > 0) {
        let y = rows - first as f64;
        let dashes = plotters::element::DashedPathElement::new(
            [(0.0, y), (x_end, y)],
            4,
            3,
            BLACK.mix(0.45),
        );
        chart.plotting_area().draw(&dashes)?;
    }
    let at_end = TextStyle::from((FONT, 11).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    chart.draw_series(values.iter().enumerate().map(|(i, &value)| {
        let (x, text) =
            if value.is_finite() { (value, (panel.format)(value)) } else { (0.0, "–".into()) };
        EmptyElement::at((x, middle(i))) + Text::new(text, (4, 0), at_end.clone())
    }))?;
    if names > 20 {
        let name = TextStyle::from((FONT, 12).into_font()).pos(Pos::new(HPos::Right, VPos::Center));
        chart.draw_series(modes.iter().enumerate().map(|(i, &mode)| {
            EmptyElement::at((0.0, middle(i))) + Text::new(mode.to_owned(), (-8, 0), name.clone())
        }))?;
    }
    Ok(())
}

/// About how wide `text` is in a 12 px sans-serif: the viewer lays text out, not plotters.
fn text_width(text: &str) -> i32 {
    let narrow = |c: char| " ,.:;'()ijlrtf".contains(c);
    let width = |c: char| {
        if narrow(c) {
            3.6
        } else if c.is_uppercase() {
            8.2
        } else {
            6.6
        }
    };
    text.chars().map(width).sum::<f64>() as i32
}

/// 26800 as "26.8k", 20000 as "20k", 900 as "900".
fn thousands(value: f64) -> String {
    if value.abs() < 1000.0 {
        return whole(value);
    }
    let text = format!("{:.1}", value / 1000.0);
    format!("{}k", text.strip_suffix(".0").unwrap_or(&text))
}

fn whole(value: f64) -> String {
    format!("{value:.0}")
}

fn tenths(value: f64) -> String {
    if value == 0.0 || value >= 100.0 { whole(value) } else { format!("{value:.1}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panel_per_measure_a_bar_per_mode() {
        let sample = |rate: f64, p99: Option<f64>, cpu: f64| {
            serde_json::json!({
                "conn_per_s": rate, "p50_us": 1, "p99_us": p99, "p999_us": 1,
                "cpu_ms_per_1000_conn": cpu, "first_process_cpu_ms_per_1000_conn": 0,
                "sticky_share": 1, "max_over_mean": 1, "failed": 0, "bpf_ns_per_dispatch": null,
            })
        };
        let report: Report = serde_json::from_value(serde_json::json!({
            "quick": true, "workers": 4, "concurrency": 8, "clients": 1024,
            "machine": { "cpus": 2, "kernel": "6.1" },
            "modes": [
                { "mode": "kernel", "samples": [sample(26839.0, Some(767.0), 22.94)] },
                // No request answered: no latency.
                { "mode": "seed", "samples": [sample(0.0, None, 238.7)] },
            ],
            "scaling": [],
        }))
        .unwrap();
        // As written to latest.json and read back: the missing latency stays missing.
        let report: Report =
            serde_json::from_str(&serde_json::to_string(&report).unwrap()).unwrap();
        assert!(report.median_of("seed", |s| s.p99_us).is_nan());
        let svg = svg(&report).unwrap();
        for text in [
            "connections per second",
            "p99 latency, µs",
            "server CPU per connection, µs",
            ">\nkernel\n<",
            ">\nseed\n<",
            "26.8k",
            "767",
            "22.9",
            "239",
            "median of 1 run (quick)",
            "–",
        ] {
            assert!(svg.contains(text), "no {text:?} in\n{svg}");
        }
    }

    #[test]
    fn values_are_written_short() {
        assert_eq!(thousands(26839.0), "26.8k");
        assert_eq!(thousands(20000.0), "20k");
        assert_eq!(thousands(900.0), "900");
        assert_eq!(tenths(22.94), "22.9");
        assert_eq!(tenths(238.7), "239");
        assert_eq!(tenths(0.0), "0");
    }
}
