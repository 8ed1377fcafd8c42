//! The SVG of `stoa-loadgen --plot`: server-added delay (p50, p99) and loss against the number
//! of listeners, from a `--capacity` JSON report, with the floor's delay for reference. Plain
//! SVG text, no dependencies; reads the report, never runs anything.

use std::fmt::Write;

use serde_json::Value;

const WIDTH: f64 = 920.0;
const HEIGHT: f64 = 640.0;
const LEFT: f64 = 78.0;
const RIGHT: f64 = 200.0;
const TOP: f64 = 52.0;
const GAP: f64 = 56.0;
const BOTTOM: f64 = 48.0;
/// Delay panel: 0.05 ms … 1 s, log.
const DELAY_MIN_MS: f64 = 0.05;
const DELAY_MAX_MS: f64 = 1000.0;
/// Loss panel: 0.001 % … 100 %, log; zero loss sits on the bottom edge.
const LOSS_MIN: f64 = 1e-5;
const LOSS_MAX: f64 = 1.0;
const COLORS: [&str; 4] = ["#1f6fb4", "#d9622b", "#2a9d3c", "#8e44ad"];

/// One line of points: (N, value, held).
struct Series {
    label: String,
    color: &'static str,
    dashed: bool,
    points: Vec<(f64, f64, bool)>,
}

fn sorted(mut points: Vec<(f64, f64, bool)>) -> Vec<(f64, f64, bool)> {
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    points
}

