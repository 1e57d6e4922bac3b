-- gridmap's tables and functions in PostgreSQL + PostGIS (run once, in one transaction, on
-- an empty database; every statement is idempotent so a newer release can run it again).
-- Layer tables are made from postgis_layer.sql, one per layer of the registry.

CREATE EXTENSION IF NOT EXISTS postgis;

CREATE TABLE IF NOT EXISTS gridmap_meta (key text PRIMARY KEY, value text NOT NULL);

-- Change stamps: every write to a table, by gridmap or any other client (QGIS, psql),
-- moves the table's stamp, so every process's caches know when to rebuild.
CREATE TABLE IF NOT EXISTS gridmap_changes (layer text PRIMARY KEY, stamp bigint NOT NULL);

CREATE OR REPLACE FUNCTION gridmap_touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  UPDATE gridmap_changes SET stamp = stamp + 1 WHERE layer = TG_TABLE_NAME;
  PERFORM pg_notify('gridmap_changes', TG_TABLE_NAME);  -- delivered at commit
  RETURN NULL;
END $$;

-- A row changed without its version moving forward (an edit by another client, or one that
-- set an older version) gets the next one: an ETag is never given to other content.
CREATE OR REPLACE FUNCTION gridmap_next_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.version IS NULL OR NEW.version <= OLD.version THEN
    NEW.version := OLD.version + 1;
  END IF;
  RETURN NEW;
END $$;

-- An id given explicitly (by QGIS, psql, a copy) moves the table's id sequence past it at
-- once, so an id is never handed out twice, even when its row was deleted meanwhile (an
-- old ETag would otherwise fit a new feature). Never moves the sequence backward. An id
-- outside 1 .. 2^62-1 (the ids the API addresses) moves nothing: the table's CHECK refuses
-- its row after this trigger ran, and setval, which no rollback undoes, would have left the
-- sequence at the end of its range, so that no new row could be made.
CREATE OR REPLACE FUNCTION gridmap_keep_ids_ahead(seq regclass, id bigint) RETURNS void
  LANGUAGE plpgsql AS $$
DECLARE
  top bigint;
  called boolean;
BEGIN
  IF id IS NULL OR id < 1 OR id >= 4611686018427387904 THEN
    RETURN;
  END IF;
  EXECUTE format('SELECT last_value, is_called FROM %s', seq) INTO top, called;
  -- id >= the next value (last_value, or one more once called), without adding to a
  -- last_value that may stand at the end of bigint
  IF id > top OR (id = top AND NOT called) THEN
    PERFORM pg_advisory_xact_lock(1735551332, hashtext(seq::text));  -- one mover at a time
    EXECUTE format('SELECT last_value, is_called FROM %s', seq) INTO top, called;
    IF id > top OR (id = top AND NOT called) THEN
      PERFORM setval(seq, id);
    END IF;
  END IF;
END $$;

-- The row trigger that calls it (on INSERT, and on an UPDATE that sets a layer's fid: the
-- audit log's and documents' ids are GENERATED ALWAYS, which no UPDATE may set); TG_ARGV[0]
-- names the id column ('fid' or 'id').
CREATE OR REPLACE FUNCTION gridmap_ids_ahead() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  id bigint;
BEGIN
  IF TG_ARGV[0] = 'fid' THEN  -- each branch is prepared only when it runs
    id := NEW.fid;
  ELSE
    id := NEW.id;
  END IF;
  PERFORM gridmap_keep_ids_ahead(pg_get_serial_sequence(
    quote_ident(TG_TABLE_SCHEMA) || '.' || quote_ident(TG_TABLE_NAME), TG_ARGV[0])::regclass, id);
  RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION gridmap_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION USING ERRCODE = 'integrity_constraint_violation', MESSAGE = TG_ARGV[0];
END $$;

-- CQL2 CASEI: lower case over all of Unicode (ICU's root locale, not the database's).
CREATE OR REPLACE FUNCTION gm_casei(text) RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE
  AS $$ SELECT lower($1 COLLATE "und-x-icu") $$;

-- CQL2 ^ as SQLite's pow() (C's): 0 to a negative power and overflow are infinite, underflow
-- is 0, and a power with no real value (a negative base, a fractional exponent) is null.
CREATE OR REPLACE FUNCTION gm_pow(a float8, b float8) RETURNS float8 LANGUAGE plpgsql
  IMMUTABLE PARALLEL SAFE AS $$
BEGIN
  IF a = 0 AND b < 0 THEN
    RETURN 'Infinity';
  END IF;
  RETURN power(a, b);
