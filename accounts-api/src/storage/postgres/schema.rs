//! The PostgreSQL schema of accounts-api, as embedded migrations (`shared::pg::migrate` applies
//! the missing ones at start, once, under an advisory lock). Append new migrations; never edit
//! one that has shipped.
//!
//! Each kind of record is one row whose `doc` is the record's JSON (the same serde shape sled
//! stores), plus the columns a rule or a query needs: the uniqueness rules are unique
//! constraints (one account per store + normalised email, one custom id and one global id per
//! store, one order reference per store, one username), and the job queries have indexes
//! (`subscriptions.work_at`, `outbox.due`). Ids are compared byte-wise (`COLLATE "C"`), so
//! listings come in the same order as sled's keys.

pub const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE stores (
    id text COLLATE "C" PRIMARY KEY,
    username text COLLATE "C" NOT NULL CONSTRAINT stores_username UNIQUE,
    doc jsonb NOT NULL
);
CREATE TABLE accounts (
    store text COLLATE "C" NOT NULL,
    id text COLLATE "C" NOT NULL,
    email_key text COLLATE "C" NOT NULL,
    custom text COLLATE "C",
    global text COLLATE "C" NOT NULL,
    doc jsonb NOT NULL,
    PRIMARY KEY (store, id),
    CONSTRAINT accounts_email UNIQUE (store, email_key),
    CONSTRAINT accounts_custom UNIQUE (store, custom),
    CONSTRAINT accounts_global UNIQUE (store, global)
);
CREATE TABLE orders (
    store text COLLATE "C" NOT NULL,
    id text COLLATE "C" NOT NULL,
    reference text COLLATE "C" NOT NULL,
    doc jsonb NOT NULL,
    PRIMARY KEY (store, id),
    CONSTRAINT orders_reference UNIQUE (store, reference)
);
CREATE TABLE subscriptions (
    store text COLLATE "C" NOT NULL,
    id text COLLATE "C" NOT NULL,
    account text COLLATE "C" NOT NULL,
    -- SubscriptionRecord::work_at(), written with the row: when the renewal job has work on it.
    work_at bigint,
    doc jsonb NOT NULL,
    PRIMARY KEY (store, id)
);
CREATE INDEX subscriptions_work_at ON subscriptions (work_at) WHERE work_at IS NOT NULL;
CREATE TABLE idempotency_keys (
    store text COLLATE "C" NOT NULL,
    key text COLLATE "C" NOT NULL,
    doc jsonb NOT NULL,
    PRIMARY KEY (store, key)
);
CREATE TABLE events (
    store text COLLATE "C" NOT NULL,
    id text COLLATE "C" NOT NULL,
    created bigint NOT NULL,
    processed boolean NOT NULL,
    doc jsonb NOT NULL,
    PRIMARY KEY (store, id)
);
CREATE INDEX events_by_flag ON events (store, processed, id);
CREATE TABLE webhooks (
    store text COLLATE "C" PRIMARY KEY,
    doc jsonb NOT NULL
);
CREATE TABLE outbox (
    store text COLLATE "C" NOT NULL,
    hook text COLLATE "C" NOT NULL,
    event text COLLATE "C" NOT NULL,
    attempts integer NOT NULL,
    due bigint NOT NULL,
    PRIMARY KEY (store, hook, event)
);
CREATE INDEX outbox_due ON outbox (due);
CREATE TABLE sign_in_links (
    hash text COLLATE "C" PRIMARY KEY,
    expires bigint NOT NULL,
    doc jsonb NOT NULL
);
CREATE TABLE sessions (
    hash text COLLATE "C" PRIMARY KEY,
    expires bigint NOT NULL,
    doc jsonb NOT NULL
);
CREATE TABLE meta (
    key text COLLATE "C" PRIMARY KEY,
    value bytea NOT NULL
);
"#,
    r#"
-- Who delivers a webhook's due events right now: at most one instance per webhook, so posts to
-- one receiver never overlap and keep event order across the cluster.
CREATE TABLE webhook_leases (
    store text COLLATE "C" NOT NULL,
    hook text COLLATE "C" NOT NULL,
    holder text NOT NULL,
    until bigint NOT NULL,
    PRIMARY KEY (store, hook)
);
"#,
    // 3
    r#"
-- The webhook has the event (it answered a post carrying it with a 202 that did not list it):
-- the row is re-sent only while the event is unprocessed (`OutboxState::received`).
ALTER TABLE outbox ADD COLUMN received boolean NOT NULL DEFAULT false;
"#,
    // 4: a canceled subscription has work at its period end now (it is deactivated then);
    // rows written before had none. The record's own `next` is that time.
    r#"
UPDATE subscriptions SET work_at = (doc->>'next')::bigint
 WHERE work_at IS NULL AND doc->>'state' = 'canceled';
"#,
    // 5
    r#"
-- GET /orders lists a store's orders by completion time, then id (stable pages); the time is
-- the record's own field, so rows written by any version are in the index.
CREATE INDEX orders_by_completed ON orders (store, ((doc->>'completed')::bigint), id);
"#,
    // 6
    r#"
-- Retention (issue 12). An Idempotency-Key record expires a window after its first claim:
-- `created`, written with the claim and kept through the answer. Rows from before get the time
-- of this migration (a constant default: no table rewrite), so they expire one window after
-- the upgrade; the default is then dropped, so every later row states its own time.
ALTER TABLE idempotency_keys ADD COLUMN created bigint NOT NULL
    DEFAULT (extract(epoch FROM now()) * 1000)::bigint;
ALTER TABLE idempotency_keys ALTER COLUMN created DROP DEFAULT;
CREATE INDEX idempotency_keys_created ON idempotency_keys (created);
-- A processed event expires a window after it was processed (the record's own time, so rows
-- written by any version are in the index; one processed before that time was kept counts
-- from its creation). Unprocessed events are not in the index: never swept.
CREATE INDEX events_processed_since
    ON events ((COALESCE((doc->>'processed_at')::bigint, created))) WHERE processed;
"#,
    // 7: a reminded manual subscription has work at its date now (unpaid, it becomes overdue,
    // and ends after its grace); rows written before had none. Only such rows of a running
    // subscription have no time. The grace is `domain::subscription::MANUAL_GRACE_MS` (5 days).
    r#"
UPDATE subscriptions SET work_at = (doc->>'next')::bigint
    + CASE WHEN doc->>'state' = 'overdue' THEN 432000000 ELSE 0 END
 WHERE work_at IS NULL AND doc->>'state' IN ('active', 'overdue');
"#,
];
