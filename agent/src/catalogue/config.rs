//! `[catalogue]`, validated: the filing fields no other part of the config can supply.
//!
//! Required vs defaulted (docs/decisions/0019-catalogue.md):
//! - The section itself is optional: a gateway may collect data before the plant has written
//!   its filing text. Without it `check` and `run` warn (when important or core points exist),
//!   and `edge-agent catalogue` refuses, naming the keys, rather than file empty fields.
//! - In the section, `purpose`, `scope_of_use` and `contact` are required and must not be
//!   blank: nothing in the config says them. `method` and `location` are optional: the method
//!   is described per row from the config (what is true of it), the location always names
//!   gateway, site and jurisdiction. `dir` defaults to `catalogue/` beside the historian.
//! - A per-category override must name a category once and set at least one non-blank field.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::issues::{Collector, ConfigIssue};
use crate::config::raw::RawCatalogue;
use crate::config::settings::dir_issue;
use crate::model::{Category, Level, PointMeta};

/// `[catalogue]`, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogueSettings {
    /// Where the filed baseline and the change-detection state live.
    pub dir: PathBuf,
    /// The filing text; `None` when the config has no `[catalogue]` section.
    pub filing: Option<FilingText>,
}

/// What the plant writes for its filing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilingText {
    pub purpose: String,
    pub scope_of_use: String,
    pub contact: String,
    pub method: Option<String>,
    pub location: Option<String>,
    pub categories: Vec<CategoryText>,
}

/// A category's own purpose, scope of use or method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CategoryText {
    pub category: Category,
    pub purpose: Option<String>,
    pub scope_of_use: Option<String>,
    pub method: Option<String>,
}

impl FilingText {
    fn category(&self, c: Category) -> Option<&CategoryText> {
        self.categories.iter().find(|t| t.category == c)
    }

    pub(crate) fn purpose(&self, c: Category) -> &str {
        self.category(c)
            .and_then(|t| t.purpose.as_deref())
            .unwrap_or(&self.purpose)
    }

    pub(crate) fn scope_of_use(&self, c: Category) -> &str {
        self.category(c)
            .and_then(|t| t.scope_of_use.as_deref())
            .unwrap_or(&self.scope_of_use)
    }

    /// The configured method for `c`, if any (else the catalogue describes it).
    pub(crate) fn method(&self, c: Category) -> Option<&str> {
        self.category(c)
            .and_then(|t| t.method.as_deref())
            .or(self.method.as_deref())
    }
}

/// The keys a filing cannot do without, for messages.
pub(crate) const REQUIRED_KEYS: &str =
    "catalogue.purpose, catalogue.scope_of_use and catalogue.contact";

/// Validates `[catalogue]` into `out`; `points` tell whether a missing section deserves a warning.
pub(crate) fn build(
    raw: Option<&RawCatalogue>,
    historian: &Path,
    points: &[Arc<PointMeta>],
    out: &mut Collector,
) -> CatalogueSettings {
    let dir = raw
        .and_then(|r| r.dir.clone())
        .unwrap_or_else(|| default_dir(historian));
    if let Some(issue) = dir_issue("catalogue.dir", &dir) {
        out.err(issue);
    }
    let Some(raw) = raw else {
        let filed = points.iter().filter(|p| p.level() > Level::General).count();
        if filed > 0 {
            out.warn(format!(
                "no [catalogue] section: {filed} important/core point(s) need filing (MIIT 12), and `edge-agent catalogue` refuses until {REQUIRED_KEYS} are set"
            ));
        }
        return CatalogueSettings { dir, filing: None };
    };
    for (key, value) in [
        ("purpose", &raw.purpose),
        ("scope_of_use", &raw.scope_of_use),
        ("contact", &raw.contact),
    ] {
        not_blank(&format!("catalogue.{key}"), value, out);
    }
    for (key, value) in [("method", &raw.method), ("location", &raw.location)] {
        if let Some(v) = value {
            not_blank(&format!("catalogue.{key}"), v, out);
        }
    }
    let mut categories: Vec<CategoryText> = Vec::new();
    for (i, c) in raw.categories.iter().enumerate() {
        let path = format!("catalogue.categories[{i}]");
        if let Some(prev) = categories.iter().position(|t| t.category == c.category) {
            out.err(ConfigIssue::new(
                format!("{path}.category"),
                format!(
                    "category {} already has overrides in catalogue.categories[{prev}]",
                    c.category
                ),
            ));
        }
        let fields = [
            ("purpose", &c.purpose),
            ("scope_of_use", &c.scope_of_use),
            ("method", &c.method),
        ];
        if fields.iter().all(|(_, v)| v.is_none()) {
            out.err(
                ConfigIssue::new(path.clone(), "overrides nothing")
                    .hint("set purpose, scope_of_use or method, or remove the entry"),
            );
        }
        for (key, value) in fields {
            if let Some(v) = value {
                not_blank(&format!("{path}.{key}"), v, out);
            }
        }
        categories.push(CategoryText {
            category: c.category,
            purpose: c.purpose.clone(),
            scope_of_use: c.scope_of_use.clone(),
            method: c.method.clone(),
        });
    }
    CatalogueSettings {
        dir,
        filing: Some(FilingText {
            purpose: raw.purpose.clone(),
            scope_of_use: raw.scope_of_use.clone(),
            contact: raw.contact.clone(),
            method: raw.method.clone(),
            location: raw.location.clone(),
            categories,
        }),
    }
}

fn not_blank(path: &str, value: &str, out: &mut Collector) {
    if value.trim().is_empty() {
        out.err(
            ConfigIssue::new(path, "must not be empty: it is a field of the filing")
                .hint("write what the plant files with the regulator"),
        );
    }
}

/// `catalogue/` beside the historian file (as the audit trail's default).
fn default_dir(historian: &Path) -> PathBuf {
    historian
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join("catalogue")
}

impl CatalogueSettings {
    /// `check`'s line about the catalogue: where its filing lives and whether the filing text
    /// is configured.
    pub fn check_line(&self) -> String {
        let Some(f) = &self.filing else {
            return format!(
                "catalogue {}: no [catalogue] section; `edge-agent catalogue` refuses until {REQUIRED_KEYS} are set",
                self.dir.display()
            );
        };
        let mut set = vec!["purpose", "scope of use", "contact"];
        if f.method.is_some() {
            set.push("method");
        }
        if f.location.is_some() {
            set.push("location");
        }
        format!(
            "catalogue {}: filing text set ({}; {} category override(s)); the agent compares it with the filed baseline at start and hourly",
            self.dir.display(),
            set.join(", "),
            f.categories.len()
        )
    }
}
