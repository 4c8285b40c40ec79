//! The benchmark's outputs: a Markdown table, a JSON file with every figure and the machine,
//! and a chart like the published one's (grouped bars of build and pull time per shape, the speed-up
//! over the single-layer gzip image written above each pull bar), as SVG and PNG.

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu: String,
    pub kernel: String,
    pub memory_gib: f64,
}

impl Machine {
    pub fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .unwrap_or("unknown")
            .trim()
            .to_string();
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string();
        let memory_gib = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .map(|kib| kib / (1u64 << 20) as f64)
            .unwrap_or(0.0);
        Machine {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu,
            kernel,
            memory_gib,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ShapeRow {
    pub shape: String,
    pub slug: String,
    pub layers: usize,
    pub build_seconds: f64,
    pub stored_bytes: u64,
    pub pull_cold_seconds: f64,
    pub pull_warm_seconds: f64,
    pub pull_link_seconds: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PullRow {
    pub client: String,
    pub link: String,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub model: String,
    pub synthetic: bool,
    pub model_bytes: u64,
    pub files: usize,
    pub runs: usize,
    pub link: Option<String>,
    pub shapes: Vec<ShapeRow>,
    pub peers: Vec<PullRow>,
}

impl Report {
    fn baseline(&self) -> Option<&ShapeRow> {
        self.shapes.first()
    }

    pub fn markdown(&self) -> String {
        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        let m = &self.machine;
        let mut out = format!(
            "Model: {} ({} files, {:.0} MiB{}); {} cores ({}), {:.0} GiB RAM, Linux {}; median of {} run(s).\n\n",
            if self.synthetic { "synthetic bf16 checkpoint" } else { &self.model },
            self.files,
            mib(self.model_bytes),
            if self.synthetic { "" } else { ", real" },
            m.cores,
            m.cpu,
            m.memory_gib,
            m.kernel,
            self.runs,
        );
        let link_col = self.link.as_ref().map(|l| format!(" pull via WAN ({l}) |"));
        out.push_str("| configuration | layers | build + push (s) | stored (MiB) | pull cold (s) | pull warm (s) |");
        out.push_str(link_col.as_deref().unwrap_or(""));
        out.push_str(" pull speed-up vs baseline |\n|---|---|---|---|---|---|");
        if link_col.is_some() {
            out.push_str("---|");
        }
        out.push_str("---|\n");
        let base = self
            .baseline()
            .map(|b| b.pull_cold_seconds)
            .unwrap_or(f64::NAN);
        for r in &self.shapes {
            out.push_str(&format!(
                "| {} | {} | {:.2} | {:.0} | {:.2} | {:.2} |",
                r.shape,
                r.layers,
                r.build_seconds,
                mib(r.stored_bytes),
                r.pull_cold_seconds,
                r.pull_warm_seconds
            ));
            if link_col.is_some() {
                out.push_str(&format!(
                    " {} |",
                    r.pull_link_seconds
                        .map(|s| format!("{s:.2}"))
                        .unwrap_or_default()
                ));
            }
            out.push_str(&format!(" {:.2}× |\n", base / r.pull_cold_seconds));
        }
        if !self.peers.is_empty() {
            out.push_str("\nThe raw-layer artifact pulled by other clients:\n\n| client | link | pull (s) |\n|---|---|---|\n");
            for p in &self.peers {
                out.push_str(&format!(
                    "| {} | {} | {:.2} |\n",
                    p.client, p.link, p.seconds
                ));
            }
        }
        if let (Some(base), Some(art)) = (
            self.baseline(),
            self.shapes.iter().find(|s| s.slug == "art-raw"),
        ) {
            out.push_str(&format!(
                "\nArtifact (raw) vs single-layer gzip image: pull {:.1}× faster, build {:.1}× faster.\n",
                base.pull_cold_seconds / art.pull_cold_seconds,
                base.build_seconds / art.build_seconds
            ));
        }
        out
    }

    /// Write `bench.md`, `bench.json`, `bench.svg` and `bench.png` into `dir`; returns the
    /// files written (the chart is skipped, with a reason, when no font is found).
    pub fn write(&self, dir: &Path) -> std::io::Result<(Vec<PathBuf>, Option<String>)> {
        std::fs::create_dir_all(dir)?;
        let mut written = Vec::new();
        let md = dir.join("bench.md");
        std::fs::write(&md, self.markdown())?;
        written.push(md);
        let json = dir.join("bench.json");
        std::fs::write(&json, serde_json::to_vec_pretty(self)?)?;
        written.push(json);
        let note = match load_font() {
            Some(()) => {
                let svg = dir.join("bench.svg");
                let png = dir.join("bench.png");
                self.chart(SVGBackend::new(&svg, (1000, 560)).into_drawing_area())
                    .map_err(std::io::Error::other)?;
                self.chart(BitMapBackend::new(&png, (1000, 560)).into_drawing_area())
                    .map_err(std::io::Error::other)?;
                written.push(svg);
                written.push(png);
                None
            }
            None => {
                Some("no TrueType font found (install fonts-dejavu-core): chart skipped".into())
            }
        };
        Ok((written, note))
    }

    fn chart<DB: DrawingBackend>(
        &self,
        root: DrawingArea<DB, plotters::coord::Shift>,
    ) -> Result<(), String>
    where
        DB::ErrorType: 'static,
    {
        let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
        root.fill(&WHITE).map_err(err)?;
        let n = self.shapes.len();
        let top = self
            .shapes
            .iter()
            .flat_map(|s| [s.build_seconds, s.pull_cold_seconds])
            .fold(0.0f64, f64::max)
            * 1.2;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!(
                    "hoist bench: {} model, {} cores",
                    human_size(self.model_bytes),
                    self.machine.cores
                ),
                ("sans-serif", 22),
            )
            .margin(15)
            .x_label_area_size(70)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..n as f64, 0f64..top.max(0.1))
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .disable_x_axis()
            .y_desc("seconds")
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(err)?;
        let build = RGBColor(120, 144, 156);
        let pull = RGBColor(30, 136, 229);
        let base = self
            .baseline()
            .map(|b| b.pull_cold_seconds)
            .unwrap_or(f64::NAN);
        for (i, s) in self.shapes.iter().enumerate() {
            let x = i as f64;
            chart
                .draw_series([
                    Rectangle::new(
                        [(x + 0.12, 0.0), (x + 0.48, s.build_seconds)],
                        build.filled(),
                    ),
                    Rectangle::new(
                        [(x + 0.52, 0.0), (x + 0.88, s.pull_cold_seconds)],
                        pull.filled(),
                    ),
                ])
                .map_err(err)?;
            chart
                .draw_series([Text::new(
                    format!("{:.1}×", base / s.pull_cold_seconds),
                    (x + 0.52, s.pull_cold_seconds + top * 0.02),
                    ("sans-serif", 15).into_font(),
                )])
                .map_err(err)?;
            // Shape names under the axis, in two lines.
            let label = s.shape.replacen(", ", ",\n", 1);
            text_lines(&root, chart.backend_coord(&(x + 0.5, 0.0)), &label).map_err(err)?;
        }
        let corner = chart.backend_coord(&(n as f64 * 0.72, top * 0.97));
        legend(
            &root,
            corner,
            &[("build + push", build), ("pull (cold)", pull)],
        )
        .map_err(err)?;
        root.present().map_err(err)?;
        Ok(())
    }
}

type Drawn<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// `text`'s lines under the point `(px, py)` of the drawing.
fn text_lines<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    (px, py): (i32, i32),
    text: &str,
) -> Drawn<DB> {
    for (line_no, line) in text.lines().enumerate() {
        root.draw(&Text::new(
            line.to_string(),
            (px - 60, py + 8 + 18 * line_no as i32),
            ("sans-serif", 14).into_font(),
        ))?;
    }
    Ok(())
}

/// A colour square and a name for each series, one under the other from `(px, py)`.
fn legend<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    (px, py): (i32, i32),
    entries: &[(&str, RGBColor)],
) -> Drawn<DB> {
    for (j, (name, color)) in entries.iter().enumerate() {
        let y = py + 20 * j as i32;
        root.draw(&Rectangle::new(
            [(px, y), (px + 14, y + 14)],
            color.filled(),
        ))?;
        root.draw(&Text::new(
            *name,
            (px + 20, y),
            ("sans-serif", 14).into_font(),
        ))?;
    }
    Ok(())
}

/// Register a system TrueType font for the chart's text (plotters draws text with ab_glyph).
fn load_font() -> Option<()> {
    static LOADED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *LOADED.get_or_init(|| {
        const CANDIDATES: &[&str] = &[
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
        ];
        CANDIDATES.iter().any(|path| {
            std::fs::read(path).ok().is_some_and(|bytes| {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
            })
        })
    });
    ok.then_some(())
}

fn human_size(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.0} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}
