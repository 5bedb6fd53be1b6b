//! Who asks, and the request's audit slot. Every request appends exactly one audit entry: a
//! use case that writes appends it inside its own storage transaction (atomic with the change)
//! and marks the slot written; for every other request (reads, refusals, errors) the API layer
//! appends it afterwards with the response status. Handlers only name the operation.
//!
//! Invariant: only ids, the identity, the operation name and the status reach an entry.

use crate::audit::AuditDraft;
use shared::domain::StoreId;
use std::sync::{Mutex, MutexGuard};

/// What one request contributes to its audit entry so far.
#[derive(Clone, Debug, Default)]
pub struct AuditNote {
    pub operation: String,
    pub record: Option<String>,
    pub store: Option<String>,
    /// The entry was appended inside a write transaction.
    pub written: bool,
    /// A handler named the operation (otherwise it is the "no handler" fallback).
    pub named: bool,
}

/// The verified caller of one request plus its audit slot (shared by the API layer and the
/// use cases of that request).
pub struct Actor {
    identity: String,
    note: Mutex<AuditNote>,
}

impl Actor {
    /// `fallback` names requests no handler saw (unknown route, 405, body limit, timeout).
    pub fn new(identity: String, fallback: String) -> Self {
        Self {
            identity,
            note: Mutex::new(AuditNote {
                operation: fallback,
                ..AuditNote::default()
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, AuditNote> {
        // The note is plain data: a panic elsewhere cannot leave it inconsistent.
        self.note
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Names (or renames, e.g. with the charge outcome) the operation.
    pub fn operation(&self, op: &str) {
        let mut n = self.lock();
        n.operation = op.to_owned();
        n.named = true;
    }

    pub fn store(&self, store: &StoreId) {
        self.lock().store = Some(store.to_string());
    }

    pub fn record(&self, id: &str) {
        self.lock().record = Some(id.to_owned());
    }

    pub(crate) fn written(&self) {
        self.lock().written = true;
    }

    /// The entry as a write transaction appends it (the backend sets record and outcome).
    pub(crate) fn draft(&self) -> AuditDraft {
        let n = self.lock();
        AuditDraft {
            identity: self.identity.clone(),
            operation: n.operation.clone(),
            record: None,
            store: n.store.clone(),
            outcome: 0,
        }
    }

    pub fn note(&self) -> AuditNote {
        self.lock().clone()
    }
}
