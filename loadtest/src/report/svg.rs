//! Line charts as inline SVG (no scripts, no external files), and the
//! escaping both the SVG and the HTML around it need.

use std::fmt::Write as _;

/// Line colours, in turn.
const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf",
];

/// Escapes text for HTML and SVG.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One named series of (x, y) points.
pub struct Line {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// The chart's size and margins in pixels (the right margin holds the
/// legend).
const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 300.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 160.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 45.0;

/// A line chart as an inline SVG. `x_labels` replaces numeric x ticks.
pub fn chart(
    title: &str,
    xl: &str,
    yl: &str,
    lines: &[Line],
    x_labels: Option<&[(f64, String)]>,
) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg xmlns='http://www.w3.org/2000/svg' width='{WIDTH}' height='{HEIGHT}' font-family='sans-serif' font-size='11'>\
         <text x='{LEFT}' y='18' font-size='13' font-weight='bold'>{}</text>",
        esc(title)
    );
    let Some(plot) = Plot::fit(lines) else {
        let _ = write!(s, "<text x='{LEFT}' y='60'>no data</text></svg>");
        return s;
    };
    plot.y_axis(&mut s);
    plot.x_axis(&mut s, x_labels);
    plot.axis_titles(&mut s, xl, yl);
    plot.lines(&mut s, lines);
    s.push_str("</svg>");
    s
}

/// The plot area and the data range it shows: x over the points' range, y
/// from 0 to the highest point plus 5%.
struct Plot {
    x0: f64,
    x1: f64,
    y1: f64,
    /// Width and height of the plot area.
    pw: f64,
    ph: f64,
}

impl Plot {
    /// `None` without any point.
    fn fit(lines: &[Line]) -> Option<Self> {
        let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0.0f64);
        for (x, y) in lines.iter().flat_map(|l| l.points.iter()) {
            x0 = x0.min(*x);
            x1 = x1.max(*x);
            y1 = y1.max(*y);
        }
        if x0 > x1 {
            return None;
        }
        if x1 - x0 < 1e-9 {
            x1 = x0 + 1.0;
        }
        if y1 <= 0.0 {
            y1 = 1.0;
        }
        Some(Self {
            x0,
            x1,
            y1: y1 * 1.05,
            pw: WIDTH - LEFT - RIGHT,
            ph: HEIGHT - TOP - BOTTOM,
        })
    }

    fn sx(&self, x: f64) -> f64 {
        LEFT + (x - self.x0) / (self.x1 - self.x0) * self.pw
    }

    fn sy(&self, y: f64) -> f64 {
        TOP + self.ph - y / self.y1 * self.ph
    }

    /// The frame, and five y ticks with grid lines.
    fn y_axis(&self, s: &mut String) {
        let (pw, ph) = (self.pw, self.ph);
        let _ = write!(
            s,
            "<rect x='{LEFT}' y='{TOP}' width='{pw}' height='{ph}' fill='none' stroke='#888'/>"
        );
        for i in 0..=4 {
            let y = self.y1 * i as f64 / 4.0;
            let _ = write!(
                s,
                "<line x1='{LEFT}' x2='{x2}' y1='{yy}' y2='{yy}' stroke='#eee'/><text x='{tx}' y='{ty}' text-anchor='end'>{label}</text>",
                x2 = LEFT + pw,
                yy = self.sy(y),
                tx = LEFT - 4.0,
                ty = self.sy(y) + 4.0,
                label = fmt_num(y)
            );
        }
    }

    /// The x ticks: the given labels, else six numbers over the range.
    fn x_axis(&self, s: &mut String, x_labels: Option<&[(f64, String)]>) {
        let ticks: Vec<(f64, String)> = match x_labels {
            Some(labels) => labels.iter().map(|(x, l)| (*x, esc(l))).collect(),
            None => (0..=5)
                .map(|i| {
                    let x = self.x0 + (self.x1 - self.x0) * i as f64 / 5.0;
                    (x, fmt_num(x))
                })
                .collect(),
        };
        for (x, label) in ticks {
            let _ = write!(
                s,
                "<text x='{}' y='{}' text-anchor='middle'>{label}</text>",
                self.sx(x),
                TOP + self.ph + 14.0,
            );
        }
    }

    fn axis_titles(&self, s: &mut String, xl: &str, yl: &str) {
        let _ = write!(
            s,
            "<text x='{}' y='{}' text-anchor='middle'>{}</text>\
             <text x='14' y='{}' transform='rotate(-90 14 {})' text-anchor='middle'>{}</text>",
            LEFT + self.pw / 2.0,
            HEIGHT - 8.0,
            esc(xl),
            TOP + self.ph / 2.0,
            TOP + self.ph / 2.0,
            esc(yl)
        );
    }

    /// Each line in its colour, with its legend entry on the right.
    fn lines(&self, s: &mut String, lines: &[Line]) {
        for (i, l) in lines.iter().enumerate() {
            let c = COLORS[i % COLORS.len()];
            let path: Vec<String> = l
                .points
                .iter()
                .map(|(x, y)| format!("{:.1},{:.1}", self.sx(*x), self.sy(*y)))
                .collect();
            let _ = write!(
                s,
                "<polyline fill='none' stroke='{c}' stroke-width='1.6' points='{}'/>\
                 <rect x='{}' y='{}' width='12' height='3' fill='{c}'/><text x='{}' y='{}'>{}</text>",
                path.join(" "),
                LEFT + self.pw + 10.0,
                TOP + 10.0 + 16.0 * i as f64,
                LEFT + self.pw + 26.0,
                TOP + 14.0 + 16.0 * i as f64,
                esc(&l.name)
            );
        }
    }
}

fn fmt_num(v: f64) -> String {
    if v.abs() >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v.abs() >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}
