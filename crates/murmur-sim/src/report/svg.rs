//! Just enough SVG to draw timelines, bars and lines by hand: no fonts to
//! find, no system libraries, one self-contained file.

use std::fmt::Write;

/// Escapes text for HTML and SVG.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(ch),
        }
    }
    out
}

/// An SVG picture being drawn.
pub struct Svg {
    width: f64,
    height: f64,
    body: String,
}

impl Svg {
    /// A blank picture.
    pub fn new(width: f64, height: f64) -> Svg {
        Svg {
            width,
            height,
            body: String::new(),
        }
    }

    /// A rectangle, with a tooltip if `title` is not empty.
    pub fn rect(&mut self, x: f64, y: f64, w: f64, h: f64, fill: &str, title: &str) {
        let _ = write!(
            self.body,
            r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{fill}">"#,
            w.max(0.5),
            h.max(0.0)
        );
        if !title.is_empty() {
            let _ = write!(self.body, "<title>{}</title>", escape(title));
        }
        self.body.push_str("</rect>");
    }

    /// A translucent rectangle `[x, y, width, height]` (`opacity` in
    /// [0, 1]), with a tooltip.
    pub fn shade(&mut self, area: [f64; 4], fill: &str, opacity: f64, title: &str) {
        let [x, y, w, h] = area;
        let _ = write!(
            self.body,
            r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{h:.1}" fill="{fill}" fill-opacity="{opacity:.2}"><title>{}</title></rect>"#,
            w.max(0.5),
            escape(title)
        );
    }

    /// A circle, with a tooltip.
    pub fn circle(&mut self, x: f64, y: f64, r: f64, fill: &str, title: &str) {
        let _ = write!(
            self.body,
            r#"<circle cx="{x:.1}" cy="{y:.1}" r="{r:.1}" fill="{fill}"><title>{}</title></circle>"#,
            escape(title)
        );
    }

    /// A line.
    pub fn line(&mut self, x1: f64, y1: f64, x2: f64, y2: f64, stroke: &str, width: f64) {
        let _ = write!(
            self.body,
            r#"<line x1="{x1:.1}" y1="{y1:.1}" x2="{x2:.1}" y2="{y2:.1}" stroke="{stroke}" stroke-width="{width}"/>"#
        );
    }

    /// A polyline through `points`.
    pub fn polyline(&mut self, points: &[(f64, f64)], stroke: &str) {
        let coords: Vec<String> = points
            .iter()
            .map(|(x, y)| format!("{x:.1},{y:.1}"))
            .collect();
        let _ = write!(
            self.body,
            r#"<polyline points="{}" fill="none" stroke="{stroke}" stroke-width="1.5"/>"#,
            coords.join(" ")
        );
    }

    /// Text; `anchor` is `start`, `middle` or `end`.
    pub fn text(&mut self, x: f64, y: f64, text: &str, size: f64, anchor: &str, fill: &str) {
        let _ = write!(
            self.body,
            r#"<text x="{x:.1}" y="{y:.1}" font-size="{size}" text-anchor="{anchor}" fill="{fill}">{}</text>"#,
            escape(text)
        );
    }

    /// The finished picture.
    pub fn finish(self) -> String {
        format!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif">{body}</svg>"#,
            w = self.width,
            h = self.height,
            body = self.body
        )
    }
}

/// A round number near `value / ticks` for axis steps.
pub fn nice_step(range: f64, ticks: usize) -> f64 {
    let raw = (range / ticks.max(1) as f64).max(1e-9);
    let magnitude = 10f64.powf(raw.log10().floor());
    let fraction = raw / magnitude;
    let nice = if fraction <= 1.0 {
        1.0
    } else if fraction <= 2.0 {
        2.0
    } else if fraction <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

/// A bar chart of `values` (label, value) with a title; `unit` labels the
/// y axis.
pub fn bars(title: &str, values: &[(String, f64)], unit: &str, color: &str) -> String {
    let (width, height, left, bottom, top) = (720.0, 240.0, 60.0, 40.0, 28.0);
    let mut svg = Svg::new(width, height);
    svg.text(left, 16.0, title, 13.0, "start", "#222");
    let max = values.iter().map(|(_, v)| *v).fold(0.0, f64::max).max(1e-9);
    let plot_h = height - bottom - top;
    let plot_w = width - left - 10.0;
    y_axis(&mut svg, left, top, plot_w, plot_h, max, unit);
    let slot = plot_w / values.len().max(1) as f64;
    for (index, (label, value)) in values.iter().enumerate() {
        let h = value / max * plot_h;
        let x = left + index as f64 * slot;
        svg.rect(
            x + slot * 0.1,
            top + plot_h - h,
            slot * 0.8,
            h,
            color,
            &format!("{label}: {value:.1} {unit}"),
        );
        x_label(
            &mut svg,
            index,
            values.len(),
            x + slot / 2.0,
            height - bottom + 14.0,
            label,
        );
    }
    svg.finish()
}

/// Labels bar `index` of `count` under the x axis, about twelve labels in
/// all so they never overlap.
pub(crate) fn x_label(svg: &mut Svg, index: usize, count: usize, x: f64, y: f64, label: &str) {
    if index.is_multiple_of((count / 12).max(1)) {
        svg.text(x, y, label, 10.0, "middle", "#444");
    }
}

/// Horizontal grid lines and y labels from 0 to `max`.
pub fn y_axis(svg: &mut Svg, left: f64, top: f64, plot_w: f64, plot_h: f64, max: f64, unit: &str) {
    let step = nice_step(max, 4);
    let mut tick = 0.0;
    while tick <= max * 1.0001 {
        let y = top + plot_h - tick / max * plot_h;
        svg.line(left, y, left + plot_w, y, "#e4e4e4", 1.0);
        svg.text(left - 6.0, y + 4.0, &format!("{tick}"), 10.0, "end", "#555");
        tick += step;
    }
    svg.text(left - 6.0, top - 8.0, unit, 10.0, "end", "#555");
    svg.line(left, top + plot_h, left + plot_w, top + plot_h, "#888", 1.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        assert_eq!(escape("<a & 'b'>"), "&lt;a &amp; &#39;b&#39;&gt;");
    }

    #[test]
    fn nice_steps_are_round() {
        assert_eq!(nice_step(100.0, 4), 50.0);
        assert_eq!(nice_step(7.0, 4), 2.0);
        assert_eq!(nice_step(3000.0, 4), 1000.0);
    }
}
