//! The results of a run: `summary.json` (the [`Summary`], serialized), a
//! few lines for the terminal ([`Summary::text`]) and a self-contained HTML
//! report ([`html`]: inline SVG, no scripts or external files).
//!
//! `model` computes what a report holds from the workers' results; `text`
//! and `html` render it, `svg` draws the charts. Figures that both
//! renderings list (correctness, failover) come labelled from `model`.

mod html;
mod model;
mod svg;
mod text;

pub use self::html::html;
pub use self::model::{loadavg, utc, PhaseReport, Point, Ratio, Summary, TargetReport};
