//! Audit export as JSON lines (`seq`, `time`, …, `prevHash`, `hash` per line): one reader (the
//! backend's `AuditLog::export`) serves both `vault audit export` on a stopped vault and
//! `GET /v1/audit/export` on a running one, so the two produce the same bytes for the same range. An external system recomputes each hash
//! and follows `prevHash` to re-verify (`AuditEntry::hash_is_valid` shows the recipe).
//!
//! Entries are appended in sequence and time order and never change, so a range read while
//! writes go on is the same as the range read later: a running export stops at the head it saw
//! when it started (`upto`), and the next export continues from `upto + 1`.

/// Where an export starts: a sequence number (1-based) or the first entry at or after a time.
pub enum Since {
    Seq(u64),
    Time(time::OffsetDateTime),
}

impl Since {
    pub fn parse(text: &str) -> Result<Self, &'static str> {
        match text.parse::<u64>() {
            Ok(n) => Ok(Self::Seq(n.max(1))),
            Err(_) => {
                time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                    .map(Self::Time)
                    .map_err(|_| "--since must be a sequence number or an RFC 3339 time")
            }
        }
    }
}
