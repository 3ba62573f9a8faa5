//! Self-contained HTML charts (inline SVG, no scripts or fonts from
//! anywhere) for the reports of a night and of a rehearsal: round axis
//! ticks, escaped text.

use std::fmt::Write;

pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const COLORS: [&str; 5] = ["#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd"];

/// A round step (1, 2 or 5 times a power of ten) that cuts `span` into
/// about `parts` intervals.
pub fn nice_step(span: f64, parts: u32) -> f64 {
    let raw = (span / f64::from(parts.max(1))).max(f64::MIN_POSITIVE);
    let power = 10f64.powf(raw.log10().floor());
    let unit = raw / power;
    let nice = if unit <= 1.0 {
        1.0
    } else if unit <= 2.0 {
        2.0
    } else if unit <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * power
}

/// The multiples of `step` from `lo` to `hi` (both within a hair).
pub fn ticks(lo: f64, hi: f64, step: f64) -> Vec<f64> {
    let first = (lo / step - 1e-9).ceil() as i64;
    let last = (hi / step + 1e-9).floor() as i64;
    (first..=last.min(first + 100))
        .map(|k| k as f64 * step)
        .collect()
}

/// One line chart: series of `(x, y)` points.
pub fn chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(&str, Vec<(f64, f64)>)],
) -> String {
    let (w, h, left, bottom, top, right) = (720.0, 260.0, 60.0, 36.0, 24.0, 150.0);
    let points = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0.0f64);
    for &(x, y) in points {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1) = (0.0, 1.0);
    }
    if x1 - x0 < 1e-9 {
        x1 = x0 + 1.0;
    }
    // Round ticks (1, 2 or 5 times a power of ten): the y axis ends on one.
    let y_step = nice_step(if y1 <= 0.0 { 1.0 } else { y1 }, 4);
    let y1 = (if y1 <= 0.0 { 1.0 } else { y1 } / y_step).ceil() * y_step;
    let x_step = nice_step(x1 - x0, 5);
    let sx = |x: f64| left + (x - x0) / (x1 - x0) * (w - left - right);
    let sy = |y: f64| h - bottom - y / y1 * (h - bottom - top);
    let mut svg = format!("<figure><figcaption>{}</figcaption><svg viewBox=\"0 0 {w} {h}\" width=\"100%\" role=\"img\">", escape(title));
    let _ = write!(
        svg,
        "<line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#888\"/>",
        h - bottom,
        w - right,
        h - bottom
    );
    let _ = write!(
        svg,
        "<line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{}\" stroke=\"#888\"/>",
        h - bottom
    );
    for y in ticks(0.0, y1, y_step) {
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"{}\" font-size=\"10\" text-anchor=\"end\">{}</text>",
            left - 4.0,
            sy(y) + 3.0,
            fmt_num(y)
        );
    }
    for x in ticks(x0, x1, x_step) {
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"{}\" font-size=\"10\" text-anchor=\"middle\">{}</text>",
            sx(x),
            h - bottom + 14.0,
            fmt_num(x)
        );
    }
    let _ = write!(
        svg,
        "<text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"middle\">{}</text>",
        (left + w - right) / 2.0,
        h - 4.0,
        escape(x_label)
    );
    let _ = write!(svg, "<text x=\"12\" y=\"{}\" font-size=\"11\" transform=\"rotate(-90 12 {})\" text-anchor=\"middle\">{}</text>", h / 2.0, h / 2.0, escape(y_label));
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = pts
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let _ = write!(
            svg,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.8\" points=\"{}\"/>",
            path.join(" ")
        );
        let ly = top + 14.0 * i as f64;
        let _ = write!(svg, "<rect x=\"{}\" y=\"{}\" width=\"10\" height=\"3\" fill=\"{color}\"/><text x=\"{}\" y=\"{}\" font-size=\"11\">{}</text>", w - right + 10.0, ly, w - right + 24.0, ly + 4.0, escape(name));
    }
    svg.push_str("</svg></figure>");
    svg
}

pub fn fmt_num(x: f64) -> String {
    if x.abs() >= 10_000.0 {
        let k = format!("{:.1}", x / 1000.0);
        format!("{}k", k.trim_end_matches('0').trim_end_matches('.'))
    } else if x.abs() >= 10.0 || (x - x.round()).abs() < 1e-9 {
        format!("{x:.0}")
    } else {
        // Round ticks have at most two decimals; no trailing zeros.
        let s = format!("{x:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::{nice_step, ticks};

    #[test]
    fn chart_ticks_are_round() {
        // The axes that used to read 5.50, 7966 and 2418.
        assert_eq!(
            ticks(0.0, 8000.0, nice_step(7966.0, 4)),
            [0.0, 2000.0, 4000.0, 6000.0, 8000.0]
        );
        assert_eq!(nice_step(5.5, 4), 2.0);
        assert_eq!(nice_step(2418.0, 5), 500.0);
        assert_eq!(ticks(3.0, 21.0, 5.0), [5.0, 10.0, 15.0, 20.0]);
        assert_eq!(nice_step(0.07, 4), 0.02);
        assert_eq!(super::fmt_num(2.0), "2");
        assert_eq!(super::fmt_num(0.5), "0.5");
        assert_eq!(super::fmt_num(20_000.0), "20k");
        assert_eq!(super::fmt_num(12_500.0), "12.5k");
    }
}
