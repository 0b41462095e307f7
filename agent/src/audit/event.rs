//! The audit events (`NounPastVerb`). Each carries the fields that make it useful on its own,
//! read by an inspector without the config or the agent at hand; the record adds time, gateway,
//! sequence and the chain (`record`).
//!
//! Levels, categories, forms and reasons are written as the same strings the config and the
//! upstream messages use (`important`, `production`, `summary`, `raw_not_general`).

use serde::{Deserialize, Serialize};

/// A classification rule as it was in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleInForce {
    pub id: String,
    pub version: u32,
    #[serde(rename = "match")]
    pub pattern: String,
    pub level: String,
    pub category: Option<String>,
}

/// What an outbox dropped of one level, form and reason in a period (`Event::OutboxDropped`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxDrop {
    pub level: String,
    /// `raw`, `summary`, or `other` (chain heads, incident lines).
    pub form: String,
    /// `bound` (the outbox was full), `unwritable` (the disk refused the entry) or
    /// `core_refused` (core data reached the uplink: a bug, never data egress).
    pub reason: String,
    pub messages: u64,
    pub items: u64,
    pub bytes: u64,
    /// Idempotency keys of the first and last item dropped (empty when unknown).
    pub first_key: String,
    pub last_key: String,
}

/// One audit event.
// A few records a second at most, each moved once into the writer: boxing the large
// variants would cost an allocation and buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Event {
    /// The first record of a trail.
    AuditTrailStarted { dir: String },
    /// The agent started with a valid config.
    AgentStarted { version: String, pid: u32 },
    /// The agent stopped (clean shutdown).
    AgentStopped { reason: String },
    /// A config was loaded and is in force; `sha256` is of the file's bytes.
    ConfigLoaded {
        file: String,
        sha256: String,
        /// Names of the environment variables that overrode keys (values are not recorded).
        overrides: Vec<String>,
        points: usize,
        devices: usize,
        destinations: usize,
    },
    /// `run` refused a config: every error, each with where it is.
    ConfigRejected {
        file: String,
        sha256: Option<String>,
        errors: Vec<String>,
    },
    /// The classification in force: the default for unmapped data and every rule.
    ClassificationRulesInForce {
        default_level: String,
        default_category: String,
        rules: Vec<RuleInForce>,
    },
    /// A device answers: for the first time since the agent started, or again after
    /// `DeviceLost`.
    DeviceConnected {
        device: String,
        line: String,
        address: String,
        unit: u8,
    },
    /// A device stopped answering (or never answered since the agent started), or its line
    /// failed. Its points carry `comm_error` until it answers again.
    DeviceLost {
        device: String,
        line: String,
        address: String,
        unit: u8,
        error: String,
    },
    /// A device-side MQTT broker accepted the agent's connection (first time, or again after
    /// `MqttBrokerLost`); its subscriptions were (re)made.
    MqttBrokerConnected {
        source: String,
        broker: String,
        session_present: bool,
    },
    /// The connection to a device-side MQTT broker failed or broke; the agent reconnects with
    /// back-off (and a persistent session keeps `QoS` 1 messages for it meanwhile).
    MqttBrokerLost {
        source: String,
        broker: String,
        error: String,
    },
    /// A device-side MQTT broker refused some of the agent's subscriptions (SUBACK failure,
    /// usually its ACL): no data comes from them. Recorded when the refused set changes, not on
    /// every reconnection.
    MqttSubscriptionRefused {
        source: String,
        broker: String,
        filters: Vec<String>,
    },
    /// An MQTT source met a point nobody listed (a topic only a catch-all subscription brings,
    /// a JSON field no map lists, a Sparkplug metric no rule labels): it took the default level
    /// (never general) and is stored locally. Once per point, never per message.
    ClassificationUnmapped {
        source: String,
        topic: String,
        /// The JSON pointer or Sparkplug metric (empty: the whole payload).
        field: String,
        tag: String,
        level: String,
        category: String,
    },
    /// What an MQTT source could not take as it came, aggregated over a period (at most one
    /// record a minute per source): counts per reason (`invalid_json`, `topic_rate`,
    /// `queue_full`, `sparkplug_seq_gap`, ...) and samples dropped per level.
    MqttInputRejected {
        source: String,
        reasons: std::collections::BTreeMap<String, u64>,
        dropped_general: u64,
        dropped_important: u64,
        dropped_core: u64,
        from: String,
        until: String,
    },
    /// A point no classification rule or explicit setting maps: it takes the default level
    /// (never general). Recorded once per point when the agent starts.
    PointUnmapped {
        tag: String,
        device: String,
        address: String,
        level: String,
        category: String,
    },
    /// One MQTT message about to leave, recorded (durably) before it is handed to the client:
    /// no message can reach a broker without its record.
    DataEgressed {
        destination: String,
        broker: String,
        topic: String,
        jurisdiction: String,
        recipient: String,
        purpose: String,
        legal_basis: String,
        assessment_reference: Option<String>,
        form: String,
        level: String,
        categories: Vec<String>,
        items: u64,
        bytes: u64,
        payload_sha256: String,
        first_key: String,
        last_key: String,
        /// Approved downgrades under which some items leave as general (`DowngradeApplied`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        downgrades: Vec<String>,
    },
    /// The broker acknowledged (PUBACK) these messages: `[egress_seq, puback_ms]` each, the
    /// `seq` of the message's `DataEgressed` record and the time from hand-off to PUBACK.
    /// Gathered for up to a second, so acknowledgements do not double the trail.
    EgressAcknowledged {
        destination: String,
        acks: Vec<[u64; 2]>,
    },
    /// Items the policy refused, aggregated per destination, level and reason over a period
    /// (at most one record per minute each), so a denial storm cannot flood the trail.
    EgressDenied {
        destination: String,
        level: String,
        reason: String,
        items: u64,
        from: String,
        until: String,
    },
    /// Important summaries left as general data under an approved downgrade: aggregated per
    /// destination and downgrade over at most a minute (each message also names its downgrades
    /// in `DataEgressed`).
    DowngradeApplied {
        downgrade: String,
        destination: String,
        approver: String,
        rationale: String,
        expires: String,
        /// The stats that left: those of the downgrade that the destination's rule also names.
        stats: Vec<String>,
        items: u64,
        /// The points and groups whose summaries it released, distinct.
        points: Vec<String>,
        from: String,
        until: String,
    },
    /// Someone read (or asked for) important or core data from the historian with
    /// `edge-agent query`: recorded durably before anything is read.
    DataQueried {
        /// The operating-system account that ran the command.
        user: String,
        /// Tag globs asked for (empty: every point).
        points: Vec<String>,
        /// The levels the selection may return.
        levels: Vec<String>,
        from: Option<String>,
        to: Option<String>,
        /// Only the scale counters (`--stats`), no sample.
        scale_only: bool,
        /// The identity the caller named (`--as`; default the account), and the roles that
        /// grant it important or core data.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        identity: Option<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        roles: Vec<String>,
    },
    /// A query wanted important or core data its identity is not granted: nothing of it was
    /// read or decrypted. After the query, with the tags and labels refused.
    DataRefused {
        user: String,
        identity: String,
        /// Tags with refused data (at most 100, then a count).
        points: Vec<String>,
        /// `level/category` labels refused.
        labels: Vec<String>,
        from: Option<String>,
        to: Option<String>,
        reason: String,
    },
    /// Stored samples were destroyed: whole chunks, deleted with their pages zeroed. Recorded
    /// durably before the deletion; nothing is deleted without it.
    DataDestroyed {
        /// The point's tag.
        object: String,
        level: String,
        category: String,
        chunks: u64,
        samples: u64,
        first: String,
        last: String,
        /// How: `chunks deleted, secure_delete pages zeroed, WAL truncated`.
        method: String,
        /// `retention` (older than the level's retention) or `disk_bound` (`max_disk_mb`).
        reason: String,
        /// Who: the agent's automatic retention, by config.
        operator: String,
    },
    /// `edge-agent init` created the historian's master key file.
    HistorianKeyCreated { key_id: String, path: String },
    /// The historian started a data key (wrapped under the master key) for new seals.
    DataKeyStarted {
        data_key: u32,
        master_key_id: String,
    },
    /// The destination's security assessment expires within `threshold_days` (90, 30, 7).
    AssessmentExpiring {
        destination: String,
        reference: String,
        expires: String,
        days_left: i64,
        threshold_days: i64,
    },
    /// The assessment's daily cap of important items is used up: no more important data goes
    /// to this destination until the end of the UTC `day`. Once per destination and day.
    EgressCapReached {
        destination: String,
        reference: String,
        cap: u64,
        day: String,
    },
    /// Something an operator must act on started (see `incidents.jsonl`).
    IncidentRaised {
        kind: String,
        severity: String,
        summary: String,
        levels: Vec<String>,
        first_seen: String,
        /// What it concerns: a destination, `historian`, a group; empty for the trail itself.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        subject: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        categories: Vec<String>,
        /// What the agent did about it.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        action: String,
    },
    /// The incident ended: how often it occurred and for how long.
    IncidentResolved {
        kind: String,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        subject: String,
        count: u64,
        first_seen: String,
        last_seen: String,
    },
    /// The trail could not be written for a while; nothing was dropped (records wait in memory)
    /// and egress waited. Recorded once it can be written again.
    AuditWriteFailed {
        error: String,
        since: String,
        until: String,
    },
    /// On open, an incomplete last line (a crash mid-write of a record not yet synced) was cut.
    AuditTailRepaired { segment: String, bytes_cut: u64 },
    /// On open, the trail ended before the last checkpoint: records were removed.
    AuditTruncationDetected {
        checkpoint_seq: u64,
        checkpoint_hash: String,
        found_seq: Option<u64>,
    },
    /// Segments past retention deleted; the chain continues from `through_hash`.
    AuditSegmentsDeleted {
        segments: Vec<String>,
        through_seq: u64,
        through_hash: String,
        retention_days: u32,
        egress_retention_days: u32,
    },
    /// `audit export` wrote these records.
    AuditExported {
        from: String,
        to: String,
        types: Vec<String>,
        format: String,
        records: u64,
        output_sha256: String,
    },
    /// `audit verify` ran.
    AuditVerified {
        from: Option<String>,
        records: u64,
        segments: u64,
        intact: bool,
        problem: Option<String>,
    },
    /// A destination's durable outbox dropped messages: aggregated per destination over a
    /// period (at most one record a minute), never one record per message.
    OutboxDropped {
        destination: String,
        drops: Vec<OutboxDrop>,
        from: String,
        until: String,
    },
    /// On open (or while reading back) a destination's outbox found damage and repaired it:
    /// torn tails cut, damaged entries skipped (those before and after them are kept), entries
    /// whose seal did not open, whole segments set aside, damaged acknowledgements ignored.
    OutboxRepaired {
        destination: String,
        dir: String,
        torn_bytes: u64,
        skipped_records: u64,
        skipped_bytes: u64,
        unopenable: u64,
        quarantined: Vec<String>,
        bad_acks: u64,
    },
    /// `catalogue --mark-filed`: this catalogue (its SHA-256, its rows of important and core
    /// data and its collection register) is the baseline filed with the regulator (MIIT 12).
    CatalogueFiled {
        sha256: String,
        rows: u64,
        points: u64,
        filed_at: String,
        baseline: String,
    },
    /// The catalogue changed enough since the filed baseline that the filing must be renewed
    /// by `due_by` (three calendar months after detection): a scale measure moved by 30 % or
    /// more, a filed field changed, or a row appeared or went. Once per filed baseline.
    CatalogueChangeDue {
        filed_sha256: String,
        filed_at: String,
        detected: String,
        due_by: String,
        changes: Vec<String>,
    },
}

