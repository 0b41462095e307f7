use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use super::cli::{command, Action};
use super::*;
use crate::agent_config::{from_toml_str, AgentConfig, Loaded};
use crate::audit::{AuditLog, Event};
use crate::model::{Quality, Value};
use crate::source::Tagged;
use crate::stats::Stats;
use crate::store::{Historian, ScaleRow};

/// 2026-01-01T00:00:00Z.
const NOW: i64 = 1_767_225_600_000;
const DAY: i64 = 86_400_000;

const CATALOGUE: &str = r#"
[catalogue]
purpose = "process monitoring and quality records"
scope_of_use = "production and quality departments of the plant"
contact = "+86 512 0000 0000, dso@example.com"
location = "casting hall B, network cabinet 3"
[[catalogue.categories]]
category = "rd_design"
purpose = "protecting casting recipes"
"#;

/// A plant with an important and a core point (and, with `old_point`, an important point of
/// the management category), a domestic destination that takes important summaries, and the
/// historian and trail in `dir`.
fn toml(dir: &Path, person: &str, old_point: bool, catalogue: &str) -> String {
    let old = if old_point {
        "[[devices.points]]\ntag = \"press.old\"\nregister = \"holding:10\"\ntype = \"f32\"\nlevel = \"important\"\ncategory = \"management\"\n"
    } else {
        ""
    };
    format!(
        r#"
[gateway]
id = "gw-cat"
site = "plant-a"
jurisdiction = "CN"
data_processor = "Plant A Co."
responsible_person = "{person}"
department = "Production IT"

[classification]
default_level = "important"
[[classification.rules]]
id = "recipes-are-core"
version = 3
match = "*.recipe.*"
level = "core"
category = "rd_design"

[historian]
path = "{historian}"

[[devices]]
name = "press"
protocol = "modbus_tcp"
endpoint = "127.0.0.1:1502"
poll_interval = "1s"
[[devices.points]]
tag = "press.speed"
register = "holding:0"
type = "f32"
level = "general"
[[devices.points]]
tag = "press.force"
register = "holding:2"
type = "f32"
level = "important"
[[devices.points]]
tag = "press.recipe.temp"
register = "input:4"
type = "i32"
{old}
[[destinations]]
name = "group-dc"
jurisdiction = "CN"
recipient = "Group DC"
purpose = "monitoring"
legal_basis = "intra-group agreement"
broker = {{ host = "127.0.0.1", port = 1883 }}
[[destinations.allow]]
levels = ["general"]
form = "raw"
[[destinations.allow]]
levels = ["general", "important"]
form = "summary"
window = "10s"
stats = ["mean", "count"]
{catalogue}"#,
        historian = dir.join("h.db").display()
    )
}

fn load(dir: &Path, person: &str, old_point: bool) -> AgentConfig {
    from_toml_str(&toml(dir, person, old_point, CATALOGUE), NOW)
        .unwrap_or_else(|e| panic!("{e}"))
        .config
}

fn scale_row(level: Level, category: Category, records: u64, bytes: u64) -> ScaleRow {
    ScaleRow {
        level,
        category,
        records,
        chunks: 1,
        bytes,
        first_ms: NOW - 2 * DAY,
        last_ms: NOW,
    }
}

fn with_scale(cfg: &AgentConfig, records: u64, bytes: u64) -> Catalogue {
    let scale = [
        scale_row(
            Level::Important,
            Category::ProductionOperation,
            records,
            bytes,
        ),
        scale_row(Level::Core, Category::RdDesign, 10, 100),
    ];
    assemble(cfg, Some(&scale), &[], NOW).expect("catalogue")
}

/// Canary values no catalogue may contain, in the renderings a leak could take.
const CANARY_FLOAT: f64 = 98_765.432_1;
const CANARY_INT: i64 = 7_654_321;
const CANARY_TEXTS: [&str; 5] = ["98765.4321", "98765.43", "98765", "7654321", "7654321.0"];

