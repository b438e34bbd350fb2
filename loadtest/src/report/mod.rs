//! The results of a run: `summary.json` (the [`Summary`], serialized), a
//! few lines for the terminal ([`Summary::text`]) and a self-contained HTML
//! report ([`html`]: inline SVG, no scripts or external files).
//!
//! `model` computes what a report holds from the workers' results (and
//! `chaos` a chaos run's verdict and timeline); `text` and `html` render
//! it, `svg` draws the charts and `timeline` the chaos timeline. Figures
//! that both renderings list (correctness, failover) come labelled from
//! `model`.

mod chaos;
mod html;
mod model;
mod svg;
mod text;
mod timeline;

pub use self::chaos::{ChaosReport, Second};
pub use self::html::html;
pub use self::model::{loadavg, utc, PhaseReport, Point, Ratio, Summary, TargetReport};
