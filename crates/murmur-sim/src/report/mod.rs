//! Reports: JSON results and self-contained HTML pages (inline SVG, no
//! external files, no fonts to install).

pub mod html;
pub mod svg;