/// Writes samples carrying the canaries for every point of `cfg` into its historian.
fn write_canaries(cfg: &AgentConfig) {
    let stats = Arc::new(Stats::new(Vec::<Arc<str>>::new()));
    let key = crate::store::testkit::test_key(&cfg.historian.path).expect("key");
    let master = Arc::new(crate::store::crypto::MasterKey::load(&key).expect("load key"));
    let h = Historian::spawn(
        &cfg.historian,
        &cfg.points,
        stats,
        master,
        crate::store::no_hook(),
    )
    .expect("historian");
    let mut batch = Vec::new();
    for i in 0..50_i64 {
        for p in &cfg.points {
            let value = if p.level() == Level::Core {
                Value::Int(CANARY_INT)
            } else {
                Value::Float(CANARY_FLOAT)
            };
            let seq = u64::try_from(i).expect("small");
            batch.push(Tagged::for_test(
                p.clone(),
                value,
                Quality::Good,
                NOW - DAY + i * 60_000,
                seq,
            ));
        }
    }
    h.offer(batch);
    h.close().expect("close");
}

#[test]
fn scale_changes_of_29_percent_are_not_due_and_of_30_or_31_percent_are_either_way() {
    for (old, new, due) in [
        (1000, 1290, false),
        (1000, 1300, true),
        (1000, 1310, true),
        (1000, 710, false),
        (1000, 700, true),
        (1000, 690, true),
        (1000, 1000, false),
        (0, 0, false),
        (0, 1, true),
    ] {
        assert_eq!(scale_change_due(old, new), due, "{old} -> {new}");
    }
}

#[test]
fn compare_applies_the_30_percent_rule_to_records_bytes_and_the_configured_rate() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = load(dir.path(), "Zhang Wei", false);
    let filed = with_scale(&cfg, 1000, 50_000);
    for (records, bytes, due) in [
        (1290, 50_000, false),
        (1300, 50_000, true),
        (1310, 50_000, true),
        (710, 50_000, false),
        (700, 50_000, true),
        (690, 50_000, true),
        (1000, 64_500, false),
        (1000, 65_000, true),
        (1000, 35_500, false),
        (1000, 35_000, true),
    ] {
        let diff = compare(&filed, &with_scale(&cfg, records, bytes));
        assert_eq!(
            diff.due(),
            due,
            "records {records}, bytes {bytes}: {diff:?}"
        );
        assert!(diff.fields.is_empty() && diff.added.is_empty(), "{diff:?}");
    }
    let mut faster = with_scale(&cfg, 1000, 50_000);
    let row = faster
        .rows
        .iter_mut()
        .find(|r| r.level == Level::Important)
        .expect("important row");
    assert_eq!(
        row.scale.configured_records_per_day, 86_400,
        "one point every second"
    );
    row.scale.configured_records_per_day = 86_400 * 129 / 100;
    assert!(!compare(&filed, &faster).due());
    faster.rows[0].scale.configured_records_per_day = 86_400 * 131 / 100;
    let diff = compare(&filed, &faster);
    assert!(diff.due(), "{diff:?}");
    assert!(diff
        .changes()
        .iter()
        .any(|c| c.contains("configured_records_per_day")));
}

#[test]
fn a_changed_filed_field_is_due_and_named_with_old_and_new() {
    let dir = tempfile::tempdir().expect("tmp");
    let filed = with_scale(&load(dir.path(), "Zhang Wei", false), 1000, 50_000);
    let current = with_scale(&load(dir.path(), "Li Na", false), 1000, 50_000);
    let diff = compare(&filed, &current);
    assert!(diff.due());
    let person: Vec<&FieldChange> = diff
        .fields
        .iter()
        .filter(|f| f.field == "responsible.person")
        .collect();
    assert_eq!(person.len(), 2, "both rows: {diff:?}");
    assert_eq!(
        (person[0].old.as_str(), person[0].new.as_str()),
        ("Zhang Wei", "Li Na")
    );
    assert_eq!(
        diff.fields.len(),
        2,
        "nothing else changed: {:?}",
        diff.fields
    );
    // A measure that moves by itself is not a filed field.
    let mut later = filed.clone();
    later.generated_at = "2030-01-01T00:00:00.000Z".into();
    later.rows[0].scale.last = Some("2030-01-01T00:00:00.000Z".into());
    later.rows[0].scale.growth_records_per_day = Some(1.0);
    assert!(!compare(&filed, &later).due());
}

