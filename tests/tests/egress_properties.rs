//! Random configs over the simulated press, through the real binary and an embedded broker.
//! Whatever a config says (point levels and categories, destinations, rules, assessments,
//! groups, downgrades):
//! - `check` accepts it exactly when `run` does;
//! - every message the broker received has exactly one `DataEgressed` record carrying its
//!   payload's SHA-256, and there are no other egress records;
//! - nothing core, and no group with a core member, reaches the broker; nothing raw above
//!   general; important data leaves only as a summary, domestically or under an assessment
//!   covering its categories, or as general under a downgrade naming it, with only the stats
//!   the downgrade approves.
//!
//! Cases come from a fixed seed, so a failure is reproduced by its case number (printed with
//! the config).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use edge_agent::audit::sha256_hex;
use edge_tests::agent_proc::AgentProc;
use edge_tests::press::PressRig;
use edge_tests::query::{edge_agent, export_today};
use serde_json::Value as Json;

const CASES: u64 = 12;
const LEVELS: [&str; 3] = ["general", "important", "core"];
const CATEGORIES: [&str; 3] = ["production_operation", "management", "rd_design"];
const STATS: [&str; 7] = ["count", "min", "max", "mean", "last", "good", "bad"];
const POINTS: [&str; 3] = ["press.a", "press.b", "press.c"];

/// xorshift64*: small, seedable, enough to pick configs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap_or(0)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    /// A non-empty random subset of `items`, in their order.
    fn subset<'a>(&mut self, items: &[&'a str]) -> Vec<&'a str> {
        loop {
            let s: Vec<&str> = items.iter().copied().filter(|_| self.chance(50)).collect();
            if !s.is_empty() {
                return s;
            }
        }
    }
}

