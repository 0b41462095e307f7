//! Who may read what: `edge-agent init` (the historian's master key) and `edge-agent query`
//! (reads authorised by the roles of `[[roles]]`, and audited).
//!
//! - General data is readable by every identity that can open the historian file.
//! - Important and core data are read only by identities a role grants the level and category
//!   (`[[roles]]`: members, levels, categories). The key is loaded, and the data decrypted,
//!   only when the identity is granted some sealed data the query wants.
//! - Every query that may return important or core data is recorded (`DataQueried`, with the
//!   identity and its roles) before anything is read; every refusal is recorded after
//!   (`DataRefused`, with the tags and labels), and the command exits 3.
//!
//! The identity is what the caller names (`--as`, default the OS account). It is an
//! accountability label, not an authentication: the key file's permissions (0600, the agent's
//! account) decide who can decrypt at all (decision 0023).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::agent_config;
use crate::audit::{append_now, rfc3339_ms, Event};
use crate::config::Role;
use crate::model::{now_ms, Level};
use crate::store::crypto::MasterKey;
use crate::store::query::{parse_time, Format, Selection};
use crate::store::{HistorianReader, QueryError};

/// Exit code of a query that refused some of what it was asked (what was granted is printed).
pub const EXIT_REFUSED: u8 = 3;

/// `edge-agent query`'s arguments.
#[derive(Debug, Clone, Default)]
pub struct QueryRequest {
    pub config: PathBuf,
    /// `--as`: who reads; default the OS account.
    pub identity: Option<String>,
    pub points: Vec<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub levels: Vec<String>,
    pub format: String,
    pub stats: bool,
}

/// What an identity may read.
#[derive(Debug, Clone)]
pub struct Grants {
    pub identity: String,
    pub roles: Vec<Role>,
}

impl Grants {
    /// The roles of `roles` that name `identity` as a member.
    #[must_use]
    pub fn of(identity: &str, roles: &[Role]) -> Self {
        Self {
            identity: identity.to_owned(),
            roles: roles
                .iter()
                .filter(|r| r.members.iter().any(|m| m == identity))
                .cloned()
                .collect(),
        }
    }

    /// General data for everyone; important and core by role.
    #[must_use]
    pub fn allows(&self, level: Level, category: crate::model::Category) -> bool {
        level == Level::General || self.roles.iter().any(|r| r.grants(level, category))
    }

    fn role_names(&self) -> Vec<String> {
        self.roles.iter().map(|r| r.name.clone()).collect()
    }
}

/// `edge-agent init -c FILE`: creates the master key `historian.key` names (mode 0600, never
/// replacing one), and records it in the trail. Returns the exit code.
#[must_use]
pub fn init(config: &Path) -> u8 {
    let (historian, _) = match agent_config::historian_and_roles(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let key = &historian.key;
    if let Some(dir) = key.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Err(e) = create_private_dir(dir) {
            eprintln!("error: cannot create {}: {e}", dir.display());
            return 1;
        }
    }
    let master = match MasterKey::create(key) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    println!(
        "Created the historian key {} (id {}, mode 0600).\n\
         Back it up now, apart from the data: without it the important and core history \
         cannot be read. Never replace it while sealed data exists.",
        key.display(),
        master.id()
    );
    let recorded = agent_config::audit_settings(config)
        .map_err(|e| e.to_string())
        .and_then(|(audit, gateway)| {
            append_now(
                &audit.dir,
                &gateway,
                Event::HistorianKeyCreated {
                    key_id: master.id().to_owned(),
                    path: key.display().to_string(),
                },
            )
            .map_err(|e| e.to_string())
        });
    if let Err(e) = recorded {
        eprintln!(
            "warning: the key was created but its creation is not in the audit trail ({e}); \
             the agent records the data key it starts with it"
        );
    }
    0
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// The account running this command: `$USER`, else the numeric uid from `/proc`.
#[must_use]
pub fn caller() -> String {
    if let Ok(user) = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")) {
        if !user.is_empty() {
            return user;
        }
    }
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().next().map(|u| format!("uid {u}")))
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// A query's parsed selection, before the historian is opened.
struct Parsed {
    sel: Selection,
    levels: Vec<Level>,
    from: Option<i64>,
    to: Option<i64>,
    format: Format,
}

fn parse(req: &QueryRequest) -> Result<Parsed, String> {
    let now = now_ms();
    let time = |t: &Option<String>| t.as_deref().map(|t| parse_time(t, now)).transpose();
    let from = time(&req.from).map_err(|e| format!("--from {e}"))?;
    let to = time(&req.to).map_err(|e| format!("--to {e}"))?;
    let mut levels = Vec::new();
    for l in &req.levels {
        levels.push(
            Level::parse(l.trim())
                .ok_or_else(|| format!("--levels {l:?}: use general, important or core"))?,
        );
    }
    let format = Format::parse(&req.format)?;
    let sel = Selection::all()
        .points(&req.points)?
        .between(from, to)
        .levels(&levels);
    Ok(Parsed {
        sel,
        levels,
        from,
        to,
        format,
    })
}