#[test]
fn rows_cover_configured_and_stored_data_and_say_what_is_not_true_yet() {
    let dir = tempfile::tempdir().expect("tmp");
    let earlier = load(dir.path(), "Zhang Wei", true);
    write_canaries(&earlier);
    // The management point is gone from the config; its data is still held.
    let cfg = load(dir.path(), "Zhang Wei", false);
    let c = gather(&cfg, NOW, true).expect("catalogue");
    let keys: Vec<String> = c.rows.iter().map(Row::key).collect();
    assert_eq!(
        keys,
        [
            "important/production_operation",
            "important/management",
            "core/rd_design"
        ]
    );
    let important = &c.rows[0];
    assert_eq!(important.scale.records, 50);
    assert!(important.scale.bytes > 0 && important.scale.first.is_some());
    assert_eq!(important.sources.devices[0].device, "press");
    assert_eq!(important.purpose, "process monitoring and quality records");
    assert_eq!(
        important.responsible.contact,
        "+86 512 0000 0000, dso@example.com"
    );
    assert!(important.carrier.encrypted_at_rest);
    assert!(important.carrier.encryption.contains("AES-256-GCM"));
    let share = &important.sharing[0];
    assert_eq!(
        (share.destination.as_str(), share.forms.as_slice()),
        ("group-dc", &["summary".to_owned()][..])
    );
    assert!(share.transport.contains("loopback"), "{}", share.transport);
    let orphan = &c.rows[1];
    assert_eq!(orphan.scale.records, 50);
    assert!(orphan.sources.note.is_some() && orphan.sources.points == 0);
    assert!(
        orphan.sharing.is_empty(),
        "nothing of it is collected or sent now"
    );
    let core = &c.rows[2];
    assert_eq!(
        core.purpose, "protecting casting recipes",
        "the category's own purpose"
    );
    assert!(
        core.sharing.is_empty(),
        "core never leaves: {:?}",
        core.sharing
    );
    assert!(core
        .protection
        .iter()
        .any(|p| p.contains("core data never leaves")));
    // What is true today, and plainly what is not yet.
    assert!(core.protection.iter().any(|p| p.contains("(DataQueried)")));
    assert!(core
        .protection
        .iter()
        .any(|p| p.starts_with("encrypted at rest")));
    assert!(
        core.protection
            .iter()
            .any(|p| p.starts_with("read by no role")),
        "{:?}",
        core.protection
    );
    let recipe = c
        .register
        .iter()
        .find(|p| p.tag == "press.recipe.temp")
        .expect("point");
    assert_eq!(recipe.classified_by, "rule recipes-are-core v3");
    assert_eq!(
        (recipe.function, recipe.register, recipe.unit),
        (Some(4), Some(4), Some(1))
    );
    assert!(recipe.may_go.is_empty());
    let speed = c
        .register
        .iter()
        .find(|p| p.tag == "press.speed")
        .expect("point");
    let forms: Vec<&str> = speed.may_go.iter().map(|r| r.form.as_str()).collect();
    assert_eq!(
        forms,
        ["raw", "summary"],
        "the policy's own answer: {:?}",
        speed.may_go
    );
}

#[test]
fn a_fresh_gateway_without_a_historian_files_zero_scale_and_says_so() {
    let dir = tempfile::tempdir().expect("tmp");
    let c = gather(&load(dir.path(), "Zhang Wei", false), NOW, true).expect("catalogue");
    assert_eq!(c.rows.len(), 2);
    for r in &c.rows {
        assert_eq!((r.scale.records, r.scale.bytes), (0, 0));
        let note = r.scale.note.as_deref().expect("a note");
        assert!(note.contains("no historian"), "{note}");
    }
}

#[test]
fn no_sample_value_appears_in_any_format() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = load(dir.path(), "Zhang Wei", false);
    write_canaries(&cfg);
    let mut reader = crate::store::HistorianReader::open(&cfg.historian.path).expect("reader");
    let key = crate::store::testkit::test_key(&cfg.historian.path).expect("key");
    reader
        .unlock(&crate::store::crypto::MasterKey::load(&key).expect("key"))
        .expect("unlock");
    let stored = reader
        .latest("press.force")
        .expect("read")
        .expect("a sample");
    assert_eq!(
        stored.value,
        Some(Value::Float(CANARY_FLOAT)),
        "the canary is stored"
    );
    let c = gather(&cfg, NOW, true).expect("catalogue");
    assert!(
        c.rows.iter().all(|r| r.scale.records > 0),
        "the data is there"
    );
    for (format, table) in [
        (Format::Json, Table::Rows),
        (Format::Csv, Table::Rows),
        (Format::Csv, Table::Register),
        (Format::Md, Table::Rows),
    ] {
        let mut out = Vec::new();
        render(&c, format, table, &mut out).expect("render");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(text.contains("press"), "{format:?} rendered something");
        for canary in CANARY_TEXTS {
            assert!(
                !text.contains(canary),
                "{format:?} {table:?} holds {canary}:\n{text}"
            );
        }
    }
}