fn list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("{i:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

/// What the checks need to know of a generated config.
#[derive(Debug, Default)]
struct Case {
    levels: HashMap<String, usize>,
    categories: HashMap<String, Vec<&'static str>>,
    /// Per destination prefix: domestic, and the categories a valid assessment covers.
    destinations: HashMap<String, (bool, Option<Vec<&'static str>>)>,
    /// Downgrade targets (points and group names) and stats.
    downgrade: Option<(Vec<String>, Vec<&'static str>)>,
    group_members: Vec<&'static str>,
}

fn points_and_group(rng: &mut Rng, case: &mut Case, s: &mut String) {
    for (i, tag) in POINTS.iter().enumerate() {
        let level = rng.below(3);
        let category = CATEGORIES[rng.below(3)];
        case.levels.insert((*tag).to_owned(), level);
        case.categories.insert((*tag).to_owned(), vec![category]);
        let _ = write!(
            s,
            "[[devices.points]]\ntag = {tag:?}\nregister = \"holding:{i}\"\ntype = \"u16\"\nlevel = {:?}\ncategory = {category:?}\n\n",
            LEVELS[level]
        );
    }
    if rng.chance(60) {
        let members = rng.subset(&POINTS);
        let level = members.iter().map(|m| case.levels[*m]).max().unwrap_or(0);
        let mut cats: Vec<&'static str> = members
            .iter()
            .flat_map(|m| case.categories[*m].clone())
            .collect();
        cats.sort_unstable();
        cats.dedup();
        case.levels.insert("press.group".into(), level);
        case.categories.insert("press.group".into(), cats);
        case.group_members.clone_from(&members);
        let _ = write!(
            s,
            "[[groups]]\nname = \"press.group\"\npoints = {}\n\n",
            list(&members)
        );
    }
}

fn destination(rng: &mut Rng, case: &mut Case, s: &mut String, i: usize, broker: &str) {
    let domestic = rng.chance(50);
    let (host, port) = broker.split_once(':').unwrap_or_default();
    let _ = write!(
        s,
        "[[destinations]]\nname = \"d{i}\"\njurisdiction = {:?}\nrecipient = \"R{i}\"\npurpose = \"p\"\n\
         legal_basis = \"contract\"\ntopic_prefix = \"d{i}\"\nbatch_max_delay = \"200ms\"\n\
         broker = {{ host = {host:?}, port = {port} }}\n",
        if domestic { "CN" } else { "DE" }
    );
    // Cross-border: an assessment first (mostly valid), so rules can ask for important data
    // within it; now and then a config that must be refused.
    let mut assessed = None;
    let mut assessment = String::new();
    if !domestic && rng.chance(60) {
        let expired = rng.chance(10);
        let cats = rng.subset(&CATEGORIES);
        let _ = write!(
            assessment,
            "[destinations.assessment]\nreference = \"CAC-{i}\"\nexpires = {:?}\ncategories = {}\n",
            if expired { "2020-01-01" } else { "2099-12-31" },
            list(&cats)
        );
        if !expired {
            assessed = Some(cats);
        }
    }
    if rng.chance(50) {
        s.push_str("[[destinations.allow]]\nlevels = [\"general\"]\nform = \"raw\"\n");
    }
    if rng.chance(8) {
        // Refused by check and run: raw important.
        s.push_str("[[destinations.allow]]\nlevels = [\"important\"]\nform = \"raw\"\n");
    }
    for _ in 0..=rng.below(2) {
        let may_important = domestic || assessed.is_some() || rng.chance(10);
        let levels = if may_important {
            rng.subset(&["general", "important"])
        } else {
            vec!["general"]
        };
        let stats = rng.subset(&STATS);
        let _ = write!(
            s,
            "[[destinations.allow]]\nlevels = {}\nform = \"summary\"\nwindow = \"1s\"\nstats = {}\n",
            list(&levels),
            list(&stats)
        );
        match &assessed {
            Some(cats) if levels.contains(&"important") => {
                let _ = writeln!(s, "categories = {}", list(&rng.subset(cats)));
            }
            _ if rng.chance(30) => {
                let _ = writeln!(s, "categories = {}", list(&rng.subset(&CATEGORIES)));
            }
            _ => {}
        }
    }
    s.push_str(&assessment);
    s.push('\n');
    case.destinations
        .insert(format!("d{i}"), (domestic, assessed));
}

fn generate(seed: u64, press: &str, broker: &str, historian: &Path) -> (String, Case) {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut case = Case::default();
    let mut s = format!(
        "[gateway]\nid = \"gw-prop\"\nsite = \"prop\"\njurisdiction = \"CN\"\ndata_processor = \"T\"\n\
         responsible_person = \"T\"\ndepartment = \"T\"\n\n[classification]\ndefault_level = \"important\"\n\n\
         [historian]\npath = {:?}\n\n[[devices]]\nname = \"press\"\nprotocol = \"modbus_tcp\"\n\
         endpoint = \"{press}\"\npoll_interval = \"100ms\"\ntimeout = \"1s\"\n",
        historian.display().to_string()
    );
    points_and_group(&mut rng, &mut case, &mut s);
    for i in 0..=rng.below(2) {
        destination(&mut rng, &mut case, &mut s, i, broker);
    }
    if rng.chance(50) {
        let mut names: Vec<&str> = POINTS.to_vec();
        if !case.group_members.is_empty() {
            names.push("press.group");
        }
        // Mostly within the rules (never core); now and then one that must be refused.
        if !rng.chance(15) {
            names.retain(|n| case.levels[*n] != 2);
        }
        if names.is_empty() {
            names.push("press.a");
        }
        let targets = rng.subset(&names);
        // Counts only, as the config demands; now and then a value, which must be refused.
        let stats = if rng.chance(10) {
            rng.subset(&STATS)
        } else {
            rng.subset(&["count", "good", "bad"])
        };
        // Now and then expired: it loads (with a warning) and must release nothing.
        let expired = rng.chance(20);
        let _ = write!(
            s,
            "[[downgrades]]\nid = \"DG\"\npoints = {}\nstats = {}\napprover = \"A\"\nrationale = \"R\"\nexpires = {:?}\n",
            list(&targets),
            list(&stats),
            if expired { "2020-01-01" } else { "2099-12-31" }
        );
        if !expired {
            case.downgrade = Some((targets.iter().map(|t| (*t).to_owned()).collect(), stats));
        }
    }
    if seed % 4 == 0 {
        // One rule the invariants forbid: both check and run must refuse the whole config.
        let (host, port) = broker.split_once(':').unwrap_or_default();
        let bad = [
            "[[destinations.allow]]\nlevels = [\"important\"]\nform = \"raw\"\n",
            "[[destinations.allow]]\nlevels = [\"core\"]\nform = \"summary\"\nwindow = \"1s\"\nstats = [\"count\"]\n",
            "[[destinations.allow]]\nlevels = [\"important\"]\nform = \"summary\"\nwindow = \"1s\"\nstats = [\"count\"]\n",
        ][rng.below(3)];
        let _ = write!(
            s,
            "[[destinations]]\nname = \"bad\"\njurisdiction = \"US\"\nrecipient = \"R\"\npurpose = \"p\"\n\
             legal_basis = \"contract\"\ntopic_prefix = \"bad\"\nbroker = {{ host = {host:?}, port = {port} }}\n{bad}"
        );
    }
    (s, case)
}

/// The invariants over one item of a message to `prefix`.
fn check_item(case: &Case, prefix: &str, form: &str, item: &Json) -> Result<(), String> {
    let point = item["point"].as_str().ok_or("item without point")?;
    let labelled = *case
        .levels
        .get(point)
        .ok_or(format!("unknown point {point}"))?;
    if labelled == 2 {
        return Err(format!("core data left: {item}"));
    }
    if point == "press.group" && case.group_members.iter().any(|m| case.levels[*m] == 2) {
        return Err(format!("a group with a core member left: {item}"));
    }
    if form == "raw" && labelled != 0 {
        return Err(format!("raw {} data left: {item}", LEVELS[labelled]));
    }
    let downgraded = item.get("downgrade").is_some();
    match (labelled, downgraded) {
        (0, true) => Err(format!("general data marked as downgraded: {item}")),
        (1, true) => {
            let (targets, stats) = case.downgrade.as_ref().ok_or("no downgrade configured")?;
            let keys: Vec<&String> = item["stats"]
                .as_object()
                .ok_or("no stats")?
                .keys()
                .collect();
            if item["level"] != "general"
                || !targets.iter().any(|t| t == point)
                || keys.iter().any(|k| !stats.contains(&k.as_str()))
            {
                return Err(format!("a downgrade broke its terms: {item}"));
            }
            Ok(())
        }
        (1, false) => {
            let (domestic, assessed) = &case.destinations[prefix];
            let covered = assessed
                .as_ref()
                .is_some_and(|a| case.categories[point].iter().all(|c| a.contains(c)));
            if form != "summary" || !(*domestic || covered) || item["level"] != "important" {
                return Err(format!("important data left against the rules: {item}"));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// What the broker received in the valid cases, so the run shows it exercised each path.
#[derive(Debug, Default)]
struct Seen {
    messages: usize,
    items: usize,
    important: usize,
    downgraded: usize,
    groups: usize,
}

/// Runs one valid config, checking every item and every egress record.
fn run_case(rig: &PressRig, case: &Case, dir: &Path, seen: &mut Seen) {
    let agent = AgentProc::start(&rig.config).expect("agent starts");
    // Long enough for a few 1 s windows; returns early once traffic has flowed.
    let _ = rig
        .runtime
        .block_on(rig.collector.wait_for_count(12, Duration::from_secs(4)));
    let finished = agent
        .terminate(Duration::from_secs(30))
        .expect("agent stops");
    assert!(finished.status.success(), "{:?}", finished.lines);
    let exported = export_today(&rig.config, "DataEgressed", true);
    let mut recorded: HashMap<String, usize> = HashMap::new();
    for line in exported.lines() {
        let r: Json = serde_json::from_str(line).expect("record");
        *recorded
            .entry(r["payload_sha256"].as_str().unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    // The broker acknowledges before it forwards: wait (bounded) for the subscriber to have
    // every message recorded before comparing.
    let expected: usize = recorded.values().sum();
    let _ = rig.runtime.block_on(
        rig.collector
            .wait_for_count(expected, Duration::from_secs(10)),
    );
    let messages = rig.collector.messages();
    for (topic, payload) in &messages {
        let prefix = topic.split('/').next().unwrap_or_default();
        let msg: Json = serde_json::from_slice(payload).expect("JSON");
        let form = msg["form"].as_str().unwrap_or_default();
        for item in msg["items"].as_array().into_iter().flatten() {
            if let Err(e) = check_item(case, prefix, form, item) {
                panic!("{e} (topic {topic})");
            }
            seen.items += 1;
            seen.important += usize::from(item["level"] == "important");
            seen.downgraded += usize::from(item.get("downgrade").is_some());
            seen.groups += usize::from(item["point"] == "press.group");
        }
    }
    let mut received: HashMap<String, usize> = HashMap::new();
    for (_, payload) in &messages {
        *received.entry(sha256_hex(payload)).or_default() += 1;
    }
    assert_eq!(
        recorded,
        received,
        "egress records and received messages differ (trail in {})",
        dir.display()
    );
    seen.messages += messages.len();
}

#[test]
fn random_configs_never_break_an_invariant_and_every_message_has_one_record() {
    let mut ran = 0;
    let mut refused = 0;
    let mut seen = Seen::default();
    for seed in 1..=CASES {
        let dir = tempfile::tempdir().expect("tmp");
        let mut case = Case::default();
        let rig = PressRig::start(dir.path(), |press, broker, historian| {
            let (text, c) = generate(seed, press, broker, historian);
            case = c;
            text
        });
        let text = std::fs::read_to_string(&rig.config).expect("config");
        let valid =
            edge_agent::agent_config::from_toml_str(&text, edge_agent::model::now_ms()).is_ok();
        let check = edge_agent(&["check"], &rig.config);
        assert_eq!(
            check.status.success(),
            valid,
            "case {seed}: check and run disagree on\n{text}\n{}",
            String::from_utf8_lossy(&check.stderr)
        );
        if !valid {
            assert_eq!(check.status.code(), Some(2), "case {seed}");
            // `run` refuses it too, before reading anything.
            let run = edge_agent(&["run"], &rig.config);
            assert_eq!(
                run.status.code(),
                Some(2),
                "case {seed}: run did not refuse\n{text}"
            );
            eprintln!(
                "case {seed} refused: {}",
                String::from_utf8_lossy(&check.stderr)
                    .lines()
                    .nth(1)
                    .unwrap_or_default()
            );
            refused += 1;
            continue;
        }
        run_case(&rig, &case, dir.path(), &mut seen);
        ran += 1;
    }
    eprintln!("{ran} configs run, {refused} refused; received {seen:?}");
    assert!(
        ran >= CASES / 2,
        "too few valid configs to mean much: {ran}"
    );
    assert!(
        refused >= CASES / 4,
        "the refused configs were not all refused: {refused}"
    );
    // The seeds are fixed: these hold unless the generator or the agent changed.
    assert!(
        seen.important > 0 && seen.downgraded > 0 && seen.groups > 0,
        "a path was not exercised: {seen:?}"
    );
}
