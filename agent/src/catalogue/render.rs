//! The catalogue as JSON (the whole structure), CSV (RFC 4180: one table per run, the filing rows
//! or the collection register) and Markdown (both tables, for an inspector to read).

use std::fmt::Write as _;
use std::io::{self, Write};

use super::{Catalogue, RegisterEntry, Row, Sharing};

/// Output format of `edge-agent catalogue`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
    Md,
}

impl Format {
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "json" => Some(Format::Json),
            "csv" => Some(Format::Csv),
            "md" | "markdown" => Some(Format::Md),
            _ => None,
        }
    }
}

/// Which table a CSV holds (JSON and Markdown hold both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Rows,
    Register,
}

impl Table {
    pub fn parse(s: &str) -> Option<Table> {
        match s {
            "rows" => Some(Table::Rows),
            "register" => Some(Table::Register),
            _ => None,
        }
    }
}

type Column<T> = (&'static str, fn(&T) -> String);

const ROW_COLUMNS: [Column<Row>; 21] = [
    ("level", |r| r.level.to_string()),
    ("category", |r| r.category.to_string()),
    ("sources", |r| sources(r)),
    ("protocols", |r| r.sources.protocols.join("; ")),
    ("points", |r| r.sources.points.to_string()),
    ("records", |r| r.scale.records.to_string()),
    ("bytes", |r| r.scale.bytes.to_string()),
    ("time_span", |r| span(r)),
    ("growth", |r| growth(r)),
    ("configured_records_per_day", |r| {
        r.scale.configured_records_per_day.to_string()
    }),
    ("carrier", |r| carrier(r)),
    ("location", |r| location(r)),
    ("purpose", |r| r.purpose.clone()),
    ("method", |r| r.method.clone()),
    ("scope_of_use", |r| r.scope_of_use.clone()),
    ("responsible_entity", |r| r.responsible.entity.clone()),
    ("responsible_person", |r| {
        format!("{} ({})", r.responsible.person, r.responsible.contact)
    }),
    ("department", |r| r.responsible.department.clone()),
    ("sharing", |r| {
        list(
            r.sharing.iter().map(sharing),
            "none: nothing of it leaves the gateway",
        )
    }),
    ("cross_border", |r| cross_border(r)),
    ("protection", |r| r.protection.join("; ")),
];

const REGISTER_COLUMNS: [Column<RegisterEntry>; 16] = [
    ("tag", |p| p.tag.clone()),
    ("device", |p| p.device.clone()),
    ("protocol", |p| p.protocol.clone()),
    ("endpoint", |p| p.endpoint.clone()),
    ("unit", |p| opt(p.unit)),
    ("function", |p| opt(p.function)),
    ("table", |p| p.table.clone().unwrap_or_default()),
    ("register", |p| opt(p.register)),
    ("data_type", |p| p.data_type.clone().unwrap_or_default()),
    ("address", |p| p.address.clone()),
    ("poll_interval", |p| p.poll_interval.clone()),
    ("level", |p| p.level.to_string()),
    ("category", |p| p.category.to_string()),
    ("classified_by", |p| p.classified_by.clone()),
    ("rule_id", |p| p.rule_id.clone()),
    ("may_go", |p| may_go(p)),
];

/// Writes `c` in `format` (`table` chooses the CSV's table).
pub fn render(c: &Catalogue, format: Format, table: Table, out: &mut dyn Write) -> io::Result<()> {
    match (format, table) {
        (Format::Json, _) => {
            serde_json::to_writer_pretty(&mut *out, c)?;
            out.write_all(b"\n")
        }
        (Format::Csv, Table::Rows) => csv(&c.rows, &ROW_COLUMNS, out),
        (Format::Csv, Table::Register) => csv(&c.register, &REGISTER_COLUMNS, out),
        (Format::Md, _) => markdown(c, out),
    }
}

fn csv<T>(items: &[T], columns: &[Column<T>], out: &mut dyn Write) -> io::Result<()> {
    let header: Vec<String> = columns.iter().map(|(h, _)| csv_field(h)).collect();
    write!(out, "{}\r\n", header.join(","))?;
    for item in items {
        let fields: Vec<String> = columns.iter().map(|(_, f)| csv_field(&f(item))).collect();
        write!(out, "{}\r\n", fields.join(","))?;
    }
    Ok(())
}

/// RFC 4180: a field with a comma, a quote or a line break is quoted, its quotes doubled.
pub(crate) fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

fn markdown(c: &Catalogue, out: &mut dyn Write) -> io::Result<()> {
    writeln!(
        out,
        "# Data catalogue: gateway {}, site {}\n\nImportant and core data (MIIT art. 12), generated {}. Metadata only: no data value appears here.\n",
        c.gateway, c.site, c.generated_at
    )?;
    writeln!(out, "## Filing: one row per level and category\n")?;
    if c.rows.is_empty() {
        writeln!(
            out,
            "No important or core data is configured or stored: there is nothing to file.\n"
        )?;
    } else {
        md_table(&c.rows, &ROW_COLUMNS, out)?;
    }
    writeln!(
        out,
        "## Collection register: every configured point ({})\n",
        c.register.len()
    )?;
    md_table(&c.register, &REGISTER_COLUMNS, out)
}

fn md_table<T>(items: &[T], columns: &[Column<T>], out: &mut dyn Write) -> io::Result<()> {
    let header: Vec<&str> = columns.iter().map(|(h, _)| *h).collect();
    writeln!(out, "| {} |", header.join(" | "))?;
    writeln!(out, "|{}", "---|".repeat(columns.len()))?;
    for item in items {
        let cells: Vec<String> = columns.iter().map(|(_, f)| md_cell(&f(item))).collect();
        writeln!(out, "| {} |", cells.join(" | "))?;
    }
    writeln!(out)
}

/// A table cell: pipes escaped, line breaks as `<br>`.
fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', "<br>")
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

fn list(items: impl Iterator<Item = String>, none: &str) -> String {
    let v: Vec<String> = items.collect();
    if v.is_empty() {
        none.to_owned()
    } else {
        v.join("; ")
    }
}

fn sources(r: &Row) -> String {
    let devices = r
        .sources
        .devices
        .iter()
        .map(|d| format!("{} ({}, {} point(s))", d.device, d.protocol, d.points));
    let text = list(devices, "");
    match (&r.sources.note, text.is_empty()) {
        (Some(note), true) => note.clone(),
        (Some(note), false) => format!("{text}; {note}"),
        (None, _) => text,
    }
}

fn span(r: &Row) -> String {
    match (&r.scale.first, &r.scale.last) {
        (Some(f), Some(l)) => format!("{f} to {l}"),
        _ => r
            .scale
            .note
            .clone()
            .unwrap_or_else(|| "nothing stored".to_owned()),
    }
}

fn growth(r: &Row) -> String {
    let measured = r.scale.growth_records_per_day.map_or_else(
        || "not measurable yet (no time span)".to_owned(),
        |g| format!("{g} records/day measured"),
    );
    format!(
        "{measured}, {} records/day configured",
        r.scale.configured_records_per_day
    )
}

fn carrier(r: &Row) -> String {
    format!(
        "{}, file {}, {}",
        r.carrier.storage, r.carrier.file, r.carrier.encryption
    )
}

fn location(r: &Row) -> String {
    let l = &r.location;
    let mut s = format!("gateway {}, site {}, {}", l.gateway, l.site, l.jurisdiction);
    if let Some(t) = &l.text {
        s.push_str(", ");
        s.push_str(t);
    }
    s
}

fn sharing(s: &Sharing) -> String {
    let forms = if s.forms.is_empty() {
        "no longer permitted".to_owned()
    } else {
        s.forms.join(" and ")
    };
    let mut text = format!(
        "{} to {} ({}{}): {forms}, purpose {}, legal basis {}, {}",
        s.destination,
        s.recipient,
        s.jurisdiction,
        if s.cross_border { ", cross-border" } else { "" },
        s.purpose,
        s.legal_basis,
        s.transport
    );
    if let Some(a) = &s.assessment {
        let _ = write!(
            text,
            ", assessment {} valid until {}",
            a.reference, a.expires
        );
    }
    match &s.observed {
        Some(o) => {
            let _ = write!(
                text,
                ", sent {} message(s), {} item(s), {} bytes from {} to {}",
                o.messages, o.items, o.bytes, o.first, o.last
            );
        }
        None => text.push_str(", nothing sent on record"),
    }
    text
}

fn cross_border(r: &Row) -> String {
    list(
        r.cross_border.iter().map(|c| {
            format!(
                "{} ({}), assessment {}",
                c.destination,
                c.jurisdiction,
                c.assessment.as_deref().unwrap_or("none")
            )
        }),
        "none",
    )
}

fn may_go(p: &RegisterEntry) -> String {
    list(
        p.may_go
            .iter()
            .map(|r| format!("{} as {} ({})", r.destination, r.form, r.basis)),
        "nowhere: stays on the gateway",
    )
}