#[test]
fn csv_fields_are_quoted_as_rfc_4180_says() {
    assert_eq!(render::csv_field("plain"), "plain");
    assert_eq!(render::csv_field("a, b"), "\"a, b\"");
    assert_eq!(render::csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    assert_eq!(render::csv_field("two\nlines"), "\"two\nlines\"");
}

#[test]
fn due_dates_are_three_calendar_months_on_clamped_to_the_month() {
    let day = |s: &str| crate::config::issues::parse_date_end_ms(s).expect("date") - DAY;
    for (from, due) in [
        ("2026-01-15", "2026-04-15"),
        ("2026-11-30", "2027-02-28"),
        ("2027-11-30", "2028-02-29"),
        ("2026-10-31", "2027-01-31"),
        ("2026-12-31", "2027-03-31"),
    ] {
        assert_eq!(add_calendar_months(day(from), 3), due, "{from}");
    }
}

fn recorder(
    events: &std::cell::RefCell<Vec<Event>>,
) -> impl FnOnce(Event) -> Result<(), CatalogueError> + '_ {
    |e| {
        events.borrow_mut().push(e);
        Ok(())
    }
}

#[test]
fn a_change_is_raised_once_per_filing_and_a_new_filing_resets_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let cat = dir.path().join("catalogue");
    let filed_cfg = load(dir.path(), "Zhang Wei", false);
    let events = std::cell::RefCell::new(Vec::new());
    let baseline = mark_filed(
        &cat,
        &with_scale(&filed_cfg, 1000, 9000),
        NOW,
        recorder(&events),
    )
    .expect("filed");
    assert_eq!(load_baseline(&cat).expect("load"), Some(baseline.clone()));
    let grown = with_scale(&filed_cfg, 1400, 9000);
    let diff = compare(&baseline.catalogue, &grown);
    let first = raise_if_due(&cat, &baseline, &diff, NOW + DAY, recorder(&events)).expect("raise");
    assert_eq!(
        first,
        Raised::Raised {
            due_by: "2026-04-02".into()
        }
    );
    let again =
        raise_if_due(&cat, &baseline, &diff, NOW + 2 * DAY, recorder(&events)).expect("raise");
    assert!(matches!(again, Raised::AlreadyRaised { .. }), "{again:?}");
    let kinds: Vec<&str> = events.borrow().iter().map(Event::kind).collect();
    assert_eq!(kinds, ["CatalogueFiled", "CatalogueChangeDue"]);
    match &events.borrow()[1] {
        Event::CatalogueChangeDue {
            filed_sha256,
            changes,
            ..
        } => {
            assert_eq!(filed_sha256, &baseline.sha256);
            assert!(
                changes.iter().any(|c| c.contains("records 1000 -> 1400")),
                "{changes:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    // Filing the grown catalogue settles it; a later change is raised again.
    let refiled = mark_filed(&cat, &grown, NOW + 3 * DAY, recorder(&events)).expect("refiled");
    let diff = compare(&refiled.catalogue, &with_scale(&filed_cfg, 2000, 9000));
    // A check that read the old baseline before the refiling raises nothing against it.
    let stale = raise_if_due(
        &cat,
        &baseline,
        &compare(&baseline.catalogue, &grown),
        NOW + 4 * DAY,
        recorder(&events),
    )
    .expect("stale check");
    assert_eq!(stale, Raised::NotDue);
    let raised =
        raise_if_due(&cat, &refiled, &diff, NOW + 4 * DAY, recorder(&events)).expect("raise");
    assert!(matches!(raised, Raised::Raised { .. }), "{raised:?}");
    assert_eq!(events.borrow().len(), 4);
}

#[test]
fn an_altered_baseline_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let cat = dir.path().join("catalogue");
    let cfg = load(dir.path(), "Zhang Wei", false);
    let events = std::cell::RefCell::new(Vec::new());
    let b = mark_filed(&cat, &with_scale(&cfg, 1, 1), NOW, recorder(&events)).expect("filed");
    let text = std::fs::read_to_string(&b.path).expect("read");
    std::fs::write(&b.path, text.replace("Zhang Wei", "Zhang Wel")).expect("write");
    match load_baseline(&cat) {
        Err(CatalogueError::BaselineDamaged { path, .. }) => assert_eq!(path, b.path),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_filing_that_cannot_be_audited_is_not_in_force() {
    let dir = tempfile::tempdir().expect("tmp");
    let cat = dir.path().join("catalogue");
    let cfg = load(dir.path(), "Zhang Wei", false);
    let refused = mark_filed(&cat, &with_scale(&cfg, 1, 1), NOW, |_| {
        Err(CatalogueError::NotFiled { dir: cat.clone() })
    });
    assert!(refused.is_err());
    assert_eq!(load_baseline(&cat).expect("load"), None);
}

#[test]
fn the_running_agents_check_raises_once_across_restarts() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = load(dir.path(), "Zhang Wei", false);
    write_canaries(&cfg);
    let (trail, audit) = AuditLog::for_test();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let events = std::cell::RefCell::new(Vec::new());
    let current = gather(&cfg, NOW, false).expect("catalogue");
    mark_filed(&cfg.catalogue.dir, &current, NOW, recorder(&events)).expect("filed");
    let same = watch::check_once(&cfg, &audit, runtime.handle()).expect("checked");
    assert_eq!(same, Some(Raised::NotDue));
    let changed = load(dir.path(), "Li Na", false);
    let first = watch::check_once(&changed, &audit, runtime.handle()).expect("checked");
    assert!(matches!(first, Some(Raised::Raised { .. })), "{first:?}");
    // A restart is a new check against the same state: not raised again.
    let second = watch::check_once(&changed, &audit, runtime.handle()).expect("checked");
    assert!(
        matches!(second, Some(Raised::AlreadyRaised { .. })),
        "{second:?}"
    );
    audit.close();
    let due: Vec<_> = AuditLog::records_for_test(&trail)
        .into_iter()
        .filter(|r| r["type"] == "CatalogueChangeDue")
        .collect();
    assert_eq!(due.len(), 1, "{due:?}");
    let changes = due[0]["changes"].to_string();
    assert!(changes.contains("responsible.person"), "{changes}");
}

#[test]
fn the_command_prints_diffs_and_exits_1_when_due() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = load(dir.path(), "Zhang Wei", false);
    write_canaries(&cfg);
    let run = |cfg: &AgentConfig, action| {
        let (mut out, mut notes) = (Vec::new(), Vec::new());
        let code = command(cfg, action, NOW, &mut out, &mut notes).expect("command");
        (code, String::from_utf8(out).expect("utf-8"))
    };
    assert!(matches!(
        command(&cfg, Action::Diff, NOW, &mut Vec::new(), &mut Vec::new()),
        Err(CatalogueError::NotFiled { .. })
    ));
    let (code, text) = run(&cfg, Action::MarkFiled);
    assert_eq!(code, 0, "{text}");
    let (code, text) = run(&cfg, Action::Diff);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("re-filing due: no"), "{text}");
    let (code, text) = run(&load(dir.path(), "Li Na", false), Action::Diff);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("responsible.person: \"Zhang Wei\" -> \"Li Na\""),
        "{text}"
    );
    let records = crate::audit::records(&cfg.audit.dir).expect("trail");
    let kinds: Vec<&str> = records.iter().filter_map(|r| r["type"].as_str()).collect();
    assert_eq!(
        kinds
            .iter()
            .filter(|k| k.starts_with("Catalogue"))
            .collect::<Vec<_>>(),
        [&"CatalogueFiled", &"CatalogueChangeDue"]
    );
}

