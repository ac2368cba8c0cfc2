"""The schema's migrations, one per version: append only, since shipped databases depend on the order;
and the tables each version adds, by which a damaged file is told from an old one."""

from __future__ import annotations

# Each entry migrates from version i to i + 1. Append only: shipped databases depend on the order.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE messages (
        id          INTEGER PRIMARY KEY,
        channel_id  INTEGER NOT NULL,
        discord_id  INTEGER,
        author_id   INTEGER,
        author_name TEXT NOT NULL,
        role        TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
        content     TEXT NOT NULL,
        emotion     TEXT,
        persona     TEXT NOT NULL,
        created_at  REAL NOT NULL,
        edited_at   REAL
    );
    CREATE INDEX messages_by_channel ON messages (channel_id, persona, id);
    CREATE UNIQUE INDEX messages_by_discord_id ON messages (discord_id) WHERE discord_id IS NOT NULL;
    CREATE TABLE channels (
        channel_id   INTEGER PRIMARY KEY,
        persona      TEXT,
        enabled      INTEGER,
        mode         TEXT CHECK (mode IN ('all', 'mention')),
        last_emotion TEXT,
        updated_at   REAL NOT NULL
    );
    CREATE TABLE renders (
        key          TEXT PRIMARY KEY,
        persona      TEXT NOT NULL,
        label        TEXT NOT NULL,
        variant      INTEGER NOT NULL,
        path         TEXT NOT NULL,
        source_hash  TEXT NOT NULL,
        created_at   REAL NOT NULL
    );
    CREATE INDEX renders_by_persona ON renders (persona, label, variant);
    """,
    # A cast: the personas that share a channel besides its lead (channels.persona), each with its own
    # face. Replies remember the message they answer, and keep their earlier versions for browsing.
    """
    CREATE TABLE cast_members (
        channel_id   INTEGER NOT NULL,
        persona      TEXT NOT NULL,
        position     INTEGER NOT NULL,
        last_emotion TEXT,
        PRIMARY KEY (channel_id, persona)
    );
    ALTER TABLE messages ADD COLUMN prompt_id INTEGER;
    ALTER TABLE messages ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE reply_versions (
        message_id  INTEGER NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
        version     INTEGER NOT NULL,
        content     TEXT NOT NULL,
        emotion     TEXT,
        created_at  REAL NOT NULL,
        PRIMARY KEY (message_id, version)
    );
    """,
    # Memory: a full-text index over every stored line (kept by triggers, so an edit, a delete, a purge,
    # /reset and /forget-me change it in the same transaction as the history), each (channel, persona)'s
    # summary of what left its prompt window, and the facts admins pinned. A summary that read a line
    # later edited or erased is dropped by the same triggers: it may hold the erased words.
    """
    CREATE VIRTUAL TABLE messages_fts USING fts5(
        content, content = 'messages', content_rowid = 'id', tokenize = 'porter unicode61 remove_diacritics 2'
    );
    INSERT INTO messages_fts (messages_fts) VALUES ('rebuild');
    CREATE TABLE memory_summaries (
        channel_id  INTEGER NOT NULL,
        persona     TEXT NOT NULL,
        text        TEXT NOT NULL,
        through_id  INTEGER NOT NULL,
        edited      INTEGER NOT NULL DEFAULT 0,
        updated_at  REAL NOT NULL,
        PRIMARY KEY (channel_id, persona)
    );
    CREATE TABLE memory_pins (
        id          INTEGER PRIMARY KEY,
        channel_id  INTEGER NOT NULL,
        text        TEXT NOT NULL,
        created_at  REAL NOT NULL
    );
    CREATE INDEX memory_pins_by_channel ON memory_pins (channel_id, id);
    CREATE INDEX messages_by_author ON messages (author_id, channel_id) WHERE author_id IS NOT NULL;
    CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
        INSERT INTO messages_fts (rowid, content) VALUES (new.id, new.content);
    END;
    CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
        INSERT INTO messages_fts (messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
        DELETE FROM memory_summaries WHERE channel_id = old.channel_id AND through_id >= old.id;
    END;
    CREATE TRIGGER messages_fts_update AFTER UPDATE OF content ON messages BEGIN
        INSERT INTO messages_fts (messages_fts, rowid, content) VALUES ('delete', old.id, old.content);
        INSERT INTO messages_fts (rowid, content) VALUES (new.id, new.content);
        DELETE FROM memory_summaries WHERE channel_id = old.channel_id AND through_id >= old.id
            AND old.content IS NOT new.content;
    END;
    """,
    # The outbox: a Discord reply is written here before it is posted, and moved into the history (with
    # the posted message's id) in one transaction after. A row left at a start was posted or not when the
    # bot stopped: the front-end looks for it in the channel and files it, or drops it.
    """
    CREATE TABLE outbox (
        id          INTEGER PRIMARY KEY,
        channel_id  INTEGER NOT NULL,
        persona     TEXT NOT NULL,
        author_name TEXT NOT NULL,
        content     TEXT NOT NULL,
        emotion     TEXT,
        prompt_id   INTEGER,
        answers     INTEGER,
        created_at  REAL NOT NULL
    );
    """,
    # Recall by meaning: each line's sentence embedding (float16, unit length), written in the background
    # from the queue of lines not embedded yet. Triggers keep both in step with the history: an insert
    # queues the line, an edit drops its vector and queues it again, a delete takes both in the same
    # transaction (nothing erased can be found by meaning either). Existing lines are queued here and
    # embedded after the upgrade.
    """
    CREATE TABLE message_vectors (
        id          INTEGER PRIMARY KEY,
        channel_id  INTEGER NOT NULL,
        vector      BLOB NOT NULL
    );
    CREATE INDEX message_vectors_by_channel ON message_vectors (channel_id, id);
    CREATE TABLE embed_queue (id INTEGER PRIMARY KEY);
    INSERT INTO embed_queue (id) SELECT id FROM messages;
    CREATE TRIGGER messages_embed_insert AFTER INSERT ON messages BEGIN
        INSERT OR IGNORE INTO embed_queue (id) VALUES (new.id);
    END;
    CREATE TRIGGER messages_embed_delete AFTER DELETE ON messages BEGIN
        DELETE FROM message_vectors WHERE id = old.id;
        DELETE FROM embed_queue WHERE id = old.id;
    END;
    CREATE TRIGGER messages_embed_update AFTER UPDATE OF content ON messages
        WHEN old.content IS NOT new.content BEGIN
        DELETE FROM message_vectors WHERE id = old.id;
        INSERT OR IGNORE INTO embed_queue (id) VALUES (new.id);
    END;
    """,
    # Memory of each member: what the persona learned about a member from what they said about themselves,
    # per server (a fact told in one channel is known in the server's others, never in another server's),
    # written by the model in the background or corrected by the member. Which server a channel is in is
    # noted at each turn, so that erasing a line can drop the notes that read it: like a summary, notes
    # built from a line later edited or erased are dropped by the triggers (a member's own correction is
    # their own words, and stays until /forget-me). Admins can turn member memory off per server.
    """
    CREATE TABLE channel_servers (
        channel_id  INTEGER PRIMARY KEY,
        server_id   INTEGER NOT NULL
    );
    CREATE TABLE member_notes (
        server_id   INTEGER NOT NULL,
        member_id   INTEGER NOT NULL,
        text        TEXT NOT NULL,
        through_id  INTEGER NOT NULL,
        edited      INTEGER NOT NULL DEFAULT 0,
        updated_at  REAL NOT NULL,
        PRIMARY KEY (server_id, member_id)
    );
    CREATE TABLE server_settings (
        server_id      INTEGER PRIMARY KEY,
        member_memory  INTEGER NOT NULL
    );
    CREATE TRIGGER messages_notes_delete AFTER DELETE ON messages WHEN old.author_id IS NOT NULL BEGIN
        DELETE FROM member_notes WHERE member_id = old.author_id AND through_id >= old.id AND edited = 0
            AND server_id = (SELECT server_id FROM channel_servers WHERE channel_id = old.channel_id);
    END;
    CREATE TRIGGER messages_notes_update AFTER UPDATE OF content ON messages
        WHEN old.author_id IS NOT NULL AND old.content IS NOT new.content BEGIN
        DELETE FROM member_notes WHERE member_id = old.author_id AND through_id >= old.id AND edited = 0
            AND server_id = (SELECT server_id FROM channel_servers WHERE channel_id = old.channel_id);
    END;
    """,
    # A persona present in Discord: each member's direct-message channels (so /forget-me reaches them),
    # whether a server's admins let its members DM the bot, and channels whose admins let the persona
    # speak up on its own (NULL settings: the config's defaults).
    """
    CREATE TABLE direct_channels (
        channel_id  INTEGER PRIMARY KEY,
        member_id   INTEGER NOT NULL
    );
    CREATE INDEX direct_channels_by_member ON direct_channels (member_id);
    CREATE TABLE server_direct_messages (
        server_id   INTEGER PRIMARY KEY,
        allowed     INTEGER NOT NULL
    );
    CREATE TABLE channel_autonomy (
        channel_id    INTEGER PRIMARY KEY,
        enabled       INTEGER NOT NULL,
        max_per_hour  INTEGER,
        quiet_seconds REAL,
        chance        REAL
    );
    """,
    # The full-text index keyed by channel: each line's index key is its channel's small number shifted
    # above the message id (fts_key), so a channel's lines are one range of keys and a lookup reads only
    # that range of each word's postings, whatever the other channels hold. Contentless: the history
    # keeps the text, and the triggers hand the index the old text to remove.
    """
    DROP TRIGGER messages_fts_insert;
    DROP TRIGGER messages_fts_delete;
    DROP TRIGGER messages_fts_update;
    DROP TABLE messages_fts;
    CREATE TABLE fts_channels (
        number      INTEGER PRIMARY KEY,
        channel_id  INTEGER NOT NULL UNIQUE,
        lines       INTEGER NOT NULL DEFAULT 0  -- the channel's stored lines: what a word's weight is out of
    );
    INSERT INTO fts_channels (channel_id, lines)
        SELECT channel_id, COUNT(*) FROM messages GROUP BY channel_id ORDER BY channel_id;
    CREATE VIRTUAL TABLE messages_fts USING fts5(
        content, content = '', tokenize = 'porter unicode61 remove_diacritics 2'
    );
    INSERT INTO messages_fts (rowid, content)
        SELECT (f.number << 40) + m.id, m.content FROM messages m JOIN fts_channels f USING (channel_id);
    CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
        INSERT OR IGNORE INTO fts_channels (channel_id) VALUES (new.channel_id);
        UPDATE fts_channels SET lines = lines + 1 WHERE channel_id = new.channel_id;
        INSERT INTO messages_fts (rowid, content) VALUES (
            ((SELECT number FROM fts_channels WHERE channel_id = new.channel_id) << 40) + new.id, new.content
        );
    END;
    CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
        INSERT INTO messages_fts (messages_fts, rowid, content) VALUES (
            'delete',
            ((SELECT number FROM fts_channels WHERE channel_id = old.channel_id) << 40) + old.id,
            old.content
        );
        UPDATE fts_channels SET lines = lines - 1 WHERE channel_id = old.channel_id;
        DELETE FROM memory_summaries WHERE channel_id = old.channel_id AND through_id >= old.id;
    END;
    CREATE TRIGGER messages_fts_update AFTER UPDATE OF content ON messages BEGIN
        INSERT INTO messages_fts (messages_fts, rowid, content) VALUES (
            'delete',
            ((SELECT number FROM fts_channels WHERE channel_id = old.channel_id) << 40) + old.id,
            old.content
        );
        INSERT INTO messages_fts (rowid, content) VALUES (
            ((SELECT number FROM fts_channels WHERE channel_id = new.channel_id) << 40) + new.id, new.content
        );
        DELETE FROM memory_summaries WHERE channel_id = old.channel_id AND through_id >= old.id
            AND old.content IS NOT new.content;
    END;
    """,
    # Where each (channel, persona)'s prompt window starts, kept across restarts: the first turn after one
    # starts from it instead of searching the history for a start that fits.
    """
    CREATE TABLE prompt_windows (
        channel_id  INTEGER NOT NULL,
        persona     TEXT NOT NULL,
        first_id    INTEGER NOT NULL,
        PRIMARY KEY (channel_id, persona)
    );
    """,
)
# Bits of an index key below the channel's number: message ids stay under 2**40.
FTS_KEY_BITS = 40

SCHEMA_VERSION = len(MIGRATIONS)


# The tables each schema version has; a file claiming a version without them is damaged.
TABLES_AT = {
    1: {"messages", "channels", "renders"},
    2: {"cast_members", "reply_versions"},
    3: {"messages_fts", "memory_summaries", "memory_pins"},
    4: {"outbox"},
    5: {"message_vectors", "embed_queue"},
    6: {"channel_servers", "member_notes", "server_settings"},
    7: {"direct_channels", "server_direct_messages", "channel_autonomy"},
    8: {"fts_channels"},
    9: {"prompt_windows"},
}
