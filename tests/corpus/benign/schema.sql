-- Accounts and their API keys. Passwords are stored as argon2id hashes only.
CREATE TABLE users (
    id            BIGSERIAL PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'admin', 'system')),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id         BIGSERIAL PRIMARY KEY,
    user_id    BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    prefix     TEXT NOT NULL,
    key_hash   TEXT NOT NULL,
    revoked_at TIMESTAMPTZ
);

-- Ignore revoked keys when looking up by prefix.
CREATE INDEX api_keys_live_prefix ON api_keys (prefix) WHERE revoked_at IS NULL;
