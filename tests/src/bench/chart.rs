//! The benchmark's SVG chart: cumulative distributions of the cached read
//! against its floor, and of the delivery of one change to every subscriber.

use std::fmt::Write;
use std::time::Duration;

pub struct Series<'a> {
    pub label: &'a str,
    pub color: &'a str,
    /// Sorted.
    pub samples: &'a [Duration],
}

const W: f64 = 460.0;
const H: f64 = 300.0;
const PAD: f64 = 50.0;

/// Two panels side by side, each a CDF (x: time, y: share of samples).
pub fn render(left_title: &str, left: &[Series<'_>], right_title: &str, right: &[Series<'_>], note: &str) -> String {
    let mut svg = String::new();
    let width = 2.0 * W + 20.0;
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{}" font-family="sans-serif" font-size="12">"#,
        H + 40.0
    );
    let _ = write!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    panel(&mut svg, 0.0, left_title, "µs", 1e6, left);
    panel(&mut svg, W + 20.0, right_title, "ms", 1e3, right);
    let _ = write!(svg, r##"<text x="10" y="{}" fill="#555">{}</text></svg>"##, H + 30.0, escape(note));
    svg
}

fn panel(svg: &mut String, x0: f64, title: &str, unit: &str, scale: f64, series: &[Series<'_>]) {
    // The x axis ends at the largest p99.9, so one outlier does not flatten the curves.
    let x_max = series
        .iter()
        .map(|s| super::stats::percentile(s.samples, 0.999).as_secs_f64() * scale)
        .fold(0.0, f64::max)
        .max(1e-9)
        * 1.05;
    let (left, right, top, bottom) = (x0 + PAD, x0 + W - 10.0, 30.0, H - 30.0);
    let _ = write!(svg, r#"<text x="{}" y="18" font-weight="bold">{}</text>"#, x0 + PAD, escape(title));
    let _ = write!(
        svg,
        r##"<rect x="{left}" y="{top}" width="{}" height="{}" fill="none" stroke="#999"/>"##,
        right - left,
        bottom - top
    );
    for i in 0..=4 {
        let f = f64::from(i) / 4.0;
        let x = left + f * (right - left);
        let y = bottom - f * (bottom - top);
        let _ = write!(
            svg,
            r##"<text x="{x}" y="{}" text-anchor="middle" fill="#555">{:.0}</text>"##,
            bottom + 14.0,
            f * x_max
        );
        let _ = write!(
            svg,
            r##"<text x="{}" y="{}" text-anchor="end" fill="#555">{:.0}%</text>"##,
            left - 4.0,
            y + 4.0,
            f * 100.0
        );
    }
    let _ = write!(
        svg,
        r##"<text x="{}" y="{}" text-anchor="middle" fill="#555">{unit}</text>"##,
        (left + right) / 2.0,
        bottom + 28.0
    );
    for (n, s) in series.iter().enumerate() {
        let len = s.samples.len().max(1) as f64;
        // At most ~400 points per curve.
        let step = (s.samples.len() / 400).max(1);
        let points: Vec<String> = s
            .samples
            .iter()
            .enumerate()
            .filter(|(i, _)| i % step == 0 || *i + 1 == s.samples.len())
            .map(|(i, d)| {
                let x = left + (d.as_secs_f64() * scale / x_max).min(1.0) * (right - left);
                let y = bottom - ((i + 1) as f64 / len) * (bottom - top);
                format!("{x:.1},{y:.1}")
            })
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
            s.color,
            points.join(" ")
        );
        let ly = top + 16.0 + 16.0 * n as f64;
        let _ =
            write!(svg, r#"<rect x="{}" y="{}" width="12" height="3" fill="{}"/>"#, right - 170.0, ly - 4.0, s.color);
        let _ = write!(svg, r#"<text x="{}" y="{ly}">{}</text>"#, right - 152.0, escape(s.label));
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}