/// `edge-agent query`. Returns the exit code: 0, 1 (failed), 2 (usage), 3 (some refused).
#[must_use]
pub fn query(req: &QueryRequest) -> u8 {
    let p = match parse(req) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let (historian, roles) = match agent_config::historian_and_roles(&req.config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let identity = req.identity.clone().unwrap_or_else(caller);
    let grants = Grants::of(&identity, &roles);
    let sel = p.sel.clone().granted_by(|l, c| grants.allows(l, c));
    // Reads of important and core data leave a record first; without one, nothing is read.
    if let Err(e) = record_query(req, &p, &grants) {
        eprintln!("error: {e}");
        return 1;
    }
    let mut reader = match HistorianReader::open(&historian.path) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let sealed_wanted = !req.stats
        && [Level::Important, Level::Core]
            .iter()
            .any(|&l| sel.grants_any_of(l));
    if sealed_wanted {
        let unlocked = MasterKey::load(&historian.key)
            .map_err(|e| e.to_string())
            .and_then(|m| reader.unlock(&m).map_err(|e| e.to_string()));
        if let Err(e) = unlocked {
            eprintln!("error: {e}; important and core data cannot be decrypted without it");
            return 1;
        }
    }
    let code = match read(&reader, req.stats, &sel, p.format) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    };
    let refused = reader.refused();
    if refused.is_empty() {
        return code;
    }
    report_refusal(req, &p, &grants, &refused);
    if code == 0 {
        EXIT_REFUSED
    } else {
        code
    }
}

fn read(
    reader: &HistorianReader,
    stats: bool,
    sel: &Selection,
    format: Format,
) -> Result<(), QueryError> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let result = if stats {
        reader.scale().map_err(QueryError::Store).and_then(|rows| {
            let rows: Vec<_> = rows
                .into_iter()
                .filter(|r| sel.wants_level(r.level))
                .collect();
            crate::store::query::write_scale(&rows, format, &mut out).map_err(QueryError::Output)
        })
    } else {
        format
            .header(&mut out)
            .map_err(QueryError::Output)
            .and_then(|()| reader.query(sel, |s| format.write(s, &mut out)).map(|_| ()))
    };
    match result.and_then(|()| out.flush().map_err(QueryError::Output)) {
        // `query | head`: the reader chose to stop.
        Err(QueryError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// `DataQueried`, durably, when the selection may return important or core data.
fn record_query(req: &QueryRequest, p: &Parsed, grants: &Grants) -> Result<(), String> {
    let asked: Vec<Level> = if p.levels.is_empty() {
        Level::ALL.to_vec()
    } else {
        p.levels.clone()
    };
    if asked.iter().all(|l| *l == Level::General) {
        return Ok(());
    }
    let (settings, gateway) = agent_config::audit_settings(&req.config).map_err(|e| {
        format!("{e}; important and core data are not read without an audit record")
    })?;
    let event = Event::DataQueried {
        user: caller(),
        points: req.points.clone(),
        levels: asked.iter().map(|l| l.as_str().to_owned()).collect(),
        from: p.from.map(rfc3339_ms),
        to: p.to.map(rfc3339_ms),
        scale_only: req.stats,
        identity: Some(grants.identity.clone()),
        roles: grants.role_names(),
    };
    append_now(&settings.dir, &gateway, event).map(|_| ()).map_err(|e| {
        format!("cannot record the query in the audit trail ({e}); important and core data are not read without a record")
    })
}

/// Most tags named in one refusal record; the rest are counted.
const MAX_REFUSED_TAGS: usize = 100;

/// Says on stderr what was refused and records `DataRefused`.
fn report_refusal(
    req: &QueryRequest,
    p: &Parsed,
    grants: &Grants,
    refused: &crate::store::Refused,
) {
    let labels: std::collections::BTreeSet<String> = refused
        .values()
        .flatten()
        .map(|(l, c)| format!("{}/{}", l.as_str(), c.as_str()))
        .collect();
    let labels: Vec<String> = labels.into_iter().collect();
    let mut points: Vec<String> = refused.keys().take(MAX_REFUSED_TAGS).cloned().collect();
    if refused.len() > MAX_REFUSED_TAGS {
        points.push(format!("... and {} more", refused.len() - MAX_REFUSED_TAGS));
    }
    let reason = if grants.roles.is_empty() {
        format!("identity {:?} holds no role", grants.identity)
    } else {
        format!(
            "the roles of {:?} ({}) do not grant these labels",
            grants.identity,
            grants.role_names().join(", ")
        )
    };
    eprintln!(
        "refused: {} point(s) of {} were not read: {reason}. A role in [[roles]] must grant the level and category (see `edge-agent check`).",
        refused.len(),
        labels.join(", ")
    );
    let event = Event::DataRefused {
        user: caller(),
        identity: grants.identity.clone(),
        points,
        labels,
        from: p.from.map(rfc3339_ms),
        to: p.to.map(rfc3339_ms),
        reason,
    };
    let recorded = agent_config::audit_settings(&req.config)
        .map_err(|e| e.to_string())
        .and_then(|(s, gateway)| append_now(&s.dir, &gateway, event).map_err(|e| e.to_string()));
    if let Err(e) = recorded {
        eprintln!("error: the refusal could not be recorded in the audit trail: {e}");
    }
}
