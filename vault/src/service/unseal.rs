//! Unseal: the vault started from a sealed key file waits for K of N Shamir shares (submitted
//! one at a time by custodians) before it holds a keyring. Shares live only in zeroizing
//! buffers, are never logged or echoed, and are wiped after every combine attempt.

use super::rotation::{check_keyring, finish_master_retirement};
use super::{KeyPersistence, Vault};
use zeroize::Zeroizing;

/// Shares received so far while sealed (zeroizing; cleared after unseal or on a failed combine).
#[derive(Default)]
pub(super) struct UnsealBuffer {
    shares: Vec<Zeroizing<Vec<u8>>>,
    rejected: u64,
}

/// Result of one unseal submission.
#[derive(Debug, Clone)]
pub struct UnsealStatus {
    pub sealed: bool,
    pub received: usize,
    pub threshold: u8,
    /// Wrong or duplicate shares refused since start.
    pub rejected: u64,
}

/// Why an unseal submission was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnsealRefusal {
    NotSealed,
    WrongShare,
    DuplicateShare,
    /// K shares combined but did not rebuild the root key (only if the file was tampered with).
    CombineFailed,
}

impl Vault {
    /// Takes one unseal share. Wrong and duplicate shares are refused and counted; once
    /// `threshold` distinct valid shares are buffered they are combined, the buffer is cleared
    /// (zeroized) whatever the outcome, and on success the keyring is installed.
    pub fn submit_share(&self, text: &str) -> Result<UnsealStatus, (UnsealRefusal, UnsealStatus)> {
        let refuse_poisoned = || {
            (
                UnsealRefusal::CombineFailed,
                UnsealStatus {
                    sealed: true,
                    received: 0,
                    threshold: 0,
                    rejected: 0,
                },
            )
        };
        let mut persistence = self.persistence.lock().map_err(|_| refuse_poisoned())?;
        let mut buf = self.unseal.lock().map_err(|_| refuse_poisoned())?;
        let KeyPersistence::Sealed { path, file, root } = &mut *persistence else {
            return Err((
                UnsealRefusal::NotSealed,
                UnsealStatus {
                    sealed: false,
                    received: 0,
                    threshold: 0,
                    rejected: buf.rejected,
                },
            ));
        };
        let threshold = file.threshold;
        let status = |sealed: bool, buf: &UnsealBuffer| UnsealStatus {
            sealed,
            received: buf.shares.len(),
            threshold,
            rejected: buf.rejected,
        };
        if !self.is_sealed() {
            return Err((UnsealRefusal::NotSealed, status(false, &buf)));
        }
        let Some(share) = file.check_share(text) else {
            buf.rejected += 1;
            return Err((UnsealRefusal::WrongShare, status(true, &buf)));
        };
        if buf.shares.iter().any(|s| s.first() == share.first()) {
            buf.rejected += 1;
            return Err((UnsealRefusal::DuplicateShare, status(true, &buf)));
        }
        buf.shares.push(share);
        if buf.shares.len() < file.threshold as usize {
            return Ok(status(true, &buf));
        }
        let combined = file.unseal(&buf.shares);
        // Zeroizing buffers: dropping them wipes the share bytes.
        buf.shares.clear();
        let checked = combined.map_err(|e| e.to_string()).and_then(|(r, ring)| {
            let finish = check_keyring(&ring, &*self.store, Some(path.as_path()), &self.data_dir)
                .map_err(|e| e.to_string())?;
            // The root key is needed to re-seal the key file if a retirement must be finished.
            *root = Some(r);
            Ok((ring, finish))
        });
        let installed = checked.and_then(|(mut ring, finish)| {
            let folder = self.folder_id.as_deref();
            if let Err(e) = finish_master_retirement(&mut persistence, &mut ring, &finish, folder) {
                if let KeyPersistence::Sealed { root, .. } = &mut *persistence {
                    *root = None;
                }
                return Err(e.to_string());
            }
            let mut guard = self.keyring.write().map_err(|_| "lock".to_owned())?;
            *guard = Some(ring);
            Ok(())
        });
        match installed {
            Ok(()) => {
                tracing::info!("vault unsealed");
                Ok(status(false, &buf))
            }
            Err(e) => {
                tracing::error!(error = %e, "unseal failed after threshold shares");
                buf.rejected += 1;
                Err((UnsealRefusal::CombineFailed, status(true, &buf)))
            }
        }
    }
}
