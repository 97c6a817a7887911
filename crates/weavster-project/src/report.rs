//! Diagnostics rendered as text (miette's graphical report, no colour unless
//! asked), for the CLI to print.

use std::collections::BTreeMap;
use std::fmt;

use miette::{GraphicalReportHandler, GraphicalTheme, LabeledSpan, NamedSource, SourceSpan};
use weavster_spec::{Diagnostic, Severity};

/// One diagnostic with its source, as miette wants it.
struct Report<'a> {
    diag: &'a Diagnostic,
    source: Option<NamedSource<String>>,
    help: Option<String>,
}

impl fmt::Debug for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.diag.message)
    }
}

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.diag.message)
    }
}

impl std::error::Error for Report<'_> {}

impl miette::Diagnostic for Report<'_> {
    fn code<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        Some(Box::new(&self.diag.code))
    }

    fn severity(&self) -> Option<miette::Severity> {
        Some(match self.diag.severity {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
        })
    }

    fn help<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.source.as_ref().map(|s| s as &dyn miette::SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let span = self.diag.span?;
        self.source.as_ref()?;
        let len = span
            .end
            .saturating_sub(span.start)
            .max(usize::from(span.end == span.start));
        let label = self.diag.label.clone().or_else(|| Some("here".to_string()));
        Some(Box::new(std::iter::once(LabeledSpan::new_with_span(
            label,
            SourceSpan::from((span.start, len)),
        ))))
    }
}

/// Renders diagnostics as text. `sources` maps file names to their (masked,
/// rendered) text for snippets. `color` turns on ANSI colours.
pub fn render(diags: &[Diagnostic], sources: &BTreeMap<String, String>, color: bool) -> String {
    let theme = if color {
        GraphicalTheme::unicode()
    } else {
        GraphicalTheme::unicode_nocolor()
    };
    let handler = GraphicalReportHandler::new_themed(theme)
        .with_width(100)
        .with_context_lines(1);
    let mut out = String::new();
    for d in diags {
        let source = d.file.as_ref().and_then(|f| {
            let text = sources.get(f)?;
            d.span.filter(|s| s.end <= text.len())?;
            Some(NamedSource::new(f.clone(), text.clone()))
        });
        let mut help = Vec::new();
        if source.is_none()
            && let Some(f) = &d.file
        {
            let loc = d
                .span
                .map(|s| format!(":{}:{}", s.line, s.col))
                .unwrap_or_default();
            help.push(format!("in {f}{loc}"));
        }
        if let Some(e) = &d.expected {
            help.push(format!("expected {e}"));
        }
        if let Some(h) = &d.hint {
            help.push(h.clone());
        }
        let report = Report {
            diag: d,
            source,
            help: (!help.is_empty()).then(|| help.join("\n")),
        };
        if handler.render_report(&mut out, &report).is_err() {
            out.push_str(&format!("{}: {}\n", d.code, d.message));
        }
        out.push('\n');
    }
    out
}

/// `file:line:col` of a diagnostic, or what is known of it.
pub fn location(d: &Diagnostic) -> String {
    match (&d.file, d.span) {
        (Some(f), Some(s)) => format!("{f}:{}:{}", s.line, s.col),
        (Some(f), None) => f.clone(),
        _ => String::new(),
    }
}