/// The SVG for a `--capacity` report.
pub fn svg(report: &Value) -> Result<String, String> {
    let searches = report["capacity"]
        .as_array()
        .ok_or("not a --capacity report: no \"capacity\" list")?;
    let max_loss = report["method"]["max_loss"].as_f64().unwrap_or(0.001);
    let max_p99_ms = report["method"]["max_p99_ms"].as_f64().unwrap_or(10.0);
    let mut delay = Vec::new();
    let mut loss = Vec::new();
    for (i, search) in searches.iter().enumerate() {
        let speakers = search["speakers"].as_u64().unwrap_or(0);
        let color = COLORS[i % COLORS.len()];
        let steps = search["steps"].as_array().cloned().unwrap_or_default();
        let point = |step: &Value, value: f64| {
            (
                step["listeners"].as_f64().unwrap_or(0.0),
                value,
                step["held"].as_bool().unwrap_or(false),
            )
        };
        let field = |key: &str| {
            sorted(
                steps
                    .iter()
                    .map(|s| point(s, s["delay_us"][key].as_f64().unwrap_or(0.0) / 1e3))
                    .collect(),
            )
        };
        delay.push(Series {
            label: format!("{speakers} speaker(s): p99"),
            color,
            dashed: false,
            points: field("p99"),
        });
        delay.push(Series {
            label: format!("{speakers} speaker(s): p50"),
            color,
            dashed: true,
            points: field("p50"),
        });
        loss.push(Series {
            label: format!("{speakers} speaker(s)"),
            color,
            dashed: false,
            points: sorted(
                steps
                    .iter()
                    .map(|s| point(s, s["loss"].as_f64().unwrap_or(0.0)))
                    .collect(),
            ),
        });
    }
    for floor in report["floor"].as_array().into_iter().flatten() {
        let speakers = floor["speakers"].as_u64().unwrap_or(0);
        let steps = floor["steps"].as_array().cloned().unwrap_or_default();
        delay.push(Series {
            label: format!("UDP floor, {speakers} spk: p99"),
            color: "#888888",
            dashed: speakers > 1,
            points: sorted(
                steps
                    .iter()
                    .map(|s| {
                        (
                            s["destinations"].as_f64().unwrap_or(0.0),
                            s["delay_us"]["p99"].as_f64().unwrap_or(0.0) / 1e3,
                            s["held"].as_bool().unwrap_or(false),
                        )
                    })
                    .collect(),
            ),
        });
    }
    let all_n = delay
        .iter()
        .chain(&loss)
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .filter(|n| *n > 0.0);
    let (mut n_min, mut n_max) = (f64::MAX, 0.0f64);
    for n in all_n {
        n_min = n_min.min(n);
        n_max = n_max.max(n);
    }
    if n_max == 0.0 {
        return Err("the report has no steps".to_owned());
    }
    let n_min = 10f64.powf(n_min.log10().floor());
    let n_max = 10f64.powf(n_max.log10().ceil());

    let plot_w = WIDTH - LEFT - RIGHT;
    let panel_h = (HEIGHT - TOP - GAP - BOTTOM) / 2.0;
    let x = |n: f64| {
        LEFT + (n.max(n_min).log10() - n_min.log10()) / (n_max.log10() - n_min.log10()) * plot_w
    };
    let delay_top = TOP;
    let loss_top = TOP + panel_h + GAP;
    let y_delay = |ms: f64| {
        let v = ms.clamp(DELAY_MIN_MS, DELAY_MAX_MS);
        delay_top
            + (DELAY_MAX_MS.log10() - v.log10()) / (DELAY_MAX_MS.log10() - DELAY_MIN_MS.log10())
                * panel_h
    };
    let y_loss = |l: f64| {
        let v = l.clamp(LOSS_MIN, LOSS_MAX);
        loss_top + (LOSS_MAX.log10() - v.log10()) / (LOSS_MAX.log10() - LOSS_MIN.log10()) * panel_h
    };

    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let title = format!(
        "Stoa capacity: server on one core, one media worker {}",
        report["label"].as_str().unwrap_or("")
    );
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="22" font-size="15" font-weight="bold">{}</text>"#,
        escape(&title)
    );

    // Panels, grids, axes.
    for (top, name) in [
        (delay_top, "server-added delay, ms (log)"),
        (loss_top, "loss (log; 0 on the axis)"),
    ] {
        let _ = writeln!(
            out,
            r##"<rect x="{LEFT}" y="{top}" width="{plot_w}" height="{panel_h}" fill="none" stroke="#333"/>"##
        );
        let _ = writeln!(
            out,
            r#"<text x="{LEFT}" y="{}" font-weight="bold">{name}</text>"#,
            top - 8.0
        );
    }
    let mut decade = n_min;
    while decade <= n_max * 1.0001 {
        for m in [1.0, 2.0, 5.0] {
            let n = decade * m;
            if n > n_max * 1.0001 {
                break;
            }
            let xv = x(n);
            for top in [delay_top, loss_top] {
                let _ = writeln!(
                    out,
                    r##"<line x1="{xv:.1}" y1="{top}" x2="{xv:.1}" y2="{}" stroke="#ddd"/>"##,
                    top + panel_h
                );
            }
            let _ = writeln!(
                out,
                r#"<text x="{xv:.1}" y="{}" text-anchor="middle">{}</text>"#,
                loss_top + panel_h + 16.0,
                n as u64
            );
        }
        decade *= 10.0;
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">listeners (log)</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 10.0
    );
    for ms in [0.1, 1.0, 10.0, 100.0, 1000.0] {
        let yv = y_delay(ms);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{yv:.1}" x2="{}" y2="{yv:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{ms}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            yv + 4.0
        );
    }
    for (l, label) in [
        (1e-5, "≤0.001%"),
        (1e-4, "0.01%"),
        (1e-3, "0.1%"),
        (1e-2, "1%"),
        (1e-1, "10%"),
        (1.0, "100%"),
    ] {
        let yv = y_loss(l);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{yv:.1}" x2="{}" y2="{yv:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{label}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            yv + 4.0
        );
    }
    // The bounds a step must keep.
    for (yv, label) in [
        (y_delay(max_p99_ms), format!("p99 bound {max_p99_ms} ms")),
        (
            y_loss(max_loss),
            format!("loss bound {}%", max_loss * 100.0),
        ),
    ] {
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{yv:.1}" x2="{}" y2="{yv:.1}" stroke="#c0392b" stroke-dasharray="6 4"/><text x="{}" y="{:.1}" fill="#c0392b" text-anchor="end">{label}</text>"##,
            LEFT + plot_w,
            LEFT + plot_w - 4.0,
            yv - 4.0
        );
    }

    // Series.
    let draw = |out: &mut String, series: &Series, y: &dyn Fn(f64) -> f64, legend_y: &mut f64| {
        if series.points.is_empty() {
            return;
        }
        let path: Vec<String> = series
            .points
            .iter()
            .map(|(n, v, _)| format!("{:.1},{:.1}", x(*n), y(*v)))
            .collect();
        let dash = if series.dashed {
            r#" stroke-dasharray="5 3""#
        } else {
            ""
        };
        let _ = writeln!(
            out,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="1.8"{dash}/>"#,
            path.join(" "),
            series.color
        );
        for (n, v, held) in &series.points {
            let fill = if *held { series.color } else { "white" };
            let _ = writeln!(
                out,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{fill}" stroke="{}"/>"#,
                x(*n),
                y(*v),
                series.color
            );
        }
        let lx = LEFT + plot_w + 14.0;
        let ly = *legend_y;
        let _ = writeln!(
            out,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{}" stroke-width="1.8"{dash}/><text x="{}" y="{}">{}</text>"#,
            lx + 24.0,
            series.color,
            lx + 30.0,
            ly + 4.0,
            escape(&series.label)
        );
        *legend_y += 18.0;
    };
    let mut legend_y = TOP + 6.0;
    for series in &delay {
        draw(&mut out, series, &y_delay, &mut legend_y);
    }
    let mut legend_y = loss_top + 6.0;
    for series in &loss {
        draw(&mut out, series, &y_loss, &mut legend_y);
    }
    let lx = LEFT + plot_w + 14.0;
    let _ = writeln!(
        out,
        r##"<circle cx="{}" cy="{}" r="3.5" fill="#555" stroke="#555"/><text x="{}" y="{}">step held</text><circle cx="{}" cy="{}" r="3.5" fill="white" stroke="#555"/><text x="{}" y="{}">step failed</text>"##,
        lx + 12.0,
        HEIGHT - 62.0,
        lx + 30.0,
        HEIGHT - 58.0,
        lx + 12.0,
        HEIGHT - 44.0,
        lx + 30.0,
        HEIGHT - 40.0
    );
    out.push_str("</svg>\n");
    Ok(out)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_report_becomes_an_svg_with_every_step() {
        let step = |n: u64, p99: f64, loss: f64, held: bool| json!({ "listeners": n, "held": held, "loss": loss, "delay_us": { "p50": p99 / 3.0, "p99": p99 } });
        let report = json!({
            "label": "test",
            "method": { "max_loss": 0.001, "max_p99_ms": 10.0 },
            "capacity": [
                { "speakers": 1, "steps": [step(100, 800.0, 0.0, true), step(200, 3000.0, 0.0, true), step(400, 25000.0, 0.02, false)] },
                { "speakers": 3, "steps": [step(33, 900.0, 0.0, true)] },
            ],
            "floor": [ { "speakers": 1, "steps": [ { "destinations": 400, "held": true, "delay_us": { "p99": 300.0 } } ] } ],
        });
        let drawn = svg(&report).expect("an svg");
        assert!(drawn.starts_with("<svg"));
        assert!(drawn.trim_end().ends_with("</svg>"));
        // 4 + 1 capacity points in the two delay series and the loss series, 1 floor point,
        // 2 legend markers.
        assert_eq!(drawn.matches("<circle").count(), 4 * 2 + 4 + 1 + 2);
        assert!(drawn.contains("1 speaker(s): p99"));
        assert!(drawn.contains("p99 bound 10 ms"));
        assert!(svg(&json!({})).is_err());
    }
}
