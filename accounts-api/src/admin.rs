//! The local admin channel: `store create` must work while the server holds sled's folder lock,
//! so the running server listens on an owner-only Unix socket (`DATA/accounts/admin.sock`, 0600,
//! inside a 0700 folder) and the CLI asks it. With no server running, the CLI opens sled itself.
//! One JSON line in, one JSON line out. Operations: `store.create`, `webhook.add`,
//! `webhook.list`, `webhook.remove` (the webhook secret travels only over this owner-only
//! socket and is never echoed back). `webhook.add` holds to the same rules as the API (egress
//! policy, webhooks per store): the running server's settings over the socket, else the
//! settings the CLI was given (the configuration file's `[webhooks]`, or the environment).

use crate::auth::create_store;
use crate::settings::Settings;
use crate::storage::{SledStorage, Storage};
use serde_json::{Value, json};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

pub fn socket_path(accounts_dir: &Path) -> PathBuf {
    accounts_dir.join("admin.sock")
}

/// Creates `dir` (and parents) and restricts it to the owner.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Binds the admin socket; [`serve`] answers it.
pub fn bind(accounts_dir: &Path) -> std::io::Result<UnixListener> {
    let path = socket_path(accounts_dir);
    // A stale socket from a killed process: we hold sled's lock, so nobody else is serving it.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Answers the admin socket until `shutdown`; requests being answered then are awaited.
pub async fn serve(
    listener: UnixListener,
    storage: Arc<dyn Storage>,
    settings: Settings,
    mut shutdown: crate::jobs::Shutdown,
) {
    let settings = Arc::new(settings);
    let mut answering = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = shutdown.wait() => break,
        };
        // Reap finished answers so the set stays small on a long-running server.
        while answering.try_join_next().is_some() {}
        let Ok((stream, _)) = accepted else {
            continue;
        };
        let storage = Arc::clone(&storage);
        let settings = Arc::clone(&settings);
        answering.spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut line = String::new();
            if BufReader::new(r).read_line(&mut line).await.is_err() {
                return;
            }
            let answer = handle(storage.as_ref(), &settings, &line).await;
            let _ = w.write_all(format!("{answer}\n").as_bytes()).await;
        });
    }
    while answering.join_next().await.is_some() {}
}

async fn handle(storage: &dyn Storage, settings: &Settings, line: &str) -> Value {
    let req: Value = serde_json::from_str(line).unwrap_or(Value::Null);
    if let Some(op) = req
        .get("op")
        .and_then(Value::as_str)
        .filter(|op| op.starts_with("webhook."))
    {
        return webhook_op(storage, settings, op, &req).await;
    }
    match (
        req.get("op").and_then(Value::as_str),
        req.get("name").and_then(Value::as_str),
    ) {
        (Some("store.create"), Some(name)) => match create_store(storage, name).await {
            Ok(created) => match storage.durable().await {
                Ok(()) => {
                    tracing::info!(store = %created.store, "store created over the admin socket");
                    created.to_json()
                }
                Err(e) => json!({"error": e.to_string()}),
            },
            Err(e) => json!({"error": e.to_string()}),
        },
        _ => json!({"error": "unknown request"}),
    }
}

/// `webhook add|list|remove` for one store.
async fn webhook_op(storage: &dyn Storage, settings: &Settings, op: &str, req: &Value) -> Value {
    let s = |k: &str| req.get(k).and_then(Value::as_str);
    let Some(store) = s("store") else {
        return json!({"error": "store is required"});
    };
    // An id that does not parse names no store.
    let Ok(store) = crate::model::StoreId::parse(store) else {
        return json!({"error": "no such store"});
    };
    let store = &store;
    match storage.store(store).await {
        Ok(Some(_)) => {}
        Ok(None) => return json!({"error": "no such store"}),
        Err(e) => return json!({"error": e.to_string()}),
    }
    let answer = match op {
        "webhook.add" => match crate::service::webhooks::add(
            storage,
            store,
            s("url").unwrap_or_default(),
            s("hmacSecret").map(str::to_owned),
            &crate::service::webhooks::Rules::of(settings),
            &|_| None,
        )
        .await
        {
            Ok(h) => webhook_json(&h),
            Err(e) => return json!({"error": e.to_string()}),
        },
        "webhook.list" => match storage.webhooks(store).await {
            Ok(hooks) => {
                json!({"webhooks": hooks.iter().map(webhook_json).collect::<Vec<_>>()})
            }
            Err(e) => return json!({"error": e.to_string()}),
        },
        "webhook.remove" => {
            // An id that does not parse names no webhook.
            let Ok(id) = crate::model::WebhookId::parse(s("id").unwrap_or_default()) else {
                return json!({"error": "no such webhook"});
            };
            match crate::service::webhooks::remove(storage, store, &id, None).await {
                Ok(true) => json!({"removed": s("id")}),
                Ok(false) => return json!({"error": "no such webhook"}),
                Err(e) => return json!({"error": e.to_string()}),
            }
        }
        _ => return json!({"error": "unknown request"}),
    };
    match storage.durable().await {
        Ok(()) => answer,
        Err(e) => json!({"error": e.to_string()}),
    }
}