EXCEPTION
  WHEN invalid_argument_for_power_function THEN
    RETURN NULL;
  WHEN numeric_value_out_of_range THEN
    IF (abs(a) > 1) = (b > 0) THEN
      RETURN CASE WHEN a < 0 AND b = trunc(b) AND mod(b::numeric, 2) = 1
                  THEN '-Infinity'::float8 ELSE 'Infinity'::float8 END;
    END IF;
    RETURN 0;
END $$;

CREATE TABLE IF NOT EXISTS gridmap_users (
  username text PRIMARY KEY, password_hash text NOT NULL, role text NOT NULL,
  grid_ids jsonb NOT NULL DEFAULT '[]', community_id bigint,
  disabled boolean NOT NULL DEFAULT false, failed_logins integer NOT NULL DEFAULT 0,
  locked_until text, created_at text NOT NULL, password_changed_at text NOT NULL);

CREATE TABLE IF NOT EXISTS gridmap_audit (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, at text NOT NULL, username text,
  role text, action text NOT NULL, object text, grid_id bigint, result text NOT NULL,
  source text, request_id text, detail text);

CREATE TABLE IF NOT EXISTS gridmap_documents (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, kind text NOT NULL, parent bigint,
  grid_id bigint, created_at text NOT NULL, created_by text, body json NOT NULL);
CREATE INDEX IF NOT EXISTS gridmap_documents_kind ON gridmap_documents (kind, parent);

-- Rate limits shared by every API process: per key, when its next turn is due (see
-- gridmap.store.records.RecordTables.take_turn); rows whose time has passed mean nothing.
CREATE TABLE IF NOT EXISTS gridmap_limits (key text PRIMARY KEY, due double precision NOT NULL);
CREATE TABLE IF NOT EXISTS gridmap_idempotency (
  username text NOT NULL, key text NOT NULL, fingerprint text NOT NULL, layer text NOT NULL,
  fid bigint NOT NULL, at double precision NOT NULL, PRIMARY KEY (username, key));
CREATE INDEX IF NOT EXISTS gridmap_idempotency_at ON gridmap_idempotency (at);

INSERT INTO gridmap_changes VALUES ('gridmap_users', 0), ('gridmap_documents', 0)
  ON CONFLICT DO NOTHING;

DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'gridmap_audit_append_only') THEN
    CREATE TRIGGER gridmap_audit_append_only BEFORE UPDATE OR DELETE ON gridmap_audit
      FOR EACH ROW EXECUTE FUNCTION gridmap_refuse('the audit log is append-only');
    CREATE TRIGGER gridmap_audit_no_truncate BEFORE TRUNCATE ON gridmap_audit
      FOR EACH STATEMENT EXECUTE FUNCTION gridmap_refuse('the audit log is append-only');
    CREATE TRIGGER gridmap_documents_kept BEFORE DELETE ON gridmap_documents
      FOR EACH ROW EXECUTE FUNCTION
      gridmap_refuse('campaigns and plans are kept; close a campaign instead');
    CREATE TRIGGER gridmap_documents_no_truncate BEFORE TRUNCATE ON gridmap_documents
      FOR EACH STATEMENT EXECUTE FUNCTION
      gridmap_refuse('campaigns and plans are kept; close a campaign instead');
    CREATE TRIGGER gridmap_users_stamp AFTER INSERT OR UPDATE OR DELETE ON gridmap_users
      FOR EACH STATEMENT EXECUTE FUNCTION gridmap_touch();
    CREATE TRIGGER gridmap_documents_stamp AFTER INSERT OR UPDATE ON gridmap_documents
      FOR EACH STATEMENT EXECUTE FUNCTION gridmap_touch();
  END IF;
END $$;

-- Added after the first release (each created if missing, so an older store gains them).
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'gridmap_users_truncate_stamp') THEN
    CREATE TRIGGER gridmap_users_truncate_stamp AFTER TRUNCATE ON gridmap_users
      FOR EACH STATEMENT EXECUTE FUNCTION gridmap_touch();
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'gridmap_audit_ids_ahead') THEN
    CREATE TRIGGER gridmap_audit_ids_ahead BEFORE INSERT ON gridmap_audit
      FOR EACH ROW EXECUTE FUNCTION gridmap_ids_ahead('id');
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'gridmap_documents_ids_ahead') THEN
    CREATE TRIGGER gridmap_documents_ids_ahead BEFORE INSERT ON gridmap_documents
      FOR EACH ROW EXECUTE FUNCTION gridmap_ids_ahead('id');
  END IF;
END $$;