fn config_issues(catalogue: &str) -> Vec<String> {
    let dir = tempfile::tempdir().expect("tmp");
    match from_toml_str(&toml(dir.path(), "Zhang Wei", false, catalogue), NOW) {
        Ok(_) => Vec::new(),
        Err(crate::config::ConfigError::Invalid { issues, .. }) => {
            issues.iter().map(ToString::to_string).collect()
        }
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn catalogue_config_problems_are_named_by_key_path() {
    let issues = config_issues(
        "[catalogue]\npurpose = \" \"\nscope_of_use = \"x\"\ncontact = \"y\"\nlocation = \"\"\n\
         [[catalogue.categories]]\ncategory = \"rd_design\"\npurpose = \"a\"\n\
         [[catalogue.categories]]\ncategory = \"rd_design\"\n",
    );
    let paths: Vec<&str> = issues
        .iter()
        .map(|i| i.split(':').next().unwrap_or(""))
        .collect();
    assert_eq!(
        paths,
        [
            "catalogue.purpose",
            "catalogue.location",
            "catalogue.categories[1].category",
            "catalogue.categories[1]"
        ],
        "{issues:#?}"
    );
    let missing = config_issues("[catalogue]\npurpose = \"p\"\nscope_of_use = \"s\"\n");
    assert!(missing.iter().any(|i| i.contains("contact")), "{missing:?}");
    let typo = config_issues(&format!("{CATALOGUE}\n[catalogue.extra]\n"));
    assert!(typo.iter().any(|i| i.starts_with("catalogue")), "{typo:?}");
}

#[test]
fn without_a_catalogue_section_check_warns_and_the_command_refuses() {
    let dir = tempfile::tempdir().expect("tmp");
    let loaded: Loaded =
        from_toml_str(&toml(dir.path(), "Zhang Wei", false, ""), NOW).expect("valid");
    assert!(
        loaded
            .warnings
            .iter()
            .any(|w| w.0.contains("no [catalogue] section")),
        "{:?}",
        loaded.warnings
    );
    let report = crate::report::check(&loaded);
    assert!(
        report.contains("catalogue ") && report.contains("refuses"),
        "{report}"
    );
    assert!(matches!(
        gather(&loaded.config, NOW, true),
        Err(CatalogueError::NotConfigured)
    ));
    let configured =
        from_toml_str(&toml(dir.path(), "Zhang Wei", false, CATALOGUE), NOW).expect("valid");
    let report = crate::report::check(&configured);
    assert!(report.contains("filing text set"), "{report}");
}

/// The test plant with `n` more important production points.
fn with_points(dir: &Path, n: usize, extra_destination: bool) -> Catalogue {
    let points = (0..n).fold(String::new(), |mut s, i| {
        let _ = write!(
            s,
            "[[devices.points]]\ntag = \"press.extra{i}\"\nregister = \"holding:{}\"\ntype = \"u16\"\nlevel = \"important\"\n",
            100 + i
        );
        s
    });
    let general_only = if extra_destination {
        "[[destinations]]\nname = \"hq\"\njurisdiction = \"DE\"\nrecipient = \"HQ\"\npurpose = \"p\"\nlegal_basis = \"b\"\nbroker = { host = \"127.0.0.1\", port = 1883 }\n[[destinations.allow]]\nlevels = [\"general\"]\nform = \"raw\"\n"
    } else {
        ""
    };
    let text = toml(dir, "Zhang Wei", false, CATALOGUE)
        .replacen(
            "[[destinations]]",
            &format!("{points}\n[[destinations]]"),
            1,
        )
        .replace("[catalogue]", &format!("{general_only}\n[catalogue]"));
    let cfg = from_toml_str(&text, NOW)
        .unwrap_or_else(|e| panic!("{e}"))
        .config;
    with_scale(&cfg, 1000, 50_000)
}

#[test]
fn one_more_point_in_ten_or_a_destination_that_takes_none_of_it_is_no_refiling() {
    let dir = tempfile::tempdir().expect("tmp");
    let filed = with_points(dir.path(), 9, false);
    // 10 important points become 11 (+10 % configured rate), and a destination that takes only
    // general data appears: no filed field of the important row changed.
    let diff = compare(&filed, &with_points(dir.path(), 10, true));
    assert!(!diff.due(), "{:?}", diff.changes());
    // 10 become 14 (+40 %): due, by the configured rate.
    let diff = compare(&filed, &with_points(dir.path(), 13, false));
    assert!(diff.due());
    assert!(
        diff.changes()
            .iter()
            .any(|c| c.contains("configured_records_per_day")),
        "{:?}",
        diff.changes()
    );
}

#[test]
fn important_data_sent_as_general_under_a_downgrade_counts_in_the_important_row() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = load(dir.path(), "Zhang Wei", false);
    let record = |level: &str, downgrades: Vec<String>| EgressRecord {
        ts: "2026-01-01T00:00:00.000Z".into(),
        destination: "group-dc".into(),
        recipient: "Group DC".into(),
        jurisdiction: "CN".into(),
        purpose: "monitoring".into(),
        legal_basis: "intra-group agreement".into(),
        assessment_reference: None,
        level: level.into(),
        categories: vec!["production_operation".into()],
        items: 3,
        bytes: 300,
        downgrades,
    };
    let egress = [
        record("general", vec!["DG-1".into()]),
        record("general", vec![]),
    ];
    let scale = [scale_row(
        Level::Important,
        Category::ProductionOperation,
        10,
        100,
    )];
    let c = assemble(&cfg, Some(&scale), &egress, NOW).expect("catalogue");
    let important = c
        .rows
        .iter()
        .find(|r| r.level == Level::Important)
        .expect("important row");
    let dc = important
        .sharing
        .iter()
        .find(|s| s.destination == "group-dc")
        .expect("group-dc");
    assert_eq!(
        dc.observed.as_ref().map(|o| o.messages),
        Some(1),
        "only the message that carried downgraded important data"
    );
}

#[test]
fn a_change_whose_record_fails_is_not_marked_raised_and_is_raised_at_the_next_check() {
    let dir = tempfile::tempdir().expect("tmp");
    let cat = dir.path().join("catalogue");
    let cfg = load(dir.path(), "Zhang Wei", false);
    let events = std::cell::RefCell::new(Vec::new());
    let baseline =
        mark_filed(&cat, &with_scale(&cfg, 1000, 9000), NOW, recorder(&events)).expect("filed");
    let diff = compare(&baseline.catalogue, &with_scale(&cfg, 2000, 9000));
    let failed = raise_if_due(&cat, &baseline, &diff, NOW + DAY, |_| {
        Err(CatalogueError::AuditUnavailable(
            crate::audit::AuditUnavailable("disk full".into()),
        ))
    });
    assert!(failed.is_err());
    assert!(!cat.join("state.json").exists(), "nothing marks it raised");
    let leftovers: Vec<_> = std::fs::read_dir(&cat)
        .expect("dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp."))
        .collect();
    assert!(leftovers.is_empty(), "no staged state left behind");
    let raised =
        raise_if_due(&cat, &baseline, &diff, NOW + 2 * DAY, recorder(&events)).expect("raise");
    assert!(matches!(raised, Raised::Raised { .. }), "{raised:?}");
    assert!(cat.join("state.json").exists());
}

