//! Reference model (placeholder).