impl Event {
    /// The event's type name, as in the record's `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::AuditTrailStarted { .. } => "AuditTrailStarted",
            Event::AgentStarted { .. } => "AgentStarted",
            Event::AgentStopped { .. } => "AgentStopped",
            Event::ConfigLoaded { .. } => "ConfigLoaded",
            Event::ConfigRejected { .. } => "ConfigRejected",
            Event::ClassificationRulesInForce { .. } => "ClassificationRulesInForce",
            Event::DeviceConnected { .. } => "DeviceConnected",
            Event::DeviceLost { .. } => "DeviceLost",
            Event::PointUnmapped { .. } => "PointUnmapped",
            Event::MqttBrokerConnected { .. } => "MqttBrokerConnected",
            Event::MqttBrokerLost { .. } => "MqttBrokerLost",
            Event::MqttSubscriptionRefused { .. } => "MqttSubscriptionRefused",
            Event::ClassificationUnmapped { .. } => "ClassificationUnmapped",
            Event::MqttInputRejected { .. } => "MqttInputRejected",
            Event::DataEgressed { .. } => "DataEgressed",
            Event::EgressAcknowledged { .. } => "EgressAcknowledged",
            Event::EgressDenied { .. } => "EgressDenied",
            Event::DowngradeApplied { .. } => "DowngradeApplied",
            Event::DataQueried { .. } => "DataQueried",
            Event::AssessmentExpiring { .. } => "AssessmentExpiring",
            Event::EgressCapReached { .. } => "EgressCapReached",
            Event::IncidentRaised { .. } => "IncidentRaised",
            Event::IncidentResolved { .. } => "IncidentResolved",
            Event::AuditWriteFailed { .. } => "AuditWriteFailed",
            Event::AuditTailRepaired { .. } => "AuditTailRepaired",
            Event::AuditTruncationDetected { .. } => "AuditTruncationDetected",
            Event::AuditSegmentsDeleted { .. } => "AuditSegmentsDeleted",
            Event::AuditExported { .. } => "AuditExported",
            Event::AuditVerified { .. } => "AuditVerified",
            Event::OutboxDropped { .. } => "OutboxDropped",
            Event::OutboxRepaired { .. } => "OutboxRepaired",
            Event::CatalogueFiled { .. } => "CatalogueFiled",
            Event::CatalogueChangeDue { .. } => "CatalogueChangeDue",
            Event::DataRefused { .. } => "DataRefused",
            Event::DataDestroyed { .. } => "DataDestroyed",
            Event::HistorianKeyCreated { .. } => "HistorianKeyCreated",
            Event::DataKeyStarted { .. } => "DataKeyStarted",
        }
    }
}

/// Record types that document data provided to others: kept for `egress_retention_days`.
pub(crate) const EGRESS_KINDS: [&str; 4] = [
    "DataEgressed",
    "EgressAcknowledged",
    "EgressDenied",
    "DowngradeApplied",
];