#[test]
fn destroying_important_data_makes_the_filing_due_once_naming_what_went() {
    let dir = tempfile::tempdir().expect("tmp");
    let cat = dir.path().join("catalogue");
    let cfg = load(dir.path(), "Zhang Wei", false);
    let events = std::cell::RefCell::new(Vec::new());
    let destroyed = || {
        vec![(
            "important/production_operation".to_owned(),
            "600 samples of press.force (retention)".to_owned(),
        )]
    };
    // Nothing filed yet: nothing to flag.
    let none =
        super::watch::flag_destruction(&cat, destroyed(), NOW, recorder(&events)).expect("flag");
    assert!(none.is_none());
    mark_filed(&cat, &with_scale(&cfg, 1, 1), NOW, recorder(&events)).expect("filed");
    let raised = super::watch::flag_destruction(&cat, destroyed(), NOW + DAY, recorder(&events))
        .expect("flag");
    assert!(matches!(raised, Some(Raised::Raised { .. })), "{raised:?}");
    let again = super::watch::flag_destruction(&cat, destroyed(), NOW + 2 * DAY, recorder(&events))
        .expect("flag");
    assert!(
        matches!(again, Some(Raised::AlreadyRaised { .. })),
        "{again:?}"
    );
    let due: Vec<_> = events
        .borrow()
        .iter()
        .filter_map(|e| match e {
            Event::CatalogueChangeDue { changes, .. } => Some(changes.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(due.len(), 1);
    assert!(
        due[0][0].contains("data destroyed") && due[0][0].contains("press.force"),
        "{due:?}"
    );
}

/// The base config with `mqtt` (brokers, maps, extra rules) and a catalogue; its catalogue.
fn with_mqtt(dir: &Path, mqtt: &str) -> (AgentConfig, Catalogue) {
    let text = toml(dir, "Wang Fang", false, &format!("{mqtt}{CATALOGUE}"));
    let cfg = from_toml_str(&text, NOW)
        .unwrap_or_else(|e| panic!("{e}"))
        .config;
    let c = assemble(&cfg, None, &[], NOW).expect("catalogue");
    (cfg, c)
}

#[test]
fn points_mqtt_sources_meet_at_run_time_are_filed_by_the_map_that_makes_them() {
    let dir = tempfile::tempdir().expect("tmp");
    let mqtt = r#"
[[mqtt_brokers]]
name = "floor"
host = "10.0.0.5"
port = 1883
[[mqtt_maps]]
broker = "floor"
topic = "cells/+cell/formula"
[[mqtt_maps.fields]]
pointer = "/blend"
tag = "{cell}.formula.blend"
type = "number"
level = "core"
category = "rd_design"
[[mqtt_maps]]
broker = "floor"
topic = "spBv1.0/g1/#"
format = "sparkplug_b"
[[mqtt_maps.metrics]]
name = "*/Energy*"
level = "important"
category = "management"
"#;
    let (_, c) = with_mqtt(dir.path(), mqtt);
    let blend = c
        .register
        .iter()
        .find(|p| p.tag == "{cell}.formula.blend")
        .expect("the templated field is filed");
    assert_eq!(
        (blend.level, blend.category),
        (Level::Core, Category::RdDesign)
    );
    assert_eq!(blend.endpoint, "10.0.0.5:1883");
    assert_eq!(blend.protocol, "mqtt");
    assert_eq!(blend.address, "cells/+cell/formula#/blend");
    let energy = c
        .register
        .iter()
        .find(|p| p.tag.contains("*/Energy*"))
        .expect("the Sparkplug metric entry is filed");
    assert_eq!(energy.level, Level::Important);
    // The unmapped JSON fields of the map are filed at the default level.
    assert!(c
        .register
        .iter()
        .any(|p| p.classified_by == "unmapped/default" && p.tag.contains("cells/+cell/formula")));
    assert!(
        c.rows
            .iter()
            .any(|r| r.level == Level::Important && r.category == Category::Management),
        "a row for the family's label"
    );
}

#[test]
fn a_templated_family_is_filed_once_per_label_its_rendered_tags_can_take() {
    let dir = tempfile::tempdir().expect("tmp");
    // `line1.*` is written for rendered tags: the template text `{line}.{machine}.speed` does
    // not match it, but `line1.m1.speed` does, and `line2.m1.speed` falls to the default.
    let mqtt = r#"
[[classification.rules]]
id = "line1-is-general"
match = "line1.*"
level = "general"
category = "production_operation"

[[mqtt_brokers]]
name = "floor"
host = "10.0.0.5"
port = 1883
[[mqtt_maps]]
broker = "floor"
topic = "plant/+line/+machine/telemetry"
unmapped_fields = "ignore"
[[mqtt_maps.fields]]
pointer = "/speed"
tag = "{line}.{machine}.speed"
type = "number"
[[mqtt_maps.fields]]
pointer = "/feed"
tag = "{line}.{machine}.recipe.feed"
type = "number"
"#;
    let (cfg, c) = with_mqtt(dir.path(), mqtt);
    let labels = |tag: &str| {
        let mut v: Vec<(Level, String)> = c
            .register
            .iter()
            .filter(|p| p.tag == tag)
            .map(|p| (p.level, p.classified_by.clone()))
            .collect();
        v.sort();
        v
    };
    // A topic level may hold dots: `plant/a/x.recipe.y/telemetry` renders `a.x.recipe.y.speed`,
    // which the first rule labels core.
    assert_eq!(
        labels("{line}.{machine}.speed"),
        [
            (Level::General, "rule line1-is-general v1".to_owned()),
            (Level::Important, "unmapped/default".to_owned()),
            (Level::Core, "rule recipes-are-core v3".to_owned()),
        ]
    );
    // `*.recipe.*` comes first and matches every rendering: neither the later rule nor the
    // default can label these.
    assert_eq!(
        labels("{line}.{machine}.recipe.feed"),
        [(Level::Core, "rule recipes-are-core v3".to_owned())]
    );
    // The run-time labels are among the filed ones.
    let rules = cfg.mqtt[0].rules.clone();
    for (tag, level) in [
        ("a.x.recipe.y.speed", Level::Core),
        ("line1.m1.speed", Level::General),
        ("line2.m1.speed", Level::Important),
        ("line1.m1.recipe.feed", Level::Core),
    ] {
        let spec = cfg.mqtt[0].spec(tag, None, None, None, None, "", None, None);
        assert_eq!(rules.compile(0, &spec).level(), level, "{tag}");
    }
}