/// Sends one request to the running server's admin socket, or (none running) answers it with
/// the database opened here, under `settings`.
pub async fn request(data: &Path, req: Value, settings: &Settings) -> Result<Value, String> {
    let dir = crate::config::accounts_dir(data);
    let v = match UnixStream::connect(socket_path(&dir)).await {
        Ok(stream) => {
            let (r, mut w) = stream.into_split();
            w.write_all(format!("{req}\n").as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            let mut line = String::new();
            BufReader::new(r)
                .read_line(&mut line)
                .await
                .map_err(|e| e.to_string())?;
            serde_json::from_str::<Value>(&line)
                .map_err(|_| "bad answer from the server".to_owned())?
        }
        Err(_) => {
            private_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            let storage = SledStorage::open(&dir.join("db")).map_err(|e| {
                format!(
                    "cannot open the database (is a server running without its admin socket?): {e}"
                )
            })?;
            handle(&storage, settings, &req.to_string()).await
        }
    };
    match v.get("error") {
        Some(e) => Err(e.as_str().unwrap_or("error").to_owned()),
        None => Ok(v),
    }
}

/// `store create`: asks the running server, or opens the database directly if none runs.
pub async fn create_store_cli(data: &Path, name: &str) -> Result<Value, String> {
    let dir = crate::config::accounts_dir(data);
    match UnixStream::connect(socket_path(&dir)).await {
        Ok(stream) => {
            let (r, mut w) = stream.into_split();
            let req = json!({"op": "store.create", "name": name});
            w.write_all(format!("{req}\n").as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            let mut line = String::new();
            BufReader::new(r)
                .read_line(&mut line)
                .await
                .map_err(|e| e.to_string())?;
            let v: Value =
                serde_json::from_str(&line).map_err(|_| "bad answer from the server".to_owned())?;
            match v.get("error") {
                Some(e) => Err(e.as_str().unwrap_or("error").to_owned()),
                None => Ok(v),
            }
        }
        Err(_) => {
            private_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            let storage = SledStorage::open(&dir.join("db")).map_err(|e| {
                format!(
                    "cannot open the database (is a server running without its admin socket?): {e}"
                )
            })?;
            let created = create_store(&storage, name)
                .await
                .map_err(|e| e.to_string())?;
            storage.durable().await.map_err(|e| e.to_string())?;
            Ok(created.to_json())
        }
    }
}

/// `store create` with PostgreSQL: the database is shared by every instance, so the store is
/// written there directly (no admin socket needed, running instances or not).
pub async fn create_store_in_database(
    db: &shared::pg::PgSettings,
    name: &str,
) -> Result<Value, String> {
    let storage = crate::storage::PgStorage::open(db).await?;
    let created = create_store(&storage, name)
        .await
        .map_err(|e| e.to_string())?;
    Ok(created.to_json())
}

/// An admin request (`webhook …`) answered on the PostgreSQL database directly.
pub async fn request_in_database(
    db: &shared::pg::PgSettings,
    req: Value,
    settings: &Settings,
) -> Result<Value, String> {
    let storage = crate::storage::PgStorage::open(db).await?;
    let v = handle(&storage, settings, &req.to_string()).await;
    match v.get("error") {
        Some(e) => Err(e.as_str().unwrap_or("error").to_owned()),
        None => Ok(v),
    }
}

/// A webhook as the API's `/webhooks` shows it (never its secret).
fn webhook_json(h: &crate::model::WebhookRecord) -> serde_json::Value {
    serde_json::to_value(crate::http::views::WebhookView::of(h)).unwrap_or_default()
}
